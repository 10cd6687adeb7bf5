r"""ImageNet100 (the 100-class subset of the hashing papers' list files), mAP@1000.

  python -m orthohash_jax.main --config=configs/imagenet100.py --workdir=runs/imagenet100 \
      --config.data_dir=/path/to/imagenet100 --config.num_bits=64

data_dir holds train.txt (13,000), test.txt (5,000 queries), database.txt (128,495) and the
images they list (see orthohash_jax/data/listfile.py). Single-label. Optimisation as the
authors' code (``config_base.paper_image_config``) with a small CNN trained from scratch on
32x32 images: mAP is not comparable with the paper's pretrained-AlexNet numbers.
"""
from orthohash_jax.config_base import paper_image_config


def get_config():
  return paper_image_config("imagenet100", eval_topk=1000)
