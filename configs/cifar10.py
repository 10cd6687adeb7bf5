r"""CIFAR-10 from TFDS ("cifar10-1" protocol: 1,000 queries, 5,000 training, 59,000 database), mAP@all.

  python -m orthohash_jax.main --config=configs/cifar10.py --workdir=runs/cifar10 \
      --config.data_dir=/path/to/tensorflow_datasets --config.num_bits=64

data_dir is a TFDS data directory with cifar10 prepared as array_record (nothing is downloaded
unless --config.download=True). The images are streamed through ``tfds.data_source``
(``data/tfds_source.py``, the path of any TFDS dataset: --config.dataset=tfds
--config.tfds_name=NAME), taken as they are (32x32, x / 255 on the device) and augmented on the
device with pad-4 random crops and flips. The authors' optimiser (Adam 1e-4, weight decay 5e-4,
lr x0.1 at 80% of 100 epochs, batch 256) with a small CNN trained from scratch.
"""
from orthohash_jax.config_base import base_config


def get_config():
  config = base_config()
  config.dataset = "cifar10"
  config.num_query_per_class = 100
  config.num_train_per_class = 500
  config.tfds_splits = "per_class=train+test"  # train first, then test: the cifar10-1 split
  config.train_transform = config.eval_transform = "none"
  config.pixel_norm = "unit"
  config.backbone = "cnn"
  config.learning_rate = 1e-4
  config.weight_decay = 5e-4
  config.lr_schedule = "step"
  config.batch_size = 256
  config.augment_crop_pad = 4
  config.checkpoint_every_steps = 2000
  return config
