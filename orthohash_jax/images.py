"""Pictures of model inputs, and model inputs of pictures (plots, TensorBoard, the search page).

Model inputs (rows of ``data.eval_rows``) that are pictures come in two kinds:
* images: uint8 (n, H, W, C), C = 1 (grayscale) or 3 (RGB): Fashion-MNIST, list-file images
  after the evaluation transform;
* flat float rows (n, s * s) with values in [0, 1]: s x s grayscale (scikit-learn's digits,
  s = 8, value = ink / 16).
Anything else (e.g. GLDv2 descriptors) is no picture: ``ValueError``.

* ``check_pictures(input_shape, dtype)``: raises ValueError unless inputs of that shape and dtype
  are one of the kinds above.
* ``to_pictures(x)``: uint8 (n, H, W) (grayscale) or (n, H, W, 3) (RGB); flat rows become
  round(255 x value).
* ``from_image(img, input_shape, dtype)``: one model input (``input_shape``) of a Pillow image:
  converted to grayscale or RGB, cropped to the input's aspect ratio around its centre and
  resized (bilinear) to (H, W) (an image of that size already is used as it is); flat inputs get
  pixel / 255. ``to_pictures`` of a uint8 input, saved as PNG and read back, gives the input
  again bit for bit.
* ``png(picture)``: PNG bytes of one uint8 picture.
"""
import io
import math

import numpy as np
from PIL import Image, ImageOps


def _flat_side(input_shape, dtype) -> int:
  """s for flat float inputs of s * s values, else 0."""
  if len(input_shape) == 1 and np.dtype(dtype).kind == "f":
    side = math.isqrt(int(input_shape[0]))
    return side if side * side == input_shape[0] else 0
  return 0


def check_pictures(input_shape, dtype) -> None:
  input_shape = tuple(input_shape)
  image = (len(input_shape) == 3 and input_shape[2] in (1, 3)
           and np.dtype(dtype) == np.uint8)
  if not image and not _flat_side(input_shape, dtype):
    raise ValueError(f"inputs of shape {input_shape} and dtype {np.dtype(dtype)} are not "
                     "pictures (uint8 (H, W, 1 or 3) images or float rows of s*s values)")


def to_pictures(x) -> np.ndarray:
  """uint8 (n, H, W) or (n, H, W, 3) pictures of model inputs (n, ...)."""
  x = np.asarray(x)
  check_pictures(x.shape[1:], x.dtype)
  if x.ndim == 4:
    return x[..., 0] if x.shape[3] == 1 else x
  if x.size and (x.min() < 0 or x.max() > 1):
    raise ValueError(f"flat inputs must lie in [0, 1] to be shown, got [{x.min()}, {x.max()}]")
  side = _flat_side(x.shape[1:], x.dtype)
  return np.round(x.reshape(len(x), side, side) * 255).astype(np.uint8)


def from_image(img: Image.Image, input_shape, dtype) -> np.ndarray:
  """The model input (``input_shape``) of a Pillow image; see the module docstring."""
  input_shape = tuple(input_shape)
  check_pictures(input_shape, dtype)
  side = _flat_side(input_shape, dtype)
  if side:
    height = width = side
    mode = "L"
  else:
    height, width = input_shape[:2]
    mode = "L" if input_shape[2] == 1 else "RGB"
  img = img.convert(mode)
  if img.size != (width, height):
    img = ImageOps.fit(img, (width, height), Image.Resampling.BILINEAR)
  pixels = np.asarray(img, np.uint8)
  if side:
    return (pixels.reshape(-1) / np.float32(255)).astype(dtype)
  return pixels.reshape(input_shape)


def png(picture) -> bytes:
  """PNG bytes of a uint8 (H, W) or (H, W, 3) picture."""
  buf = io.BytesIO()
  Image.fromarray(np.asarray(picture, np.uint8)).save(buf, format="PNG")
  return buf.getvalue()
