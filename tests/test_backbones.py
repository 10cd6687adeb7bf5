"""orthohash_jax.backbones against PyTorch: features, BatchNorm, pooling, dropout, init, bf16.

References are torch stand-ins with torchvision's exact layer names (experiments/torchvision_replicas.py)
carrying random weights (and random BN running statistics); our modules get the same weights
through orthohash_jax.weights. Exactness is max |ours - torch| / max |torch| <= 1e-4, float32,
eval mode; small odd sizes run by default, 224x224 and 200x256 once per arch (marked slow).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
from flax import nnx  # pylint: disable=g-import-not-at-top,wrong-import-position

from orthohash_jax import backbones  # pylint: disable=g-import-not-at-top,wrong-import-position
from orthohash_jax import weights  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import torchvision_replicas as replicas  # pylint: disable=g-import-not-at-top,wrong-import-position

TOL = 1e-4
# Small sizes that still exercise adaptive pooling: AlexNet 67x99 -> 1x2 feature map -> 6x6;
# VGG16 32x48 -> 1x1 -> 7x7; ResNet-50 odd sizes through every stride.
SMALL = {"alexnet": (67, 99), "vgg16": (32, 48), "resnet50": (61, 83)}
# Measured bf16 drift in this test (max abs error / max abs, these random weights and sizes,
# jax 0.10.2 CPU): alexnet 6.4e-3, resnet50 5.1e-3, vgg16 6.0e-3 (224x224 with the default
# init: experiments/bench_backbones.py). The bound leaves ~5x headroom for other seeds / XLA.
BF16_BOUND = 0.03


def relative_error(ours, ref):
  return float(np.max(np.abs(np.asarray(ours, np.float64) - ref)) / np.max(np.abs(ref)))


def images(batch, hw, seed=0):
  """NCHW float32 images (already 'normalised': standard normal)."""
  return np.random.default_rng(seed).standard_normal((batch, 3, *hw)).astype(np.float32)


def nhwc(x):
  return jnp.asarray(x.transpose(0, 2, 3, 1))


# One compilation per module and shape (much cheaper than eager op-by-op on CPU).
evaluate = nnx.jit(lambda module, x: module(x, train=False))
train = nnx.jit(lambda module, x, key=None: module(x, train=True, dropout_key=key))


@pytest.fixture(scope="module", params=[
    "alexnet", pytest.param("resnet50", marks=pytest.mark.slow),
    pytest.param("vgg16", marks=pytest.mark.slow)])
def pair(request):
  """(arch, torch replica with random weights in eval mode, our module with the same weights)."""
  arch = request.param
  ref = replicas.randomize(replicas.REPLICAS[arch](), seed=1)
  ours = backbones.from_arrays(arch, weights.convert_state_dict(arch, ref.state_dict()))
  return arch, ref, ours


def torch_features(ref, x):
  with torch.no_grad():
    return ref.features_out(torch.from_numpy(x)).numpy()


def test_matches_torchvision_small_sizes(pair):
  arch, ref, ours = pair
  x = images(2, SMALL[arch])
  expected = torch_features(ref, x)
  out = evaluate(ours, nhwc(x))
  assert out.dtype == jnp.float32 and out.shape == (2, ours.out_features) == expected.shape
  assert np.max(np.abs(expected)) > 0 and np.std(expected[:, :8]) > 0
  assert relative_error(out, expected) <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("hw", [(224, 224), (200, 256)])
def test_matches_torchvision_full_sizes(pair, hw):
  _, ref, ours = pair
  x = images(1, hw, seed=2)
  assert relative_error(evaluate(ours, nhwc(x)), torch_features(ref, x)) <= TOL


@pytest.mark.parametrize("hw,out", [((6, 6), (6, 6)), ((1, 2), (6, 6)), ((5, 7), (6, 6)),
                                    ((13, 11), (6, 6)), ((8, 6), (7, 7)), ((23, 9), (7, 7)),
                                    ((7, 7), (1, 1))])
def test_adaptive_avg_pool_matches_torch(hw, out):
  x = np.random.default_rng(3).standard_normal((2, 5, *hw)).astype(np.float32)
  cotangent = np.random.default_rng(4).standard_normal((2, 5, *out)).astype(np.float32)
  xt = torch.from_numpy(x).requires_grad_()
  yt = torch.nn.functional.adaptive_avg_pool2d(xt, out)
  (yt * torch.from_numpy(cotangent)).sum().backward()
  y, vjp = jax.vjp(lambda a: backbones.adaptive_avg_pool(a, out), nhwc(x))
  np.testing.assert_allclose(np.asarray(y).transpose(0, 3, 1, 2), yt.detach().numpy(),
                             rtol=1e-6, atol=1e-6)
  (grad,) = vjp(jnp.asarray(cotangent.transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(np.asarray(grad).transpose(0, 3, 1, 2), xt.grad.numpy(),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_resnet50_train_mode_matches_torch_batchnorm():
  """Batch statistics in the forward pass and torch's running-statistic update (momentum 0.1,
  unbiased variance), for every BN layer."""
  ref = replicas.randomize(replicas.ResNet50(), seed=5).train()
  ours = backbones.from_arrays("resnet50", weights.convert_state_dict("resnet50", ref.state_dict()))
  x = images(3, (64, 48), seed=6)
  with torch.no_grad():
    expected = ref.features_out(torch.from_numpy(x)).numpy()
  assert relative_error(train(ours, nhwc(x)), expected) <= TOL
  updated = weights.convert_state_dict("resnet50", ref.state_dict())
  ours_stats = {"/".join(map(str, p)): np.asarray(v[...])
                for p, v in nnx.to_flat_state(nnx.state(ours, nnx.BatchStat))}
  assert len(ours_stats) == 2 * 53
  for key, value in ours_stats.items():
    np.testing.assert_allclose(value, updated[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_dropout_scales_kept_entries():
  x = jnp.asarray(np.random.default_rng(7).uniform(1, 2, (100, 100)), jnp.float32)
  y = np.asarray(backbones.dropout(x, 0.5, jax.random.key(0)))
  kept = y != 0
  assert 0.45 < kept.mean() < 0.55
  np.testing.assert_array_equal(y[kept], 2 * np.asarray(x)[kept])


@pytest.mark.slow
def test_dropout_places_and_keys_as_torchvision(pair):
  """Train mode == torchvision's classifier[:6] with our masks put on its Dropout layers
  (AlexNet: before fc6 and fc7; VGG16: after their ReLUs); masks depend only on the key."""
  arch, ref, ours = pair
  if arch == "resnet50":
    pytest.skip("no dropout")
  x = images(2, SMALL[arch], seed=8)
  key = jax.random.key(11)
  with pytest.raises(ValueError, match="dropout_key"):
    ours(nhwc(x), train=True)
  out = np.asarray(train(ours, nhwc(x), key))
  np.testing.assert_array_equal(out, train(ours, nhwc(x), key))
  assert not np.array_equal(out, train(ours, nhwc(x), jax.random.key(12)))
  k6, k7 = jax.random.split(key, 2)
  m6_width = ours.fc6.in_features if arch == "alexnet" else 4096  # fc6's input / output
  m6 = np.asarray(jax.random.bernoulli(k6, 0.5, (2, m6_width)), np.float32) * 2
  m7 = np.asarray(jax.random.bernoulli(k7, 0.5, (2, 4096)), np.float32) * 2
  with torch.no_grad():
    pooled = torch.flatten(ref.avgpool(ref.features(torch.from_numpy(x))), 1)
    fc6, fc7 = (ref.classifier[1], ref.classifier[4]) if arch == "alexnet" else (
        ref.classifier[0], ref.classifier[3])
    if arch == "alexnet":  # our fc6 input is flattened (h, w, c): permute the mask to (c, h, w)
      m6 = m6.reshape(2, 6, 6, 256).transpose(0, 3, 1, 2).reshape(2, -1)
      h = torch.relu(fc6(pooled * torch.from_numpy(m6)))
      expected = torch.relu(fc7(h * torch.from_numpy(m7)))
    else:
      h = torch.relu(fc6(pooled)) * torch.from_numpy(m6)
      expected = torch.relu(fc7(h)) * torch.from_numpy(m7)
  assert relative_error(out, expected.numpy()) <= TOL


def _layer_dtypes(module):
  """(number of convolutions + matmuls, their operand dtypes) in the jaxpr at 224x224, where
  adaptive pooling (a float32 einsum) is the identity."""
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  jaxpr = jax.make_jaxpr(lambda a: module(a, train=False))(x)
  eqns = [e for e in jaxpr.eqns if e.primitive.name in ("conv_general_dilated", "dot_general")]
  return len(eqns), {str(v.aval.dtype) for e in eqns for v in e.invars}


def test_bfloat16_compute_float32_params_and_bounded_drift(pair):
  arch, _, ours = pair
  state = nnx.state(ours)
  bf16 = backbones.from_arrays(arch, {"/".join(map(str, p)): np.asarray(v[...])
                                      for p, v in nnx.to_flat_state(state)}, dtype=jnp.bfloat16)
  assert {v[...].dtype for _, v in nnx.to_flat_state(nnx.state(bf16))} == {jnp.dtype("float32")}
  layers = {"alexnet": 7, "vgg16": 15, "resnet50": 53}[arch]
  assert _layer_dtypes(bf16) == (layers, {"bfloat16"})
  assert _layer_dtypes(ours) == (layers, {"float32"})
  x = nhwc(images(2, SMALL[arch], seed=9))
  out, expected = evaluate(bf16, x), evaluate(ours, x)
  assert out.dtype == jnp.float32
  drift = relative_error(out, np.asarray(expected))
  assert 0 < drift < BF16_BOUND, drift


def _torch_reference_weight(arch, kind, torch_shape):
  """A weight drawn by torch's own initialiser that torchvision uses for this layer."""
  w = torch.empty(torch_shape)
  if arch == "alexnet":  # torch's layer defaults
    torch.nn.init.kaiming_uniform_(w, a=5 ** 0.5)
  elif kind == "conv":
    torch.nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
  else:
    torch.nn.init.normal_(w, 0, 0.01)
  return w.numpy()


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(backbones.BACKBONES))
def test_initialisation_like_torchvision(arch):
  torch.manual_seed(0)
  module = nnx.jit(lambda: backbones.BACKBONES[arch](rngs=nnx.Rngs(0)))()  # one compilation
  params = {"/".join(map(str, p)): np.asarray(v[...])
            for p, v in nnx.to_flat_state(nnx.state(module))}
  checked = 0
  for torch_name, flax_name, kind in weights.torch_layers(arch):
    if kind == "bn":
      for name, value in (("scale", 1), ("bias", 0), ("mean", 0), ("var", 1)):
        np.testing.assert_array_equal(params[f"{flax_name}/{name}"], value)
      continue
    kernel = params[f"{flax_name}/kernel"]
    shape = kernel.shape[::-1] if kernel.ndim == 2 else tuple(kernel.shape[i] for i in (3, 2, 0, 1))
    ref = _torch_reference_weight(arch, "conv" if kernel.ndim == 4 else "linear", shape)
    np.testing.assert_allclose(kernel.std(), ref.std(), rtol=0.05, err_msg=torch_name)
    if arch == "alexnet":  # uniform: same support, and the bias U(+-1/sqrt(fan_in)) too
      bound = np.abs(ref).max()
      assert np.abs(kernel).max() <= bound * 1.001 and np.abs(kernel).max() > 0.99 * bound
      fan_in = int(np.prod(shape[1:]))
      bias = params[f"{flax_name}/bias"]
      assert np.abs(bias).max() <= fan_in ** -0.5 and bias.std() > 0.4 * fan_in ** -0.5
    elif f"{flax_name}/bias" in params:
      np.testing.assert_array_equal(params[f"{flax_name}/bias"], 0)
    checked += 1
  assert checked == {"alexnet": 7, "vgg16": 15, "resnet50": 53}[arch]


def test_out_features_and_unknown_arch():
  assert {a: backbones.abstract_backbone(a).out_features for a in backbones.BACKBONES} == {
      "alexnet": 4096, "vgg16": 4096, "resnet50": 2048}
  with pytest.raises(ValueError, match="unknown backbone 'vgg19'"):
    backbones.abstract_backbone("vgg19")
