"""Flax NNX modules: backbones, the hash layer and the cosine-similarity head.

``HashModel(backbone, hash_layer, head)(x, train=..., head_key=None)`` returns
``(codes, outputs)``:
* x: float32 (B, ...) inputs: flat vectors for ``MLP``/``Identity``, (B, H, W, C) images for
  ``SmallCNN``.
* codes: float32 (B, K) continuous codes v (after BatchNorm); binary codes are sign(v) (v > 0 -> 1).
* outputs: what the method's head gives its loss (``methods.METHODS[config.loss].make_head``):
  float32 (B, C) cosine similarities to the class targets (``CosSimHead``, OrthoHash), float32
  (B, C) unconstrained scores (``LinearHead``: CE / CE+BN, and on sign(v), tanh(v) or stochastic
  bits for GreedyHash, SDH-C, JMLH), the +-1 (C, K) class targets (``Centres``: DPN, CSQ), or
  None without a head (HashNet, DTSH). Heads take ``(codes, *, train, key)``; ``key`` (a PRNG
  key) feeds a head's random draws while training (JMLH).

Initialisation (``init``, ``INITS``): "torch" (default) draws the MLP / SmallCNN / LinearHead
kernels and biases as torch's ``nn.Linear`` / ``nn.Conv2d`` do, U(-1/sqrt(fan_in), 1/sqrt(fan_in))
(kaiming-uniform with a = sqrt(5) for kernels), fan_in = inputs x kernel area; "flax" keeps Flax's
defaults (LeCun-normal kernels, zero biases). The hash layer is W ~ N(0, 0.01^2) without bias under
both, as the authors'. The torchvision backbones (alexnet, vgg16, resnet50) are pretrained or
initialised as torchvision's modules (see ``backbones``), which is what "torch" means for them;
``config_base.validate`` rejects "flax" with them.

BatchNorm running statistics are ``nnx.BatchStat`` state: ``train=True`` normalises with the batch
statistics of the whole (global) batch and updates the running averages (momentum 0.9 in Flax
terms, i.e. torch's 0.1); ``train=False`` uses the running averages. The fixed codebook is a
``Codebook`` variable, neither a parameter nor a batch statistic, so optimisers never touch it.
"""
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from orthohash_jax import backbones
from orthohash_jax import codebook as codebook_lib


INITS = ("torch", "flax")  # config.init: of the mlp / cnn / cnn_gap backbones and the LinearHead


class Codebook(nnx.Variable):
  """Fixed, non-trainable class targets."""


def layer_init(init: str, fan_in: int) -> dict:
  """Keyword arguments (kernel_init, bias_init) of an ``nnx.Linear`` / ``nnx.Conv`` with
  ``fan_in`` inputs per output (in_features x kernel area) under ``init`` (one of ``INITS``)."""
  if init == "flax":
    return {}
  return {"kernel_init": backbones.torch_default_kernel_init,
          "bias_init": backbones.torch_default_bias_init(fan_in)}


class MLP(nnx.Module):
  """ReLU multi-layer perceptron on flattened inputs; ``out_features`` = hidden[-1]."""

  def __init__(self, in_features: int, hidden: Sequence[int] = (512, 512), *,
               init: str = "torch", dtype=jnp.float32, rngs: nnx.Rngs):
    sizes = (in_features, *hidden)
    self.layers = nnx.List([nnx.Linear(a, b, **layer_init(init, a), dtype=dtype, rngs=rngs)
                            for a, b in zip(sizes[:-1], sizes[1:])])
    self.out_features = sizes[-1]

  def __call__(self, x, *, train: bool, dropout_key=None):
    del train, dropout_key
    x = x.reshape(x.shape[0], -1)
    for layer in self.layers:
      x = jax.nn.relu(layer(x))
    return x


class SmallCNN(nnx.Module):
  """conv(3x3)+ReLU+maxpool(2) stages and a ReLU dense layer. ``global_pool=False`` flattens the
  last feature map (28x28 / 32x32 images); ``global_pool=True`` averages it over space first, so
  the parameters do not depend on the image size (224x224 smoke runs of the paper pipeline).
  ``stem_stride`` k > 1 average-pools k x k blocks (stride k) before the first convolution, so
  the convolutions run at 1/k of the image side (k = 1: no stem)."""

  def __init__(self, image_shape: Sequence[int], channels=(32, 64), features: int = 512, *,
               global_pool: bool = False, stem_stride: int = 1, init: str = "torch",
               dtype=jnp.float32, rngs: nnx.Rngs):
    _check_image_side("cnn_gap" if global_pool else "cnn", image_shape,
                      stem_stride * 2 ** len(channels))
    height, width, in_channels = image_shape
    height, width = height // stem_stride, width // stem_stride
    chans = (in_channels, *channels)
    self.convs = nnx.List([nnx.Conv(a, b, (3, 3), **layer_init(init, 9 * a), dtype=dtype,
                                    rngs=rngs)
                           for a, b in zip(chans[:-1], chans[1:])])
    for _ in channels:
      height, width = height // 2, width // 2
    flat = chans[-1] if global_pool else height * width * chans[-1]
    self.dense = nnx.Linear(flat, features, **layer_init(init, flat), dtype=dtype, rngs=rngs)
    self.image_shape = tuple(image_shape)
    self.global_pool = global_pool
    self.stem_stride = stem_stride
    self.out_features = features

  def __call__(self, x, *, train: bool, dropout_key=None):
    del train, dropout_key
    x = x.reshape(x.shape[0], *self.image_shape)
    if self.stem_stride > 1:
      x = nnx.avg_pool(x, (self.stem_stride,) * 2, strides=(self.stem_stride,) * 2)
    for conv in self.convs:
      x = nnx.max_pool(jax.nn.relu(conv(x)), (2, 2), strides=(2, 2))
    x = x.mean(axis=(1, 2)) if self.global_pool else x.reshape(x.shape[0], -1)
    return jax.nn.relu(self.dense(x))


class Identity(nnx.Module):
  """Pass-through backbone for precomputed descriptors (e.g. 2048-d DELG for GLDv2)."""

  def __init__(self, in_features: int):
    self.out_features = in_features

  def __call__(self, x, *, train: bool, dropout_key=None):
    del train, dropout_key
    return x.reshape(x.shape[0], -1)


class HashLayer(nnx.Module):
  """Latent layer H(f) = W f (no bias, W ~ N(0, 0.01^2)) followed by BatchNorm (unless use_bn=False)."""

  def __init__(self, in_features: int, num_bits: int, *, use_bn: bool = True,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.fc = nnx.Linear(in_features, num_bits, use_bias=False, dtype=dtype,
                         kernel_init=nnx.initializers.normal(0.01), rngs=rngs)
    self.bn = nnx.BatchNorm(num_bits, momentum=0.9, epsilon=1e-5, rngs=rngs) if use_bn else None

  def __call__(self, f, *, train: bool):
    v = self.fc(f).astype(jnp.float32)  # BatchNorm, head and loss in float32
    if self.bn is not None:
      v = self.bn(v, use_running_average=not train)
    return v

  def set_statistics(self, mean, var):
    """Replaces the BatchNorm running mean / variance (float32 (K,)), e.g. by the statistics of
    the pre-BN outputs ``fc(f)`` over a database (the paper's BN recompute, Sec. 4.3)."""
    if self.bn is None:
      raise ValueError("recomputing BN statistics needs a hash layer with BatchNorm (use_bn=True)")
    self.bn.mean.set_value(jnp.asarray(mean, jnp.float32))
    self.bn.var.set_value(jnp.asarray(var, jnp.float32))


def normalise(x, eps=1e-12):
  """L2-normalises the last axis (as torch.nn.functional.normalize)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class CosSimHead(nnx.Module):
  """Cosine similarity between codes (B, K) and a fixed +-1 codebook (C, K) -> (B, C).

  ``pad_classes_to`` > 1 appends zero rows so that the number of rows is a multiple of it (a
  class-sharded codebook must split evenly over the model axis); their logits are 0 and the
  loss ignores them (``orthohash_loss(..., num_classes=C)``).
  """

  def __init__(self, codebook, pad_classes_to: int = 1):
    cb = codebook_lib.check_binary(codebook)
    self.num_classes = cb.shape[0]
    padding = -cb.shape[0] % pad_classes_to
    self.codebook = Codebook(jnp.pad(normalise(jnp.asarray(cb)), ((0, padding), (0, 0))))

  def __call__(self, codes, *, train: bool = False, key=None):
    del train, key
    return normalise(codes) @ self.codebook[...].T


class LinearHead(nnx.Module):
  """Unconstrained linear classifier (with bias) of the codes (the CE / CE+BN baselines) or of
  ``transform(codes, train=, key=)`` (B, K), a fixed function such as a binarisation."""

  def __init__(self, num_bits: int, num_classes: int, *, init: str = "torch", transform=None,
               rngs: nnx.Rngs):
    self.fc = nnx.Linear(num_bits, num_classes, **layer_init(init, num_bits), rngs=rngs)
    self.transform = transform

  def __call__(self, codes, *, train: bool = False, key=None):
    if self.transform is not None:
      codes = self.transform(codes, train=train, key=key)
    return self.fc(codes)


class Centres(nnx.Module):
  """Fixed +-1 class targets (C, K) (hash centres) as the head's output, for losses that compare
  the codes with them (DPN, CSQ)."""

  def __init__(self, codebook):
    self.targets = Codebook(jnp.asarray(codebook_lib.check_binary(codebook)))

  def __call__(self, codes, *, train: bool = False, key=None):
    del codes, train, key
    return self.targets[...]


class HashModel(nnx.Module):
  """backbone -> HashLayer -> head (or None); ``__call__(x, train=..., dropout_key=None,
  head_key=None)`` returns (codes (B, K), head outputs or None); ``dropout_key`` feeds the
  backbone's dropout (AlexNet, VGG16), ``head_key`` the head's draws."""

  def __init__(self, backbone: nnx.Module, hash_layer: HashLayer, head):
    self.backbone = backbone
    self.hash_layer = hash_layer
    self.head = head

  def __call__(self, x, *, train: bool, dropout_key=None, head_key=None):
    features = self.backbone(x, train=train, dropout_key=dropout_key)
    codes = self.hash_layer(features.astype(jnp.float32), train=train)
    if self.head is None:
      return codes, None
    return codes, self.head(codes, train=train, key=head_key)


def _check_image_side(backbone: str, shape, minimum: int) -> None:
  """Raises ValueError unless images (H, W, C) are at least ``minimum`` pixels on each side."""
  if min(shape[:2]) < minimum:
    raise ValueError(f"backbone {backbone} needs images of at least {minimum}x{minimum} pixels, "
                     f"got {shape[0]}x{shape[1]} (set image_size >= {minimum})")


def _square_image(shape):
  side = int(round(np.sqrt(np.prod(shape))))
  if side * side != np.prod(shape):
    raise ValueError(f"backbone cnn needs images (H, W, C) or square flat inputs, got {shape}")
  return (side, side, 1)


COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _imagenet_backbone(arch):
  """Builder of a torchvision backbone: ``config.pretrained`` weights, or a fresh init."""
  def build(c, shape, rngs):
    _check_image_side(arch, shape, backbones.MIN_IMAGE_SIDE.get(arch, 1))
    dtype = COMPUTE_DTYPES[c.compute_dtype]
    if c.pretrained:
      return backbones.load_pretrained(arch, c.pretrained, dtype=dtype)
    return backbones.BACKBONES[arch](dtype=dtype, rngs=rngs)
  return build


# config.backbone -> (config, per-example input shape, rngs) -> module with ``out_features``
BACKBONES = {
    "mlp": lambda c, shape, rngs: MLP(int(np.prod(shape)), tuple(c.hidden), init=c.init,
                                      dtype=COMPUTE_DTYPES[c.compute_dtype], rngs=rngs),
    "cnn": lambda c, shape, rngs: SmallCNN(shape if len(shape) == 3 else _square_image(shape),
                                           stem_stride=c.stem_stride, init=c.init,
                                           dtype=COMPUTE_DTYPES[c.compute_dtype], rngs=rngs),
    "cnn_gap": lambda c, shape, rngs: SmallCNN(shape, channels=(32, 64, 128), global_pool=True,
                                               stem_stride=c.stem_stride, init=c.init,
                                               dtype=COMPUTE_DTYPES[c.compute_dtype], rngs=rngs),
    "identity": lambda c, shape, rngs: Identity(int(np.prod(shape))),
    **{arch: _imagenet_backbone(arch) for arch in backbones.BACKBONES},
}


def build_model(config, input_shape, num_classes: int, codebook, make_head=None) -> HashModel:
  """backbone -> HashLayer -> ``make_head(config, num_classes, codebook, rngs)``, the head of the
  method of ``config.loss`` (``methods.METHODS[config.loss].make_head``; None: no head;
  ``codebook`` (C, K) +-1: the class targets of the methods that take them, else None).
  Parameters are initialised from ``config.seed`` as ``config.init`` says, the head's last."""
  rngs = nnx.Rngs(config.seed)
  backbone = BACKBONES[config.backbone](config, tuple(input_shape), rngs)
  hash_layer = HashLayer(backbone.out_features, config.num_bits, use_bn=config.use_bn,
                         dtype=COMPUTE_DTYPES[config.compute_dtype], rngs=rngs)
  head = make_head(config, num_classes, codebook, rngs) if make_head else None
  return HashModel(backbone, hash_layer, head)
