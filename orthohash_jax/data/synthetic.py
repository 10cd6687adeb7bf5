"""Synthetic global descriptors at GLDv2 sizes, for scale tests where the real files are absent.

``config.dataset = "synthetic_descriptors"``: ``num_classes`` (default 81,313) random unit class
means in ``descriptor_dim`` (2,048) dimensions; each item is its class mean plus Gaussian noise
of std ``synthetic_noise`` / sqrt(D), L2-normalised like DELG descriptors. Per class
``num_train_per_class`` (2) training items and ``num_query_per_class`` (1) query items; the
database is one further item of the first ``synthetic_eval_classes``
(1,000) classes, queries come from the same classes. float32 throughout; deterministic in
``split_seed``. Memory: (C + C * train_per_class) * D * 4 bytes (about 2 GB at full size).
"""
import numpy as np

from orthohash_jax.data import RetrievalData

GLDV2_CLASSES = 81313


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def load(config) -> RetrievalData:
  num_classes = config.num_classes or GLDV2_CLASSES
  dim = config.descriptor_dim
  noise = config.synthetic_noise
  per_train = config.num_train_per_class
  eval_classes = min(config.synthetic_eval_classes, num_classes)
  rng = np.random.default_rng(config.split_seed)

  means = _unit(rng.standard_normal((num_classes, dim), dtype=np.float32))

  def sample(classes, block=8192):
    x = np.empty((len(classes), dim), np.float32)
    for s in range(0, len(classes), block):  # blocks keep temporaries small
      c = classes[s:s + block]
      x[s:s + block] = _unit(means[c] + rng.standard_normal((len(c), dim), dtype=np.float32)
                             * np.float32(noise / np.sqrt(dim)))
    return x, classes.astype(np.int32)

  train_x, train_y = sample(np.repeat(np.arange(num_classes), per_train))
  query_x, query_y = sample(np.repeat(np.arange(eval_classes),
                                      config.num_query_per_class))
  db_x, db_y = sample(np.repeat(np.arange(eval_classes), 1))
  return RetrievalData("synthetic_descriptors", num_classes, train_x, train_y, query_x, query_y,
                       db_x, db_y)
