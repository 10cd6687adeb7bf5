"""Retrieval datasets, the input interface of training and evaluation, and split protocols.

Input interface (what ``run`` and ``evaluation`` use; they never look at a source's type):
  name, num_classes, multilabel, input_shape (per-example shape fed to the device),
  input_dtype (float32 arrays, or uint8 images normalised on the device with ``mean_std``, see
  ``normalization_table``),
  protocol ("category": labels decide relevance; "gldv2": ground-truth lists, see descriptors),
  size(split), labels(split) (whole split, host), train_rows(indices (S, b), steps (S,),
  positions (b,)) -> x (S, b, ...) with any host-side augmentation drawn from (seed, step,
  position), eval_rows(split, indices (n,)) -> x (n, ...), skipped (list of unreadable inputs
  replaced), close(). Splits: "train", "query", "db".

``RetrievalData`` implements it over in-memory arrays: float32 inputs; labels int32 (N,) class
ids (single-label) or uint8 (N, C) multi-hot rows (multi-label); ``multilabel`` is derived from
the label arrays, never from a dataset name. ``load(config)`` dispatches on ``config.dataset``.

Training order: epoch e visits the training set in ``np.random.default_rng([seed, e])``
permutation order, in batches of ``batch_size``, the incomplete last batch dropped
(``step_indices``), so the batch of a step depends only on (seed, step); ``host_batch`` gives
this process's rows of them.
"""
import dataclasses
import importlib

import numpy as np

from orthohash_jax import parallel


class DataError(ValueError):
  """Bad or missing data: reported as one line with a non-zero exit by ``main``."""


# (mean, std) per channel in pixel units [0, 255] for uint8 inputs
UNIT_MEAN_STD = (np.zeros(1, np.float32), np.full(1, 255.0, np.float32))  # x / 255, grayscale
IMAGENET_MEAN_STD = (np.array([0.485, 0.456, 0.406], np.float32) * 255,
                     np.array([0.229, 0.224, 0.225], np.float32) * 255)


def normalization_table(mean_std) -> np.ndarray:
  """float32 (256, C): row v = (v - mean) / std computed with numpy. The device normalises uint8
  inputs by looking up ``table[x, channel]``, which equals host numpy ``(x - mean) / std`` bit
  for bit (XLA would compile ``(x - mean) / std`` as a multiplication by 1 / std, 1 ulp off for
  about half of the 256 values when std = 255)."""
  mean, std = (np.asarray(a, np.float32) for a in mean_std)
  return (np.arange(256, dtype=np.float32)[:, None] - mean) / std


@dataclasses.dataclass
class RetrievalData:
  """Train / query / database splits; x float32 (N, ...), y int32 (N,) or uint8 (N, C)."""
  name: str
  num_classes: int
  train_x: np.ndarray
  train_y: np.ndarray
  query_x: np.ndarray
  query_y: np.ndarray
  db_x: np.ndarray
  db_y: np.ndarray

  @property
  def multilabel(self) -> bool:
    return self.train_y.ndim == 2

  mean_std: tuple = None  # uint8 inputs: per-channel (mean, std) of the device normalisation
  protocol = "category"

  @property
  def input_shape(self):
    return self.train_x.shape[1:]

  @property
  def input_dtype(self):
    return self.train_x.dtype

  def size(self, split: str) -> int:
    return len(getattr(self, f"{split}_y"))

  def labels(self, split: str) -> np.ndarray:
    return getattr(self, f"{split}_y")

  def train_rows(self, indices, steps, positions) -> np.ndarray:
    """Inputs (S, b, ...) of training rows ``indices`` (S, b); in-memory data is augmented on
    the device (``augment``), so ``steps`` and ``positions`` are unused."""
    del steps, positions
    return self.train_x[indices]

  def eval_rows(self, split: str, indices) -> np.ndarray:
    return getattr(self, f"{split}_x")[indices]

  @property
  def skipped(self) -> list:
    """Unreadable inputs replaced so far (streaming sources); arrays have none."""
    return []

  def close(self):
    pass

  def min_label(self, split: str) -> int:
    """Smallest valid class id of a split (subclasses may allow -1 for unknown)."""
    del split
    return 0

  def __post_init__(self):
    for split in ("train", "query", "db"):
      x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
      if len(x) != len(y):
        raise DataError(f"{self.name}: {split} has {len(x)} inputs but {len(y)} labels")
      if len(x) == 0:
        raise DataError(f"{self.name}: {split} split is empty")
      if y.ndim == 2 and y.shape[1] != self.num_classes:
        raise DataError(f"{self.name}: {split} labels have {y.shape[1]} columns, "
                        f"expected {self.num_classes}")
      low = self.min_label(split)
      if y.ndim == 1 and (y.min() < low or y.max() >= self.num_classes):
        raise DataError(f"{self.name}: {split} labels outside [{low}, {self.num_classes})")


def per_class_split(labels, sizes, seed: int = 0):
  """Splits indices class by class: each class's indices (ascending) are permuted with
  ``np.random.default_rng(seed).permutation`` (a fresh generator for every class) and cut into
  consecutive parts of ``sizes`` (None = the rest).

  Returns one int64 index array per part, each sorted ascending.
  """
  labels = np.asarray(labels)
  parts = [[] for _ in sizes]
  for c in np.unique(labels):
    idx = np.random.default_rng(seed).permutation(np.flatnonzero(labels == c))
    start = 0
    for part, size in zip(parts, sizes):
      stop = len(idx) if size is None else start + size
      if stop > len(idx):
        raise DataError(f"class {c} has {len(idx)} items, fewer than the split needs "
                        f"({[s for s in sizes if s is not None]})")
      part.append(idx[start:stop])
      start = stop
  return [np.sort(np.concatenate(p)) for p in parts]


def step_indices(seed: int, num_train: int, batch_size: int, start: int, stop: int) -> np.ndarray:
  """Training-set indices int64 (stop - start, batch_size) of global steps [start, stop)."""
  steps_per_epoch = num_train // batch_size
  rows, perms = [], {}
  for step in range(start, stop):
    epoch, j = divmod(step, steps_per_epoch)
    if epoch not in perms:
      perms[epoch] = np.random.default_rng([seed, epoch]).permutation(num_train)
    rows.append(perms[epoch][j * batch_size:(j + 1) * batch_size])
  return np.stack(rows)


def host_batch(config, data, start: int, stop: int, train_labels=None, mesh=None):
  """This process's inputs (S, b, ...) and labels (S, b[, C]) of the global steps [start, stop):
  the rows its devices hold (``parallel.process_rows`` of ``mesh``, None: the config's mesh) of
  each global batch of ``step_indices``.
  ``train_labels``: ``data.labels("train")``, passed to avoid fetching them again."""
  if mesh is None:
    mesh = parallel.make_mesh(config.num_devices, config.model_axis)
  rows = parallel.process_rows(mesh, config.batch_size)
  idx = step_indices(config.seed, data.size("train"), config.batch_size, start, stop)[:, rows]
  labels = data.labels("train") if train_labels is None else train_labels
  return data.train_rows(idx, np.arange(start, stop), rows), labels[idx]


SOURCES = {
    "digits": "orthohash_jax.data.digits",
    "fashion_mnist": "orthohash_jax.data.idx",
    "imagenet100": "orthohash_jax.data.streaming",
    "nuswide": "orthohash_jax.data.streaming",
    "coco": "orthohash_jax.data.streaming",
    "listfile": "orthohash_jax.data.streaming",
    "arrayrecord": "orthohash_jax.data.arrayrecord",
    "tfds": "orthohash_jax.data.tfds_source",
    "cifar10": "orthohash_jax.data.tfds_source",
    "gldv2": "orthohash_jax.data.descriptors",
    "synthetic_descriptors": "orthohash_jax.data.synthetic",
}


def load(config) -> RetrievalData:
  """Loads ``config.dataset`` (a validated config): each source module has
  ``load(config) -> RetrievalData``."""
  return importlib.import_module(SOURCES[config.dataset]).load(config)
