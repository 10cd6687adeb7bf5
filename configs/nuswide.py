r"""NUS-WIDE (21 most frequent concepts, list files of the hashing papers), mAP@5000, multi-label.

  python -m orthohash_jax.main --config=configs/nuswide.py --workdir=runs/nuswide \
      --config.data_dir=/path/to/nuswide --config.pretrained=weights/alexnet --config.num_bits=64
  python -m orthohash_jax.main --config=configs/nuswide.py:small ...   # CPU smoke run

data_dir holds train.txt (10,500), test.txt (2,100 queries), database.txt (193,734) and the
images they list (orthohash_jax/data/listfile.py). Transforms: training
Resize(256) + RandomCrop(224) + flip;
evaluation Resize(256) + CenterCrop(224). Recipe and variants: ``config_base.paper_image_config``.
"""
from orthohash_jax.config_base import paper_image_config


VARIANTS = ("alexnet", "small")  # --config=configs/nuswide.py:VARIANT; the first is the default

def get_config(variant: str = "alexnet"):
  return paper_image_config("nuswide", eval_topk=5000, variant=variant)
