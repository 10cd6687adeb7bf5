"""SDH-C: deep hashing for compact binary codes (Erin Liong et al., CVPR 2015) made point-wise
as in the paper's Sec. 4 and CISiPLab/cisip-FIRe (``SDHLossC`` of ``functions/loss/sdh.py``,
architecture ``ce`` with ``hash_fc_output: tanh``; defaults of ``configs/templates/sdhc.yaml``:
lambda0 = lambda1 = lambda2 = 0.001, alpha = 1).

With u = tanh(v) (B, K) and the hash layer's projection W (K, D):

  loss = lambda0 mean((u - sign(u))^2)          quantization
       - lambda1 trace(u^T u) / (2 K)            bit variance (maximised)
       + alpha CE(classifier(u), y)              the point-wise supervised term
       + lambda2 mean((W W^T - 1)^2)             "orthogonality" of the projection

(FIRe subtracts the all-ones matrix, not the identity; followed here.) The classifier is a
linear layer with bias on u. Single-label only, as FIRe (it takes the argmax of the labels).
"""
import jax.numpy as jnp

from orthohash_jax import losses
from orthohash_jax.methods import base, common


def classifier_input(codes, *, train=False, key=None):
  """u = tanh(v), the input of SDH-C's classifier, same shape and dtype as ``codes``."""
  del train, key
  return jnp.tanh(codes)


def sdhc_loss(codes, logits, labels, projection, *, lmbd0=0.001, lmbd1=0.001, lmbd2=0.001,
              alpha=1.0):
  """SDH-C loss, a scalar (float32, or float64 for float64 inputs).

  Args:
    codes: float (B, K) continuous codes v (before the tanh).
    logits: float (B, C) of the classifier on tanh(v).
    labels: int (B,) class ids (multi-hot labels raise ValueError).
    projection: float (D, K), the hash layer's kernel (W^T; no bias).
    lmbd0, lmbd1, lmbd2, alpha: weights of quantization, bit variance, orthogonality and CE.
  """
  if common.is_multilabel(labels):
    raise ValueError("sdhc takes single-label data only (FIRe's SDH-C uses the argmax label)")
  u = jnp.tanh(codes)
  quantization = jnp.mean((u - jnp.sign(u)) ** 2)
  variance = jnp.sum(u * u) / (2 * u.shape[1])
  gram = projection.T @ projection  # W W^T, (K, K)
  orthogonality = jnp.mean((gram - 1.0) ** 2)
  ce = losses.cross_entropy_loss(logits, labels)
  return lmbd0 * quantization - lmbd1 * variance + alpha * ce + lmbd2 * orthogonality


METHOD = base.Method(
    loss=lambda config, inputs: sdhc_loss(
        inputs.codes, inputs.outputs, inputs.labels, inputs.model.hash_layer.fc.kernel[...],
        lmbd0=config.sdhc_lambda0, lmbd1=config.sdhc_lambda1, lmbd2=config.sdhc_lambda2,
        alpha=config.sdhc_alpha),
    make_head=base.linear_head(classifier_input),
    keys=("sdhc_lambda0", "sdhc_lambda1", "sdhc_lambda2", "sdhc_alpha"),
    multilabel=False, name="SDH-C",
    summary="SDH-C (Erin Liong et al., CVPR 2015): cross-entropy of a linear classifier on tanh "
    "codes, quantization, bit variance, orthogonality", architecture={"use_bn": False})
