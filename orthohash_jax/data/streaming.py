"""Streaming image sources: decode on demand, cache nothing.

``ImageSource`` implements the input interface shared with the in-memory data over encoded
images; a subclass only says where a split's images are (``_open``): ``ImageListSource`` (here,
list files), ``arrayrecord.ArrayRecordSource`` (ArrayRecord shards) and
``tfds_source.TfdsSource`` (TFDS data sources). The interface:
- ``name``, ``num_classes``, ``multilabel``; ``input_shape`` (H, W, C) and ``input_dtype``
  (uint8); ``mean_std``: per-channel (mean, std) float32 in pixel units [0, 255], the device
  computes ``(x - mean) / std``.
- ``size(split)``, ``labels(split)`` (int32 (N,) or uint8 (N, C), the whole split) for split in
  ("train", "query", "db") = train.txt, test.txt, database.txt.
- ``train_rows(indices (S, b), steps (S,), positions (b,))`` -> uint8 (S, b, H, W, C): row
  ``indices[s, p]`` of the training list through the training transform, its randomness from
  ``np.random.default_rng([seed, steps[s], positions[p]])`` only (``positions`` are positions in
  the global batch), so a batch does not depend on the number of workers or processes.
- ``eval_rows(split, indices)`` -> uint8 (n, H, W, C) through the deterministic eval transform.
- ``close()`` stops the workers.

Device normalisation: by ``data.normalization_table`` (bit-equal to host numpy).

List files are parsed and validated by ``listfile.read_lists`` (same keys, same errors).

Workers: ``data_workers`` threads of one ``ThreadPoolExecutor`` (0: decode in the calling
thread); a batch is one task per worker, each taking the batch's images in order and writing
them into the preallocated batch (a task per image cost ~0.07 ms of CPU per image). Pillow
releases the GIL while it decodes and resamples, so threads run in parallel without pickling
images between processes (``experiments/bench_input.py`` compares with a torch DataLoader of
worker processes).

Bad images: a missing or undecodable file (or, for transform "none", one whose size differs
from the first training image) raises ``DataError`` naming list file, line and path; errors
are raised in row order when the batch is collected (the first bad row's), and a worker takes
no further image of that batch once a failure is known, so no worker is left hanging. With
``skip_bad_images`` the image is replaced by a constant one (every pixel the rounded
normalisation mean, so about 0 after normalisation), a warning is issued once per file, and
``skipped`` lists the distinct bad rows met so far.

Memory: the list-file rows (paths, line numbers, labels) stay in memory; decoded pixels exist
only in the batches returned (and the one being decoded).
"""
import concurrent.futures
import os
import threading
import warnings

import numpy as np
from PIL import Image

from orthohash_jax.data import IMAGENET_MEAN_STD, UNIT_MEAN_STD, DataError, listfile
from orthohash_jax.data import transforms as transforms_lib

SPLITS = ("train", "query", "db")
# (mean, std) in pixel units: ImageNet statistics (RGB), or x / 255 for any channel count.
PIXEL_NORMS = {
    "imagenet": lambda c: IMAGENET_MEAN_STD,
    "unit": lambda c: tuple(np.repeat(a, c) for a in UNIT_MEAN_STD),
}
BAD_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class ImageSource:
  """The streaming input interface over encoded images (see module docstring); a subclass
  says where the images of a split are (``_open``)."""

  input_dtype = np.dtype(np.uint8)
  protocol = "category"

  def __init__(self, name, num_classes, labels, multilabel, train_transform, eval_transform,
               seed: int, data_workers: int, skip_bad_images: bool, mean_std):
    """``labels`` maps "train"/"query"/"db" to ``listfile.Labels``; transforms are
    ``transforms.Transform``."""
    self.name, self.num_classes, self.multilabel = name, num_classes, multilabel
    self._seed = int(seed)
    self._train_transform, self._eval_transform = train_transform, eval_transform
    self._labels = {s: listfile.to_labels(labels[s], multilabel, num_classes) for s in SPLITS}
    self.mean_std = mean_std
    self._skip = bool(skip_bad_images)
    self._skipped = set()
    self._lock = threading.Lock()
    self.input_shape = self._shape(train_transform)
    if self._shape(eval_transform) != self.input_shape:
      raise ValueError(f"train transform gives {self.input_shape} but eval transform gives "
                       f"{self._shape(eval_transform)}")
    self._fill = np.broadcast_to(np.round(mean_std[0]).astype(np.uint8), self.input_shape)
    self._workers = int(data_workers)
    self._pool = (concurrent.futures.ThreadPoolExecutor(data_workers, "decode")
                  if data_workers > 0 else None)

  def _open(self, split: str, rows) -> list:
    """(what ``Image.open`` takes: a path or a file object, "where" text naming the row for
    errors) of each of ``rows`` of ``split``."""
    raise NotImplementedError

  def _shape(self, transform):
    if transform.kind != "none":
      return (transform.size, transform.size, transform.channels)
    file, where = self._open("train", [0])[0]
    try:
      with Image.open(file) as img:
        return (img.size[1], img.size[0], transform.channels)
    except BAD_IMAGE_ERRORS as e:
      raise DataError(f"{where}: cannot read it to find the input shape: {e}") from None

  @property
  def skipped(self):
    """Distinct bad rows replaced so far, as sorted "where" strings (list file:line: path)."""
    with self._lock:
      return sorted(self._skipped)

  def size(self, split: str) -> int:
    return len(self._labels[split])

  def labels(self, split: str) -> np.ndarray:
    return self._labels[split]

  def _decode_into(self, out, k, file, where, transform, rng_key):
    try:
      with Image.open(file) as img:
        rng = np.random.default_rng(rng_key) if transform.random else None
        x = transform(img, rng)
      if x.shape != self.input_shape:
        raise ValueError(f"image shape {x.shape[:2]} differs from the first training image's "
                         f"{self.input_shape[:2]}")
      out[k] = x
    except BAD_IMAGE_ERRORS as e:
      if not self._skip:
        raise DataError(f"{where}: cannot decode: {e} (set skip_bad_images to substitute "
                        f"a constant image)") from None
      with self._lock:
        first = where not in self._skipped
        self._skipped.add(where)
      if first:
        warnings.warn(f"{where}: skipped ({e})")
      out[k] = self._fill

  def _decode(self, out, split, rows, transform, rng_keys):
    """Decodes ``rows`` of ``split`` (rng key per row, or None) into the rows of ``out``;
    returns ``out``, or raises the first error in row order (rows not yet taken when a
    failure is known are skipped)."""
    flat = out.reshape((-1,) + self.input_shape)
    tasks = [(k, file, where, transform, key) for k, ((file, where), key)
             in enumerate(zip(self._open(split, rows), rng_keys))]
    if self._pool is None:
      for t in tasks:
        self._decode_into(flat, *t)
      return out
    # One pool task per worker taking rows in order from a shared iterator (``next`` on a list
    # iterator is atomic): a row is only taken while no error is known, so every row before a
    # failed one has been taken, and finishes, before the failure stops the workers.
    todo, failed = iter(tasks), []

    def work():
      while not failed:
        t = next(todo, None)
        if t is None:
          return
        try:
          self._decode_into(flat, *t)
        except BaseException as e:  # pylint: disable=broad-exception-caught
          failed.append((t[0], e))
    for f in [self._pool.submit(work) for _ in range(min(self._workers, len(tasks)))]:
      f.result()
    if failed:
      raise min(failed, key=lambda row_error: row_error[0])[1]
    return out

  def train_rows(self, indices, steps, positions) -> np.ndarray:
    indices = np.asarray(indices)
    steps, positions = np.asarray(steps), np.asarray(positions)
    if indices.ndim != 2 or indices.shape != (len(steps), len(positions)):
      raise ValueError(f"indices {indices.shape} must be (len(steps), len(positions)) = "
                       f"({len(steps)}, {len(positions)})")
    self._check_rows("train", indices)
    out = np.empty(indices.shape + self.input_shape, np.uint8)
    keys = [[self._seed, int(s), int(p)] for s in steps for p in positions]
    return self._decode(out, "train", [int(i) for i in indices.reshape(-1)],
                        self._train_transform, keys)

  def eval_rows(self, split: str, indices) -> np.ndarray:
    indices = np.asarray(indices)
    if indices.ndim != 1:
      raise ValueError(f"eval indices must be 1-D, got shape {indices.shape}")
    self._check_rows(split, indices)
    out = np.empty(indices.shape + self.input_shape, np.uint8)
    return self._decode(out, split, [int(i) for i in indices], self._eval_transform,
                        [None] * len(indices))

  def _check_rows(self, split, indices):
    if split not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if indices.size and (indices.min() < 0 or indices.max() >= self.size(split)):
      raise ValueError(f"{split} row indices must lie in [0, {self.size(split)})")

  def close(self):
    if self._pool is not None:
      self._pool.shutdown(wait=True, cancel_futures=True)
      self._pool = None


class ImageListSource(ImageSource):
  """Streaming source over train.txt / test.txt / database.txt (see module docstring)."""

  def __init__(self, name, num_classes, root, parsed, multilabel, *args):
    """``parsed`` maps "train"/"query"/"db" to (list path, names, line numbers, ``Labels``) as
    returned by ``listfile.read_lists``; ``args``: those of ``ImageSource`` after
    ``multilabel``."""
    self._root = root
    self._lists = {s: parsed[s][:3] for s in SPLITS}
    super().__init__(name, num_classes, {s: parsed[s][3] for s in SPLITS}, multilabel, *args)

  def _open(self, split, rows):
    path, names, lines = self._lists[split]
    files = [os.path.join(self._root, os.fsdecode(names[r])) for r in rows]
    return [(f, f"{path}:{lines[r]}: {f}") for f, r in zip(files, rows)]


def transforms_from_config(config):
  """(train Transform, eval Transform) from the config keys listed in ``load``."""
  common = dict(size=config.image_size, mode=config.image_mode, draft=config.jpeg_draft)
  train = transforms_lib.Transform(config.train_transform, resize=config.train_resize,
                                   **common)
  evaluate = transforms_lib.Transform(config.eval_transform,
                                      resize=config.eval_resize or config.image_size,
                                      **common)
  return train, evaluate


def load(config) -> ImageListSource:
  """Streaming source of a list-file dataset. Keys: those of ``listfile.read_lists``
  (dataset, data_dir, num_classes, expected_sizes, allow_duplicates) and seed, data_workers,
  skip_bad_images, image_size, image_mode, train_transform, train_resize, eval_transform,
  eval_resize, jpeg_draft, pixel_norm ("imagenet" or "unit")."""
  name, num_classes, root, parsed, multilabel = listfile.read_lists(config)
  train, evaluate = transforms_from_config(config)
  mean_std = PIXEL_NORMS[config.pixel_norm](train.channels)
  return ImageListSource(name, num_classes, root, parsed, multilabel, train, evaluate,
                         config.seed, config.data_workers, config.skip_bad_images, mean_std)
