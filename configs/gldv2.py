r"""GLDv2 instance retrieval on precomputed 2048-d DELG descriptors (paper Table 2).

Real descriptors (files from ``python -m orthohash_jax.data.convert_fire``); one command trains,
scores GLDv2 mAP@100 and ROxford/RParis Easy/Medium/Hard mAP and mP@{1,5,10} (results.json):
  python -m orthohash_jax.main --config=configs/gldv2.py --workdir=runs/gldv2 \
      --config.data_dir=/path/to/gldv2delgembed --config.model_axis=4 --config.recompute_bn=True \
      --config.revisited=/path/to/roxford5kdelgembed:roxford5k,/path/to/rparis6kdelgembed:rparis6k

Synthetic descriptors at the real sizes (81,313 classes x 2,048 dims; runs on a CPU box):
  python -m orthohash_jax.main --config=configs/gldv2.py:synthetic --workdir=runs/gldv2_syn

The hash layer is the only trained part (Identity backbone). The codebook (C x K) and the
logits (B x C) are split over ``model_axis`` devices. The optimiser settings (Adam 1e-4, batch
256, 10 epochs) are our choice: the paper does not list them for GLDv2.
"""
from orthohash_jax.config_base import base_config


VARIANTS = ("real", "synthetic")  # --config=configs/gldv2.py:VARIANT; the first is the default

def get_config(mode: str = "real"):
  config = base_config()
  config.backbone = "identity"
  config.num_bits = 64
  config.learning_rate = 1e-4
  config.batch_size = 256
  config.num_epochs = 10
  config.eval_topk = 100
  config.checkpoint_every_steps = 2000
  if mode == "synthetic":
    config.dataset = "synthetic_descriptors"
    config.num_train_per_class = 2
    config.num_query_per_class = 1
    config.num_epochs = 1
    config.eval_topk = None
  elif mode == "real":
    config.dataset = "gldv2"
  else:
    raise ValueError(f"configs/gldv2.py takes 'real' or 'synthetic', got {mode!r}")
  return config
