r"""Fashion-MNIST (IDX files of the Debian package dataset-fashion-mnist), MLP 512-512.

  python -m orthohash_jax.main --config=configs/fashion_mnist.py --workdir=runs/fmnist \
      --config.num_bits=32 --config.loss=ce

Split: train+test merged (70,000); per class 100 queries (1,000), the rest the database
(69,000), whose first 500 per class are the training set (5,000). Bernoulli codebook, s = 8,
m = 0.2 (cos), Adam 1e-3 for every parameter, constant lr, batch 64, 100 epochs, mAP@all.
The same protocol streamed from PNG files (identical batches, identical results.json mAP):
  python -m orthohash_jax.data.write_listfiles --dataset=fashion_mnist --output=data/fmnist_png
  python -m orthohash_jax.main --config=configs/fashion_mnist.py:files --workdir=runs/fmnist_files \
      --config.data_dir=data/fmnist_png

Variants: --config.num_bits 16/32/64/128, --config.loss orthohash|ce, --config.margin_type,
--config.codebook, --config.data_dir.
"""
from orthohash_jax.config_base import base_config
from orthohash_jax.data import idx


VARIANTS = ("idx", "files")  # --config=configs/fashion_mnist.py:VARIANT; the first is the default

def get_config(variant: str = "idx"):
  config = base_config()
  config.dataset = "fashion_mnist"
  config.update(idx.PROTOCOL)
  config.checkpoint_every_steps = 2000
  if variant == "files":  # the same split as PNG files + list files, through the streaming source
    config.dataset = "listfile"
    config.num_classes = 10
    config.image_mode = "L"
    config.train_transform = config.eval_transform = "none"
    config.pixel_norm = "unit"
  elif variant != "idx":
    raise ValueError(f"configs/fashion_mnist.py takes 'idx' or 'files', got {variant!r}")
  return config
