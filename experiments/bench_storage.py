r"""How long one checkpoint save of the digits train state takes on local disk and on a gs://
bucket (the local GCS emulator of ``tests/gcs_emulator.py``, started here on 127.0.0.1).

  python -m experiments.bench_storage [--repeats=5]

The state is ``configs/digits.py``'s (MLP 512-512, 64 bits: parameters and Adam moments).
Each figure is the best of ``--repeats`` synchronous saves (``checkpoint.Checkpointer.save``,
orbax, every save a new step) after one warm-up save; the emulator serves from a local folder,
so the gs:// figure is the protocol's cost (HTTP requests, commit file), not a network's.
"""
import argparse
import itertools
import os
import sys
import tempfile

import fsspec

from experiments.bench_layers import best_time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))
from gcs_emulator import Emulator  # pylint: disable=g-import-not-at-top,wrong-import-position


def save_seconds(workdir: str, state, repeats: int) -> float:
  from orthohash_jax import checkpoint  # pylint: disable=g-import-not-at-top
  ckpt = checkpoint.Checkpointer(workdir, keep=2)
  steps = itertools.count(1)
  try:
    return best_time(lambda: ckpt.save(next(steps), state), repeats)
  finally:
    ckpt.close()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as root:
    emulator = Emulator(os.path.join(root, "gcs")).start()
    try:
      os.environ.update(emulator.env)  # before gcsfs / tensorstore are imported
      os.environ.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
      fsspec.config.conf.setdefault("gcs", {})["token"] = "anon"  # fsspec is imported already
      from orthohash_jax import config_base, data, run  # pylint: disable=g-import-not-at-top
      config = config_base.load_config_file("configs/digits.py")
      digits = data.load(config)
      state = run.make_trainer(config, digits).initial_state()
      local = save_seconds(os.path.join(root, "run"), state, args.repeats)
      bucket = save_seconds(emulator.prefix("run"), state, args.repeats)
    finally:
      emulator.stop()
  print(f"checkpoint save, digits state: local disk {local * 1e3:.0f} ms, "
        f"gs:// (emulator) {bucket * 1e3:.0f} ms")


if __name__ == "__main__":
  main()
