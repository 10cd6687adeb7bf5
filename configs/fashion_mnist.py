r"""Fashion-MNIST (IDX files of the Debian package dataset-fashion-mnist), MLP 512-512.

  python -m orthohash_jax.main --config=configs/fashion_mnist.py --workdir=runs/fmnist \
      --config.num_bits=32 --config.loss=ce

Split: train+test merged (70,000); per class 100 queries (1,000), the rest the database
(69,000), whose first 500 per class are the training set (5,000). Bernoulli codebook, s = 8,
m = 0.2 (cos), Adam 1e-3 for every parameter, constant lr, batch 64, 100 epochs, mAP@all.
Variants: --config.num_bits 16/32/64/128, --config.loss orthohash|ce, --config.margin_type,
--config.codebook, --config.data_dir.
"""
from orthohash_jax.config_base import base_config


def get_config():
  config = base_config()
  config.dataset = "fashion_mnist"
  config.num_query_per_class = 100
  config.num_train_per_class = 500
  config.checkpoint_every_steps = 2000
  return config
