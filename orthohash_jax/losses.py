"""OrthoHash losses: pure, jit-able functions of arrays.

Conventions
-----------
* ``logits``: float (B, C), cosine similarities in [-1, 1] between the L2-normalised continuous
  codes v (B, K) and the L2-normalised binary class targets o_c (C, K) (see ``models.CosSimHead``).
* ``labels``: int (B,) class ids in [0, C), or, with ``multilabel=True``, (B, C) multi-hot 0/1.
* Every loss returns the batch mean as a float32 scalar.

OrthoHash (Hoe et al., NeurIPS 2021, eq. 9 and footnote 4) is softmax cross-entropy on scaled,
margined cosine similarities:

  cos margin:  z = s * (cos(theta) - m * y)
  arc margin:  z = s * cos(theta + m * y),  cos(theta) clipped to [-1 + 1e-5, 1 - 1e-5]

where y is the one-hot (or multi-hot) label. The paper uses s = sqrt(K); the authors' released code
(and our default) uses s = 8, m = 0.2. Multi-label data uses label smoothing (target y / sum(y),
paper Sec. 3.2.2) or a binary cross-entropy on the same margined logits. Rows with no label get a
zero target (zero loss) under label smoothing.

Bad shapes, out-of-range labels and unknown options raise ``ValueError``; value checks run only
on concrete (non-traced) inputs, so the functions stay usable inside ``jax.jit``.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

ARC_EPS = 1e-5
MARGIN_TYPES = ("cos", "arc")
MULTILABEL_LOSSES = ("label_smoothing", "bce")
QUANTIZATION_KINDS = ("cs", "l1", "l2")
PADDING_LOGIT = -1e9  # finite, so 0 * log_softmax stays 0 on padding columns


def _is_concrete(x):
  return not isinstance(x, jax.core.Tracer)


def label_targets(labels, num_classes: int, multilabel: bool):
  """Returns float32 (B, C) 0/1 targets from int (B,) ids or (B, C) multi-hot labels."""
  labels = jnp.asarray(labels)
  if multilabel:
    if labels.ndim != 2 or labels.shape[1] != num_classes:
      raise ValueError(f"multi-label labels must have shape (B, {num_classes}), got {labels.shape}")
    if _is_concrete(labels):
      values = np.asarray(labels)
      if not np.all((values == 0) | (values == 1)):
        raise ValueError("multi-label labels must be 0/1 multi-hot")
    return labels.astype(jnp.float32)
  if labels.ndim != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"single-label labels must be int (B,), got {labels.dtype} {labels.shape}; "
                     "pass multilabel=True for multi-hot labels")
  if _is_concrete(labels) and labels.size:
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
      raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{lo}, {hi}]")
  return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)


def margin_logits(logits, targets, *, scale: float, margin: float, margin_type: str):
  """Scaled cosine (``cos``) or angular (``arc``) margin logits, float32 (B, C)."""
  logits = logits.astype(jnp.float32)
  if margin_type == "cos":
    return scale * (logits - margin * targets)
  if margin_type == "arc":
    cos = jnp.clip(logits, -1.0 + ARC_EPS, 1.0 - ARC_EPS)
    return scale * jnp.cos(jnp.arccos(cos) + margin * targets)
  raise ValueError(f"margin_type must be one of {MARGIN_TYPES}, got {margin_type!r}")


def soft_target_cross_entropy(logits, targets):
  """Mean over the batch of -sum_c t_c log softmax(z)_c; targets (B, C) rows sum to 1 (or 0)."""
  return jnp.mean(-jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1))


def normalise_rows(targets):
  """Label smoothing for multi-hot rows: y / sum(y); all-zero rows stay zero."""
  return targets / jnp.maximum(targets.sum(-1, keepdims=True), 1.0)


def orthohash_loss(logits, labels, *, scale=8.0, margin=0.2, margin_type="cos",
                   multilabel=False, multilabel_loss="label_smoothing", num_classes=None):
  """OrthoHash loss (paper eq. 9 with margin), float32 scalar.

  Args:
    logits: float (B, C) cosine similarities in [-1, 1] (C may include padding, see below).
    labels: int (B,) class ids, or 0/1 (B, num_classes) multi-hot when ``multilabel``.
    scale: s; the paper's choice is sqrt(K).
    margin: m, added to the target classes only.
    margin_type: "cos" or "arc".
    multilabel: labels are multi-hot.
    multilabel_loss: "label_smoothing" (soft-target CE) or "bce".
    num_classes: the real number of classes when the last C - num_classes logit columns are
      padding (a class-sharded head pads C to a multiple of the model axis); padding columns
      take no part in the loss. None: C.
  """
  if logits.ndim != 2:
    raise ValueError(f"logits must be (B, C), got shape {logits.shape}")
  if logits.shape[0] != jnp.shape(labels)[0]:
    raise ValueError(f"batch size mismatch: logits {logits.shape} vs labels {jnp.shape(labels)}")
  total = logits.shape[1]
  num_classes = num_classes or total
  if not 1 <= num_classes <= total:
    raise ValueError(f"num_classes must be in [1, {total}], got {num_classes}")
  targets = label_targets(labels, num_classes, multilabel)
  valid = jnp.arange(total) < num_classes
  targets = jnp.pad(targets, ((0, 0), (0, total - num_classes)))
  z = margin_logits(logits, targets, scale=scale, margin=margin, margin_type=margin_type)
  z = jnp.where(valid, z, PADDING_LOGIT)
  if not multilabel:
    return soft_target_cross_entropy(z, targets)
  if multilabel_loss == "label_smoothing":
    return soft_target_cross_entropy(z, normalise_rows(targets))
  if multilabel_loss == "bce":
    bce = optax.sigmoid_binary_cross_entropy(z, targets)
    return jnp.sum(jnp.where(valid, bce, 0.0)) / (z.shape[0] * num_classes)
  raise ValueError(f"multilabel_loss must be one of {MULTILABEL_LOSSES}, got {multilabel_loss!r}")


def cross_entropy_loss(logits, labels, *, multilabel=False):
  """Plain softmax CE (the CE and CE+BN baselines of the paper's Table 1), a scalar.

  ``logits`` (B, C) from an unconstrained linear classifier; multi-hot labels use y / sum(y).
  Computed in float32, or in float64 for float64 logits.
  """
  if logits.ndim != 2:
    raise ValueError(f"logits must be (B, C), got shape {logits.shape}")
  targets = label_targets(labels, logits.shape[1], multilabel)
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  return soft_target_cross_entropy(logits, normalise_rows(targets.astype(logits.dtype)))


def quantization_loss(codes, kind="cs"):
  """Quantization penalty on continuous codes v (B, K), float32 scalar (ablation only).

  "cs": mean of 1 - cos(v, sign(v));  "l1": mean | |v| - 1 |;  "l2": mean (|v| - 1)^2.
  """
  codes = codes.astype(jnp.float32)
  if kind == "cs":
    signs = jnp.where(codes >= 0, 1.0, -1.0)
    cos = jnp.sum(codes * signs, -1) / (
        jnp.maximum(jnp.linalg.norm(codes, axis=-1), 1e-12) * jnp.sqrt(codes.shape[-1]))
    return jnp.mean(1.0 - cos)
  if kind == "l1":
    return jnp.mean(jnp.abs(jnp.abs(codes) - 1.0))
  if kind == "l2":
    return jnp.mean((jnp.abs(codes) - 1.0) ** 2)
  raise ValueError(f"quantization kind must be one of {QUANTIZATION_KINDS}, got {kind!r}")
