r"""Parity table: the same protocol trained by orthohash-jax and by a PyTorch implementation.

  python -m experiments.compare_torch --dataset=digits --out=runs/parity_digits
  python -m experiments.compare_torch --dataset=fashion_mnist --out=runs/parity_fmnist \
      [--set num_epochs=20] [--methods=CE+BN,OrthoCos+BN] [--bits=64] [--seeds=0,1,2]

For every method (rows of ``run_grid.METHODS``: CE, CE+BN, OrthoCos, OrthoCos+BN, OrthoArc+BN),
code length and seed: one orthohash-jax run (``run.train_and_evaluate`` on
``configs/<dataset>.py``, workdir ``<out>/jax/<method>_<bits>b_s<seed>``) and one PyTorch run
(``torch_reference.py`` in a subprocess, ``torch.set_num_threads(--threads)``, result
``<out>/torch/<method>_<bits>b_s<seed>.json``; 1 and 2 threads gave the same mAP to the last
digit on digits, CE, 16 bits, seed 1). Both share the split, codebook, batch order and
``metrics.mean_average_precision``; only the framework (and the parameter draws) differ. Finished
runs are not redone, so an interrupted comparison resumes; ``--table_only`` trains nothing and
writes the table of the runs finished so far (a cell's seed counts say what it holds).
``--set key=value`` overrides config keys of both sides (e.g. ``num_epochs=20``).

Writes ``<out>/runs.csv`` (method, bits, seed, framework, mAP) and ``<out>/table.md``: per method
and bits, the number of seeds and mean ± std (ddof 1) over them for each framework, the
difference jax - torch, and whether |difference| <= 2 standard errors
(sqrt(std_jax^2 / n_jax + std_torch^2 / n_torch); "n/a" below 2 seeds a side). Prints
``os.getloadavg()`` at start and end. Needs torch (the ``bench`` extra) for the PyTorch side.
"""
import csv
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from experiments import run_grid
from orthohash_jax import cli, run
from orthohash_jax import workdir as workdir_lib

METHODS = ("CE", "CE+BN", "OrthoCos", "OrthoCos+BN", "OrthoArc+BN")
DATASETS = ("digits", "fashion_mnist")


def finished_map(path):
  """mAP in the JSON output of a finished PyTorch run, else None."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)["mAP"]


def torch_run(config_path, sets, threads, output):
  """mAP of one PyTorch run (cached in ``output``); raises RuntimeError with its stderr tail."""
  if not os.path.exists(output):
    os.makedirs(os.path.dirname(output), exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.torch_reference",
         f"--config={config_path}", f"--output={output}", f"--threads={threads}", "--set", *sets],
        capture_output=True, text=True, check=False)
    if proc.returncode:
      raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip()
                         else f"exit status {proc.returncode}")
  return finished_map(output)


def summary_row(method, bits, jax_maps, torch_maps):
  """One markdown row: seeds and mean ± std of each framework, difference, within 2 standard
  errors (either side may hold fewer seeds, or none, in a partial table)."""
  a, b = np.asarray(jax_maps), np.asarray(torch_maps)
  def fmt(v):
    if len(v) == 0:
      return "not run"
    return f"{v.mean():.4f} ± {v.std(ddof=1):.4f}" if len(v) > 1 else f"{v[0]:.4f}"
  diff, within = "n/a", "n/a"
  if len(a) and len(b):
    diff = f"{a.mean() - b.mean():+.4f}"
  if len(a) > 1 and len(b) > 1:
    se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    within = "yes" if abs(a.mean() - b.mean()) <= 2 * se else "no"
  return (f"| {method} | {bits} | {len(a)} / {len(b)} | {fmt(a)} | {fmt(b)} | {diff} | "
          f"{within} |")


def main() -> int:
  parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", choices=DATASETS, default="digits")
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--bits", type=cli.int_list(1), default="16,64")
  parser.add_argument("--seeds", type=cli.int_list(0), default="0,1,2")
  parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
  parser.add_argument("--out", required=True)
  parser.add_argument("--set", nargs="*", default=[], help="key=value config overrides")
  parser.add_argument("--table_only", action="store_true",
                      help="train nothing: the table of the runs finished under --out")
  args = parser.parse_args()
  methods = run_grid.parse_methods(parser, args.methods, METHODS)
  if not args.table_only and importlib.util.find_spec("torch") is None:
    print("error: the PyTorch side needs torch (pip install orthohash-jax[bench])", file=sys.stderr)
    return 2
  print(f"load average at start: {os.getloadavg()}", flush=True)
  config_path = os.path.join(ROOT, "configs", f"{args.dataset}.py")
  rows, lines = [], ["| method | bits | seeds (jax / torch) | orthohash-jax | PyTorch | difference "
                     "| within 2 SE |", "| --- | --- | --- | --- | --- | --- | --- |"]
  for method in methods:
    for k in args.bits:
      maps = {"jax": [], "torch": []}
      for seed in args.seeds:
        name = f"{method}_{k}b_s{seed}"
        overrides = {**run_grid.METHODS[method][0], "num_bits": k, "seed": seed}
        sets = [*args.set, *(f"{key}={value}" for key, value in overrides.items())]
        workdir = os.path.join(args.out, "jax", name)
        torch_output = os.path.join(args.out, "torch", name + ".json")
        try:
          if args.table_only:
            got = {"jax": (workdir_lib.read_results(workdir) or {}).get("mAP"),
                   "torch": finished_map(torch_output)}
          else:
            got = {"jax": run_grid.run_one(config_path, args.set, overrides, workdir)["mAP"],
                   "torch": torch_run(config_path, sets, args.threads, torch_output)}
        except (ValueError, OSError, RuntimeError, run.TrainingError) as e:
          print(f"error: {name}: {e}", file=sys.stderr)
          return 2
        for framework, value in got.items():
          if value is not None:
            maps[framework].append(value)
            rows.append({"method": method, "bits": k, "seed": seed, "framework": framework,
                         "mAP": value})
            print(json.dumps(rows[-1]), flush=True)
      lines.append(summary_row(method, k, maps["jax"], maps["torch"]))
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "runs.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["method", "bits", "seed", "framework", "mAP"])
    writer.writeheader()
    writer.writerows(rows)
  table = "\n".join(lines) + (f"\n\nmAP@all ({args.dataset}, seeds {args.seeds}, overrides "
                              f"{args.set or 'none'}; mean ± std over seeds)\n")
  with open(os.path.join(args.out, "table.md"), "w") as f:
    f.write(table)
  print(table)
  print(f"load average at end: {os.getloadavg()}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
