"""CIFAR-10 through ``tfds.data_source`` under ``tfds.testing.mock_data`` (no TensorFlow)."""
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import ROOT, config_of
from orthohash_jax import config_base
from orthohash_jax import data as data_lib


def _config(**kw):
  return config_of({"dataset": "cifar10", "data_dir": "/nonexistent", **kw})


def _paper_config():
  """configs/cifar10.py: the paper protocol (100 queries and 500 training images per class)."""
  return config_base.load_config_file(os.path.join(ROOT, "configs", "cifar10.py"))


def _fake_cifar(sizes, shape=(4, 4, 3)):
  """Per split a list of examples whose first pixel encodes (split, index); balanced labels."""
  splits = {}
  for s, (name, n) in enumerate(sizes.items()):
    images = np.zeros((n,) + shape, np.uint8)
    images[:, 0, 0, 0] = s
    images[:, 0, 0, 1] = np.arange(n) // 256
    images[:, 0, 0, 2] = np.arange(n) % 256
    labels = np.arange(n) % 10
    splits[name] = [{"image": im, "label": np.int64(l), "id": f"{name}_{i}"}
                    for i, (im, l) in enumerate(zip(images, labels))]

  def as_data_source(self, split, **kwargs):
    del self, kwargs
    return [splits[s] for s in split] if isinstance(split, list) else splits[split]
  return as_data_source


def test_paper_protocol_sizes_and_order():
  with tfds.testing.mock_data(as_data_source_fn=_fake_cifar({"train": 50000, "test": 10000})):
    d = data_lib.load(_paper_config())
  assert (len(d.query_x), len(d.train_x), len(d.db_x)) == (1000, 5000, 59000)
  for y in (d.query_y, d.train_y, d.db_y):
    assert y.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(d.query_y), [100] * 10)
  np.testing.assert_array_equal(np.bincount(d.train_y), [500] * 10)
  # Decode (split, index) back into the merged index: train first, then test.
  def merged_index(x):
    px = np.rint(x[:, 0, 0] * 255).astype(int)
    return px[:, 0] * 50000 + px[:, 1] * 256 + px[:, 2]
  q, t, db = merged_index(d.query_x), merged_index(d.train_x), merged_index(d.db_x)
  labels = np.arange(60000) % 10
  labels[50000:] = np.arange(10000) % 10
  query_ref, db_ref = data_lib.per_class_split(labels, (100, None), seed=0)
  np.testing.assert_array_equal(q, query_ref)
  np.testing.assert_array_equal(db, db_ref)
  assert set(t) <= set(db) and not set(q) & set(db)
  np.testing.assert_array_equal(d.train_y, labels[t])
  assert d.db_x.dtype == np.float32 and d.db_x.max() <= 1.0


def test_default_mock_without_tensorflow():
  with pytest.raises(ImportError):
    import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  with tfds.testing.mock_data(num_examples=60, policy=tfds.testing.MockPolicy.USE_CODE):
    train, test = tfds.data_source("cifar10", split=["train", "test"])
    images = np.stack([np.asarray(ex["image"]) for ex in list(train) + list(test)])
    labels = np.array([ex["label"] for ex in list(train) + list(test)])
    d = data_lib.load(_config(num_query_per_class=1, num_train_per_class=2))
  assert d.train_x.shape[1:] == (32, 32, 3) and d.train_x.dtype == np.float32
  query, train_idx, rest = data_lib.per_class_split(labels, (1, 2, None))
  np.testing.assert_array_equal(d.query_x, images[query] / np.float32(255))
  np.testing.assert_array_equal(d.train_y, labels[train_idx])
  assert len(d.db_x) == 120 - len(query)


def test_unavailable_source_is_a_data_error(tmp_path):
  with pytest.raises(data_lib.DataError, match="cifar10: cannot open the TFDS data source"):
    data_lib.load(_config(data_dir=str(tmp_path), download=False))
