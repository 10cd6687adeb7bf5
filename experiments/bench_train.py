r"""Training steps/s of the Fashion-MNIST config: orthohash-jax vs the same model in PyTorch.

  pip install torch==2.13.0   # optional benchmark extra (a CPU build)
  python -m experiments.bench_train [--epochs=5] [--num_bits=64] [--output=bench_train.json]

Both sides train the same model on the same 5,000 x 784 training set (configs/fashion_mnist.py:
MLP 784-512-512 ReLU, hash layer without bias + BatchNorm, fixed Bernoulli codebook, cosine
head, OrthoHash loss s=8 m=0.2, Adam 1e-3, batch 64, drop last), in one process, one after the
other, after one warm-up epoch each. orthohash-jax runs its real training loop (host batching,
one compiled chunk per epoch, loss check and a log line per chunk; last loss = mean of the last
epoch); PyTorch gets its best plain loop: tensors preloaded in
memory, index batches, no DataLoader, ``torch.set_num_threads`` = the cores JAX may use. Each
side runs in its own subprocess (in one process, XLA's idle worker threads starve PyTorch's).
Prints steps/s of both, their ratio, and each side's GFLOP/s against its own 2048^3 matmul. Needs the Fashion-MNIST IDX files (Debian package
dataset-fashion-mnist) or --data_dir.
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fashion_config(num_bits, data_dir):
  from orthohash_jax import config_base  # pylint: disable=g-import-not-at-top
  config = config_base.load_config_file(os.path.join(ROOT, "configs/fashion_mnist.py"))
  config.num_bits = num_bits
  if data_dir:
    config.data_dir = data_dir
  return config


def bench_jax(config, epochs):
  """steps/s of the real training loop (``run.train_and_evaluate``: host batching, one compiled
  chunk per epoch, loss check and log line per chunk), the first (compiling) epoch excluded."""
  from orthohash_jax import run  # pylint: disable=g-import-not-at-top
  config.num_epochs = epochs + 1
  config.checkpoint_every_steps = 10**9  # one checkpoint, at the end
  with tempfile.TemporaryDirectory() as workdir:
    summary = run.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      last = json.loads(f.read().splitlines()[-1])
  return summary["steps_per_second"], last["loss"]


def bench_torch(config, data, epochs, codebook):
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  torch.manual_seed(config.seed)
  hash_fc = nn.Linear(512, config.num_bits, bias=False)
  nn.init.normal_(hash_fc.weight, std=0.01)
  model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), hash_fc,
                        nn.BatchNorm1d(config.num_bits, momentum=0.1))
  targets = F.normalize(torch.from_numpy(codebook), dim=1)
  opt = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
  x, y = torch.from_numpy(data.train_x), torch.from_numpy(data.train_y).long()
  b = config.batch_size
  spe = len(x) // b
  gen = torch.Generator().manual_seed(config.seed)

  def epoch():
    perm = torch.randperm(len(x), generator=gen)
    for j in range(spe):
      idx = perm[j * b:(j + 1) * b]
      cos = F.normalize(model(x[idx]), dim=1) @ targets.T
      onehot = F.one_hot(y[idx], targets.shape[0]).float()
      loss = F.cross_entropy(config.scale * (cos - config.margin * onehot), y[idx])
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
    return float(loss.detach())

  epoch()  # warm-up
  t0 = time.perf_counter()
  for _ in range(epochs):
    last = epoch()
  return epochs * spe / (time.perf_counter() - t0), last


def step_gflop(config, data) -> float:
  """Forward + backward matmul FLOPs of one step (no input gradient for the first layer)."""
  sizes = [int(np.prod(data.input_shape)), *config.hidden, config.num_bits, data.num_classes]
  macs = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
  return 2 * config.batch_size * (3 * sum(macs) - macs[0]) / 1e9


def matmul_gflops(side: str) -> float:
  """Sustained float32 GFLOP/s of a 2048^3 matmul: the roofline for this machine."""
  n = 2048
  if side == "jax":
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda m: m @ m)
    run = lambda: f(a).block_until_ready()
  else:
    import torch  # pylint: disable=g-import-not-at-top
    a = torch.ones(n, n)
    run = lambda: a @ a
  run()
  t0 = time.perf_counter()
  for _ in range(5):
    run()
  return 2 * n**3 * 5 / (time.perf_counter() - t0) / 1e9


def child(side, args):
  """Measures one framework (a fresh process each, so neither starves the other's threads)."""
  from orthohash_jax import codebook, data  # pylint: disable=g-import-not-at-top
  config = fashion_config(args.num_bits, args.data_dir)
  try:
    d = data.load(config)
  except ValueError as e:
    sys.exit(f"error: {e}")
  if side == "jax":
    steps_per_second, loss = bench_jax(config, args.epochs)
  else:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(args.threads)
    cb = codebook.make_codebook(config.codebook, d.num_classes, config.num_bits, config.seed)
    steps_per_second, loss = bench_torch(config, d, args.epochs, cb)
  gflop = step_gflop(config, d)
  print(json.dumps({"steps_per_second": steps_per_second, "last_loss": loss,
                    "step_gflop": gflop, "achieved_gflops": steps_per_second * gflop,
                    "matmul_gflops": matmul_gflops(side)}))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, default=5)
  parser.add_argument("--num_bits", type=int, default=64)
  parser.add_argument("--data_dir", default="")
  parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
  parser.add_argument("--output", default="")
  parser.add_argument("--side", choices=("jax", "torch"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.side:
    child(args.side, args)
    return
  row = {"num_bits": args.num_bits, "epochs": args.epochs, "torch_threads": args.threads}
  for side in ("jax", "torch"):
    if side == "torch" and importlib.util.find_spec("torch") is None:
      print(json.dumps(row))
      sys.exit("error: torch is not installed (pip install torch==2.13.0); JAX figures above")
    proc = subprocess.run([sys.executable, "-m", "experiments.bench_train", f"--side={side}"] + sys.argv[1:],
                          capture_output=True, text=True, check=False)
    if proc.returncode:
      sys.exit(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"{side} failed")
    row.update({f"{side}_{k}": v for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()})
  row["ratio_jax_over_torch"] = row["jax_steps_per_second"] / row["torch_steps_per_second"]
  for side, name in (("jax", "orthohash-jax"), ("torch", "PyTorch")):
    print(f"{name:14s} {row[side + '_steps_per_second']:8.1f} steps/s  "
          f"{row[side + '_achieved_gflops']:6.1f} GFLOP/s of {row[side + '_matmul_gflops']:6.1f} "
          f"(its 2048^3 matmul)  last loss {row[side + '_last_loss']:.4f}")
  print(f"ratio jax / torch: {row['ratio_jax_over_torch']:.2f}x "
        f"({row['jax_step_gflop']:.3f} GFLOP per step)")
  if args.output:
    with open(args.output, "w") as f:
      json.dump(row, f, indent=2)


if __name__ == "__main__":
  main()
