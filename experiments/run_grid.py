r"""Runs a grid of (method x bits x seed) trainings and writes a markdown + CSV table of mAP.

  python -m experiments.run_grid --config=configs/fashion_mnist.py \
      --methods=CE+BN,OrthoCos+BN --bits=16,32,64 --seeds=0,1,2 --out=runs/fashion_table

Every run gets its own workdir under --out (a finished run, one with results.json, is not
redone, so an interrupted grid resumes). Extra --set key=value pairs override config keys for
every run (e.g. --set num_epochs=10). Methods are every ``config.loss`` under its name in the
paper's tables (OrthoCos+BN, CE+BN and the comparison methods of Tables 2-3: HashNet, DTSH,
SDH-C, GreedyHash, JMLH, DPN, CSQ), each with its own declared architecture (``methods``:
use_bn), and the ablations of Table 1 (``ABLATIONS``). Writes <out>/runs/<method>_<bits>b_s<seed>/
(one run each), <out>/runs.csv and <out>/table.md, and names each.
"""
import argparse
import csv
import json
import os
import sys

import numpy as np

from orthohash_jax import cli, config_base, run
from orthohash_jax import methods as methods_lib
from orthohash_jax import workdir as workdir_lib

# Ablations of the paper's Table 1: a method (``loss``) with keys set away from its defaults.
ABLATIONS = {
    "CE": ({"loss": "ce", "use_bn": False}, "CE baseline without the BN layer"),
    "OrthoCos": ({"loss": "orthohash", "use_bn": False}, "OrthoHash without the BN layer"),
    "OrthoArc+BN": ({"loss": "orthohash", "margin_type": "arc"}, "OrthoHash, angular margin"),
    "OrthoCos+BN/N": ({"loss": "orthohash", "codebook": "gaussian"},
                      "OrthoHash, codebook: sign of Gaussian"),
    "OrthoCos+BN/O": ({"loss": "orthohash", "codebook": "maxmin"},
                      "OrthoHash, codebook: max-min Hamming distance"),
    "OrthoCos+BN/H": ({"loss": "orthohash", "codebook": "hadamard"},
                      "OrthoHash, codebook: Hadamard (num_bits a power of two)"),
    "OrthoCos+BN+Qcs": ({"loss": "orthohash", "quantization_weight": 0.1,
                         "quantization_kind": "cs"}, "OrthoHash + cosine quantization loss 0.1"),
    "OrthoCos+BN+Ql2": ({"loss": "orthohash", "quantization_weight": 0.1,
                         "quantization_kind": "l2"}, "OrthoHash + L2 quantization loss 0.1"),
}
# Every method under its paper name, with its own declared architecture (``methods``), then the
# ablations: {name: (config overrides, one-line description)}.
METHODS = {**{m.name: ({"loss": loss}, f"loss={loss}: {m.summary}")
              for loss, m in methods_lib.METHODS.items()},
           **{name: (values, f"{', '.join(f'{k}={v}' for k, v in values.items())}: {line}")
              for name, (values, line) in ABLATIONS.items()}}


def methods_help() -> str:
  """One line per ``--methods`` name (``--help``'s epilog)."""
  width = max(len(name) for name in METHODS)
  return "methods:\n" + "\n".join(f"  {name:<{width}}  {line}"
                                    for name, (_, line) in METHODS.items())


def parse_methods(parser, text: str, known=tuple(METHODS)) -> list:
  """The methods of a comma-separated ``--methods`` value; an unknown one is a usage error."""
  methods = text.split(",")
  unknown = [m for m in methods if m not in known]
  if unknown:
    parser.error(f"unknown methods {unknown}; known: {list(known)}")
  return methods


def run_one(config_path, sets, overrides, workdir):
  results = workdir_lib.read_results(workdir)
  if results is not None:
    return results
  config = config_base.load_config_file(config_path)
  config_base.apply_overrides(config, sets)
  config.update(overrides)
  return run.train_and_evaluate(config, workdir)


def main() -> int:
  parser = cli.ArgumentParser(description=__doc__.splitlines()[0], epilog=methods_help(),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True)
  parser.add_argument("--methods", default="CE+BN,OrthoCos+BN",
                      help="comma-separated names (listed below)")
  parser.add_argument("--bits", type=cli.int_list(1), default="16,32,64",
                      help="code lengths, comma-separated")
  parser.add_argument("--seeds", type=cli.int_list(0), default="0",
                      help="seeds, comma-separated")
  parser.add_argument("--out", required=True)
  parser.add_argument("--set", nargs="*", default=[], help="key=value config overrides")
  args = parser.parse_args()
  methods = parse_methods(parser, args.methods)
  bits, seeds = args.bits, args.seeds
  rows = []
  for method in methods:
    for k in bits:
      for seed in seeds:
        workdir = os.path.join(args.out, "runs", f"{method.replace('/', '_')}_{k}b_s{seed}")
        try:
          res = run_one(args.config, args.set,
                        {**METHODS[method][0], "num_bits": k, "seed": seed}, workdir)
        except (ValueError, OSError, run.TrainingError) as e:
          print(f"error: {method} {k} bits seed {seed}: {e}", file=sys.stderr)
          return 2
        rows.append({"method": method, "bits": k, "seed": seed, "mAP": res["mAP"],
                     "steps_per_second": res["steps_per_second"]})
        print(json.dumps(rows[-1]), flush=True)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "runs.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  lines = [f"| method | {' | '.join(f'{k} bits' for k in bits)} |",
           "| --- |" + " --- |" * len(bits)]
  for method in methods:
    cells = []
    for k in bits:
      vals = [r["mAP"] for r in rows if r["method"] == method and r["bits"] == k]
      cells.append(f"{np.mean(vals):.4f} ± {np.std(vals):.4f}" if len(vals) > 1
                   else f"{vals[0]:.4f}")
    lines.append(f"| {method} | {' | '.join(cells)} |")
  table = "\n".join(lines) + f"\n\nmAP ({args.config}, seeds {seeds}; mean ± std over seeds)\n"
  with open(os.path.join(args.out, "table.md"), "w") as f:
    f.write(table)
  print(table)
  print(f"wrote {os.path.join(args.out, 'runs.csv')}, {os.path.join(args.out, 'table.md')} and "
        f"the runs in {os.path.join(args.out, 'runs')}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
