r"""MS-COCO (80 categories, list files of the hashing papers), mAP@5000.

  python -m orthohash_jax.main --config=configs/coco.py --workdir=runs/coco \
      --config.data_dir=/path/to/coco --config.num_bits=64

data_dir holds train.txt (10,000), test.txt (5,000 queries), database.txt (117,218) and the
images. Multi-hot labels train multi-label (the authors' code trained COCO single-label; here
the labels decide). Optimisation as the authors' code (``config_base.paper_image_config``) with
a small CNN trained from scratch on 32x32 images: mAP is not comparable with the paper's.
"""
from orthohash_jax.config_base import paper_image_config


def get_config():
  return paper_image_config("coco", eval_topk=5000)
