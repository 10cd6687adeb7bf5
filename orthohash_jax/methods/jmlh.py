"""JMLH, the Just-Maximizing-Likelihood Hashing of Shen et al. (ICCV 2019), as in
CISiPLab/cisip-FIRe (``functions/loss/jmlh.py``, architecture
``models/architectures/arch_jmlh.py``, ``JMLHBinaryActivation`` of
``models/layers/activation.py``; defaults of ``configs/templates/jmlh.yaml``: lambda = 0.1,
stochastic_eps on).

Stochastic binary codes: q = sigmoid(v), b = (sign(q - eps) + 1) / 2 in {0, 1} with
eps ~ U[0, 1) while training (eps = 0.5, i.e. b = [v > 0], otherwise); the gradient of b
passes to q unchanged. The classifier (linear, with bias) sees b; the loss is

  CE(classifier(b), y) + lambda mean_i sum_k KL(Bernoulli(q_ik) || Bernoulli(0.5)),

the KL computed as FIRe with 1e-7 inside every log. Retrieval codes: sign(v) = sign(q - 0.5).
Multi-label CE: soft targets y / sum(y).
"""
import functools

import jax
import jax.numpy as jnp

from orthohash_jax import losses
from orthohash_jax.methods import base, common

LOG_EPS = 1e-7


def stochastic_codes(codes, eps):
  """b = (sign(sigmoid(v) - eps) + 1) / 2, gradient straight through to sigmoid(v); ``eps`` of
  the codes' shape (or broadcastable), same dtype."""
  q = jax.nn.sigmoid(codes)
  return common.straight_through(q, (jnp.sign(q - eps) + 1.0) / 2.0)


def classifier_input(codes, *, train=False, key=None, stochastic=True):
  """The classifier's input b (B, K): eps ~ U[0, 1) from ``key`` when training (and
  ``stochastic``), else 0.5."""
  if train and stochastic:
    eps = jax.random.uniform(key, codes.shape, codes.dtype)
  else:
    eps = jnp.full_like(codes, 0.5)
  return stochastic_codes(codes, eps)


def kl_to_half(q):
  """mean_i sum_k KL(Bernoulli(q_ik) || Bernoulli(0.5)) of probabilities q (B, K), as FIRe."""
  half = jnp.log(0.5 + LOG_EPS)
  kl = (q * jnp.log(q + LOG_EPS) - q * half
        + (1 - q) * jnp.log(1 - q + LOG_EPS) - (1 - q) * half)
  return jnp.mean(jnp.sum(kl, axis=1))


def jmlh_loss(codes, logits, labels, *, lmbd=0.1):
  """JMLH loss, a scalar (float32, or float64 for float64 inputs).

  Args:
    codes: float (B, K) continuous codes v (the logits of the bit probabilities).
    logits: float (B, C) of the classifier on the stochastic codes.
    labels: int (B,) class ids, or 0/1 (B, C) multi-hot.
    lmbd: weight of the KL term.
  """
  ce = losses.cross_entropy_loss(logits, labels, multilabel=common.is_multilabel(labels))
  return ce + lmbd * kl_to_half(jax.nn.sigmoid(codes))


def _make_head(config, num_classes, codebook, rngs):
  transform = functools.partial(classifier_input, stochastic=config.jmlh_stochastic)
  return base.linear_head(transform)(config, num_classes, codebook, rngs)


METHOD = base.Method(
    loss=lambda config, inputs: jmlh_loss(inputs.codes, inputs.outputs, inputs.labels,
                                          lmbd=config.jmlh_lambda),
    make_head=_make_head,
    keys=("jmlh_lambda", "jmlh_stochastic"),
    name="JMLH", summary="JMLH (Shen et al., ICCV 2019): cross-entropy of a linear classifier on "
    "stochastic binary codes plus KL to Bernoulli(0.5)", architecture={"use_bn": False})
