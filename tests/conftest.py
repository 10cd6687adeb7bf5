"""Shared test set-up and helpers (imported by the test modules as ``conftest``).

4 fake CPU devices in one process, so mesh code paths run with several devices; small data and
configs; the CLI subprocess helpers; file writers for the data formats.
"""
import gzip
import os
import signal
import subprocess
import sys

# The tests compile hundreds of small programs: XLA:CPU's LLVM back end at optimisation level 0
# compiles them in about 60% of the time (the default set: 91 s -> 67 s on 2 cores). XLA's HLO
# passes (simplification, fusion) still run as they do for users; the generated code differs in
# the last bits (e.g. fused multiply-adds), so the command-line runs a test compares with its own
# process get the same flag (CLI_ENV). Multi-host workers compare only with each other.
FAST_COMPILE = "--xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=4 {FAST_COMPILE}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# gcsfs picks its file-system class when imported: the plain one, which talks to the GCS emulator
# (the "experimental" one first asks the bucket type over gRPC/TLS, which the emulator lacks)
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import fsspec  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position
from PIL import Image  # pylint: disable=g-import-not-at-top,wrong-import-position

from orthohash_jax import config_base, parallel, run  # pylint: disable=wrong-import-position
from orthohash_jax import data as data_lib  # pylint: disable=wrong-import-position
from gcs_emulator import Emulator  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from experiments.browser import free_port  # pylint: disable=g-import-not-at-top,wrong-import-position,unused-import


# ---- small data, configs and trainers ----
def blobs(seed=0, n_per_class=32, classes=4, dim=8):
  """Gaussian blobs as RetrievalData: 128 training = database items, 16 queries."""
  rng = np.random.default_rng(seed)
  means = rng.normal(size=(classes, dim)) * 3
  y = np.repeat(np.arange(classes), n_per_class).astype(np.int32)
  x = (means[y] + rng.normal(size=(len(y), dim))).astype(np.float32)
  return data_lib.RetrievalData("blobs", classes, x, y, x[::8], y[::8], x, y)


@pytest.fixture
def fake_load(monkeypatch):
  """Makes ``data.load`` return the given data (and counts the calls)."""
  calls = []

  def use(data):
    monkeypatch.setattr(data_lib, "load", lambda config: calls.append(1) or data)
    return calls
  return use


def config_of(values: dict):
  """The base config with ``values`` set (the way a config file builds one)."""
  c = config_base.base_config()
  c.update(values)
  return c


def small_config(**overrides):
  c = config_base.base_config()
  c.hidden = (16,)
  c.num_bits = 16
  c.batch_size = 16
  c.num_epochs = 4
  c.eval_batch_size = 32
  c.update(overrides)
  return c


def make_trainer(config, data, num_devices=1, model_axis=1):
  return run.make_trainer(config, data, parallel.make_mesh(num_devices, model_axis))


def train_steps(trainer, data, state, start, stop):
  """(state, losses numpy (stop - start,)) after training global steps [start, stop)."""
  state, losses = trainer.run_chunk(state, *data_lib.host_batch(trainer.config, data, start, stop))
  return state, np.asarray(losses)


# ---- object storage ----
@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
  """A local GCS emulator (``gcs_emulator.Emulator``) for the session, with this process's
  environment pointed at it while the session runs: ``gcs.prefix()`` is a fresh gs:// path,
  ``gcs.subprocess_env(CLI_ENV)`` the environment of a command-line run that uses it."""
  emulator = Emulator(str(tmp_path_factory.mktemp("gcs"))).start()
  with pytest.MonkeyPatch.context() as patch:
    for key, value in emulator.env.items():
      patch.setenv(key, value)
    patch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    # fsspec read its FSSPEC_* variables when it was imported (before this fixture ran)
    patch.setitem(fsspec.config.conf, "gcs", {**fsspec.config.conf.get("gcs", {}), "token": "anon"})
    yield emulator
  emulator.stop()


# ---- command-line runs ----
CLI_ENV = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count=1 {FAST_COMPILE}",
           "JAX_PLATFORMS": "cpu"}


def main_cmd(workdir, *args, config="configs/digits.py"):
  return [sys.executable, "-m", "orthohash_jax.main", f"--config={config}",
          f"--workdir={workdir}", *args]


def sigterm_during_step(monkeypatch, source_class, step):
  """Makes ``source_class.train_rows`` send this process SIGTERM when it reads ``step``'s rows
  (the run then stops at the end of that chunk); returns the original method."""
  original = source_class.train_rows

  def interrupting(self, indices, steps, positions):
    if step in steps:
      os.kill(os.getpid(), signal.SIGTERM)
    return original(self, indices, steps, positions)

  monkeypatch.setattr(source_class, "train_rows", interrupting)
  return original


def run_cmd(cmd, env=None):
  return subprocess.run(cmd, cwd=ROOT, env=env or CLI_ENV, capture_output=True, text=True,
                        timeout=600)


def assert_one_line_error(proc, pattern, status=2):
  assert proc.returncode == status, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr[-2000:]
  assert pattern in lines[0]


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


# ---- data files ----
def write_idx(path, array, corrupt=False):
  """An unsigned-byte IDX file, gzipped; ``corrupt`` drops the last 10 bytes."""
  header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
  payload = header + np.asarray(array).astype(np.uint8).tobytes()
  with gzip.open(path, "wb") as f:
    f.write(payload[:-10] if corrupt else payload)


def write_image_lists(root, n_train=10, n_test=3, n_db=8, seed=0, classes=3):
  """Random JPEG and PNG files of varied sizes (40-89 px) under ``root/img`` and the three list
  files (one-hot labels, class i % classes); returns {list file name: (N, classes) labels}."""
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(root, "img"), exist_ok=True)
  rows = {}
  for filename, n in (("train.txt", n_train), ("test.txt", n_test), ("database.txt", n_db)):
    lines, labels = [], []
    for i in range(n):
      w, h = int(rng.integers(40, 90)), int(rng.integers(40, 90))
      name = f"img/{filename[:-4]}_{i}.{'jpg' if i % 2 else 'png'}"
      Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(os.path.join(root, name))
      label = np.eye(classes, dtype=int)[i % classes]
      lines.append(name + " " + " ".join(map(str, label)))
      labels.append(label)
    with open(os.path.join(root, filename), "w") as f:
      f.write("\n".join(lines) + "\n")
    rows[filename] = np.array(labels)
  return rows
