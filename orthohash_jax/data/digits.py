"""scikit-learn's bundled 8x8 digits (1,797 images, 10 classes): the embedded default dataset.

Protocol: pixels / 16 flattened to 64 float32; per class, the first ``num_query_per_class`` (30)
of the permuted indices are queries and the rest the database; the training set is the database.
"""
import numpy as np

from orthohash_jax.data import RetrievalData, per_class_split


def load(config) -> RetrievalData:
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  x = (digits.data / 16.0).astype(np.float32)
  y = digits.target.astype(np.int32)
  query, db = per_class_split(y, (config.num_query_per_class, None), seed=config.split_seed)
  return RetrievalData("digits", 10, x[db], y[db], x[query], y[query], x[db], y[db])
