r"""MS-COCO (80 categories, list files of the hashing papers), mAP@5000, multi-label.

  python -m orthohash_jax.main --config=configs/coco.py --workdir=runs/coco \
      --config.data_dir=/path/to/coco --config.pretrained=weights/alexnet --config.num_bits=64
  python -m orthohash_jax.main --config=configs/coco.py:small ...   # CPU smoke run

data_dir holds train.txt (10,000), test.txt (5,000 queries), database.txt (117,218) and the
images they list (format: orthohash_jax/data/listfile.py). Images are streamed from disk and
decoded by ``data_workers`` threads with the authors' transforms: training Resize(256) + RandomCrop(224) + flip; evaluation Resize(224) + CenterCrop(224); ImageNet mean / std normalisation on the device. Optimisation as the
authors' code (``config_base.paper_image_config``): the default variant fine-tunes an
ImageNet-pretrained AlexNet (weights converted from torchvision's alexnet-owt-7be5be79.pth with
``python -m orthohash_jax.weights --arch=alexnet --torch=FILE --output=weights/alexnet``),
backbone lr x0.1, batch 256. Variant "small": a CNN with global average pooling trained from
scratch, for CPU smoke runs; its mAP is not comparable with the paper's.
"""
from orthohash_jax.config_base import paper_image_config


def get_config(variant: str = "alexnet"):
  return paper_image_config("coco", eval_topk=5000, variant=variant)
