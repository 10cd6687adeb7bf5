"""Benchmark sides in fresh processes: ``run_json`` runs ``python -m MODULE ARGV...`` and returns
the JSON of its last stdout line; a failed child ends the benchmark with its last stderr line
(one line, no traceback). Each side gets its own process because, in one, XLA's idle worker
threads starve PyTorch's."""
import json
import subprocess
import sys


def run_json(module: str, argv: list, env: dict = None):
  proc = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True,
                        env=env, check=False)
  if proc.returncode:
    lines = proc.stderr.strip().splitlines()
    sys.exit(f"error: {module} {' '.join(argv)}: {lines[-1] if lines else 'failed'}")
  return json.loads(proc.stdout.strip().splitlines()[-1])
