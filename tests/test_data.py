import gzip

import numpy as np
import pytest

from conftest import config_of, write_idx
from orthohash_jax import config_base, data
from orthohash_jax.data import idx


def test_read_idx_raw_and_gz(tmp_path):
  a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
  write_idx(str(tmp_path / "a.gz"), a)
  (tmp_path / "a").write_bytes(gzip.decompress((tmp_path / "a.gz").read_bytes()))
  np.testing.assert_array_equal(idx.read_idx(str(tmp_path / "a.gz")), a)
  np.testing.assert_array_equal(idx.read_idx(str(tmp_path / "a")), a)
  (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01")
  with pytest.raises(data.DataError, match="bad magic"):
    idx.read_idx(str(tmp_path / "bad"))


def test_fashion_protocol_on_generated_files(tmp_path):
  rng = np.random.default_rng(0)
  images = {"train": rng.integers(0, 256, (60, 28, 28)), "t10k": rng.integers(0, 256, (40, 28, 28))}
  labels = {"train": np.arange(60) % 10, "t10k": (np.arange(40) * 3) % 10}
  for split in images:
    write_idx(str(tmp_path / f"{split}-images-idx3-ubyte.gz"), images[split])
    write_idx(str(tmp_path / f"{split}-labels-idx1-ubyte.gz"), labels[split])
  config = config_base.base_config()
  config.update(dataset="fashion_mnist", data_dir=str(tmp_path), num_query_per_class=3,
                num_train_per_class=4)
  d = data.load(config)
  all_x = np.concatenate([images["train"], images["t10k"]]).reshape(100, 28, 28, 1)
  all_y = np.concatenate([labels["train"], labels["t10k"]])
  query, train, db = [], [], []
  for c in range(10):  # independent statement of the protocol
    perm = np.random.default_rng(0).permutation(np.flatnonzero(all_y == c))
    query += list(perm[:3])
    train += list(perm[3:7])
    db += list(perm[3:])
  for split, rows in (("query", query), ("train", train), ("db", db)):
    rows = np.sort(rows)
    np.testing.assert_array_equal(getattr(d, f"{split}_x"), all_x[rows])  # uint8, / 255 on device
    np.testing.assert_array_equal(getattr(d, f"{split}_y"), all_y[rows])
  assert len(d.query_x) == 30 and len(d.train_x) == 40 and len(d.db_x) == 70


def test_digits_protocol():
  d = data.load(config_of({"dataset": "digits"}))
  assert len(d.query_x) == 300 and len(d.db_x) == 1497
  np.testing.assert_array_equal(np.bincount(d.query_y), [30] * 10)
  assert d.train_x is d.db_x or np.array_equal(d.train_x, d.db_x)
  assert 0.0 <= d.db_x.min() and d.db_x.max() <= 1.0
