"""Pieces shared by the comparison methods' losses.

Labels follow ``losses``: int (B,) class ids, or (B, C) 0/1 multi-hot rows (multi-label).
"""
import jax
import jax.numpy as jnp


def is_multilabel(labels) -> bool:
  """True for (B, C) multi-hot labels, False for int (B,) class ids."""
  return jnp.ndim(labels) == 2


def pair_similarity(labels):
  """bool (B, B): items i and j share a class (single-label) or at least one label (multi-hot)."""
  labels = jnp.asarray(labels)
  if is_multilabel(labels):
    y = labels.astype(jnp.float32)
    return (y @ y.T) > 0
  if labels.ndim != 1:
    raise ValueError(f"labels must be int (B,) or multi-hot (B, C), got shape {labels.shape}")
  return labels[:, None] == labels[None, :]


@jax.custom_jvp
def straight_through(x, value):
  """``value`` in the forward pass; its gradient is passed to ``x`` unchanged (the
  straight-through estimator of a binarisation ``value = f(x)``). Same shapes and dtypes."""
  del x
  return value


@straight_through.defjvp
def _straight_through_jvp(primals, tangents):
  return primals[1], tangents[0]
