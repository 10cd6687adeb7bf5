"""On-device training augmentation of in-memory image batches.

``random_crop_flip(key, images (B, H, W, C) float, pad)`` zero-pads every image by ``pad``
pixels, crops a random H x W window per image and flips it horizontally with probability 1/2.
The trainer draws the key from (seed, step), so a resumed run sees the same augmentation.
"""
import jax
import jax.numpy as jnp


def random_crop_flip(key, images, pad: int = 4):
  """Zero-pads a batch (B, H, W, C) by ``pad``, crops a random H x W window per image and flips
  each image horizontally with probability 1/2. jit with ``static_argnames="pad"``."""
  b, h, w, c = images.shape
  crop_key, flip_key = jax.random.split(key)
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = jax.random.randint(crop_key, (b, 2), 0, 2 * pad + 1)
  crops = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(
      padded, offsets)
  flip = jax.random.bernoulli(flip_key, 0.5, (b, 1, 1, 1))
  return jnp.where(flip, crops[:, :, ::-1], crops)
