r"""NUS-WIDE (21 most frequent concepts, list files of the hashing papers), mAP@5000.

  python -m orthohash_jax.main --config=configs/nuswide.py --workdir=runs/nuswide \
      --config.data_dir=/path/to/nuswide_v2_256 --config.num_bits=64

data_dir holds train.txt (10,500), test.txt (2,100 queries), database.txt (193,734) and the
images. Multi-label (multi-hot rows): label-smoothing loss, relevant = shares a label.
Optimisation as the authors' code (``config_base.paper_image_config``) with a small CNN trained
from scratch on 32x32 images: mAP is not comparable with the paper's pretrained-AlexNet numbers.
"""
from orthohash_jax.config_base import paper_image_config


def get_config():
  return paper_image_config("nuswide", eval_topk=5000)
