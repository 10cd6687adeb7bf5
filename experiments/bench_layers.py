r"""Where a backbone's CPU training step goes: each convolution, ours (XLA) vs PyTorch, and the rest.

  pip install torch==2.13.0   # optional benchmark extra (a CPU build)
  flock /tmp/bench.lock python -m experiments.bench_layers --arch=vgg16 [--batch=16] [--size=224] \
      [--repeats=3] [--xla_flags="--xla_cpu_..."] [--output=layers.json]

Every distinct convolution of ``--arch`` (the shapes its torchvision replica meets on a
``--size`` image: input, weight, stride, padding) is timed as one training step needs it:
forward, gradient with respect to the input (none for the first layer) and to the weight, ours
as one jitted ``jax.vjp`` of ``lax.conv_general_dilated`` on NHWC / HWIO float32 (the layout of
``orthohash_jax.backbones``), PyTorch's as ``conv2d`` forward + ``autograd.grad`` on NCHW. The
two sides run in separate subprocesses (XLA's idle worker threads starve PyTorch's in one
process), alternating ``--repeats`` times; each figure is the best. The JAX child imports
``orthohash_jax`` first, so ``orthohash_jax.xla_cpu``'s option applies as in training;
``--xla_flags`` (the JAX child's XLA_FLAGS) compares other XLA:CPU options on the same layers
(``--xla_cpu_experimental_ynn_fusion_type=+individual_convolution``: jaxlib's own default).
Output: per layer ms (ours, torch), their ratio, and the totals weighted by how often each shape
occurs in the net; the whole step's time is ``bench_backbones``' figure, so the rest (pooling, BatchNorm, ReLU, dropout,
linear layers, Adam) is the difference.
"""
import argparse
import json
import os
import time

import numpy as np

from experiments import child as child_lib


def conv_shapes(arch, batch, size):
  """[(x_shape NCHW, w_shape OIHW, stride, padding, first, count)] of ``arch``'s convolutions on
  a (batch, 3, size, size) input, one entry per distinct shape, in network order."""
  import torch  # pylint: disable=g-import-not-at-top
  from experiments import torchvision_replicas  # pylint: disable=g-import-not-at-top
  model = torchvision_replicas.REPLICAS[arch]().eval()
  seen = {}

  def hook(module, inputs, _):
    key = (tuple(inputs[0].shape), tuple(module.weight.shape), module.stride[0], module.padding[0])
    seen[key] = seen.get(key, 0) + 1

  for m in model.modules():
    if isinstance(m, torch.nn.Conv2d):
      m.register_forward_hook(hook)
  with torch.no_grad():
    model(torch.zeros(batch, 3, size, size))
  return [(x, w, s, p, x[1] == 3, n) for (x, w, s, p), n in seen.items()]


def best_time(fn, repeats=3):
  fn()  # warm-up (compilation)
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def time_jax(shapes):
  """Best seconds per layer; ``import orthohash_jax`` first, so its XLA:CPU option applies (as in
  a training run) unless ``--xla_flags`` names that option."""
  import orthohash_jax  # pylint: disable=g-import-not-at-top,unused-import
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  out = []
  for x_shape, w_shape, stride, pad, first, _ in shapes:
    b, c, h, w = x_shape
    o, _, kh, kw = w_shape
    x = jnp.asarray(np.random.default_rng(0).standard_normal((b, h, w, c)), jnp.float32)
    k = jnp.asarray(np.random.default_rng(1).standard_normal((kh, kw, c, o)) * 0.01, jnp.float32)

    def conv(x, k, stride=stride, pad=pad):
      return jax.lax.conv_general_dilated(x, k, (stride, stride), ((pad, pad), (pad, pad)),
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))

    @jax.jit
    def step(x, k, first=first, conv=conv):
      if first:  # no gradient for the image
        y, vjp = jax.vjp(lambda k: conv(x, k), k)
      else:
        y, vjp = jax.vjp(conv, x, k)
      return vjp(jnp.ones_like(y))

    out.append(best_time(lambda step=step, x=x, k=k: jax.block_until_ready(step(x, k))))
  return out


def time_torch(shapes, threads):
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads)
  out = []
  for x_shape, w_shape, stride, pad, first, _ in shapes:
    x = torch.randn(*x_shape, requires_grad=not first)
    k = (torch.randn(*w_shape) * 0.01).requires_grad_()

    def step(x=x, k=k, stride=stride, pad=pad, first=first):
      y = torch.nn.functional.conv2d(x, k, stride=stride, padding=pad)
      return torch.autograd.grad(y, [k] if first else [x, k], torch.ones_like(y))

    out.append(best_time(step))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--arch", default="vgg16", choices=("alexnet", "vgg16", "resnet50"))
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
  parser.add_argument("--xla_flags", default="", help="XLA_FLAGS of the JAX side")
  parser.add_argument("--output", default="")
  parser.add_argument("--side", choices=("jax", "torch"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  shapes = conv_shapes(args.arch, args.batch, args.size)
  if args.side:
    times = time_jax(shapes) if args.side == "jax" else time_torch(shapes, args.threads)
    print(json.dumps(times))
    return
  print(f"load average at start: {os.getloadavg()}", flush=True)
  best = {"jax": [float("inf")] * len(shapes), "torch": [float("inf")] * len(shapes)}
  for _ in range(args.repeats):
    for side in ("jax", "torch"):
      env = {**os.environ, "XLA_FLAGS": args.xla_flags} if side == "jax" else None
      times = child_lib.run_json("experiments.bench_layers", [
          f"--side={side}", f"--arch={args.arch}", f"--batch={args.batch}",
          f"--size={args.size}", f"--threads={args.threads}"], env)
      best[side] = [min(a, b) for a, b in zip(best[side], times)]
  rows = []
  print(f"{'input (N,C,H,W)':22s} {'weight (O,I,kh,kw)':20s} {'s':>2s} {'n':>2s} "
        f"{'ours ms':>9s} {'torch ms':>9s} {'torch/ours':>10s}")
  for (x, w, s, p, first, n), a, b in zip(shapes, best["jax"], best["torch"]):
    rows.append({"input": x, "weight": w, "stride": s, "padding": p, "count": n,
                 "jax_ms": a * 1e3, "torch_ms": b * 1e3})
    print(f"{str(x):22s} {str(w):20s} {s:2d} {n:2d} {a * 1e3:9.1f} {b * 1e3:9.1f} {b / a:9.2f}x")
  total = {side: sum(r["count"] * r[f"{side}_ms"] for r in rows) for side in ("jax", "torch")}
  print(f"all convolutions of one step (batch {args.batch}): ours {total['jax']:.0f} ms, "
        f"torch {total['torch']:.0f} ms, torch/ours {total['torch'] / total['jax']:.2f}x")
  print(f"load average at end: {os.getloadavg()}")
  if args.output:
    with open(args.output, "w") as f:
      json.dump({"arch": args.arch, "batch": args.batch, "size": args.size,
                 "xla_flags": args.xla_flags, "rows": rows, "total_ms": total}, f, indent=2)


if __name__ == "__main__":
  main()
