r"""Instance-level evaluation: GLDv2 mAP@100 and revisited Oxford/Paris of a trained run.

* ``evaluate(trainer, state)`` is ``Trainer.evaluate`` for ``InstanceData`` (GLDv2): queries
  and database are ranked by (Hamming distance, database index) with ``retrieval.hamming_topk``
  and scored against the ground truth with ``revisited.gldv2_map_at_k`` (labels are unknown).
  With ``config.recompute_bn`` it also reports ``mAP_recompute_bn``.
* BN domain-shift fix (paper Sec. 4.3): ``recompute_bn(trainer, state, x)`` replaces the hash
  layer's BatchNorm running mean / variance by the mean / biased variance of the pre-BN outputs
  W f(x) over a database x, so its codes are balanced on that database.
* Command line (restores the latest checkpoint of a run; writes ``--output``, default
  ``<workdir>/instance_results.json``, and prints the same JSON):

    python -m orthohash_jax.instance --workdir=runs/gldv2 \
        [--revisited=ROOT:roxford5k --revisited=ROOT:rparis6k]

  GLDv2 (when the run's data is GLDv2): {"mAP@100", "mAP@100_recompute_bn"}; each revisited
  set (``descriptors.load_revisited``, full ranking): {"running_bn": scores, "recompute_bn":
  scores}, scores = {"easy"|"medium"|"hard": {"map", "mp@1", "mp@5", "mp@10", "num_queries"}}.
  Bad input prints one ``error:`` line and exits with status 2.
"""
import json
import os
import sys

import numpy as np

from orthohash_jax import cli, metrics, parallel, retrieval, revisited
from orthohash_jax.data.descriptors import GLDV2_R, InstanceData, load_revisited


def recompute_bn(trainer, state, x):
  """``state`` with the hash BN running mean / var set to the mean / biased var over x (N, ...)."""
  if not trainer.config.use_bn:
    raise ValueError("recompute_bn needs a hash layer with BatchNorm (use_bn=True)")
  v = trainer.encode(state, x, pre_bn=True).astype(np.float64)
  stats = {"mean": v.mean(0).astype(np.float32), "var": v.var(0).astype(np.float32)}
  batch_stats = {**state.batch_stats, "hash_layer": {"bn": stats}}
  return state.replace(batch_stats=parallel.replicate(batch_stats, trainer.mesh))


def ranking(q_codes, db_codes, k=None) -> np.ndarray:
  """Database indices int (Q, k) by (Hamming distance, index) of continuous codes; k=None: all."""
  q_packed, db_packed = metrics.as_packed(q_codes), metrics.as_packed(db_codes)
  return np.asarray(retrieval.hamming_topk(q_packed, db_packed, k or len(db_packed))[1])


def gldv2_map(q_codes, db_codes, ground_truth) -> float:
  """GLDv2 retrieval mAP@100 of continuous codes (Q, K) and (N, K)."""
  return revisited.gldv2_map_at_k(ranking(q_codes, db_codes, min(GLDV2_R, len(db_codes))),
                                  ground_truth, GLDV2_R)


def evaluate(trainer, state, recompute=None) -> dict:
  """``Trainer.evaluate`` for InstanceData: codes, labels, "mAP" (GLDv2 mAP@100) and, with
  ``recompute`` (default ``config.recompute_bn``), "mAP_recompute_bn"."""
  data = trainer.data
  if recompute is None:
    recompute = trainer.config.get("recompute_bn", False)
  q_codes, db_codes = trainer.encode(state, data.query_x), trainer.encode(state, data.db_x)
  result = {
      "query_codes": metrics.as_packed(q_codes), "db_codes": metrics.as_packed(db_codes),
      "query_labels": data.query_y, "db_labels": data.db_y,
      "mAP": gldv2_map(q_codes, db_codes, data.ground_truth),
      "quantization_angle": metrics.quantization_angle(db_codes),
  }
  if recompute:
    shifted = recompute_bn(trainer, state, data.db_x)
    result["mAP_recompute_bn"] = gldv2_map(trainer.encode(shifted, data.query_x),
                                           trainer.encode(shifted, data.db_x), data.ground_truth)
  return result


def evaluate_revisited(trainer, state, root: str, name: str) -> dict:
  """Revisited E/M/H mAP and mP@{1,5,10} with the run's BN statistics and with the database's."""
  rev = load_revisited(root, name)
  if rev.query_x.shape[1:] != trainer.data.input_shape:
    raise ValueError(f"{name}: descriptors of shape {rev.query_x.shape[1:]}, the model takes "
                     f"{trainer.data.input_shape}")
  out = {}
  for key, st in (("running_bn", state), ("recompute_bn", recompute_bn(trainer, state, rev.db_x))):
    out[key] = revisited.revisited_map(
        ranking(trainer.encode(st, rev.query_x), trainer.encode(st, rev.db_x)), rev.gnd)
  return out


def parse_revisited(spec: str):
  """"ROOT:name" -> (ROOT, name); the name is after the last colon."""
  root, sep, name = spec.rpartition(":")
  if not sep or not root or not name:
    raise ValueError(f"--revisited must be ROOT:name (e.g. data/roxf:roxford5k), got {spec!r}")
  return root, name


def evaluate_run(workdir: str, revisited_specs=()) -> dict:
  """Restores the latest checkpoint of ``workdir`` and scores it (see the module docstring)."""
  from orthohash_jax import train  # pylint: disable=g-import-not-at-top
  specs = [parse_revisited(s) for s in revisited_specs]
  trainer, state, step = train.restore_run(workdir)
  config = trainer.config
  out = {"workdir": workdir, "step": step, "num_bits": config.num_bits}
  if isinstance(trainer.data, InstanceData):
    result = evaluate(trainer, state, recompute=True)
    out["gldv2"] = {"mAP@100": result["mAP"], "mAP@100_recompute_bn": result["mAP_recompute_bn"]}
  for root, name in specs:
    out[name] = evaluate_revisited(trainer, state, root, name)
  return out


def main(argv=None) -> int:
  parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--revisited", action="append", default=[], help="ROOT:name, repeatable")
  parser.add_argument("--output", help="JSON path (default <workdir>/instance_results.json)")
  args = parser.parse_args(argv)
  try:
    out = evaluate_run(args.workdir, args.revisited)
    output = args.output or os.path.join(args.workdir, "instance_results.json")
    with open(output, "w") as f:
      json.dump(out, f, indent=2)
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(out, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
