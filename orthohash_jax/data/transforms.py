"""The authors' image transforms on the host (Pillow + numpy), with torchvision's semantics.

Kinds (``Transform.kind``), all ending in a uint8 (size, size, C) array, C = 3 for mode "RGB"
and 1 for mode "L":
- ``random_resized_crop``: RandomResizedCrop(size, scale, ratio) + horizontal flip (p = 1/2);
  the ImageNet100 training transform.
- ``resize_random_crop``: Resize(resize) + RandomCrop(size) + horizontal flip; NUS-WIDE / COCO
  training.
- ``resize_center_crop``: Resize(resize) + CenterCrop(size); evaluation (resize = 256 for
  NUS-WIDE, 224 otherwise).
- ``none``: the image as it is (e.g. grayscale 28x28); output (H, W, C).

torchvision semantics, re-derived (boxes are (left, top, right, bottom) in pixels):
- Resize(n): the shorter side becomes n, the longer ``int(n * long / short)`` (truncated);
  bilinear Pillow resampling (antialiased when shrinking).
- CenterCrop(n): top = round((H - n) / 2), left = round((W - n) / 2) (Python round).
- RandomCrop(n): top uniform in [0, H - n], left uniform in [0, W - n].
- RandomResizedCrop: up to 10 attempts of area = W H U(scale), log aspect U(log ratio),
  w = round(sqrt(area * aspect)), h = round(sqrt(area / aspect)); the first attempt with
  0 < w <= W and 0 < h <= H is placed uniformly. Otherwise the central crop of the whole image
  clamped to the ratio range. The crop is cut out, then resized to size x size.
- The image is converted to ``mode`` first (the reference loader's ``convert('RGB')``).

Randomness: every draw comes from the numpy Generator passed in, in the order above, then the
flip (``rng.random() < 0.5``). The source seeds it with ``np.random.default_rng([seed, step,
position])``, so an augmentation depends on nothing else.

JPEG draft mode (``draft=True``): when the region that becomes the output is at least twice
the output size in both directions, the JPEG is decoded at a reduced DCT scale s in {2, 4, 8}
(libjpeg's scaled IDCT, ``Image.draft``) and the region, divided by s, is resampled from the
reduced image (``resize(box=...)``, fractional box). This is faster but not bit-equal to a full
decode: the reduced decode averages differently from Pillow's bilinear filter and the region is
resampled with its neighbours instead of being cut out first. ``experiments/bench_input.py``
measures the difference; it never applies to non-JPEG files nor to regions under twice the size.
"""
import dataclasses
import math

import numpy as np
from PIL import Image

KINDS = ("random_resized_crop", "resize_random_crop", "resize_center_crop", "none")
RANDOM_KINDS = ("random_resized_crop", "resize_random_crop")
MODES = ("RGB", "L")


def resized_shape(width: int, height: int, size: int):
  """torchvision Resize(size) with an int size: (new width, new height), shorter side = size."""
  if width <= height:
    return size, int(size * height / width)
  return int(size * width / height), size


def center_crop_box(width: int, height: int, size: int):
  top = int(round((height - size) / 2.0))
  left = int(round((width - size) / 2.0))
  return left, top, left + size, top + size


def random_crop_box(rng: np.random.Generator, width: int, height: int, size: int):
  top = int(rng.integers(0, height - size + 1))
  left = int(rng.integers(0, width - size + 1))
  return left, top, left + size, top + size


def random_resized_crop_box(rng: np.random.Generator, width: int, height: int,
                            scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """torchvision RandomResizedCrop.get_params as a (left, top, right, bottom) box."""
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return left, top, left + w, top + h
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    w, h = int(round(height * max(ratio))), height
  else:
    w, h = width, height
  top, left = (height - h) // 2, (width - w) // 2
  return left, top, left + w, top + h


def draft_scale(region_w: float, region_h: float, out_w: int, out_h: int) -> int:
  """Largest JPEG DCT reduction s in (8, 4, 2, 1) leaving the region at least the output size."""
  for s in (8, 4, 2):
    if region_w / s >= out_w and region_h / s >= out_h:
      return s
  return 1


def _convert(img, mode):
  """``img.convert(mode)`` without the copy Pillow makes when the mode already matches."""
  return img if img.mode == mode else img.convert(mode)


@dataclasses.dataclass(frozen=True)
class Transform:
  """One transform; ``__call__(img, rng)`` on an opened (not yet decoded) Pillow image."""
  kind: str
  size: int = 224
  resize: int = 256
  scale: tuple = (0.08, 1.0)
  ratio: tuple = (3 / 4, 4 / 3)
  mode: str = "RGB"
  draft: bool = False

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"unknown transform {self.kind!r}; known: {list(KINDS)}")
    if self.mode not in MODES:
      raise ValueError(f"image mode must be one of {MODES}, got {self.mode!r}")
    if self.kind in ("resize_random_crop", "resize_center_crop") and self.resize < self.size:
      raise ValueError(f"{self.kind}: resize {self.resize} is smaller than the crop {self.size}")

  @property
  def random(self) -> bool:
    return self.kind in RANDOM_KINDS

  @property
  def channels(self) -> int:
    return 3 if self.mode == "RGB" else 1

  def __call__(self, img: Image.Image, rng: np.random.Generator | None = None) -> np.ndarray:
    """Returns uint8 (H, W, C); ``rng`` is required for the random kinds and unused otherwise."""
    if self.random and rng is None:
      raise ValueError(f"{self.kind} needs a random generator")
    full = img.size
    out = (self.size, self.size)
    flip = False
    if self.kind == "none":
      img = _convert(img, self.mode)
    elif self.kind == "random_resized_crop":
      box = random_resized_crop_box(rng, *full, self.scale, self.ratio)
      flip = rng.random() < 0.5
      img = self._crop_resize(img, box, out)
    else:
      resized = resized_shape(*full, self.resize)
      if self.kind == "resize_random_crop":
        crop = random_crop_box(rng, *resized, self.size)
        flip = rng.random() < 0.5
      else:
        crop = center_crop_box(*resized, self.size)
      img = self._crop_resize(img, (0, 0) + full, resized).crop(crop)
    if flip:
      img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    x = np.asarray(img, np.uint8)
    return x[:, :, None] if x.ndim == 2 else x

  def _crop_resize(self, img, box, out_size):
    """Resizes ``box`` (full-resolution pixels) of ``img`` to ``out_size``: torchvision's
    crop-then-resize, or with ``draft`` the reduced-DCT decode of a JPEG (see module doc)."""
    full = img.size
    s = draft_scale(box[2] - box[0], box[3] - box[1], *out_size) if self.draft else 1
    drafted = img.draft(self.mode, (full[0] // s, full[1] // s)) if s > 1 else None
    img = _convert(img, self.mode)
    if drafted is not None and drafted[1][2] != full[0]:
      # Reduced by f = full / drafted width (a power of two); the last DCT block may be partial,
      # so the region is mapped by f, not by the reduced image's size.
      f = full[0] / drafted[1][2]
      return img.resize(out_size, Image.Resampling.BILINEAR, box=tuple(c / f for c in box))
    if tuple(box) != (0, 0) + img.size:
      img = img.crop(box)
    return img.resize(out_size, Image.Resampling.BILINEAR)
