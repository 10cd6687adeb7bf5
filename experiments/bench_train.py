r"""Training steps/s of the Fashion-MNIST config: orthohash-jax vs the same model in PyTorch.

  pip install torch==2.13.0   # optional benchmark extra (a CPU build)
  python -m experiments.bench_train [--epochs=5] [--num_bits=64] [--repeats=3] \
      [--output=bench_train.json]

Every side trains the same model on the same 5,000 x 784 training set (configs/fashion_mnist.py:
MLP 784-512-512 ReLU, hash layer without bias + BatchNorm, fixed Bernoulli codebook, cosine
head, OrthoHash loss s=8 m=0.2, Adam 1e-3, batch 64, drop last) for ``--epochs`` after one
warm-up epoch, each run in its own subprocess (in one process, XLA's idle worker threads starve
PyTorch's), the sides alternating ``--repeats`` times; the best steps/s of each counts.
orthohash-jax runs its real training loop (host batching, one compiled chunk per epoch, loss
check and a log line per chunk; last loss = mean of the last epoch). PyTorch runs two loops,
``torch.set_num_threads`` = the cores JAX may use, pixels normalised to float32 up front:
"plain" indexes preloaded tensors (its fastest loop) and "DataLoader" iterates a
``DataLoader(TensorDataset)`` in the main process, the loop of PyTorch's own examples. Prints
steps/s, our speed-up over each loop, each side's GFLOP/s against its own 2048^3 matmul and the
load average, and the time of the step's matmuls alone on each side (``matmul_floor_ms``: the
least time a step can take here) next to the time per step that 3x the plain loop needs. Needs
the Fashion-MNIST IDX files (Debian package dataset-fashion-mnist) or --data_dir.
"""
import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time

import numpy as np

from experiments import bench_layers
from experiments import child as child_lib

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


def bench_torch(config, data, epochs, codebook, loop="plain"):
  """steps/s of PyTorch: ``loop="plain"`` indexes preloaded tensors (its fastest loop);
  ``"dataloader"`` iterates ``DataLoader(TensorDataset(x, y), batch_size, shuffle=True,
  drop_last=True)`` in the main process, the loop of PyTorch's own examples."""
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
  x = data.train_x.astype(np.float32)
  if data.mean_std is not None:  # uint8 pixels: normalised once, up front (ours: on the device)
    mean, std = (np.asarray(a, np.float32) for a in data.mean_std)
    x = (x - mean) / std
  x, y = torch.from_numpy(x.reshape(len(x), -1)), torch.from_numpy(data.train_y).long()
  b = config.batch_size
  spe = len(x) // b
  gen = torch.Generator().manual_seed(config.seed)

  loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=b,
                                       shuffle=True, drop_last=True, generator=gen)

  def batches():
    if loop == "dataloader":
      yield from loader
      return
    perm = torch.randperm(len(x), generator=gen)
    for j in range(spe):
      idx = perm[j * b:(j + 1) * b]
      yield x[idx], y[idx]

  def epoch():
    for xb, yb in batches():
      cos = F.normalize(model(xb), dim=1) @ targets.T
      onehot = F.one_hot(yb, targets.shape[0]).float()
      loss = F.cross_entropy(config.scale * (cos - config.margin * onehot), yb)
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
    return float(loss.detach())

  epoch()  # warm-up
  t0 = time.perf_counter()
  for _ in range(epochs):
    last = epoch()
  return epochs * spe / (time.perf_counter() - t0), last


def layer_sizes(config, data) -> list:
  """Widths of the MLP's matmuls: input, hidden..., bits, classes (the cosine head)."""
  return [int(np.prod(data.input_shape)), *config.hidden, config.num_bits, data.num_classes]


def step_gflop(sizes, batch: int) -> float:
  """Forward + backward matmul FLOPs of one step (no input gradient for the first layer)."""
  macs = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
  return 2 * batch * (3 * sum(macs) - macs[0]) / 1e9


def backprop_matmuls(x, ws, transpose):
  """The matmuls of one step through a chain of weights ``ws`` and nothing else: for every layer
  the forward (batch x a x b), the weight gradient (a x batch x b) and, past the first layer,
  the input gradient (batch x b x a), chained as backpropagation chains them (the output stands
  in for its gradient). Returns a scalar that depends on every weight gradient. Works on jax
  arrays and torch tensors (``transpose``: the framework's)."""
  hs = [x]
  for w in ws:
    hs.append(hs[-1] @ w)
  g, total = hs[-1], 0.0
  for i in reversed(range(len(ws))):
    total = total + (transpose(hs[i]) @ g)[0, 0]  # weight gradient
    if i:
      g = g @ transpose(ws[i])  # input gradient
  return total


def matmul_floor_ms(side: str, sizes, batch: int, steps: int = 200) -> float:
  """Milliseconds per step of ``backprop_matmuls`` alone on fresh rows each step (jax: one
  compiled ``lax.scan``; torch: a Python loop under ``no_grad``), the best of 3 after a warm-up
  (``bench_layers.best_time``): no side can train faster than this on this machine."""
  rng = np.random.default_rng(0)
  ws = [rng.standard_normal((a, b), np.float32) * 0.01 for a, b in zip(sizes[:-1], sizes[1:])]
  xs = rng.standard_normal((steps, batch, sizes[0]), np.float32)
  if side == "jax":
    import jax  # pylint: disable=g-import-not-at-top
    f = jax.jit(lambda ws, xs: jax.lax.scan(
        lambda c, x: (c + backprop_matmuls(x, ws, lambda a: a.T), None), 0.0, xs)[0])
    run = lambda: f(ws, xs).block_until_ready()
  else:
    import torch  # pylint: disable=g-import-not-at-top
    tw, tx = [torch.from_numpy(w) for w in ws], torch.from_numpy(xs)

    def run():
      with torch.no_grad():
        return [backprop_matmuls(x, tw, lambda a: a.T) for x in tx]
  return bench_layers.best_time(run) / steps * 1e3


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


SIDES = {"jax": "orthohash-jax", "torch": "PyTorch, plain loop",
         "torch_dataloader": "PyTorch, DataLoader loop"}


def child(side, args):
  """Measures one side (a fresh process each, so neither starves the other's threads)."""
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
    loop = "dataloader" if side == "torch_dataloader" else "plain"
    steps_per_second, loss = bench_torch(config, d, args.epochs, cb, loop)
  sizes = layer_sizes(config, d)
  gflop = step_gflop(sizes, config.batch_size)
  framework = "jax" if side == "jax" else "torch"
  print(json.dumps({"steps_per_second": steps_per_second, "last_loss": loss,
                    "step_gflop": gflop, "achieved_gflops": steps_per_second * gflop,
                    "matmul_gflops": matmul_gflops(framework),
                    "matmul_floor_ms": matmul_floor_ms(framework, sizes, config.batch_size)}))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, default=5)
  parser.add_argument("--num_bits", type=int, default=64)
  parser.add_argument("--data_dir", default="")
  parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
  parser.add_argument("--repeats", type=int, default=3,
                      help="alternating runs of every side; the best steps/s counts")
  parser.add_argument("--output", default="")
  parser.add_argument("--side", choices=tuple(SIDES), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.side:
    child(args.side, args)
    return
  if importlib.util.find_spec("torch") is None:
    sys.exit("error: torch is not installed (pip install torch==2.13.0)")
  row = {"num_bits": args.num_bits, "epochs": args.epochs, "torch_threads": args.threads,
         "repeats": args.repeats, "load_average_start": os.getloadavg()}
  for _ in range(args.repeats):
    for side in SIDES:
      result = child_lib.run_json("experiments.bench_train", [f"--side={side}"] + sys.argv[1:])
      floor = min(result["matmul_floor_ms"], row.get(f"{side}_matmul_floor_ms", float("inf")))
      if result["steps_per_second"] > row.get(f"{side}_steps_per_second", 0):
        row.update({f"{side}_{k}": v for k, v in result.items()})
      row[f"{side}_matmul_floor_ms"] = floor  # the best over the repeats too
  row["load_average_end"] = os.getloadavg()
  for side, name in SIDES.items():
    speedup = ""
    if side != "jax":
      row[f"jax_over_{side}"] = row["jax_steps_per_second"] / row[f"{side}_steps_per_second"]
      speedup = f"  ours faster by {row[f'jax_over_{side}']:.2f}x"
    print(f"{name:26s} {row[side + '_steps_per_second']:8.1f} steps/s  "
          f"{row[side + '_achieved_gflops']:6.1f} GFLOP/s of {row[side + '_matmul_gflops']:6.1f} "
          f"(its 2048^3 matmul)  last loss {row[side + '_last_loss']:.4f}{speedup}")
  goal = 1e3 / (3 * row["torch_steps_per_second"])
  torch_floor = min(row["torch_matmul_floor_ms"], row["torch_dataloader_matmul_floor_ms"])
  print(f"the step's matmuls alone: {row['jax_matmul_floor_ms']:.2f} ms in JAX, "
        f"{torch_floor:.2f} ms in PyTorch; 3x the plain loop needs "
        f"{goal:.2f} ms per step; ours takes {1e3 / row['jax_steps_per_second']:.2f} ms")
  print(f"{row['jax_step_gflop']:.3f} GFLOP per step; best of {args.repeats}; load average "
        f"{row['load_average_start']} at start, {row['load_average_end']} at end")
  if args.output:
    with open(args.output, "w") as f:
      json.dump(row, f, indent=2)


if __name__ == "__main__":
  main()
