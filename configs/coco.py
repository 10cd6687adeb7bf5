r"""MS-COCO (80 categories, list files of the hashing papers), mAP@5000, multi-label.

  python -m orthohash_jax.main --config=configs/coco.py --workdir=runs/coco \
      --config.data_dir=/path/to/coco --config.pretrained=weights/alexnet --config.num_bits=64
  python -m orthohash_jax.main --config=configs/coco.py:small ...   # CPU smoke run

data_dir holds train.txt (10,000), test.txt (5,000 queries), database.txt (117,218) and the
images they list (orthohash_jax/data/listfile.py). Transforms: training
Resize(256) + RandomCrop(224) + flip;
evaluation Resize(224) + CenterCrop(224). Recipe and variants: ``config_base.paper_image_config``.
"""
from orthohash_jax.config_base import paper_image_config


VARIANTS = ("alexnet", "small")  # --config=configs/coco.py:VARIANT; the first is the default

def get_config(variant: str = "alexnet"):
  return paper_image_config("coco", eval_topk=5000, variant=variant)
