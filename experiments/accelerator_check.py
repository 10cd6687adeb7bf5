r"""One command for a GPU or TPU: device tests, training speed with MFU, retrieval, input pipeline.

  python -m experiments.accelerator_check --out=DIR [--quick]

Writes DIR/accelerator_check.json and DIR/accelerator_check.md (one table per section):
* tests: the device-relevant pytest selections (mesh training, bfloat16, backbones, retrieval),
  each in a subprocess with a time limit (``--test_timeout``), slow tests included;
* train: ``experiments.bench_train``'s JAX side (the real training loop, first epoch excluded)
  on Fashion-MNIST (needs its IDX files, ``--data_dir``; ``--train_config=configs/digits.py``
  needs none);
* backbones: ``experiments.bench_backbones``' training step of AlexNet, VGG16 and ResNet-50 at
  batch 256, 224x224, float32 and bfloat16: images/s and model FLOPs utilisation, the FLOPs of
  the compiled step by XLA's cost analysis / (step time x the chip's peak, ``PEAKS``);
* retrieval: ``experiments.bench_retrieval``'s paper section (mAP@R at the three paper sizes)
  and one exact top-k search (Q = 1,000, N = 1e6, k = 1,000, 64 bits);
* input: ``experiments.bench_input``'s training pipeline (decode + RandomResizedCrop(224) +
  flip) on generated JPEGs, as images/s and images per second of one CPU core (1000 / CPU ms
  per image, all threads counted).
The tests run first, before this process touches the device (a TPU admits one process; on a
GPU no process preallocates its memory). On CPU (``jax.default_backend() == "cpu"``) or with
``--quick`` it runs a reduced mode, each
part seconds: one named test per selection, digits for one epoch, AlexNet at batch 2 and
64x64, the ImageNet100 size / 50, 320 images. On CPU the peak is the measured 2048^3 float32
matmul (``bench_train.matmul_gflops``). A section that fails records its error and the others
still run; the exit status is 1 when a section or a test failed. About 8 minutes on one H100
(estimated: not run here, no accelerator was available).
"""
import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import types

# The test selections run in child processes on the same GPU: no process takes 75% of its
# memory up front (JAX's default), so that the children's allocations fit next to the parent's.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from experiments import bench_backbones, bench_input, bench_retrieval, bench_train  # pylint: disable=wrong-import-position
from orthohash_jax import cli, config_base  # pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Peak:
  """Public dense peak figures of one chip (per chip, not per board or pod)."""
  name: str
  bf16_flops: float
  fp32_flops: float  # non-tensor-core float32; None: the chip has no separate figure
  memory_bytes_per_s: float
  source: str


# device_kind substring -> its peak; the first match wins (H100 PCIe before H100)
PEAKS = (
    ("H100 PCIe", Peak("H100 PCIe", 756e12, 51e12, 2.0e12, "NVIDIA H100 datasheet, PCIe")),
    ("H100", Peak("H100 SXM", 989e12, 67e12, 3.35e12, "NVIDIA H100 datasheet, SXM5")),
    ("H200", Peak("H200 SXM", 989e12, 67e12, 4.8e12, "NVIDIA H200 datasheet")),
    ("A100", Peak("A100 SXM 80GB", 312e12, 19.5e12, 2.04e12, "NVIDIA A100 datasheet")),
    ("TPU v5 lite", Peak("TPU v5e", 197e12, None, 819e9, "Google Cloud TPU v5e docs")),
    ("TPU v6 lite", Peak("TPU v6e", 918e12, None, 1640e9, "Google Cloud TPU v6e docs")),
)

# name, pytest arguments of the full check, of the quick one (node ids of fast tests)
TEST_GROUPS = (
    ("mesh training", ["tests/test_parallel.py"], ["tests/test_parallel.py::test_mesh_errors"]),
    ("bfloat16", ["tests/test_backbones.py", "-k", "bfloat16"],
     ["tests/test_backbones.py", "-k", "bfloat16 and alexnet"]),
    ("backbones", ["tests/test_backbones.py"],
     ["tests/test_backbones.py::test_out_features_and_unknown_arch"]),
    ("retrieval", ["tests/test_retrieval.py", "tests/test_metrics.py"],
     ["tests/test_retrieval.py::test_topk_bad_input"]),
)


@dataclasses.dataclass(frozen=True)
class Sizes:
  archs: tuple = ("alexnet", "vgg16", "resnet50")
  dtypes: tuple = ("float32", "bfloat16")
  batch: int = 256
  image_size: int = 224
  steps: int = 5
  train_config: str = "configs/fashion_mnist.py"
  train_epochs: int = 3
  paper_sizes: tuple = bench_retrieval.PAPER_SIZES
  search: tuple = (1000, 1_000_000, 1000)  # Q, N, k
  input_images: int = 1024
  input_workers: tuple = (1, 4)


QUICK = Sizes(archs=("alexnet",), batch=2, image_size=64, steps=1,
              train_config="configs/digits.py", train_epochs=1,
              paper_sizes=tuple((name, q // 50, n // 50, r // 50, c, m)
                                for name, q, n, r, c, m in bench_retrieval.PAPER_SIZES[:1]),
              search=(100, 20_000, 10), input_images=320, input_workers=(1,))


def device_peak():
  """The ``Peak`` of device 0: from ``PEAKS``, or on CPU the measured float32 matmul rate."""
  device = jax.devices()[0]
  if device.platform == "cpu":
    flops = bench_train.matmul_gflops("jax") * 1e9
    return Peak("CPU", flops, flops, None, "measured: 2048^3 float32 matmul, this machine")
  for key, peak in PEAKS:
    if key in device.device_kind:
      return peak
  return None


def cost_of(compiled):
  """(FLOPs, bytes accessed) of a compiled computation by XLA's cost analysis."""
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis.get("flops", 0.0)), float(analysis.get("bytes accessed", 0.0))


def step_costs(arch, dtype, batch, size):
  """{"train": (FLOPs, bytes), "encode": (FLOPs, bytes)} of ``bench_backbones``' training step
  and eval-mode forward of ``arch`` at ``batch`` x size x size x 3, from compiling them on
  abstract inputs (nothing is materialised or run)."""
  step, encode, init_state = bench_backbones.jax_train_step(arch, dtype)
  params, stats, opt_state = jax.eval_shape(init_state)
  x = jax.ShapeDtypeStruct((batch, size, size, 3), np.float32)
  y = jax.ShapeDtypeStruct((batch,), np.int32)
  return {"train": cost_of(step.lower(params, stats, opt_state, x, y, 0).compile()),
          "encode": cost_of(encode.lower(params, stats, x).compile())}


def backbone_row(arch, dtype, sizes, peak):
  """Images/s of ``bench_backbones``' training step, its FLOPs and bytes per step by cost
  analysis, and the model FLOPs utilisation against ``peak``."""
  step, _, init_state = bench_backbones.jax_train_step(arch, dtype)
  x, y = bench_backbones.batch(types.SimpleNamespace(batch=sizes.batch, size=sizes.image_size))
  state = init_state()
  compiled = step.lower(*state, x, y, 0).compile()
  flops, bytes_accessed = cost_of(compiled)
  images_per_s, loss = bench_backbones.time_steps(compiled, state, x, y, sizes.steps)
  peak_flops = peak and (peak.bf16_flops if dtype == "bfloat16" else peak.fp32_flops)
  achieved = flops * images_per_s / sizes.batch
  return {"arch": arch, "dtype": dtype, "batch": sizes.batch, "size": sizes.image_size,
          "images_per_s": images_per_s, "step_flops": flops, "step_bytes": bytes_accessed,
          "achieved_flops_per_s": achieved, "mfu": achieved / peak_flops if peak_flops else None,
          "last_loss": loss}


def run_tests(args, quick):
  rows = []
  for name, full, reduced in TEST_GROUPS:
    command = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-m", "",
               *(reduced if quick else full)]
    start = time.perf_counter()
    try:
      proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                            timeout=args.test_timeout, check=False)
      lines = proc.stdout.strip().splitlines()
      summary = lines[-1] if lines else proc.stderr.strip()[-200:]
      counts = {kind: int(n) for n, kind in
                re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary)}
      ok = proc.returncode == 0 or (proc.returncode == 5 and not counts.get("failed"))
    except subprocess.TimeoutExpired:
      summary, counts, ok = f"stopped after {args.test_timeout} s", {}, False
    rows.append({"group": name, "pytest": shlex.join(command[3:]), "ok": ok, "counts": counts,
                 "summary": summary, "seconds": time.perf_counter() - start})
  return rows


def run_train(args, sizes):
  name = args.train_config or sizes.train_config
  config = config_base.load_config_file(os.path.join(ROOT, name))
  if args.data_dir:
    config.data_dir = args.data_dir
  steps_per_second, loss = bench_train.bench_jax(config, sizes.train_epochs)
  return {"config": name, "epochs_timed": sizes.train_epochs,
          "batch_size": config.batch_size, "steps_per_second": steps_per_second,
          "last_loss": loss}


def run_retrieval(sizes):
  rng = np.random.default_rng(0)
  rows = [bench_retrieval.bench_paper(rng, *spec, repeats=2) for spec in sizes.paper_sizes]
  num_q, n, k = sizes.search
  rows.append(bench_retrieval.bench_search(rng, "ties", n, num_q, k, 64, repeats=2))
  return rows


def run_input(sizes):
  with tempfile.TemporaryDirectory() as directory:
    lists = bench_input.make_files(directory, sizes.input_images)
    order = np.random.default_rng(0).permutation(sizes.input_images)
    order = order[:len(order) // bench_input.BATCH * bench_input.BATCH]
    rows = []
    for workers in sizes.input_workers:
      rate, cpu_ms, _ = bench_input.ours_images_per_s(lists, workers, order)
      rows.append({"workers": workers, "images_per_s": rate, "cpu_ms_per_image": cpu_ms,
                   "images_per_s_per_core": 1000 / cpu_ms})
  return rows


def _fmt(value, spec):
  return "-" if value is None else format(value, spec)


def _percent(value):
  return "-" if value is None else f"{100 * value:.1f}%"


# section -> its table's columns: (header, right-aligned, the cell of a row)
COLUMNS = {
    "tests": [("selection", False, lambda r: r["group"]),
              ("result", False, lambda r: f"{'ok' if r['ok'] else 'FAILED'}: {r['summary']}"),
              ("seconds", True, lambda r: f"{r['seconds']:.0f}"),
              ("pytest", False, lambda r: f"`{r['pytest']}`")],
    "train": [("config", False, lambda r: r["config"]),
              ("batch", True, lambda r: str(r["batch_size"])),
              ("steps/s", True, lambda r: f"{r['steps_per_second']:.1f}"),
              ("last loss", True, lambda r: f"{r['last_loss']:.4f}")],
    "backbones": [("arch", False, lambda r: r["arch"]), ("dtype", False, lambda r: r["dtype"]),
                  ("batch", True, lambda r: str(r["batch"])),
                  ("images/s", True, lambda r: f"{r['images_per_s']:.1f}"),
                  ("GFLOP per step", True, lambda r: f"{r['step_flops'] / 1e9:.1f}"),
                  ("GB per step", True, lambda r: f"{r['step_bytes'] / 1e9:.2f}"),
                  ("MFU", True, lambda r: _percent(r["mfu"]))],
    "retrieval": [("case", False, lambda r: r["data"]), ("Q", True, lambda r: str(r["Q"])),
                  ("N", True, lambda r: str(r["N"])),
                  ("R / k", True, lambda r: str(r.get("R", r.get("k")))),
                  ("ours s", True, lambda r: f"{r['ours_s']:.3f}"),
                  ("mAP", True, lambda r: _fmt(r.get("map"), ".4f"))],
    "input": [("workers", True, lambda r: str(r["workers"])),
              ("images/s", True, lambda r: f"{r['images_per_s']:.1f}"),
              ("CPU ms per image", True, lambda r: f"{r['cpu_ms_per_image']:.2f}"),
              ("images/s per core", True, lambda r: f"{r['images_per_s_per_core']:.1f}")],
}


def table(columns, rows):
  """Markdown lines of a table of ``rows`` (dicts) with ``columns`` (as ``COLUMNS``')."""
  return (["| " + " | ".join(c[0] for c in columns) + " |",
           "| " + " | ".join("---:" if c[1] else "---" for c in columns) + " |"]
          + ["| " + " | ".join(c[2](r) for c in columns) + " |" for r in rows])


def markdown(report):
  peak = report["peak"]
  out = [f"# accelerator_check: {report['device']} ({report['backend']}"
         f"{', quick mode' if report['quick'] else ''})", "",
         f"Load average at start {report['load_start']}, at end {report['load_end']}; "
         f"{report['seconds']:.0f} s in all. Peak: "
         + (f"{peak['name']}, bf16 {peak['bf16_flops'] / 1e12:.3g} TFLOP/s, fp32 "
            f"{_fmt(peak['fp32_flops'] and peak['fp32_flops'] / 1e12, '.3g')} TFLOP/s "
            f"({peak['source']})" if peak else "unknown device kind: no MFU") + ".", ""]
  for name, section in report["sections"].items():
    out.append(f"## {name}")
    out.append("")
    if "error" in section:
      out += [f"error: {section['error']}", ""]
      continue
    out += table(COLUMNS[name], section["rows"])
    out.append("")
  return "\n".join(out)


def probe():
  """(backend, device kind) of device 0, asked in a child process: the parent leaves the
  accelerator free for the test selections' processes (a TPU admits one process at a time)."""
  proc = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend()); "
                         "print(jax.devices()[0].device_kind)"],
                        capture_output=True, text=True, check=True)
  return tuple(proc.stdout.strip().splitlines()[-2:])


def run_section(name, part):
  """{"rows": part(), "seconds": s}, or {"error": its one line, "seconds": s}."""
  start = time.perf_counter()
  try:
    section = {"rows": part()}
  except Exception as e:  # pylint: disable=broad-except
    # a failed part is part of the report; the other parts still run
    text = str(e).strip()
    section = {"error": f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"}
  section["seconds"] = time.perf_counter() - start
  cli.say(f"{name}: {'error: ' + section['error'] if 'error' in section else 'done'} "
          f"({section['seconds']:.1f} s)")
  return section


def check(args):
  backend, device = probe()
  quick = args.quick or backend == "cpu"
  sizes = QUICK if quick else Sizes()
  os.makedirs(args.out, exist_ok=True)
  start = time.perf_counter()
  report = {"device": device, "backend": backend, "quick": quick,
            "load_start": os.getloadavg(), "sizes": dataclasses.asdict(sizes)}
  cli.say(f"accelerator_check on {device} ({'quick' if quick else 'full'}); "
          f"load average {report['load_start']}")
  report["sections"] = {"tests": run_section("tests", lambda: run_tests(args, quick))}
  peak = device_peak()  # this process's first use of the device: after the tests' processes
  report["peak"] = peak and dataclasses.asdict(peak)
  parts = {
      "train": lambda: [run_train(args, sizes)],
      "backbones": lambda: [backbone_row(arch, dtype, sizes, peak)
                            for arch in sizes.archs for dtype in sizes.dtypes],
      "retrieval": lambda: run_retrieval(sizes),
      "input": lambda: run_input(sizes),
  }
  for name, part in parts.items():
    report["sections"][name] = run_section(name, part)
  report["load_end"] = os.getloadavg()
  report["seconds"] = time.perf_counter() - start
  with open(os.path.join(args.out, "accelerator_check.json"), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=1)
  with open(os.path.join(args.out, "accelerator_check.md"), "w", encoding="utf-8") as f:
    f.write(markdown(report) + "\n")
  failed = [name for name, s in report["sections"].items()
            if "error" in s or (name == "tests" and not all(r["ok"] for r in s["rows"]))]
  cli.say(f"wrote {args.out}/accelerator_check.json and .md"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
  return 1 if failed else 0


def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="directory of the JSON and markdown reports")
  parser.add_argument("--quick", action="store_true", help="the reduced mode (always on CPU)")
  parser.add_argument("--data_dir", default="", help="data_dir of the train section's config")
  parser.add_argument("--train_config", default="",
                      help="config of the train section (default: configs/fashion_mnist.py; "
                      "quick: configs/digits.py, which needs no files)")
  parser.add_argument("--test_timeout", type=int, default=90,
                      help="seconds per pytest selection")
  args = parser.parse_args(argv)
  if args.test_timeout < 1:
    parser.error(f"--test_timeout must be at least 1, got {args.test_timeout}")
  return cli.run_tool(lambda: check(args))


if __name__ == "__main__":
  raise SystemExit(main())
