r"""CIFAR-10 from TFDS ("cifar10-1" protocol: 1,000 queries, 5,000 training, 59,000 database), mAP@all.

  python -m orthohash_jax.main --config=configs/cifar10.py --workdir=runs/cifar10 \
      --config.data_dir=/path/to/tensorflow_datasets --config.num_bits=64

data_dir is a TFDS data directory with cifar10 prepared as array_record (nothing is downloaded
unless --config.download=True). Optimisation as the authors' code
(``config_base.paper_image_config``) with a small CNN trained from scratch on 32x32 images.
"""
from orthohash_jax.config_base import paper_image_config


def get_config():
  config = paper_image_config("cifar10", eval_topk=None)
  config.num_query_per_class = 100
  config.num_train_per_class = 500
  return config
