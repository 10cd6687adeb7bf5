import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from orthohash_jax import codebook, config_base, models


def make_model(num_bits=16, use_bn=True):
  rngs = nnx.Rngs(0)
  cb = codebook.make_codebook("bernoulli", 5, num_bits, 0)
  return models.HashModel(models.MLP(12, (8,), rngs=rngs),
                          models.HashLayer(8, num_bits, use_bn=use_bn, rngs=rngs),
                          models.CosSimHead(cb)), cb


def test_shapes_and_cosine_logits():
  model, cb = make_model()
  x = np.random.default_rng(0).normal(size=(6, 12)).astype(np.float32)
  codes, logits = model(x, train=True)
  assert codes.shape == (6, 16) and logits.shape == (6, 5)
  v = np.asarray(codes, np.float64)
  expected = (v / np.linalg.norm(v, axis=1, keepdims=True)) @ (cb / np.sqrt(16)).T
  np.testing.assert_allclose(logits, expected, atol=1e-5)
  assert np.all(np.abs(logits) <= 1 + 1e-6)


def test_train_mode_uses_batch_stats_eval_uses_running():
  model, _ = make_model()
  x = np.random.default_rng(1).normal(size=(32, 12)).astype(np.float32) * 3 + 1
  feats = np.asarray(model.hash_layer.fc(model.backbone(x, train=False)), np.float64)
  codes, _ = model(x, train=True)
  # BatchNorm with scale 1 / bias 0 normalises with the (biased) statistics of the batch
  expected = (feats - feats.mean(0)) / np.sqrt(feats.var(0) + 1e-5)
  np.testing.assert_allclose(codes, expected, atol=1e-4)
  np.testing.assert_allclose(np.asarray(codes).mean(0), 0, atol=1e-4)
  bn = model.hash_layer.bn
  # running stats after one step: 0.9 * init + 0.1 * batch stats (torch momentum 0.1)
  np.testing.assert_allclose(bn.mean[...], 0.1 * np.asarray(feats).mean(0), atol=1e-5)
  eval_codes, _ = model(x, train=False)
  expected = (feats - bn.mean[...]) / np.sqrt(bn.var[...] + 1e-5)
  np.testing.assert_allclose(eval_codes, expected, atol=1e-4)


def test_codebook_is_not_a_param_and_no_bn_option():
  model, _ = make_model(use_bn=False)
  params = nnx.state(model, nnx.Param)
  flat = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(params))[0]
  names = ["/".join(str(k.key) for k in path) for path, _ in flat]
  assert not any("codebook" in n for n in names)
  assert "hash_layer/fc/kernel" in names and not any("bias" in n and "hash" in n for n in names)
  assert not nnx.state(model, nnx.BatchStat)


def test_hash_init_std():
  layer = models.HashLayer(512, 256, rngs=nnx.Rngs(0))
  assert np.std(layer.fc.kernel[...]) == pytest.approx(0.01, rel=0.05)


@pytest.mark.slow
def test_cnn_and_identity():
  rngs = nnx.Rngs(0)
  cnn = models.SmallCNN((28, 28, 1), rngs=rngs)
  assert cnn(jnp.ones((2, 28, 28, 1)), train=True).shape == (2, cnn.out_features)
  assert models.Identity(7)(jnp.ones((3, 7)), train=False).shape == (3, 7)


def test_bad_codebook_and_bits():
  with pytest.raises(ValueError, match=r"\+1 or -1"):
    models.CosSimHead(np.array([[0.5, 1.0]]))
  config = config_base.base_config()
  config.num_bits = 0
  with pytest.raises(ValueError, match="num_bits must be positive"):
    config_base.validate(config)


@pytest.mark.parametrize("backbone,stem,side", [("cnn", 1, 4), ("cnn", 2, 8), ("cnn_gap", 1, 8),
                                                ("cnn_gap", 4, 32), ("alexnet", 1, 63),
                                                ("vgg16", 1, 32)])
def test_images_below_a_backbone_minimum_are_refused_in_one_line(backbone, stem, side):
  config = config_base.base_config()
  config.update(backbone=backbone, stem_stride=stem, loss="ce", num_bits=16)

  def codes(s):  # traced: no parameter is materialised
    x = jax.ShapeDtypeStruct((2, s, s, 3), jnp.float32)
    return jax.eval_shape(lambda x: models.build_model(config, (s, s, 3), 10, None)(
        x, train=False)[0], x)
  assert codes(side).shape == (2, 16)  # the smallest side works
  with pytest.raises(ValueError, match=rf"backbone {backbone} needs images of at least "
                     rf"{side}x{side} pixels, got {side - 1}x{side - 1}"):
    codes(side - 1)


def small_cnn_reference(cnn, x):
  """SmallCNN's forward without a stem, written with lax primitives on the module's parameters:
  SAME 3x3 convolutions + bias, ReLU, 2x2 max-pools, flatten or global mean, ReLU dense."""
  for conv in cnn.convs:
    y = jax.lax.conv_general_dilated(x, conv.kernel[...], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = jax.nn.relu(y + conv.bias[...])
    x = jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
  x = x.mean(axis=(1, 2)) if cnn.global_pool else x.reshape(len(x), -1)
  return jax.nn.relu(x @ cnn.dense.kernel[...] + cnn.dense.bias[...])


@pytest.mark.slow  # eager convolutions (~7 s of CPU)
@pytest.mark.parametrize("backbone", ["cnn", "cnn_gap"])
def test_stem_stride_one_is_the_plain_cnn_and_a_stem_is_a_block_mean(backbone, side=16):
  config = config_base.base_config()
  config.update(backbone=backbone, loss="ce", num_bits=16)
  x = np.random.default_rng(0).normal(size=(2, side, side, 3)).astype(np.float32)
  plain = models.build_model(config, x.shape[1:], 10, None).backbone
  np.testing.assert_allclose(plain(x, train=False), small_cnn_reference(plain, x),
                             rtol=1e-5, atol=1e-5)
  # stride k = the plain network (same parameters) on the means of k x k blocks
  config.stem_stride = 2
  stem = models.build_model(config, x.shape[1:], 10, None).backbone
  small = x.reshape(2, side // 2, 2, side // 2, 2, 3).mean(axis=(2, 4))
  if backbone == "cnn":  # its dense layer's inputs depend on the feature map: smaller here
    assert stem.dense.kernel.shape[0] * 4 == plain.dense.kernel.shape[0]
  else:
    np.testing.assert_array_equal(stem.dense.kernel[...], plain.dense.kernel[...])
  np.testing.assert_allclose(stem(x, train=False), small_cnn_reference(stem, small),
                             rtol=1e-5, atol=1e-5)
