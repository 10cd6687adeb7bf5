r"""Evaluation of a trained state: encoding in batches, category- and instance-level scores.

* ``encode_rows(trainer, state, read, n, pre_bn=False, progress=None)``: continuous codes
  float32 (n, K) of n inputs, read in global batches of ``trainer.eval_batch``; each process
  reads (``read(indices)`` -> x) only its rows of every batch (those its devices hold), and only
  codes are gathered; the next batch is read while the device encodes the current one.
  ``progress(done, n)`` is called before the first batch (done = 0) and after each one.
* ``evaluate(trainer, data, state, progress=None)`` scores with the protocol the data declares
  (``data.protocol``, see ``EVALUATORS``); every result holds packed ``query_codes`` /
  ``db_codes`` (uint32, as ``retrieval.pack_codes``), the labels, ``mAP`` and
  ``quantization_angle`` (database); ``progress(split, done, n)`` follows the encoding of each
  split ("query", "db"):
  - "category": mAP@R (R = ``config.eval_topk``, None = all) with relevance from the labels
    (single-label: same class; multi-label: a shared label); ties by database index; the
    queries split over every device of every process of ``trainer.mesh``, the APs gathered.
  - "gldv2": GLDv2 mAP@100 against the ground-truth lists (labels are unknown); with
    ``config.recompute_bn`` also ``mAP_recompute_bn``.
* ``recompute_bn(trainer, state, read, n)`` (paper Sec. 4.3): the state whose hash BatchNorm
  running mean / variance are the mean / biased variance of the pre-BN outputs W f(x) over n
  inputs, so codes are balanced on that set (e.g. a database of another domain).
* ``evaluate_revisited(trainer, state, root, name)``: revisited Oxford/Paris Easy/Medium/Hard
  mAP and mP@{1,5,10} with the run's BN statistics and with the database's
  ({"running_bn": scores, "recompute_bn": scores}).
"""
import concurrent.futures

import numpy as np

from orthohash_jax import metrics, parallel, retrieval, revisited
from orthohash_jax.data.descriptors import GLDV2_R, load_revisited


def encode_rows(trainer, state, read, n: int, pre_bn: bool = False, progress=None) -> np.ndarray:
  """Codes float32 (n, K) of inputs 0..n-1 (n >= 1); ``read(indices int64 (m,))`` returns their
  inputs;
  ``progress(done, n)`` (optional) reports the rows encoded so far.

  Overlapped: the next batch is read (on one background thread) while the device encodes the
  current one, and a batch's codes are copied to the host after the next batch is dispatched.
  """
  batch = trainer.eval_batch
  rows = parallel.process_rows(trainer.mesh, batch)  # ascending: padding is at the end

  def load(start):
    idx = start + rows
    x = read(idx[idx < n])
    if len(x) < len(idx):  # the last batch: pad this process's rows with zeros
      x = np.concatenate([x, np.zeros((len(idx) - len(x),) + x.shape[1:], x.dtype)])
    return x

  out, starts = [], range(0, n, batch)
  if progress:
    progress(0, n)

  def collect(start, codes):
    out.append(np.asarray(codes)[:min(batch, n - start)])
    if progress:
      progress(min(start + batch, n), n)

  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    pending, dispatched = pool.submit(load, 0), None
    for i, start in enumerate(starts):
      x = pending.result()
      if i + 1 < len(starts):
        pending = pool.submit(load, starts[i + 1])
      codes = trainer.encode(state, x, pre_bn=pre_bn)
      if dispatched:
        collect(*dispatched)
      dispatched = start, codes
    collect(*dispatched)
  return np.concatenate(out)


def encode_split(trainer, data, state, split: str, pre_bn: bool = False,
                 progress=None) -> np.ndarray:
  """Codes of a split; ``progress(split, done, n)`` (optional) as in ``evaluate``."""
  report = (lambda done, n: progress(split, done, n)) if progress else None
  return encode_rows(trainer, state, lambda idx: data.eval_rows(split, idx), data.size(split),
                     pre_bn, report)


def encode_array(trainer, state, x: np.ndarray, pre_bn: bool = False) -> np.ndarray:
  return encode_rows(trainer, state, lambda idx: x[idx], len(x), pre_bn)


def recompute_bn(trainer, state, read, n: int):
  """``state`` with the hash BN running mean / var set to the mean / biased var over n inputs."""
  if not trainer.config.use_bn:
    raise ValueError("recompute_bn needs a hash layer with BatchNorm (use_bn=True)")
  v = encode_rows(trainer, state, read, n, pre_bn=True).astype(np.float64)
  return trainer.with_bn_statistics(state, v.mean(0).astype(np.float32),
                                    v.var(0).astype(np.float32))


def _codes_result(data, q_codes, db_codes) -> dict:
  return {"query_codes": retrieval.as_packed(q_codes), "db_codes": retrieval.as_packed(db_codes),
          "query_labels": data.labels("query"), "db_labels": data.labels("db"),
          "quantization_angle": metrics.quantization_angle(db_codes)}


def evaluate_category(trainer, data, state, progress=None) -> dict:
  q_codes = encode_split(trainer, data, state, "query", progress=progress)
  db_codes = encode_split(trainer, data, state, "db", progress=progress)
  result = _codes_result(data, q_codes, db_codes)
  result["mAP"] = metrics.mean_average_precision(
      result["query_codes"], result["db_codes"], result["query_labels"], result["db_labels"],
      trainer.config.eval_topk, trainer.mesh)
  return result


def ranking(q_codes, db_codes, k=None) -> np.ndarray:
  """Database indices int (Q, k) by (Hamming distance, index) of continuous codes; k=None: all."""
  q_packed, db_packed = retrieval.as_packed(q_codes), retrieval.as_packed(db_codes)
  return np.asarray(retrieval.hamming_topk(q_packed, db_packed, k or len(db_packed))[1])


def gldv2_map(q_codes, db_codes, ground_truth) -> float:
  """GLDv2 retrieval mAP@100 of continuous codes (Q, K) and (N, K)."""
  return revisited.gldv2_map_at_k(ranking(q_codes, db_codes, min(GLDV2_R, len(db_codes))),
                                  ground_truth, GLDV2_R)


def evaluate_gldv2(trainer, data, state, progress=None, recompute=None) -> dict:
  """GLDv2 mAP@100 ("mAP") and, with ``recompute`` (default ``config.recompute_bn``),
  "mAP_recompute_bn" with the database's BN statistics."""
  if recompute is None:
    recompute = trainer.config.recompute_bn
  q_codes = encode_split(trainer, data, state, "query", progress=progress)
  db_codes = encode_split(trainer, data, state, "db", progress=progress)
  result = _codes_result(data, q_codes, db_codes)
  result["mAP"] = gldv2_map(q_codes, db_codes, data.ground_truth)
  if recompute:
    shifted = recompute_bn(trainer, state, lambda idx: data.eval_rows("db", idx), data.size("db"))
    result["mAP_recompute_bn"] = gldv2_map(encode_split(trainer, data, shifted, "query"),
                                           encode_split(trainer, data, shifted, "db"),
                                           data.ground_truth)
  return result


EVALUATORS = {"category": evaluate_category, "gldv2": evaluate_gldv2}


def evaluate(trainer, data, state, progress=None) -> dict:
  """Scores ``state`` with the evaluator of ``data.protocol`` (see the module docstring)."""
  return EVALUATORS[data.protocol](trainer, data, state, progress=progress)


def parse_revisited(spec: str):
  """"ROOT:name" -> (ROOT, name); the name is after the last colon."""
  root, sep, name = spec.rpartition(":")
  if not sep or not root or not name:
    raise ValueError(f"revisited sets are ROOT:name (e.g. data/roxf:roxford5k), got {spec!r}")
  return root, name


def evaluate_revisited(trainer, data, state, root: str, name: str) -> dict:
  """Revisited E/M/H mAP and mP@{1,5,10} with the run's BN statistics and with the database's."""
  rev = load_revisited(root, name)
  if rev.query_x.shape[1:] != tuple(data.input_shape):
    raise ValueError(f"{name}: descriptors of shape {rev.query_x.shape[1:]}, the model takes "
                     f"{tuple(data.input_shape)}")
  shifted = recompute_bn(trainer, state, lambda idx: rev.db_x[idx], len(rev.db_x))
  return {key: revisited.revisited_map(ranking(encode_array(trainer, st, rev.query_x),
                                               encode_array(trainer, st, rev.db_x)), rev.gnd)
          for key, st in (("running_bn", state), ("recompute_bn", shifted))}
