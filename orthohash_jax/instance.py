r"""Command line: instance-level scores (GLDv2 mAP@100, revisited Oxford/Paris) of a trained run.

The scoring itself is ``evaluation.evaluate_gldv2`` and ``evaluation.evaluate_revisited``
(rankings by (Hamming distance, database index); BN recompute as in the paper's Sec. 4.3).

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

from orthohash_jax import cli, evaluation, files, run

OUTPUT = "instance_results.json"  # default output, in the workdir


def evaluate_run(workdir: str, revisited_specs=()) -> dict:
  """Restores the latest checkpoint of ``workdir`` and scores it (see the module docstring)."""
  specs = [evaluation.parse_revisited(s) for s in revisited_specs]
  trainer, data, state, step = run.restore_run(workdir)
  if data.protocol != "gldv2" and not specs:
    raise ValueError(f"{workdir} is a {data.name} run without instance-level ground truth; "
                     "pass --revisited=ROOT:name to score revisited Oxford/Paris")
  out = {"workdir": workdir, "step": step, "num_bits": trainer.config.num_bits}
  if data.protocol == "gldv2":
    result = evaluation.evaluate_gldv2(trainer, data, state, recompute=True)
    out["gldv2"] = {"mAP@100": result["mAP"], "mAP@100_recompute_bn": result["mAP_recompute_bn"]}
  for root, name in specs:
    out[name] = evaluation.evaluate_revisited(trainer, data, state, root, name)
  return out


def main(argv=None) -> int:
  parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--revisited", action="append", default=[], help="ROOT:name, repeatable")
  parser.add_argument("--output", help="JSON path (default <workdir>/instance_results.json)")
  args = parser.parse_args(argv)
  def evaluate():
    out = evaluate_run(args.workdir, args.revisited)
    files.write_json(args.output or os.path.join(args.workdir, OUTPUT), out)
    cli.say(json.dumps(out, indent=2))
  return cli.run_tool(evaluate)


if __name__ == "__main__":
  sys.exit(main())
