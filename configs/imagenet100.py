r"""ImageNet100 (the 100-class subset of the hashing papers' list files), mAP@1000.

  python -m orthohash_jax.main --config=configs/imagenet100.py:small --workdir=runs/imagenet100_small \
      --config.data_dir=/path/to/imagenet100 --config.num_bits=64

data_dir holds train.txt (13,000), test.txt (5,000 queries), database.txt (128,495) and the
images they list (format: orthohash_jax/data/listfile.py). Images are streamed from disk and
decoded by ``data_workers`` threads with the authors' transforms: training RandomResizedCrop(224) + flip; evaluation Resize(224) + CenterCrop(224); ImageNet mean / std normalisation on the device. Optimisation as the
authors' code (``config_base.paper_image_config``). Variant "small": a CNN with global
average pooling trained from scratch, for CPU smoke runs; its mAP is not comparable with the
paper's pretrained-AlexNet numbers.
"""
from orthohash_jax.config_base import paper_image_config


def get_config(variant: str = "small"):
  return paper_image_config("imagenet100", eval_topk=1000, variant=variant)
