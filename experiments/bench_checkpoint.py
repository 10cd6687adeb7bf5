r"""How long training waits on a checkpoint save: synchronous vs background (orbax async) saves.

  python -m experiments.bench_checkpoint [--states=digits,gldv2,alexnet] [--repeats=3] \
      [--output=bench_checkpoint.json]

For each train state (the model of a config, initialised; no data is read) it saves the state
with ``checkpoint.Checkpointer`` into a scratch directory, ``--repeats`` times per mode after one
warm-up save, and prints per mode the time ``save`` blocks (what a training step waits: with
``background=True`` the copy of the state off the devices, without it the whole write) and the
time until the files are complete (``save`` + ``wait``), best and median. States: ``digits``
(configs/digits.py: the 64-512-512 MLP, 64 bits), ``gldv2`` (configs/gldv2.py: the 2048 x 64
hash layer of 81,313 classes; the codebook is a constant, not saved) and ``alexnet``
(configs/imagenet100.py: torchvision's AlexNet, 64 bits, 100 classes; about 57M parameters).
Every state includes Adam's two moments, so it is about 3x the parameters.
"""
import argparse
import json
import os
import statistics
import tempfile
import time

import jax

from orthohash_jax import checkpoint, config_base, trainer as trainer_lib, workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# config file, input shape, number of classes of each state
STATES = {
    "digits": ("configs/digits.py", (64,), 10),
    "gldv2": ("configs/gldv2.py:synthetic", (2048,), 81_313),
    "alexnet": ("configs/imagenet100.py", (224, 224, 3), 100),
}


def initial_state(name: str):
  spec, input_shape, num_classes = STATES[name]
  config = config_base.load_config_file(os.path.join(ROOT, spec))
  trainer = trainer_lib.Trainer(
      config, input_shape=input_shape, num_classes=num_classes,
      codebook=workdir_lib.codebook(config, num_classes), total_steps=1000, mesh=None)
  return trainer.initial_state()


def time_saves(state, background: bool, repeats: int) -> dict:
  blocked, complete = [], []
  with tempfile.TemporaryDirectory() as directory:
    ckpt = checkpoint.Checkpointer(directory, keep=2, background=background)
    for step in range(repeats + 1):  # step 0: warm-up
      began = time.perf_counter()
      ckpt.save(step, state)
      returned = time.perf_counter()
      ckpt.wait()
      if step:
        blocked.append(returned - began)
        complete.append(time.perf_counter() - began)
    ckpt.close()
  return {"save_blocks_s": {"best": min(blocked), "median": statistics.median(blocked)},
          "complete_s": {"best": min(complete), "median": statistics.median(complete)}}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--states", default="digits,gldv2,alexnet")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--output", default="")
  args = parser.parse_args()
  rows = []
  for name in args.states.split(","):
    state = initial_state(name)
    size = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
    for background in (False, True):
      row = {"state": name, "state_mb": round(size / 2**20, 1),
             "mode": "background" if background else "sync",
             **time_saves(state, background, args.repeats)}
      print(json.dumps(row), flush=True)
      rows.append(row)
  if args.output:
    with open(args.output, "w") as f:
      json.dump({"loadavg": open("/proc/loadavg").read().split()[:3], "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
