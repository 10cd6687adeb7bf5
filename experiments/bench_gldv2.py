r"""Steps/s and peak memory of the GLDv2-size synthetic config on 1, 2 and 4 (fake CPU) devices.

  python -m experiments.bench_gldv2 [--devices=1,2,4] [--steps=100] [--output=bench_gldv2.json]

Each device count runs in a fresh subprocess (XLA_FLAGS=--xla_force_host_platform_device_count=N)
training ``configs/gldv2.py:synthetic`` (81,313 classes, 2,048-d descriptors, 64 bits, batch
256) with the codebook and logits split over all N devices (model_axis = N). Steps/s excludes
the first (compiling) chunk. Peak memory is the process's maximum RSS: on fake CPU devices all
shards live in one process, so it shows the host total, not a per-accelerator figure.
"""
import argparse
import json
import os
import resource
import time

from experiments import child as child_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(steps: int, num_bits: int) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  from orthohash_jax import config_base, data, parallel, run  # pylint: disable=g-import-not-at-top
  config = config_base.load_config_file(os.path.join(ROOT, "configs/gldv2.py:synthetic"))
  n = len(jax.devices())
  config.update(model_axis=n, num_bits=num_bits, steps_per_chunk=steps)
  d = data.load(config)
  trainer = run.make_trainer(config, d, parallel.make_mesh(-1, n))
  state = trainer.initial_state()
  state, losses = trainer.run_chunk(state, *data.host_batch(config, d, 0, steps))  # compile
  losses.block_until_ready()
  t0 = time.perf_counter()
  state, losses = trainer.run_chunk(state, *data.host_batch(config, d, steps, 2 * steps))
  losses.block_until_ready()
  elapsed = time.perf_counter() - t0
  shard = trainer.constants["head"]["codebook"].addressable_shards[0].data
  print(json.dumps({
      "devices": n, "steps_per_second": steps / elapsed, "loss": float(losses[-1]),
      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
      "codebook_shard_mb": shard.nbytes / 2**20, "num_classes": d.num_classes,
      "train_items": len(d.train_x)}))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", default="1,2,4")
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--num_bits", type=int, default=64)
  parser.add_argument("--output", default="")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args.steps, args.num_bits)
    return
  rows = []
  for n in (int(x) for x in args.devices.split(",")):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}",
           "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    rows.append(child_lib.run_json(
        "experiments.bench_gldv2", ["--child", f"--steps={args.steps}", f"--num_bits={args.num_bits}"],
        env))
  print(f"{'devices':>7} {'steps/s':>8} {'peak RSS GB':>11} {'codebook shard MB':>17}")
  for r in rows:
    print(f"{r['devices']:>7} {r['steps_per_second']:>8.2f} {r['peak_rss_gb']:>11.2f} "
          f"{r['codebook_shard_mb']:>17.1f}")
  if args.output:
    with open(args.output, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
