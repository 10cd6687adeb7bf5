"""IDX files (the MNIST / Fashion-MNIST format), gzipped or raw, and the Fashion-MNIST protocol.

IDX layout: big-endian header ``0 0 <dtype code> <ndim>``, ``ndim`` uint32 sizes, then the data.
Only unsigned-byte data (code 0x08) is used by these datasets and accepted here.

Fashion-MNIST protocol (``config.dataset = "fashion_mnist"``): train (60k) and test (10k) merged,
train first (70,000); per class the indices (ascending) are permuted with
``np.random.default_rng(0).permutation``; the first 100 are queries (1,000), the rest the
database (69,000), and the first 500 of each class's database part the training set (5,000).
Images stay uint8 (N, 28, 28, 1) in memory; the device divides by 255 (``UNIT_MEAN_STD``), as
for the same images streamed from PNG files (``write_listfiles``).
"""
import gzip
import os

import numpy as np

from orthohash_jax.data import UNIT_MEAN_STD, DataError, RetrievalData, per_class_split

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
PROTOCOL = {"num_query_per_class": 100, "num_train_per_class": 500}  # config keys of the split
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: str) -> np.ndarray:
  """Reads an unsigned-byte IDX file (``.gz`` or raw) into a uint8 array of its declared shape."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    raise DataError(f"cannot read IDX file {path}: {e}") from None
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
    raise DataError(f"{path} is not an IDX file (bad magic number)")
  if raw[2] != 0x08:
    raise DataError(f"{path}: only unsigned-byte IDX data is supported, got type 0x{raw[2]:02x}")
  ndim = raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataError(f"{path}: truncated IDX header")
  shape = tuple(int(s) for s in np.frombuffer(raw[4:header], ">u4"))
  if len(raw) - header != int(np.prod(shape)):
    raise DataError(f"{path}: header declares shape {shape} ({int(np.prod(shape))} bytes) but the "
                    f"file holds {len(raw) - header} data bytes")
  return np.frombuffer(raw[header:], np.uint8).reshape(shape)


def find_file(data_dir: str, stem: str) -> str:
  for name in (stem + ".gz", stem):
    path = os.path.join(data_dir, name)
    if os.path.exists(path):
      return path
  raise DataError(f"missing {stem}[.gz] in {data_dir} (install the Debian package "
                  "dataset-fashion-mnist or set --config.data_dir)")


def read_split(data_dir: str, split: str):
  """Images uint8 (N, 28, 28) and labels uint8 (N,) of ``split`` ("train" or "test")."""
  images_stem, labels_stem = FILES[split]
  images = read_idx(find_file(data_dir, images_stem))
  labels = read_idx(find_file(data_dir, labels_stem))
  if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
    raise DataError(f"{data_dir} {split}: images {images.shape} and labels {labels.shape} "
                    "do not match")
  return images, labels


def read_protocol(config):
  """The Fashion-MNIST protocol on the IDX files of ``config.data_dir``.

  Returns (images uint8 (70000, 28, 28), labels int32 (70000,), train, query, db) where the
  last three are ascending int64 indices into the merged train+test arrays.
  """
  data_dir = config.data_dir or DEFAULT_DIR
  if not os.path.isdir(data_dir):
    raise DataError(f"data directory {data_dir} does not exist (install the Debian package "
                    "dataset-fashion-mnist or set --config.data_dir)")
  parts = [read_split(data_dir, s) for s in ("train", "test")]
  images = np.concatenate([p[0] for p in parts])
  y = np.concatenate([p[1] for p in parts]).astype(np.int32)
  if y.max() >= 10:
    raise DataError(f"{data_dir}: labels must lie in [0, 10), found {y.max()}")
  # The training items are the first ones of each class's database part, so the database is
  # the union of the training part and the rest.
  query, train, rest = per_class_split(
      y, (config.num_query_per_class, config.num_train_per_class, None), seed=config.split_seed)
  return images, y, train, query, np.sort(np.concatenate([train, rest]))


def load(config) -> RetrievalData:
  images, y, train, query, db = read_protocol(config)
  x = images[..., None]  # uint8 (N, 28, 28, 1), x / 255 on the device as for image files
  return RetrievalData("fashion_mnist", 10, x[train], y[train], x[query], y[query], x[db], y[db],
                       mean_std=UNIT_MEAN_STD)
