"""GreedyHash (Su et al., NeurIPS 2018) as in CISiPLab/cisip-FIRe (``GreedyHashLoss`` of
``functions/loss/greedyhash.py``, architecture ``models/architectures/arch_gh.py``, the
``SignHash`` layer of ``models/layers/activation.py``; defaults of
``configs/templates/greedyhash.yaml``: alpha = 1, pow = 3).

The classifier (linear, with bias) sees b = sign(v) in the forward pass and passes its gradient
to v unchanged (straight-through, GreedyHash's greedy step); the loss is

  CE(classifier(sign(v)), y) + alpha mean(| |v| - 1 |^pow).

Multi-label CE: soft targets y / sum(y) (FIRe's ``multiclass``; rows without a label add 0).
"""
import jax.numpy as jnp

from orthohash_jax import losses
from orthohash_jax.methods import base, common


def classifier_input(codes, *, train=False, key=None):
  """sign(v) (sign(0) = 0) with a straight-through gradient, same shape and dtype as ``codes``."""
  del train, key
  return common.straight_through(codes, jnp.sign(codes))


def greedyhash_loss(codes, logits, labels, *, alpha=1.0, power=3):
  """GreedyHash loss, a scalar (float32, or float64 for float64 inputs).

  Args:
    codes: float (B, K) continuous codes v.
    logits: float (B, C) of the classifier on sign(v).
    labels: int (B,) class ids, or 0/1 (B, C) multi-hot.
    alpha: weight of the quantization penalty; power: its exponent.
  """
  ce = losses.cross_entropy_loss(logits, labels, multilabel=common.is_multilabel(labels))
  return ce + alpha * jnp.mean(jnp.abs((jnp.abs(codes) - 1.0) ** power))


METHOD = base.Method(
    loss=lambda config, inputs: greedyhash_loss(inputs.codes, inputs.outputs, inputs.labels,
                                                alpha=config.greedyhash_alpha,
                                                power=config.greedyhash_pow),
    make_head=base.linear_head(classifier_input),
    keys=("greedyhash_alpha", "greedyhash_pow"),
    name="GreedyHash", summary="GreedyHash (Su et al., NeurIPS 2018): cross-entropy of a linear "
    "classifier on sign(v), straight-through, plus | |v| - 1 |^pow", architecture={"use_bn": False})
