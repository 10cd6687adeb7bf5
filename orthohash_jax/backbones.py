"""ImageNet backbones in Flax NNX: torchvision's AlexNet, VGG16 (no BN) and ResNet-50 (v1.5).

Every backbone maps x float32 (B, H, W, 3), NHWC, already normalised with the ImageNet mean and
std, to float32 features (B, out_features):
* ``AlexNet`` / ``VGG16``: torchvision's ``classifier[:6]`` output, 4096-d (fc7 after ReLU).
  AlexNet applies Dropout(0.5) before fc6 and before fc7, VGG16 after the ReLUs of fc6 and fc7
  (torchvision's order); dropout is active only with ``train=True``.
* ``ResNet50``: the global-average-pooled 2048-d vector (stride on the 3x3 conv, v1.5).

The input size is free: AlexNet / VGG16 end their convolutions with ``adaptive_avg_pool``, which
uses torch ``AdaptiveAvgPool2d``'s bins (6x6 / 7x7), so any H, W >= 63 (AlexNet) / 32 (VGG16)
gives torchvision's features.

Randomness: ``__call__(x, *, train, dropout_key=None)``. The caller passes the dropout key
(e.g. ``jax.random.fold_in(key(seed), step)``), so a resumed run draws the same masks; AlexNet
and VGG16 raise ValueError when ``train=True`` comes without one. ResNet-50 has no dropout and
ignores the key.

Precision: ``dtype`` is the compute dtype. Convolutions and matmuls run in it (bfloat16 option);
parameters are float32 (``nnx.Param``), BatchNorm normalises and keeps its running statistics in
float32, adaptive / global pooling sums in float32, and the features are returned as float32.

ResNet-50's BatchNorm follows torch's ``BatchNorm2d`` exactly: with ``train=True`` it normalises
with the batch mean and biased variance (over B, H, W of the whole global batch) and updates the
running statistics (``nnx.BatchStat``) with momentum 0.1 and the unbiased variance; eps 1e-5.

Initialisation follows torchvision, so from-scratch training behaves as in torch: AlexNet uses
torch's layer defaults (kaiming-uniform a=sqrt(5), i.e. U(+-1/sqrt(fan_in)), for kernels and
biases); VGG16 kaiming-normal (fan_out, ReLU) convolutions with zero bias and N(0, 0.01) linear
layers with zero bias; ResNet-50 kaiming-normal (fan_out) convolutions, BatchNorm weight 1 and
bias 0.

Pretrained weights: ``python -m orthohash_jax.weights`` converts torchvision ``.pth`` files into
``DIR/backbone.npz`` (one float32 array per ``nnx.state`` path, keys joined with "/", e.g.
``convs/0/kernel``, ``stages/0/0/bn1/mean``) plus ``DIR/backbone.json`` (``{"arch": ...}``);
``load_pretrained(arch, DIR)`` returns the module holding them.
"""
import json
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from orthohash_jax import files

CHECKPOINT_FILE = "backbone.npz"
META_FILE = "backbone.json"


# ---- initialisers (torch conventions; flax kernels are (kh, kw, in, out) or (in, out)) ----

# torch's default for Conv2d / Linear weights: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)).
torch_default_kernel_init = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
# kaiming_normal(mode="fan_out", nonlinearity="relu"): N(0, 2 / fan_out), not truncated.
kaiming_normal_fan_out = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_default_bias_init(fan_in: int):
  """torch's default bias init for a layer with ``fan_in`` inputs: U(+-1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def conv(in_features, out_features, kernel, stride=1, padding=0, *, use_bias=True,
         kernel_init=torch_default_kernel_init, bias_init=None, dtype, rngs):
  """torch-style ``Conv2d`` (symmetric zero padding); ``bias_init=None`` = torch's default."""
  if bias_init is None:
    bias_init = torch_default_bias_init(in_features * kernel * kernel)
  return nnx.Conv(in_features, out_features, (kernel, kernel), (stride, stride),
                  padding=((padding, padding), (padding, padding)), use_bias=use_bias,
                  dtype=dtype, param_dtype=jnp.float32, kernel_init=kernel_init,
                  bias_init=bias_init, rngs=rngs)


def linear(in_features, out_features, *, kernel_init=torch_default_kernel_init, bias_init=None,
           dtype, rngs):
  """torch-style ``Linear``; ``bias_init=None`` = torch's default."""
  if bias_init is None:
    bias_init = torch_default_bias_init(in_features)
  return nnx.Linear(in_features, out_features, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=kernel_init, bias_init=bias_init, rngs=rngs)


# ---- stateless layers ----

def _pool_matrix(size: int, out: int) -> np.ndarray:
  """(out, size) averaging matrix over torch's adaptive bins.

  Bin i covers [floor(i * size / out), ceil((i + 1) * size / out)).
  """
  m = np.zeros((out, size), np.float32)
  for i in range(out):
    start, end = (i * size) // out, -(-(i + 1) * size // out)
    m[i, start:end] = 1.0 / (end - start)
  return m


def adaptive_avg_pool(x, output_size):
  """torch ``AdaptiveAvgPool2d(output_size)`` on NHWC x (B, H, W, C) -> (B, oh, ow, C), x.dtype.

  Sums in float32; bins may overlap and, when H < oh, repeat rows, exactly as torch's.
  """
  oh, ow = output_size
  _, h, w, _ = x.shape
  if (h, w) == (oh, ow):
    return x
  y = jnp.einsum("bhwc,ih,jw->bijc", x.astype(jnp.float32), _pool_matrix(h, oh),
                 _pool_matrix(w, ow), precision=jax.lax.Precision.HIGHEST)
  return y.astype(x.dtype)


def max_pool(x, window, stride, padding=0):
  """torch ``MaxPool2d(window, stride, padding)`` (floor mode, -inf padding) on NHWC."""
  return nnx.max_pool(x, (window, window), strides=(stride, stride),
                      padding=((padding, padding), (padding, padding)))


def dropout(x, rate: float, key):
  """Inverted dropout as torch's: zeroes each entry with probability ``rate``, scales the rest."""
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def _dropout_keys(train: bool, dropout_key, count: int):
  """``count`` independent keys in training, Nones otherwise."""
  if not train:
    return (None,) * count
  if dropout_key is None:
    raise ValueError("train=True needs dropout_key (e.g. jax.random.fold_in(key(seed), step))")
  return tuple(jax.random.split(dropout_key, count))


def _maybe_dropout(x, key, rate=0.5):
  return x if key is None else dropout(x, rate, key)


# ---- BatchNorm ----

class BatchNorm2d(nnx.Module):
  """torch ``BatchNorm2d`` on NHWC (statistics over B, H, W), float32 math, output in ``dtype``."""

  def __init__(self, num_features: int, *, momentum: float = 0.1, epsilon: float = 1e-5,
               dtype=jnp.float32):
    self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
    self.momentum, self.epsilon, self.dtype = momentum, epsilon, dtype

  def __call__(self, x, *, train: bool):
    x = x.astype(jnp.float32)
    if train:
      mean = jnp.mean(x, axis=(0, 1, 2))
      var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
      n = x.size // x.shape[-1]
      m = self.momentum
      self.mean[...] = (1 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean)
      self.var[...] = (1 - m) * self.var[...] + m * jax.lax.stop_gradient(var) * (n / max(n - 1, 1))
    else:
      mean, var = self.mean[...], self.var[...]
    y = (x - mean) * (self.scale[...] * jax.lax.rsqrt(var + self.epsilon)) + self.bias[...]
    return y.astype(self.dtype)


# ---- AlexNet / VGG16 ----

class AlexNet(nnx.Module):
  """torchvision AlexNet up to fc7 + ReLU: (B, H >= 63, W >= 63, 3) -> (B, 4096)."""

  # (in, out, kernel, stride, padding, max-pool after)
  CONVS = ((3, 64, 11, 4, 2, True), (64, 192, 5, 1, 2, True), (192, 384, 3, 1, 1, False),
           (384, 256, 3, 1, 1, False), (256, 256, 3, 1, 1, True))
  POOL_SIZE = (6, 6)

  def __init__(self, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.convs = nnx.List([conv(i, o, k, s, p, dtype=dtype, rngs=rngs)
                           for i, o, k, s, p, _ in self.CONVS])
    self.fc6 = linear(256 * 6 * 6, 4096, dtype=dtype, rngs=rngs)
    self.fc7 = linear(4096, 4096, dtype=dtype, rngs=rngs)
    self.dtype = dtype
    self.out_features = 4096

  def __call__(self, x, *, train: bool, dropout_key=None):
    k6, k7 = _dropout_keys(train, dropout_key, 2)
    x = x.astype(self.dtype)
    for layer, spec in zip(self.convs, self.CONVS):
      x = jax.nn.relu(layer(x))
      if spec[-1]:
        x = max_pool(x, 3, 2)
    x = adaptive_avg_pool(x, self.POOL_SIZE).reshape(x.shape[0], -1)  # (h, w, c) order
    x = jax.nn.relu(self.fc6(_maybe_dropout(x, k6)))
    x = jax.nn.relu(self.fc7(_maybe_dropout(x, k7)))
    return x.astype(jnp.float32)


class VGG16(nnx.Module):
  """torchvision VGG16 (configuration D, no BN) up to fc7 + ReLU + Dropout: (B, H, W, 3) ->
  (B, 4096)."""

  STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
  POOL_SIZE = (7, 7)

  def __init__(self, *, dtype=jnp.float32, rngs: nnx.Rngs):
    widths = [w for stage in self.STAGES for w in stage]
    self.convs = nnx.List([
        conv(i, o, 3, 1, 1, kernel_init=kaiming_normal_fan_out,
             bias_init=nnx.initializers.zeros_init(), dtype=dtype, rngs=rngs)
        for i, o in zip([3] + widths[:-1], widths)])
    dense = dict(kernel_init=nnx.initializers.normal(0.01), bias_init=nnx.initializers.zeros_init(),
                 dtype=dtype, rngs=rngs)
    self.fc6 = linear(512 * 7 * 7, 4096, **dense)
    self.fc7 = linear(4096, 4096, **dense)
    self.dtype = dtype
    self.out_features = 4096

  def __call__(self, x, *, train: bool, dropout_key=None):
    k6, k7 = _dropout_keys(train, dropout_key, 2)
    x = x.astype(self.dtype)
    layers = iter(self.convs)
    for stage in self.STAGES:
      for _ in stage:
        x = jax.nn.relu(next(layers)(x))
      x = max_pool(x, 2, 2)
    x = adaptive_avg_pool(x, self.POOL_SIZE).reshape(x.shape[0], -1)  # (h, w, c) order
    x = _maybe_dropout(jax.nn.relu(self.fc6(x)), k6)
    x = _maybe_dropout(jax.nn.relu(self.fc7(x)), k7)
    return x.astype(jnp.float32)


# ---- ResNet-50 ----

class Bottleneck(nnx.Module):
  """1x1 -> 3x3 (stride here, v1.5) -> 1x1 (x4 channels), each with BN; projection shortcut
  (1x1 conv with the stride + BN) when the shape changes."""

  def __init__(self, in_features: int, width: int, stride: int, *, dtype, rngs: nnx.Rngs):
    out = 4 * width
    c = dict(use_bias=False, kernel_init=kaiming_normal_fan_out, dtype=dtype, rngs=rngs)
    self.conv1 = conv(in_features, width, 1, **c)
    self.bn1 = BatchNorm2d(width, dtype=dtype)
    self.conv2 = conv(width, width, 3, stride, 1, **c)
    self.bn2 = BatchNorm2d(width, dtype=dtype)
    self.conv3 = conv(width, out, 1, **c)
    self.bn3 = BatchNorm2d(out, dtype=dtype)
    if stride != 1 or in_features != out:
      self.downsample_conv = conv(in_features, out, 1, stride, **c)
      self.downsample_bn = BatchNorm2d(out, dtype=dtype)
    else:
      self.downsample_conv = self.downsample_bn = None

  def __call__(self, x, *, train: bool):
    y = jax.nn.relu(self.bn1(self.conv1(x), train=train))
    y = jax.nn.relu(self.bn2(self.conv2(y), train=train))
    y = self.bn3(self.conv3(y), train=train)
    if self.downsample_conv is not None:
      x = self.downsample_bn(self.downsample_conv(x), train=train)
    return jax.nn.relu(y + x)


class ResNet50(nnx.Module):
  """torchvision ResNet-50 (v1.5) up to global average pooling: (B, H, W, 3) -> (B, 2048)."""

  # (bottleneck width, blocks, stride of the first block)
  STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))

  def __init__(self, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.conv1 = conv(3, 64, 7, 2, 3, use_bias=False, kernel_init=kaiming_normal_fan_out,
                      dtype=dtype, rngs=rngs)
    self.bn1 = BatchNorm2d(64, dtype=dtype)
    stages, in_features = [], 64
    for width, blocks, stride in self.STAGES:
      stage = []
      for j in range(blocks):
        stage.append(Bottleneck(in_features, width, stride if j == 0 else 1, dtype=dtype,
                                rngs=rngs))
        in_features = 4 * width
      stages.append(nnx.List(stage))
    self.stages = nnx.List(stages)
    self.dtype = dtype
    self.out_features = in_features

  def __call__(self, x, *, train: bool, dropout_key=None):
    del dropout_key  # no dropout in ResNet-50
    x = jax.nn.relu(self.bn1(self.conv1(x.astype(self.dtype)), train=train))
    x = max_pool(x, 3, 2, 1)
    for stage in self.stages:
      for block in stage:
        x = block(x, train=train)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


BACKBONES = {"alexnet": AlexNet, "vgg16": VGG16, "resnet50": ResNet50}
# the smallest square image whose feature maps stay non-empty (ResNet-50 takes any size)
MIN_IMAGE_SIDE = {"alexnet": 63, "vgg16": 32}


# ---- pretrained weights ----

def _check_arch(arch: str) -> None:
  if arch not in BACKBONES:
    raise ValueError(f"unknown backbone {arch!r}: expected one of {sorted(BACKBONES)}")


def abstract_backbone(arch: str, *, dtype=jnp.float32) -> nnx.Module:
  """The module of ``arch`` with shape-only variables (nothing initialised or allocated)."""
  _check_arch(arch)
  return nnx.eval_shape(lambda: BACKBONES[arch](dtype=dtype, rngs=nnx.Rngs(0)))


def flat_shapes(arch: str) -> dict:
  """{"path/of/variable": shape} of every parameter and batch statistic of ``arch``."""
  return {"/".join(map(str, path)): tuple(v.shape)
          for path, v in nnx.to_flat_state(nnx.state(abstract_backbone(arch)))}


def from_arrays(arch: str, arrays: dict, *, dtype=jnp.float32,
                source: str = "arrays") -> nnx.Module:
  """The ``arch`` backbone holding ``arrays`` ({"path/of/variable": array}, as ``flat_shapes``).

  Raises ValueError naming the first missing, mis-shaped or unexpected key (``source`` prefixes
  the message).
  """
  arrays = dict(arrays)
  module = abstract_backbone(arch, dtype=dtype)
  flat = nnx.to_flat_state(nnx.state(module))
  for path, variable in flat:
    key = "/".join(map(str, path))
    if key not in arrays:
      raise ValueError(f"{source}: missing {key}")
    value = np.asarray(arrays.pop(key))
    if value.shape != tuple(variable.shape):
      raise ValueError(f"{source}: {key} has shape {value.shape}, expected {tuple(variable.shape)}")
    variable.set_value(jnp.asarray(value, jnp.float32))
  if arrays:
    raise ValueError(f"{source}: unexpected {sorted(arrays)[0]}")
  nnx.update(module, nnx.from_flat_state(flat))
  return module


def load_pretrained(arch: str, directory: str, *, dtype=jnp.float32) -> nnx.Module:
  """The ``arch`` backbone with the weights ``orthohash_jax.weights`` wrote to ``directory``.

  Raises ValueError (one line) when the files are missing or unreadable, hold another
  architecture, or miss / add / mis-shape a variable.
  """
  _check_arch(arch)
  meta_path = os.path.join(directory, META_FILE)
  array_path = os.path.join(directory, CHECKPOINT_FILE)
  for path in (meta_path, array_path):
    if not files.path(path).is_file():
      raise ValueError(f"{path}: file not found (convert torchvision weights with "
                       f"python -m orthohash_jax.weights --arch={arch} --torch=FILE "
                       f"--output={directory})")
  try:
    stored_arch = json.loads(files.path(meta_path).read_text())["arch"]
    with files.path(array_path).open("rb") as f, np.load(f) as npz:
      arrays = {k: npz[k] for k in npz.files}
  except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f"{directory}: unreadable backbone checkpoint ({type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else ''}); convert the weights again "
                     f"with python -m orthohash_jax.weights --arch={arch} --torch=FILE "
                     f"--output={directory}") from None
  if stored_arch != arch:
    raise ValueError(f"{directory} holds {stored_arch} weights, not {arch}")
  return from_arrays(arch, arrays, dtype=dtype, source=array_path)
