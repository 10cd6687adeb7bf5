"""DPN, Deep Polarized Network (Fan et al., IJCAI 2020), as in CISiPLab/cisip-FIRe
(``functions/loss/dpn.py``, centroids from ``scripts/train_general.py`` ``preprocess``; defaults
of ``configs/templates/dpn.yaml``: margin 1, reg 0.1, sl 1, ce 0, sign_cent, cent_init B).

Every class c has a random +-1 target t_c (K,) (FIRe's Bernoulli ``cent_init: B``, which is our
``codebook`` "bernoulli"). The polarization loss with the regulariser is

  mean_i sum_{c in y_i} sum_k max(0, m - v_ik t_ck) + reg mean(v^2),

one class per item for single-label data, each of its labels for multi-hot rows. FIRe's
cross-entropy term has weight 0 by default (on a classifier of the backbone features, which
nothing else uses) and is left out: no head.
"""
import jax
import jax.numpy as jnp

from orthohash_jax import losses
from orthohash_jax.methods import base, common


def dpn_loss(codes, labels, targets, *, margin=1.0, reg=0.1):
  """DPN loss, a scalar of the codes' dtype.

  Args:
    codes: float (B, K) continuous codes v.
    labels: int (B,) class ids, or 0/1 (B, C) multi-hot.
    targets: +-1 (C, K) class targets.
    margin: m of the hinge; reg: weight of mean(v^2).
  """
  if targets.ndim != 2 or targets.shape[1] != codes.shape[1]:
    raise ValueError(f"targets must be (C, {codes.shape[1]}), got shape {targets.shape}")
  y = losses.label_targets(labels, targets.shape[0], common.is_multilabel(labels))
  hinge = jnp.sum(jax.nn.relu(margin - codes[:, None, :] * targets[None].astype(codes.dtype)), -1)
  polarization = jnp.mean(jnp.sum(hinge * y.astype(codes.dtype), axis=1))
  return polarization + reg * jnp.mean(codes ** 2)


METHOD = base.Method(
    loss=lambda config, inputs: dpn_loss(inputs.codes, inputs.labels, inputs.outputs,
                                         margin=config.dpn_margin, reg=config.dpn_reg),
    make_head=base.centres_head,
    keys=("codebook", "dpn_margin", "dpn_reg"),
    name="DPN", summary="DPN (Fan et al., IJCAI 2020): polarization hinge to the codebook's "
    "class targets plus mean(v^2)", architecture={"use_bn": False})
