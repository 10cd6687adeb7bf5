"""End-to-end command-line tests: each runs ``python -m orthohash_jax.main`` in a subprocess."""
import gzip
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from orthohash_jax import export, metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
       "JAX_PLATFORMS": "cpu"}
SHORT = ["--config.num_epochs=30", "--config.checkpoint_every_steps=92", "--config.hidden=(64,)"]


def main_cmd(workdir, *args, config="configs/digits.py"):
  return [sys.executable, "-m", "orthohash_jax.main", f"--config={config}",
          f"--workdir={workdir}", *args]


def run(cmd):
  return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)


def checkpoint_steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(p) for p in os.listdir(d) if p.isdigit()) if os.path.isdir(d) else []


def final_params(workdir):
  """(step, params) of the latest checkpoint, restored onto this process's first device."""
  step = checkpoint_steps(workdir)[-1]
  path = os.path.join(workdir, "checkpoints", str(step), "default")
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        checkpointer.metadata(path).item_metadata.tree)
  state = checkpointer.restore(path, target)
  return step, jax.tree.map(np.asarray, state["params"])


def assert_one_line_error(proc, pattern):
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr[-2000:]
  assert pattern in lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("full"))
  proc = run(main_cmd(workdir, *SHORT))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def test_results_json_and_export_roundtrip(finished_run, tmp_path):
  with open(os.path.join(finished_run, "results.json")) as f:
    results = json.load(f)
  assert {"mAP", "num_bits", "steps", "train_seconds", "steps_per_second"} <= set(results)
  assert results["steps"] == 30 * 23 and results["num_bits"] == 64 and results["mAP"] > 0.9
  out = str(tmp_path / "codes.npz")
  proc = subprocess.run([sys.executable, "-m", "orthohash_jax.export", f"--workdir={finished_run}",
                         f"--output={out}", "--faiss"], cwd=ROOT, env=ENV, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  codes = export.load_codes(out)
  assert codes["query_codes"].dtype == np.uint32 and codes["query_codes"].shape == (300, 2)
  got = metrics.mean_average_precision(codes["query_codes"], codes["db_codes"],
                                       codes["query_labels"], codes["db_labels"])
  assert got == pytest.approx(results["mAP"], abs=1e-12)
  same = export.load_codes(os.path.join(finished_run, "codes.npz"))
  np.testing.assert_array_equal(same["db_codes"], codes["db_codes"])
  faiss = pytest.importorskip("faiss")
  index = faiss.read_index_binary(os.path.splitext(out)[0] + ".faissbin")
  qbytes = np.ascontiguousarray(codes["query_codes"]).view(np.uint8)
  dist, _ = index.search(qbytes, 5)
  ref = np.sort((np.asarray(metrics.retrieval.hamming_distance(codes["query_codes"],
                                                                codes["db_codes"]))), 1)[:, :5]
  np.testing.assert_array_equal(dist, ref)


def test_kill_9_then_resume_matches_uninterrupted(finished_run, tmp_path):
  workdir = str(tmp_path / "killed")
  proc = subprocess.Popen(main_cmd(workdir, *SHORT), cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
  for line in proc.stdout:  # progress lines come after the checkpoint of earlier steps
    if line.startswith("step ") and int(line.split()[1].split("/")[0]) >= 200:
      proc.send_signal(signal.SIGKILL)
      break
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  steps = checkpoint_steps(workdir)
  assert steps and steps[-1] < 690
  resumed = run(main_cmd(workdir, *SHORT))
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f"resumed from checkpoint at step {steps[-1]}" in resumed.stdout
  step_a, a = final_params(workdir)
  step_b, b = final_params(finished_run)
  assert step_a == step_b == 690
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_corrupt_latest_checkpoint_falls_back(finished_run, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "copy")
  shutil.copytree(finished_run, workdir)
  latest = checkpoint_steps(workdir)[-1]
  for root, _, files in os.walk(os.path.join(workdir, "checkpoints", str(latest))):
    for name in files:
      if "manifest" in name or name.startswith("_METADATA"):
        with open(os.path.join(root, name), "wb") as f:
          f.write(b"garbage")
  proc = run(main_cmd(workdir, *SHORT))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert f"checkpoint at step {latest} could not be restored" in proc.stdout
  assert os.path.isdir(os.path.join(workdir, "checkpoints_corrupt", str(latest)))


@pytest.mark.parametrize("args,pattern", [
    (["--config.not_a_key=1"], "unknown config key 'not_a_key'"),
    (["--config.num_bits=0"], "num_bits must be positive"),
    (["--config.batch_size=100000"], "larger than the training set"),
    (["--config.num_bits=abc"], "--config.num_bits"),
    (["--config.num_bits=32"], "num_bits: 64 -> 32); use a new --workdir"),
])
def test_bad_input_one_line_and_checkpoints_intact(finished_run, args, pattern):
  before = {s: os.path.getmtime(os.path.join(finished_run, "checkpoints", str(s)))
            for s in checkpoint_steps(finished_run)}
  assert_one_line_error(run(main_cmd(finished_run, *args)), pattern)
  after = {s: os.path.getmtime(os.path.join(finished_run, "checkpoints", str(s)))
           for s in checkpoint_steps(finished_run)}
  assert before == after


def write_idx(path, array, corrupt=False):
  header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
  payload = header + array.astype(np.uint8).tobytes()
  with gzip.open(path, "wb") as f:
    f.write(payload[:-10] if corrupt else payload)


def test_fashion_idx_errors(tmp_path):
  assert_one_line_error(run(main_cmd(tmp_path / "w", "--config.data_dir=/nonexistent",
                                     config="configs/fashion_mnist.py")), "does not exist")
  rng = np.random.default_rng(0)
  for split, n in (("train", 40), ("t10k", 20)):
    write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)),
              corrupt=split == "t10k")
    write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
  assert_one_line_error(run(main_cmd(tmp_path / "w", f"--config.data_dir={tmp_path}",
                                     config="configs/fashion_mnist.py")), "header declares shape")
