"""Layer initialisation (models.INITS): "torch" draws kernels and biases as torch's nn.Linear /
nn.Conv2d, U(-1/sqrt(fan_in), 1/sqrt(fan_in)); "flax" keeps LeCun-normal kernels, zero biases.
Checked against the uniform distribution's bounds, variance b^2/3 and quantiles, computed here."""
import numpy as np
import pytest
from flax import nnx

from orthohash_jax import config_base, methods, models


def layers(init):
  """(array, fan_in) of every kernel and bias of an MLP, a SmallCNN and a LinearHead."""
  rngs = nnx.Rngs(0)
  mlp = models.MLP(300, (200, 100), init=init, rngs=rngs)
  cnn = models.SmallCNN((8, 8, 3), channels=(16, 32), features=50, init=init, rngs=rngs)
  head = models.LinearHead(64, 400, init=init, rngs=rngs)
  out = []
  for layer, fan_in in [(mlp.layers[0], 300), (mlp.layers[1], 200), (cnn.convs[0], 27),
                        (cnn.convs[1], 144), (cnn.dense, 2 * 2 * 32), (head.fc, 64)]:
    out.append((np.asarray(layer.kernel[...], np.float64), fan_in))
    out.append((np.asarray(layer.bias[...], np.float64), fan_in))
  return out


@pytest.mark.slow  # eager initialisation compiles every op (~25 s of CPU)
def test_torch_init_is_uniform_over_one_over_sqrt_fan_in():
  for w, fan_in in layers("torch"):
    bound = 1.0 / np.sqrt(fan_in)
    u = w.ravel() / bound  # U(-1, 1): variance 1/3, quantile q at 2q - 1
    assert np.all(np.abs(u) <= 1.0)
    tol = 4.0 / np.sqrt(u.size)  # a few standard errors of the sample moments / quantiles
    assert abs(u.mean()) < tol
    assert abs(u.var() - 1.0 / 3.0) < tol
    if u.size >= 1000:
      np.testing.assert_allclose(np.quantile(u, [0.1, 0.5, 0.9]), [-0.8, 0.0, 0.8], atol=tol)
      assert np.abs(u).max() > 0.99


@pytest.mark.slow  # eager initialisation compiles every op (~25 s of CPU)
def test_flax_init_keeps_lecun_normal_and_zero_bias():
  for i, (w, fan_in) in enumerate(layers("flax")):
    if i % 2:
      np.testing.assert_array_equal(w, 0.0)
    elif w.size >= 1000:  # truncated normal with variance 1/fan_in
      assert abs(w.var() * fan_in - 1.0) < 0.15
      assert np.abs(w).max() > 1.0 / np.sqrt(fan_in)


@pytest.mark.slow  # eager initialisation compiles every op (~25 s of CPU)
def test_config_key_selects_the_init_and_is_validated():
  config = config_base.base_config()
  assert config.init == "torch"
  config.init = "lecun"
  with pytest.raises(ValueError, match="init must be one of"):
    config_base.validate(config)
  config.loss, config.num_bits = "ce", 16
  for init in models.INITS:
    config.init = init
    for backbone, shape in [("mlp", (64,)), ("cnn_gap", (8, 8, 3))]:
      config.backbone = backbone
      config_base.validate(config)
      model = models.build_model(config, shape, 10, None, methods.METHODS["ce"].make_head)
      first = model.backbone.layers[0] if backbone == "mlp" else model.backbone.convs[0]
      for bias in (first.bias[...], model.head.fc.bias[...]):
        assert np.any(np.asarray(bias) != 0) == (init == "torch")


def test_flax_init_is_rejected_for_torchvision_backbones():
  config = config_base.base_config()
  config.backbone, config.init = "alexnet", "flax"
  with pytest.raises(ValueError, match="initialised as torchvision's"):
    config_base.validate(config)
  config.init = "torch"
  config_base.validate(config)
