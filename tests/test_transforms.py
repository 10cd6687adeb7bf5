"""Host image transforms against torchvision's semantics, re-derived independently."""
import io
import math

import numpy as np
import pytest
from PIL import Image

from orthohash_jax.data import transforms


class ScriptedRng:
  """Stands in for a numpy Generator: returns scripted draws and records the bounds asked."""

  def __init__(self, uniforms, integers, randoms=()):
    self.uniforms, self.integers_, self.randoms = list(uniforms), list(integers), list(randoms)
    self.calls = []

  def uniform(self, low, high):
    self.calls.append(("uniform", low, high))
    return self.uniforms.pop(0)

  def integers(self, low, high):
    self.calls.append(("integers", low, high))
    return self.integers_.pop(0)

  def random(self):
    self.calls.append(("random",))
    return self.randoms.pop(0)


def _noise(w, h, mode="RGB", seed=0):
  shape = (h, w, 3) if mode == "RGB" else (h, w)
  return Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


def _reopen(img, fmt="PNG", **kw):
  buf = io.BytesIO()
  img.save(buf, fmt, **kw)
  buf.seek(0)
  return Image.open(buf)


@pytest.mark.parametrize("w, h, size, want", [
    (500, 375, 256, (341, 256)), (375, 500, 256, (256, 341)), (256, 256, 224, (224, 224)),
    (300, 200, 224, (336, 224)), (201, 299, 224, (224, 333))])
def test_resized_shape_shorter_side_truncated(w, h, size, want):
  assert transforms.resized_shape(w, h, size) == want


def test_center_crop_box_rounds_like_python():
  # (341 - 224) / 2 = 58.5 rounds half to even (58); (256 - 224) / 2 = 16.
  assert transforms.center_crop_box(341, 256, 224) == (58, 16, 282, 240)
  assert transforms.center_crop_box(343, 225, 224) == (60, 0, 284, 224)


def test_random_resized_crop_box_scripted_draws():
  # Attempt 1: area 0.95 * 60000, aspect e^0.2: w = round(sqrt(57000 e^0.2)) = 264 > 200 high
  # -> rejected. Attempt 2: area 0.5, aspect 1 -> 173 x 173, placed at top 5, left 7.
  rng = ScriptedRng([0.95, 0.2, 0.5, 0.0], [5, 7])
  box = transforms.random_resized_crop_box(rng, 300, 200)
  side = int(round(math.sqrt(0.5 * 60000)))
  assert side == 173 and box == (7, 5, 7 + side, 5 + side)
  log_r = (math.log(3 / 4), math.log(4 / 3))
  assert rng.calls == [("uniform", 0.08, 1.0), ("uniform", *log_r), ("uniform", 0.08, 1.0),
                       ("uniform", *log_r), ("integers", 0, 200 - side + 1),
                       ("integers", 0, 300 - side + 1)]


@pytest.mark.parametrize("w, h, want", [
    (1000, 10, (493, 0, 506, 10)),   # too wide: h = 10, w = round(10 * 4/3) = 13, centred
    (10, 1000, (0, 493, 10, 506)),   # too tall: w = 10, h = round(10 / (3/4)) = 13
])
def test_random_resized_crop_fallback(w, h, want):
  rng = np.random.default_rng(0)
  assert transforms.random_resized_crop_box(rng, w, h) == want


def test_random_resized_crop_boxes_inside_and_in_range():
  rng = np.random.default_rng(1)
  fractions = []
  for _ in range(500):
    left, top, right, bottom = transforms.random_resized_crop_box(rng, 320, 240)
    assert 0 <= left < right <= 320 and 0 <= top < bottom <= 240
    w, h = right - left, bottom - top
    fractions.append(w * h / (320 * 240))
    assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05
  assert 0.07 < min(fractions) and max(fractions) <= 1.0
  assert 0.4 < np.mean(fractions) < 0.6  # U(0.08, 1) has mean 0.54, big ones often rejected


def test_random_crop_box_bounds():
  rng = ScriptedRng([], [3, 9])
  assert transforms.random_crop_box(rng, 341, 256, 224) == (9, 3, 233, 227)
  assert rng.calls == [("integers", 0, 33), ("integers", 0, 118)]


def _torch_resize(x, out_h, out_w):
  """Bilinear antialiased resize in torch (independent of Pillow), uint8 HWC -> float HWC."""
  torch = pytest.importorskip("torch")
  t = torch.from_numpy(np.array(x)).permute(2, 0, 1)[None].float()
  y = torch.nn.functional.interpolate(t, size=(out_h, out_w), mode="bilinear",
                                      antialias=True, align_corners=False)
  return y[0].permute(1, 2, 0).numpy()


def test_random_resized_crop_pixels_match_torch_crop_then_resize():
  img = _noise(300, 200)
  x = np.asarray(img)
  t = transforms.Transform("random_resized_crop", size=64)
  for key in range(4):
    rng = np.random.default_rng(key)
    left, top, right, bottom = transforms.random_resized_crop_box(rng, 300, 200)
    flip = rng.random() < 0.5
    want = _torch_resize(x[top:bottom, left:right], 64, 64)
    want = want[:, ::-1] if flip else want
    got = t(_reopen(img), np.random.default_rng(key))
    assert got.shape == (64, 64, 3) and got.dtype == np.uint8
    assert np.abs(got - want).max() <= 2.0


@pytest.mark.parametrize("kind", ["resize_center_crop", "resize_random_crop"])
def test_resize_then_crop_pixels_match_torch(kind):
  img = _noise(90, 60, seed=3)
  t = transforms.Transform(kind, size=40, resize=48)
  rw, rh = transforms.resized_shape(90, 60, 48)
  full = _torch_resize(np.asarray(img), rh, rw)
  rng = np.random.default_rng(5)
  if kind == "resize_center_crop":
    left, top, _, _ = transforms.center_crop_box(rw, rh, 40)
    flip = False
  else:
    left, top, _, _ = transforms.random_crop_box(rng, rw, rh, 40)
    flip = rng.random() < 0.5
  want = full[top:top + 40, left:left + 40]
  want = want[:, ::-1] if flip else want
  got = t(_reopen(img), np.random.default_rng(5) if t.random else None)
  assert np.abs(got - want).max() <= 2.0


def test_none_and_grayscale_exact():
  img = _noise(28, 20, mode="L")
  got = transforms.Transform("none", mode="L")(_reopen(img))
  assert got.shape == (20, 28, 1)
  np.testing.assert_array_equal(got[:, :, 0], np.asarray(img))
  rgb = transforms.Transform("none")(_reopen(img))
  assert rgb.shape == (20, 28, 3)
  np.testing.assert_array_equal(rgb, np.repeat(np.asarray(img)[:, :, None], 3, axis=2))


def test_flip_is_a_fair_coin_and_deterministic():
  img = _noise(64, 64)
  t = transforms.Transform("resize_random_crop", size=64, resize=64)
  flips = []
  for key in range(200):
    a = t(_reopen(img), np.random.default_rng([0, key]))
    b = t(_reopen(img), np.random.default_rng([0, key]))
    np.testing.assert_array_equal(a, b)
    if not np.array_equal(a, np.asarray(img)):
      np.testing.assert_array_equal(a, np.asarray(img)[:, ::-1])
      flips.append(key)
  assert 70 < len(flips) < 130


def test_random_kind_needs_rng_and_bad_settings():
  with pytest.raises(ValueError, match="needs a random generator"):
    transforms.Transform("random_resized_crop")(_noise(8, 8))
  with pytest.raises(ValueError, match="unknown transform"):
    transforms.Transform("crop")
  with pytest.raises(ValueError, match="smaller than the crop"):
    transforms.Transform("resize_center_crop", size=224, resize=200)


def test_draft_scale():
  assert transforms.draft_scale(1000, 800, 224, 224) == 2
  assert transforms.draft_scale(1800, 1800, 224, 224) == 8
  assert transforms.draft_scale(447, 900, 224, 224) == 1


def test_draft_close_to_full_decode_and_only_when_large():
  # Smooth content (as natural images): the reduced DCT decode differs only slightly.
  yy, xx = np.mgrid[0:768, 0:1024]
  x = np.stack([xx / 4, yy / 3, (xx + yy) / 7], -1) % 256
  img = Image.fromarray(x.astype(np.uint8))
  full = transforms.Transform("resize_center_crop", size=224, resize=224)
  draft = transforms.Transform("resize_center_crop", size=224, resize=224, draft=True)
  a = full(_reopen(img, "JPEG", quality=95))
  b = draft(_reopen(img, "JPEG", quality=95))
  assert a.shape == b.shape == (224, 224, 3)
  diff = np.abs(a.astype(int) - b)
  assert 0 < diff.mean() < 3
  # A PNG, or a JPEG under twice the output size, is decoded in full: identical results.
  np.testing.assert_array_equal(full(_reopen(img)), draft(_reopen(img)))
  small = img.resize((400, 300))
  np.testing.assert_array_equal(full(_reopen(small, "JPEG")), draft(_reopen(small, "JPEG")))
