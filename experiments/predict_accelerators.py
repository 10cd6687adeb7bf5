r"""Predicted training speed of the paper backbones on one H100 and one TPU v5e, on paper.

  python -m experiments.predict_accelerators [--batches=4,8] [--cpu_batch=8] \
      [--input_images=1024] [--output=predict.json]

For AlexNet, VGG16 and ResNet-50 at 224x224: FLOPs and bytes accessed of
``bench_backbones``' training step (forward + backward + Adam) and eval-mode forward (the
encoding of evaluation), by XLA's cost analysis of the steps compiled, not run, on this machine
(``accelerator_check.step_costs``) at two small batches b1 < b2 (batch 256 at 224x224 is heavy to
compile on a CPU): per image = (c(b2) - c(b1)) / (b2 - b1), per step = c(b1) - b1 x per image
(parameters and Adam state), and at batch 256 per step + 256 x per image. A step's roofline
time is max(FLOPs / peak FLOP/s, bytes / memory bandwidth) with the public figures of
``accelerator_check.PEAKS``: the images/s it gives are an upper bound (float32 against the
non-tensor peak, as XLA's cost analysis counts it; bfloat16 against the dense tensor peak).
Bytes are the CPU compiler's (its fusions): a GPU or TPU compiler fuses more, so the memory
term is pessimistic. Next to it: images/s and MFU of the same step measured on this CPU at
``--cpu_batch`` in float32 (``accelerator_check.backbone_row``, peak = the measured 2048^3
matmul).

The paper's ImageNet100 run: 100 epochs of 50 steps of 256 (13,000 training images, the last
incomplete batch dropped) and one encoding of 5,000 queries + 128,495 database images. The input
pipeline binds when the predicted images/s exceed what the host's cores decode:
``--input_images`` generated JPEGs through ``bench_input``'s training pipeline (1 worker) give
the images/s per CPU core (1000 / CPU ms per image); cores needed = predicted images/s / that.
Prints a markdown table and the load average.
"""
import dataclasses
import json
import os
import types

from experiments import accelerator_check, bench_input
from orthohash_jax import cli

BATCH = 256
SIZE = 224
ARCHS = ("alexnet", "vgg16", "resnet50")
TRAIN_STEPS = 100 * (13_000 // BATCH)  # ImageNet100: 100 epochs, last batch dropped
ENCODED = 5_000 + 128_495  # queries + database
# (column, key of accelerator_check.PEAKS, dtype): the predicted columns
TARGETS = (("H100 fp32", "H100", "float32"), ("H100 bf16", "H100", "bfloat16"),
           ("TPU v5e bf16", "TPU v5 lite", "bfloat16"))


def at_batch(costs_1, costs_2, b1, b2, batch=BATCH):
  """Costs (FLOPs, bytes) at ``batch`` from those at b1 and b2: linear in the batch."""
  return tuple(c1 + (c2 - c1) * (batch - b1) / (b2 - b1) for c1, c2 in zip(costs_1, costs_2))


def roofline_seconds(costs, peak, dtype):
  flops, bytes_accessed = costs
  peak_flops = peak.bf16_flops if dtype == "bfloat16" else peak.fp32_flops
  return max(flops / peak_flops, bytes_accessed / peak.memory_bytes_per_s)


def predict(args):
  peaks = dict(accelerator_check.PEAKS)
  b1, b2 = args.batches
  load_start = os.getloadavg()
  cli.say(f"load average at start: {load_start}")
  rows = []
  for arch in ARCHS:
    row = {"arch": arch}
    for dtype in ("float32", "bfloat16"):
      small, large = (accelerator_check.step_costs(arch, dtype, b, SIZE) for b in (b1, b2))
      for kind in ("train", "encode"):
        row[f"{kind}_{dtype}"] = {
            "per_image": [(c2 - c1) / (b2 - b1) for c1, c2 in zip(small[kind], large[kind])],
            "at_256": at_batch(small[kind], large[kind], b1, b2)}
    for column, key, dtype in TARGETS:
      step_s = roofline_seconds(row[f"train_{dtype}"]["at_256"], peaks[key], dtype)
      encode_s = roofline_seconds(row[f"encode_{dtype}"]["at_256"], peaks[key], dtype)
      row[column] = {"train_images_per_s": BATCH / step_s,
                     "encode_images_per_s": BATCH / encode_s,
                     "imagenet100_run_s": TRAIN_STEPS * step_s + ENCODED / BATCH * encode_s}
    cli.say(f"{arch}: costs done")
    rows.append(row)
  peak = accelerator_check.device_peak()
  sizes = types.SimpleNamespace(batch=args.cpu_batch, image_size=SIZE, steps=1)
  for row in rows:
    row["cpu"] = accelerator_check.backbone_row(row["arch"], "float32", sizes, peak)
    cli.say(f"{row['arch']}: measured on this machine")
  inputs = accelerator_check.run_input(dataclasses.replace(
      accelerator_check.QUICK, input_images=args.input_images))[0]
  report = {"rows": rows, "batches": [b1, b2], "cpu_peak_flops": peak.fp32_flops,
            "input": inputs, "load_start": load_start, "load_end": os.getloadavg()}
  cli.say(table(report))
  cli.say(f"load average at end: {report['load_end']}")
  if args.output:
    with open(args.output, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=1)


def table(report):
  per_core = report["input"]["images_per_s_per_core"]
  lines = ["| arch | train GFLOP / MB per image (f32) | "
           + " | ".join(f"{c} img/s (train / encode)" for c, _, _ in TARGETS)
           + " | ImageNet100 run: H100 bf16 / TPU v5e | cores to feed H100 bf16 / TPU v5e "
           "| measured here: img/s, MFU (f32, batch "
           f"{report['rows'][0]['cpu']['batch']}) |",
           "| --- | ---: |" + " ---: |" * (len(TARGETS) + 3)]
  for r in report["rows"]:
    flops, bytes_accessed = r["train_float32"]["per_image"]
    cells = [f"{r[c]['train_images_per_s']:,.0f} / {r[c]['encode_images_per_s']:,.0f}"
             for c, _, _ in TARGETS]
    run = " / ".join(f"{r[c]['imagenet100_run_s'] / 60:.1f} min"
                     for c in ("H100 bf16", "TPU v5e bf16"))
    cores = " / ".join(f"{r[c]['train_images_per_s'] / per_core:.0f}"
                       for c in ("H100 bf16", "TPU v5e bf16"))
    cpu = r["cpu"]
    lines.append(f"| {r['arch']} | {flops / 1e9:.2f} / {bytes_accessed / 1e6:.0f} | "
                 + " | ".join(cells) + f" | {run} | {cores} | {cpu['images_per_s']:.2f}, "
                 f"{100 * cpu['mfu']:.0f}% |")
  return "\n".join(lines)


def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", type=cli.int_list(1), default=[4, 8],
                      help="the two batch sizes compiled for the cost analysis")
  parser.add_argument("--cpu_batch", type=int, default=8, help="batch of the CPU measurement")
  parser.add_argument("--input_images", type=int, default=1024,
                      help="generated JPEGs of the input-pipeline measurement")
  parser.add_argument("--output", default="", help="JSON file of the figures")
  args = parser.parse_args(argv)
  if len(args.batches) != 2 or args.batches[0] >= args.batches[1]:
    parser.error(f"--batches takes two increasing sizes, got {args.batches}")
  if args.cpu_batch < 1 or args.input_images < 5 * bench_input.BATCH:
    parser.error(f"--cpu_batch must be at least 1 and --input_images at least "
                 f"{5 * bench_input.BATCH}")
  return cli.run_tool(lambda: predict(args))


if __name__ == "__main__":
  raise SystemExit(main())
