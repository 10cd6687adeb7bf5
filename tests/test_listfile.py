"""List-file datasets: real PNG files and list files written under tmp_path, read through the
streaming source with the identity transform."""
import jax
import numpy as np
import pytest
from PIL import Image

from conftest import config_of
from orthohash_jax import augment
from orthohash_jax import data as data_lib

SIZE = 8


def _write_split(root, filename, labels, prefix, rng, ext="png", size=(SIZE, SIZE)):
  """Writes one image per label row and the list file; returns the uint8 pixels written."""
  (root / "img").mkdir(exist_ok=True)
  pixels, lines = [], []
  for i, row in enumerate(labels):
    name = f"img/{prefix}_{i}.{ext}"
    px = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(px).save(root / name)
    pixels.append(px)
    lines.append(name + " " + " ".join(str(v) for v in row))
  (root / filename).write_text("\n".join(lines) + "\n")
  return np.stack(pixels)


def _config(root, **kw):
  return config_of({"dataset": "listfile", "data_dir": str(root), "num_classes": 3,
                    "train_transform": "none", "eval_transform": "none", "data_workers": 0,
                    **kw})


def _dataset(root, train, test, db, seed=0):
  rng = np.random.default_rng(seed)
  return {split: _write_split(root, f"{split}.txt", rows, split, rng)
          for split, rows in (("train", train), ("test", test), ("database", db))}


ONE_HOT = np.eye(3, dtype=int)


def test_single_label_arrays_equal_written(tmp_path):
  train, test, db = ONE_HOT[[0, 1, 2, 1]], ONE_HOT[[2, 0]], ONE_HOT[[0, 0, 1, 2, 2]]
  px = _dataset(tmp_path, train, test, db)
  d = data_lib.load(_config(tmp_path))
  assert not d.multilabel and d.name == "listfile" and d.num_classes == 3
  assert d.input_shape == (SIZE, SIZE, 3) and d.input_dtype == np.uint8
  for split, key, rows in (("train", "train", train), ("query", "test", test),
                           ("db", "database", db)):
    x, y = d.eval_rows(split, np.arange(len(rows))), d.labels(split)
    np.testing.assert_array_equal(x, px[key])
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, rows.argmax(1))


def test_multilabel_follows_labels_not_name(tmp_path):
  rows = np.zeros((3, 21), int)
  rows[0, [1, 4]] = 1
  rows[1, 20] = 1
  rows[2, 3] = 1
  _dataset(tmp_path, rows, rows[1:], rows)
  d = data_lib.load(config_of(
      {"dataset": "nuswide", "data_dir": str(tmp_path), "image_size": SIZE}))
  assert d.multilabel and d.num_classes == 21
  for y, want in ((d.labels("train"), rows), (d.labels("query"), rows[1:]),
                  (d.labels("db"), rows)):
    assert y.dtype == np.uint8
    np.testing.assert_array_equal(y, want)
  # The same name with one-hot rows loads single-label, with a warning.
  _dataset(tmp_path, rows[1:], rows[1:], rows[1:])
  with pytest.warns(UserWarning, match="single-label, unlike the published lists"):
    d = data_lib.load(config_of(
        {"dataset": "nuswide", "data_dir": str(tmp_path), "image_size": SIZE}))
  assert not d.multilabel
  np.testing.assert_array_equal(d.labels("train"), [20, 3])


@pytest.mark.parametrize("line, message", [
    ("img/train_0.png 1 0", r"train.txt:2: expected a path and 3 labels, got 2 labels"),
    ("img/train_0.png 1 0 2", r"train.txt:2: label values must be 0 or 1, got '2'"),
    ("img/train_0.png 0 1 0", r"train.txt:2: img/train_0.png is a duplicate of line 1"),
])
def test_malformed_lines(tmp_path, line, message):
  _dataset(tmp_path, ONE_HOT[[0]], ONE_HOT[[1]], ONE_HOT[[2]])
  with open(tmp_path / "train.txt", "a") as f:
    f.write(line + "\n")
  with pytest.raises(data_lib.DataError, match=message):
    data_lib.load(_config(tmp_path))


def test_duplicates_allowed_with_warning(tmp_path):
  _dataset(tmp_path, ONE_HOT[[0]], ONE_HOT[[1]], ONE_HOT[[2]])
  with open(tmp_path / "train.txt", "a") as f:
    f.write("img/train_0.png 1 0 0\n")
  with pytest.warns(UserWarning, match="duplicate of line 1"):
    d = data_lib.load(_config(tmp_path, allow_duplicates=True))
  assert d.size("train") == 2


def test_missing_list_file_and_bad_sizes(tmp_path):
  _dataset(tmp_path, ONE_HOT[[0, 1]], ONE_HOT[[1]], ONE_HOT[[2, 0]])
  with pytest.raises(data_lib.DataError, match=r"database.txt: 2 entries, expected 3"):
    data_lib.load(_config(tmp_path, expected_sizes={"train": 2, "database": 3}))
  (tmp_path / "database.txt").unlink()
  with pytest.raises(data_lib.DataError, match=r"database.txt: list file not found"):
    data_lib.load(_config(tmp_path))
  with pytest.raises(data_lib.DataError, match="set num_classes"):
    data_lib.load(_config(tmp_path, num_classes=None))
  with pytest.raises(data_lib.DataError, match="is not a directory"):
    data_lib.load(_config(tmp_path / "absent"))


def test_undecodable_image_and_overlap_warning(tmp_path):
  _dataset(tmp_path, ONE_HOT[[0]], ONE_HOT[[1]], ONE_HOT[[2]])
  (tmp_path / "database.txt").write_text("img/test_0.png 0 1 0\n")
  with pytest.warns(UserWarning, match="1 query images are also in database.txt"):
    data_lib.load(_config(tmp_path))
  (tmp_path / "database.txt").write_text("img/database_0.png 0 0 1\nimg/empty.png 1 0 0\n")
  (tmp_path / "img/empty.png").write_bytes(b"")
  d = data_lib.load(_config(tmp_path))
  with pytest.raises(data_lib.DataError, match=r"database.txt:2: .*empty.png: cannot decode"):
    d.eval_rows("db", np.arange(2))
  (tmp_path / "img/test_0.png").write_bytes(b"not an image")
  with pytest.raises(data_lib.DataError, match=r"test.txt:1: .*img/test_0.png: cannot decode"):
    d.eval_rows("query", np.arange(1))


def test_random_crop_flip():
  images = jax.random.uniform(jax.random.key(0), (64, 6, 5, 2))
  aug = jax.jit(augment.random_crop_flip, static_argnames="pad")
  out = np.asarray(aug(jax.random.key(1), images, pad=2))
  assert out.shape == images.shape and out.dtype == np.float32
  padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)))
  flips, offsets = set(), set()
  for i in range(64):
    matches = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (False, True)
               if np.array_equal(out[i], (lambda c: c[:, ::-1] if f else c)(
                   padded[i, dy:dy + 6, dx:dx + 5]))]
    assert matches, f"image {i} is not a (flipped) crop of its padded input"
    flips.add(matches[0][2])
    offsets.add(matches[0][:2])
  assert flips == {False, True} and len(offsets) > 10
  np.testing.assert_array_equal(aug(jax.random.key(1), images, pad=2), out)


def test_missing_images_are_found_before_training(tmp_path):
  eye = np.eye(3, dtype=np.uint8)
  _dataset(tmp_path, eye, eye, np.concatenate([eye, eye]))
  config = _config(tmp_path)
  (tmp_path / "img" / "database_4.png").unlink()
  with pytest.raises(data_lib.DataError, match=r"\.txt:\d+: .+\.png does not exist \(1 of the "
                     r"\d+ listed images are missing; set skip_bad_images"):
    data_lib.load(config)
  config.skip_bad_images = True
  with pytest.warns(UserWarning, match="substituted by a constant image"):
    data_lib.load(config).close()


def _reference_parse(path, num_classes):
  """The line-by-line reading (``str.split``) the vectorised parser must match: (names, line
  numbers, uint8 (N, C) rows) or the DataError message of the first bad line."""
  names, lines, rows, seen = [], [], [], {}
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      parts = line.split()
      if not parts:
        continue
      if len(parts) - 1 != num_classes:
        return f"{path}:{lineno}: expected a path and {num_classes} labels, got {len(parts) - 1}"
      bad = [v for v in parts[1:] if v not in ("0", "1")]
      if bad:
        return f"{path}:{lineno}: label values must be 0 or 1, got {bad[0]!r}"
      if parts[0] in seen:
        return f"{path}:{lineno}: {parts[0]} is a duplicate of line {seen[parts[0]]}"
      seen[parts[0]] = lineno
      names.append(parts[0])
      lines.append(lineno)
      rows.append([v == "1" for v in parts[1:]])
  return names, lines, np.array(rows, np.uint8).reshape(-1, num_classes)


def _random_line(rng, i, classes, error=None):
  """A list-file line: mostly regular, sometimes with tabs, extra or leading spaces, CRLF, a
  blank line; ``error`` 9, 10, 11: a wrong count, a bad value or a repeated path."""
  row = (rng.random(classes) < 0.3).astype(int)
  name = f"d{rng.integers(3)}/im_{i}_1{'0' * int(rng.integers(4))}.jpg"
  kind = rng.integers(9) if error is None else error
  values = [str(v) for v in row]
  seps = [" "] * classes
  if kind == 1:
    seps = [rng.choice([" ", "\t", "  "]) for _ in range(classes)]
  elif kind == 2:
    return "   \n" if rng.random() < 0.5 else "\n"
  elif kind == 9:
    values = values[:-1]
  elif kind == 10:
    values[int(rng.integers(classes))] = rng.choice(["2", "01", "x", "10"])
  elif kind == 11:
    name = "d0/im_0_1.jpg"
  text = name + "".join(s + v for s, v in zip(seps, values))
  if kind == 3:
    text = " " + text
  return text + ("\r\n" if kind == 4 else " \n" if kind == 5 else "\n")


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("block", [64, 1 << 24])
def test_vectorised_parse_equals_line_by_line(tmp_path, monkeypatch, seed, block):
  """Random files (regular and irregular lines, blocks of 64 bytes or one block), with and
  without errors: the same rows, line numbers and labels, or the same first error."""
  monkeypatch.setattr(data_lib.listfile, "_BLOCK", block)
  rng = np.random.default_rng(seed)
  classes = int(rng.integers(1, 7))
  error = 9 + seed // 2 if seed % 2 else None  # seeds 1, 3, 5: each kind of error
  text = "".join(_random_line(rng, i, classes, error if rng.random() < 0.05 else None)
                 for i in range(200))
  if seed == 2:
    text = text.rstrip("\n")  # no newline after the last line
  path = tmp_path / "list.txt"
  path.write_text(text, newline="")
  want = _reference_parse(path, classes)
  if isinstance(want, str):
    with pytest.raises(data_lib.DataError) as e:
      data_lib.listfile.parse_list(str(path), classes)
    assert str(e.value).startswith(want)
    return
  names, lines, labels = data_lib.listfile.parse_list(str(path), classes)
  assert [n.decode() for n in names] == want[0]
  np.testing.assert_array_equal(lines, want[1])
  np.testing.assert_array_equal(labels.dense(classes), want[2])
  assert labels.indices.dtype == np.int32 and lines.dtype == np.int32


def test_single_label_ids_and_multilabel_class_limit(tmp_path):
  rows = np.zeros((2, 1100), int)
  rows[0, 1050] = rows[1, 7] = 1
  _dataset(tmp_path, rows, rows, rows)
  d = data_lib.load(_config(tmp_path, num_classes=1100))
  np.testing.assert_array_equal(d.labels("train"), [1050, 7])
  rows[1, 8] = 1
  _dataset(tmp_path, rows, rows, rows)
  with pytest.raises(data_lib.DataError, match="multi-label data with 1100 classes; at most 1024"):
    data_lib.load(_config(tmp_path, num_classes=1100))


def test_labels_from_ids_and_take_equal_numpy_dense_rows():
  """Labels.take (rows in any order, repeated, a slice, none) and Labels.from_ids against the
  dense multi-hot rows numpy indexes directly; rows with zero and several 1s included."""
  rng = np.random.default_rng(0)
  dense = rng.random((40, 7)) < 0.3
  rows, classes = np.nonzero(dense)
  labels = data_lib.listfile.Labels(
      np.searchsorted(rows, np.arange(41)).astype(np.int64), classes.astype(np.int32))
  np.testing.assert_array_equal(labels.dense(7), dense)
  assert (labels.counts == 0).any() and (labels.counts > 1).any()
  for take in (rng.permutation(40)[:25], np.arange(10, 31), [3, 3, 0], np.zeros(0, int)):
    taken = labels.take(take)
    assert taken.indptr.dtype == np.int64 and taken.indices.dtype == np.int32
    np.testing.assert_array_equal(taken.dense(7), dense[np.asarray(take, int)])
  ids = rng.integers(0, 7, 30)
  single = data_lib.listfile.Labels.from_ids(ids)
  assert single.indptr.dtype == np.int64 and single.indices.dtype == np.int32
  np.testing.assert_array_equal(single.dense(7), np.eye(7, dtype=bool)[ids])
  np.testing.assert_array_equal(single.take([29, 2]).dense(7), np.eye(7, dtype=bool)[ids[[29, 2]]])
