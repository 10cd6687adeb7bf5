"""DTSH, deep supervised hashing with triplet labels (Wang et al., ACCV 2016), as in
CISiPLab/cisip-FIRe (``functions/loss/dtsh.py``; defaults of ``configs/templates/dtsh.yaml``:
alpha = 5, lambda = 1).

On the batch's triplets (anchor i, positive p, negative n): with inner products t_ij = <v_i, v_j>
and x = clip(t_ip - t_in - alpha, -100, 50), the negative log-likelihood
-(x - log(1 + exp(x))) is averaged over the (p, n) pairs of each anchor that has both a
positive (the anchor itself counts, as in FIRe) and a negative, then over those anchors (0 when
none has). The quantization term is lambda * mean((v - sign(v))^2). Positives share a label
(multi-hot: at least one). No classifier head.
"""
import jax
import jax.numpy as jnp

from orthohash_jax.methods import base, common


def dtsh_loss(codes, labels, *, alpha=5.0, lmbd=1.0):
  """DTSH loss, a scalar of the codes' dtype.

  Args:
    codes: float (B, K) continuous codes v.
    labels: int (B,) class ids, or 0/1 (B, C) multi-hot.
    alpha: triplet margin.
    lmbd: weight of the quantization term.
  """
  if codes.ndim != 2 or codes.shape[0] != jnp.shape(labels)[0]:
    raise ValueError(f"codes must be (B, K) with B labels, got {codes.shape} and "
                     f"{jnp.shape(labels)}")
  inner = codes @ codes.T
  similar = common.pair_similarity(labels)
  triplets = similar[:, :, None] & ~similar[:, None, :]  # (anchor, positive, negative)
  x = jnp.clip(inner[:, :, None] - inner[:, None, :] - alpha, -100.0, 50.0)
  num_pos = similar.sum(1)
  num_neg = similar.shape[1] - num_pos
  anchors = (num_pos > 0) & (num_neg > 0)
  per_anchor = (jnp.sum(jnp.where(triplets, jax.nn.softplus(-x), 0.0), axis=(1, 2))
                / jnp.maximum(num_pos * num_neg, 1).astype(codes.dtype))
  count = anchors.sum()
  likelihood = jnp.sum(jnp.where(anchors, per_anchor, 0.0)) / jnp.maximum(count, 1)
  quantization = jnp.mean((codes - jnp.sign(codes)) ** 2)
  return likelihood + lmbd * quantization


METHOD = base.Method(
    loss=lambda config, inputs: dtsh_loss(inputs.codes, inputs.labels, alpha=config.dtsh_alpha,
                                          lmbd=config.dtsh_lambda),
    keys=("dtsh_alpha", "dtsh_lambda"),
    name="DTSH", summary="DTSH (Wang et al., ACCV 2016): triplet likelihood of code inner "
    "products plus quantization, no head", architecture={"use_bn": False})
