"""CSQ, Central Similarity Quantization (Yuan et al., CVPR 2020), as in CISiPLab/cisip-FIRe
(``functions/loss/csq.py``, centres from ``scripts/train_general.py`` ``preprocess``; defaults
of ``configs/templates/csq.yaml``: lambda_q = 0.001, scale_c = 1).

Every class c has a +-1 hash centre t_c (K,) (FIRe: Bernoulli, our ``codebook`` "bernoulli").
An item's centre is its class's; for multi-hot rows, the sign of the sum of its classes'
centres, a bit whose sum is 0 taking the run's fixed random bit (FIRe draws one random 0/1
vector per run). With h = tanh(v):

  loss = scale_c BCE((h + 1) / 2, (t + 1) / 2) + lambda_q mean((|h| - 1)^2),

BCE averaged over all B x K bits, each log clamped at -100 as torch's ``BCELoss``; (h + 1) / 2 is
computed as sigmoid(2 v) (the same function, stable where tanh rounds to +-1). No head.
"""
import jax
import jax.numpy as jnp

from orthohash_jax.methods import base, common

LOG_FLOOR = -100.0  # torch.nn.BCELoss clamps its logs here
RANDOM_CENTRE_STREAM = 0x637371  # fold_in tag of the random centre bits, apart from other draws


def item_centres(labels, centres, random_centre):
  """+-1 (B, K) centre of each item: ``centres`` (C, K) row of int (B,) labels, or for (B, C)
  multi-hot labels sign(y @ centres) with ``random_centre`` (K,) +-1 where that sum is 0."""
  if not common.is_multilabel(labels):
    return centres[labels]
  total = labels.astype(centres.dtype) @ centres
  return jnp.where(total == 0, random_centre, jnp.sign(total))


def csq_loss(codes, labels, centres, random_centre, *, lambda_q=0.001, scale_c=1.0):
  """CSQ loss, a scalar of the codes' dtype.

  Args:
    codes: float (B, K) continuous codes v.
    labels: int (B,) class ids, or 0/1 (B, C) multi-hot.
    centres: +-1 (C, K) class hash centres.
    random_centre: +-1 (K,), the bits of multi-hot items whose centre sum is 0.
    lambda_q: weight of the quantization term; scale_c: weight of the centre BCE.
  """
  if centres.ndim != 2 or centres.shape[1] != codes.shape[1]:
    raise ValueError(f"centres must be (C, {codes.shape[1]}), got shape {centres.shape}")
  target = (item_centres(labels, centres, random_centre).astype(codes.dtype) + 1.0) / 2.0
  log_p = jnp.maximum(jax.nn.log_sigmoid(2.0 * codes), LOG_FLOOR)
  log_not_p = jnp.maximum(jax.nn.log_sigmoid(-2.0 * codes), LOG_FLOOR)
  bce = -jnp.mean(target * log_p + (1.0 - target) * log_not_p)
  quantization = jnp.mean((jnp.abs(jnp.tanh(codes)) - 1.0) ** 2)
  return scale_c * bce + lambda_q * quantization


def random_centre(seed: int, num_bits: int):
  """The run's fixed +-1 (K,) bits for multi-hot items whose centre sum is 0, from ``seed``."""
  key = jax.random.fold_in(jax.random.key(seed), RANDOM_CENTRE_STREAM)
  return jnp.where(jax.random.bernoulli(key, 0.5, (num_bits,)), 1.0, -1.0)


METHOD = base.Method(
    loss=lambda config, inputs: csq_loss(
        inputs.codes, inputs.labels, inputs.outputs,
        random_centre(config.seed, inputs.codes.shape[1]),
        lambda_q=config.csq_lambda_q, scale_c=config.csq_scale_c),
    make_head=base.centres_head,
    keys=("codebook", "csq_lambda_q", "csq_scale_c"),
    name="CSQ", summary="CSQ (Yuan et al., CVPR 2020): binary cross-entropy of tanh codes to the "
    "codebook's hash centres plus quantization", architecture={"use_bn": False})
