r"""Training images/s of the paper backbones: ours vs the same model in PyTorch; bf16 drift.

  pip install torch==2.13.0   # optional benchmark extra (a CPU build)
  flock /tmp/bench.lock python -m experiments.bench_backbones [--archs=alexnet,vgg16,resnet50] \
      [--dtypes=float32,bfloat16] [--steps=3] [--batch=32] [--size=224] [--repeats=3] \
      [--xla_variants="name=XLA_FLAGS;..."] [--output=bench.json]

One training step = forward + backward + Adam (lr 1e-4) of backbone -> linear 100-way classifier
-> cross-entropy on random labels, on a fixed random batch (batch x size x size x 3), in train
mode (dropout on for AlexNet / VGG16, batch statistics for ResNet-50). Each (framework, arch,
dtype) runs in its own subprocess (in one process, XLA's idle worker threads starve PyTorch's):
one warm-up step (compilation), then ``--steps`` timed steps; the sides alternate
``--repeats`` times and the best images/s of each counts. ``--xla_variants`` adds JAX rows run
with other XLA_FLAGS (e.g. ``ynnconv=--xla_cpu_experimental_ynn_fusion_type=+individual_convolution``,
jaxlib's own default, which ``orthohash_jax.xla_cpu`` changes). PyTorch runs the torchvision
stand-ins of experiments/torchvision_replicas.py (same layers as torchvision) with
``torch.set_num_threads`` = the cores; its bfloat16 is ``torch.autocast("cpu", bfloat16)``, ours
``dtype=bfloat16`` (float32 parameters and Adam state on both sides).

Drift: max |features_bf16 - features_f32| / max |features_f32| of our backbones (eval mode,
torchvision-style random initialisation, ``--drift_batch`` random 224x224 images).
Prints ``os.getloadavg()`` at start and end; only ratios from one run mean anything.
"""
import argparse
import functools
import importlib.util
import json
import os
import sys
import time

import numpy as np

from experiments import child as child_lib

NUM_CLASSES = 100


def batch(args):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((args.batch, args.size, args.size, 3)).astype(np.float32)
  return x, rng.integers(0, NUM_CLASSES, args.batch).astype(np.int32)


def jax_train_step(arch, dtype):
  """(step, encode, init_state) of our ``arch`` in ``dtype`` (a name): ``step(params, stats,
  opt_state, x, y, i)`` is the jitted training step (params, BN stats and Adam state donated;
  dropout keyed by ``i``) returning them updated and the loss; ``encode(params, stats, x)`` the
  jitted eval-mode backbone features; ``init_state()`` (jitted) the initial (params, stats,
  opt_state), whose shapes ``jax.eval_shape(init_state)`` gives without materialising them."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from orthohash_jax import backbones  # pylint: disable=g-import-not-at-top

  class Classifier(nnx.Module):

    def __init__(self, rngs):
      self.backbone = backbones.BACKBONES[arch](dtype=jnp.dtype(dtype), rngs=rngs)
      self.head = nnx.Linear(self.backbone.out_features, NUM_CLASSES, rngs=rngs)

    def __call__(self, x, key):
      return self.head(self.backbone(x, train=True, dropout_key=key))

  make = lambda: Classifier(nnx.Rngs(0))
  graphdef = nnx.graphdef(nnx.eval_shape(make))
  tx = optax.adam(1e-4)

  @jax.jit
  def init_state():
    _, params, stats = nnx.split(make(), nnx.Param, nnx.BatchStat)
    params, stats = nnx.to_pure_dict(params), nnx.to_pure_dict(stats)  # as the trainer does
    return params, stats, tx.init(params)

  def loss_fn(params, stats, x, y, key):
    m = nnx.merge(graphdef, params, stats)
    logits = m(x, key)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, nnx.to_pure_dict(nnx.state(m, nnx.BatchStat))

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
  def step(params, stats, opt_state, x, y, i):
    key = jax.random.fold_in(jax.random.key(0), i)
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, x, y, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, loss

  @jax.jit
  def encode(params, stats, x):
    return nnx.merge(graphdef, params, stats).backbone(x, train=False)

  return step, encode, init_state


def time_steps(step, state, x, y, steps):
  """Images/s of ``steps`` calls of ``step`` after one warm-up call (compilation, when ``step``
  is not compiled yet), and the last loss."""
  import jax  # pylint: disable=g-import-not-at-top
  params, stats, opt_state, loss = step(*state, x, y, 0)
  loss.block_until_ready()
  t0 = time.perf_counter()
  for i in range(1, steps + 1):
    params, stats, opt_state, loss = step(params, stats, opt_state, x, y, i)
  jax.block_until_ready(loss)
  return steps * len(x) / (time.perf_counter() - t0), float(loss)


def bench_jax(arch, dtype, args):
  """Images/s of jitted train steps (params, BN stats and Adam state donated)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  step, _, init_state = jax_train_step(arch, dtype)
  x, y = map(jnp.asarray, batch(args))
  return time_steps(step, init_state(), x, y, args.steps)


def bench_torch(arch, dtype, args):
  import torch  # pylint: disable=g-import-not-at-top
  from experiments import torchvision_replicas  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  model = torchvision_replicas.REPLICAS[arch](num_classes=NUM_CLASSES).train()
  opt = torch.optim.Adam(model.parameters(), lr=1e-4)
  x, y = batch(args)
  x, y = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y).long()

  def step():
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
      logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())

  step()  # warm-up
  t0 = time.perf_counter()
  for _ in range(args.steps):
    loss = step()
  return args.steps * args.batch / (time.perf_counter() - t0), loss


def init_backbone(arch):
  """Our ``arch`` with its default (torchvision-style) random init, built in one compilation."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from orthohash_jax import backbones  # pylint: disable=g-import-not-at-top
  return nnx.jit(lambda: backbones.BACKBONES[arch](rngs=nnx.Rngs(0)))()


def drift(args):
  """{arch: relative max-abs error of bf16 features against float32} at 224x224."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from orthohash_jax import backbones  # pylint: disable=g-import-not-at-top
  x = jnp.asarray(np.random.default_rng(1).standard_normal((args.drift_batch, 224, 224, 3)),
                  jnp.float32)
  evaluate = nnx.jit(lambda m, a: m(a, train=False))
  out = {}
  for arch in args.archs.split(","):
    f32 = init_backbone(arch)
    arrays = {"/".join(map(str, p)): np.asarray(v[...])
              for p, v in nnx.to_flat_state(nnx.state(f32))}
    bf16 = backbones.from_arrays(arch, arrays, dtype=jnp.bfloat16)
    a, b = np.asarray(evaluate(f32, x)), np.asarray(evaluate(bf16, x))
    out[arch] = float(np.abs(a - b).max() / np.abs(a).max())
  return out


def child(args):
  if args.side == "drift":
    print(json.dumps(drift(args)))
    return
  if args.side == "torch":
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(args.threads)
  fn = bench_jax if args.side == "jax" else bench_torch
  images_per_second, loss = fn(args.arch, args.dtype, args)
  print(json.dumps({"images_per_second": images_per_second, "last_loss": loss}))


def run_child(argv, xla_flags=None):
  """One side in a fresh process (``child.run_json``); ``xla_flags`` replaces its XLA_FLAGS."""
  env = None if xla_flags is None else {**os.environ, "XLA_FLAGS": xla_flags}
  return child_lib.run_json("experiments.bench_backbones", argv, env)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--archs", default="alexnet,vgg16,resnet50")
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--repeats", type=int, default=3,
                      help="alternating runs of each side; the best images/s counts")
  parser.add_argument("--xla_variants", default="",
                      help="extra JAX rows, 'name=XLA_FLAGS' separated by ';'")
  parser.add_argument("--drift_batch", type=int, default=4)
  parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
  parser.add_argument("--output", default="")
  parser.add_argument("--side", choices=("jax", "torch", "drift"), help=argparse.SUPPRESS)
  parser.add_argument("--arch", help=argparse.SUPPRESS)
  parser.add_argument("--dtype", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.side:
    child(args)
    return
  if importlib.util.find_spec("torch") is None:
    sys.exit("error: torch is not installed (pip install torch==2.13.0)")
  print(f"load average at start: {os.getloadavg()}", flush=True)
  common = [f"--steps={args.steps}", f"--batch={args.batch}", f"--size={args.size}",
            f"--threads={args.threads}"]
  variants = {"jax": None}  # None: this environment's XLA_FLAGS (with orthohash_jax's option)
  for item in filter(None, args.xla_variants.split(";")):
    name, _, flags = item.partition("=")
    variants[f"jax_{name}"] = flags
  rows = []
  print(f"{'arch':9s} {'dtype':9s} " + " ".join(f"{k + ' img/s':>14s}" for k in variants) +
        f" {'torch img/s':>12s} {'jax/torch':>10s}", flush=True)
  for arch in args.archs.split(","):
    for dtype in args.dtypes.split(","):
      row = {"arch": arch, "dtype": dtype}
      for _ in range(args.repeats):
        for side, flags in [*variants.items(), ("torch", None)]:
          child_side = "torch" if side == "torch" else "jax"
          result = run_child([f"--side={child_side}", f"--arch={arch}", f"--dtype={dtype}"] +
                             common, flags)
          if result["images_per_second"] > row.get(f"{side}_images_per_second", 0):
            row.update({f"{side}_{k}": v for k, v in result.items()})
      row["ratio_jax_over_torch"] = row["jax_images_per_second"] / row["torch_images_per_second"]
      rows.append(row)
      print(f"{arch:9s} {dtype:9s} " +
            " ".join(f"{row[k + '_images_per_second']:14.2f}" for k in variants) +
            f" {row['torch_images_per_second']:12.2f} {row['ratio_jax_over_torch']:9.2f}x",
            flush=True)
  drifts = run_child(["--side=drift", f"--archs={args.archs}",
                      f"--drift_batch={args.drift_batch}"])
  for arch, value in drifts.items():
    print(f"bf16 feature drift {arch}: {value:.2e} (max abs error / max abs, 224x224)")
  print(f"load average at end: {os.getloadavg()}")
  if args.output:
    with open(args.output, "w") as f:
      json.dump({"rows": rows, "bf16_drift": drifts, "steps": args.steps, "batch": args.batch,
                 "size": args.size, "torch_threads": args.threads, "repeats": args.repeats,
                 "xla_variants": variants}, f, indent=2)


if __name__ == "__main__":
  main()
