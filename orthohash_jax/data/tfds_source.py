"""CIFAR-10 from TFDS through ``tfds.data_source`` (random access, no TensorFlow needed to read).

Protocol (the "cifar10-1" split of the hashing papers, R = all 59,000): the TFDS train (50,000)
and test (10,000) splits are merged, train first, into 60,000 images. ``per_class_split`` with
``split_seed`` cuts each class into ``num_query_per_class`` (100) queries,
``num_train_per_class`` (500) training images and the rest; the database is the training images
plus the rest (59,000), so training is a subset of the database.

Arrays: x float32 (N, 32, 32, 3) = uint8 pixels / 255; y int32 (N,) class ids.

Config keys: data_dir (TFDS data directory), download (True), num_query_per_class,
num_train_per_class, split_seed. TFDS data sources need the ``array_record`` file format: a
directory prepared as TFRecord by older TFDS versions must be rebuilt.
"""
import numpy as np

from orthohash_jax.data import DataError, RetrievalData, per_class_split


def _read(source):
  images, labels = [], []
  for example in source:
    images.append(np.asarray(example["image"]))
    labels.append(example["label"])
  return np.stack(images), np.asarray(labels, np.int32)


def load(config) -> RetrievalData:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_dir = config.data_dir
  try:
    sources = tfds.data_source("cifar10", split=["train", "test"], data_dir=data_dir,
                               download=config.download)
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"cifar10: cannot open the TFDS data source in {data_dir}: "
                    f"{str(e).splitlines()[0]}") from e
  parts = [_read(s) for s in sources]
  x = np.concatenate([p[0] for p in parts]).astype(np.float32) / 255.0
  y = np.concatenate([p[1] for p in parts])
  query, train, rest = per_class_split(
      y, (config.num_query_per_class, config.num_train_per_class, None), seed=config.split_seed)
  db = np.sort(np.concatenate([train, rest]))
  return RetrievalData("cifar10", 10, x[train], y[train], x[query], y[query], x[db], y[db])
