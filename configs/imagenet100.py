r"""ImageNet100 (the 100-class subset of the hashing papers' list files), mAP@1000.

  python -m orthohash_jax.main --config=configs/imagenet100.py --workdir=runs/imagenet100 \
      --config.data_dir=/path/to/imagenet100 --config.pretrained=weights/alexnet --config.num_bits=64
  python -m orthohash_jax.main --config=configs/imagenet100.py:small ...   # CPU smoke run

data_dir holds train.txt (13,000), test.txt (5,000 queries), database.txt (128,495) and the
images they list (orthohash_jax/data/listfile.py). Transforms: training
RandomResizedCrop(224) + flip;
evaluation Resize(224) + CenterCrop(224). Recipe and variants: ``config_base.paper_image_config``.
"""
from orthohash_jax.config_base import paper_image_config


VARIANTS = ("alexnet", "small")  # --config=configs/imagenet100.py:VARIANT; the first is the default

def get_config(variant: str = "alexnet"):
  return paper_image_config("imagenet100", eval_topk=1000, variant=variant)
