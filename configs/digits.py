r"""The embedded default: scikit-learn's 8x8 digits, MLP 512-512, 64 bits (a few minutes on CPU).

  python -m orthohash_jax.main --config=configs/digits.py --workdir=runs/digits

Split: per class 30 queries (300), the rest is the database and the training set (1,497).
Bernoulli codebook, s = 8, m = 0.2 (cos), Adam 1e-3, batch 64, 100 epochs, mAP@all.
"""
from orthohash_jax.config_base import base_config


def get_config():
  config = base_config()
  config.dataset = "digits"
  config.num_query_per_class = 30
  config.checkpoint_every_steps = 500
  return config
