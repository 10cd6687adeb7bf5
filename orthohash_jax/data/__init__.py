"""Retrieval datasets as in-memory arrays, and the split protocols of hashing papers.

Every source returns a ``RetrievalData``: float32 inputs and labels for the training set, the
queries and the database. Labels are int32 (N,) class ids (single-label) or uint8 (N, C)
multi-hot rows (multi-label); ``multilabel`` is derived from the label arrays, never from a
dataset name. ``load(config)`` dispatches on ``config.dataset``.
"""
import dataclasses
import importlib
import numpy as np


class DataError(ValueError):
  """Bad or missing data: reported as one line with a non-zero exit by ``main``."""


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

  @property
  def input_shape(self):
    return self.train_x.shape[1:]

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


SOURCES = {
    "digits": "orthohash_jax.data.digits",
    "fashion_mnist": "orthohash_jax.data.idx",
    "imagenet100": "orthohash_jax.data.listfile",
    "nuswide": "orthohash_jax.data.listfile",
    "coco": "orthohash_jax.data.listfile",
    "listfile": "orthohash_jax.data.listfile",
    "cifar10": "orthohash_jax.data.tfds_source",
    "gldv2": "orthohash_jax.data.descriptors",
    "synthetic_descriptors": "orthohash_jax.data.synthetic",
}


def load(config) -> RetrievalData:
  """Loads ``config.dataset``: each source module has ``load(config) -> RetrievalData``."""
  if config.dataset not in SOURCES:
    raise DataError(f"unknown dataset {config.dataset!r}; known: {sorted(SOURCES)}")
  return importlib.import_module(SOURCES[config.dataset]).load(config)
