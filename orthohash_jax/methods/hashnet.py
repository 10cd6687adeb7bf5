"""HashNet (Cao et al., ICCV 2017) as in the authors' framework CISiPLab/cisip-FIRe
(``functions/loss/hashnet.py``, the continuation in ``scripts/train_general.py``
``pre_epoch_operations``; defaults of ``configs/templates/hashnet.yaml``).

Pairwise weighted likelihood on the batch's own pairs (FIRe's default, ``keep_train_size`` off):
with u = tanh(beta v) and d_ij = alpha <u_i, u_j>,

  loss = (1 / |S|) sum_ij w_ij (log(1 + exp(d_ij)) - s_ij d_ij),

s_ij = 1 when i and j share a label (multi-hot: at least one), |S| = B^2 pairs (i = j
included), w_ij = |S| / |S1| on similar pairs and |S| / |S0| on dissimilar ones. The
continuation scale grows per epoch: beta = sqrt(floor(epoch / step_continuation) + 1).
FIRe's architecture for it (``dpn``) has no classifier in the loss: no head here.
"""
import jax
import jax.numpy as jnp

from orthohash_jax.methods import base, common


def continuation_scale(epoch, step_continuation: int = 20, dtype=jnp.float32):
  """beta = sqrt(floor(epoch / step_continuation) + 1), a ``dtype`` scalar; ``epoch`` int,
  from 0."""
  return jnp.sqrt((jnp.asarray(epoch) // step_continuation + 1).astype(dtype))


def hashnet_loss(codes, labels, *, epoch, alpha=1.0, step_continuation=20):
  """HashNet loss, a scalar of the codes' dtype.

  Args:
    codes: float (B, K) continuous codes v (the hash layer's outputs).
    labels: int (B,) class ids, or 0/1 (B, C) multi-hot.
    epoch: int scalar, the 0-based epoch (may be traced).
    alpha: scale of the inner products in the likelihood.
    step_continuation: epochs between increases of the continuation scale beta.
  """
  if codes.ndim != 2 or codes.shape[0] != jnp.shape(labels)[0]:
    raise ValueError(f"codes must be (B, K) with B labels, got {codes.shape} and "
                     f"{jnp.shape(labels)}")
  u = jnp.tanh(continuation_scale(epoch, step_continuation, codes.dtype) * codes)
  similar = common.pair_similarity(labels)
  dot = alpha * (u @ u.T)
  pair_loss = jax.nn.softplus(dot) - jnp.where(similar, dot, 0.0)
  total = similar.size
  num_similar = similar.sum().astype(codes.dtype)
  weight = jnp.where(similar, total / num_similar, total / (total - num_similar))
  return jnp.sum(pair_loss * weight) / total


METHOD = base.Method(
    loss=lambda config, inputs: hashnet_loss(
        inputs.codes, inputs.labels, epoch=inputs.step // inputs.steps_per_epoch,
        alpha=config.hashnet_alpha, step_continuation=config.hashnet_step_continuation),
    keys=("hashnet_alpha", "hashnet_step_continuation"),
    name="HashNet", summary="HashNet (Cao et al., ICCV 2017): weighted pairwise likelihood of "
    "tanh codes with continuation, no head", architecture={"use_bn": False})
