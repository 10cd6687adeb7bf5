"""Device meshes, shardings and multi-process set-up.

The training state is replicated (``P()``); batches are split along the ``data`` mesh axis, so
under ``jax.jit`` every reduction over the batch, BatchNorm statistics included, is computed over
the global batch, whatever the number of devices or processes. An optional ``model`` axis
splits the class dimension of the codebook (C, K) and of the logits (B, C): XLA then computes
the softmax cross-entropy with cross-device reductions and never gathers the full logits.

Multi-process: each process calls ``initialize`` (a no-op for a single process), holds the
same in-memory dataset, and feeds only the rows of every global batch that its own devices hold
(``process_rows``, read from the sharding: any device order of the mesh works, e.g. one that
interleaves the processes, and a ``model`` axis spanning processes, whose replicas then feed the
same rows), which ``global_batch`` assembles into one global ``jax.Array``.
"""
import hashlib
import os
import time

import jax
from jax._src import distributed  # the coordination client (as orbax uses it): no public API
from jax.experimental import multihost_utils
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
MODEL_AXIS = "model"
# A process that stops sending heartbeats for this long is declared dead by the coordination
# service, which then aborts every other process (jaxlib: SIGABRT); JAX's default is 100 s.
HEARTBEAT_TIMEOUT_SECONDS = 30
SHUTDOWN_TIMEOUT_SECONDS = 60  # how long the exit of a finished run waits for the others


def initialize(coordinator_address=None, num_processes=None, process_id=None,
               heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_SECONDS):
  """Starts ``jax.distributed`` when several processes are requested; otherwise does nothing.

  Arguments default to the environment variables ``JAX_COORDINATOR_ADDRESS``,
  ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``; on TPU pods and SLURM clusters, where JAX detects
  them itself, pass ``coordinator_address="auto"``. A killed process is detected by the others
  within ``heartbeat_timeout_seconds`` at the latest (docs/multihost.md#preemption).
  """
  timeouts = {"heartbeat_timeout_seconds": heartbeat_timeout_seconds,
              "shutdown_timeout_seconds": SHUTDOWN_TIMEOUT_SECONDS}
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  num_processes = int(num_processes or os.environ.get("JAX_NUM_PROCESSES", 1))
  process_id = process_id if process_id is not None else os.environ.get("JAX_PROCESS_ID")
  if coordinator_address == "auto":
    jax.distributed.initialize(**timeouts)
  elif num_processes > 1:
    # CPU collectives across processes (ignored by GPU/TPU backends); set before any JAX call
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes=num_processes,
                               process_id=int(process_id), **timeouts)


def make_mesh(num_devices: int = -1, model_axis: int = 1, devices=None) -> Mesh:
  """(data, model) mesh of ``num_devices`` devices (-1: all, across processes).

  The ``model`` axis (size ``model_axis``, any divisor of num_devices) shards the class dimension
  of the codebook and the logits (GLDv2-size heads); the batch is split over ``data`` =
  num_devices / model_axis. ``devices``: the devices in mesh order (row-major over (data,
  model)), used as given; None: ``jax.make_mesh`` over the first num_devices of ``jax.devices()``
  (a topology-aware order on TPU).
  """
  available = len(jax.devices() if devices is None else devices)
  if num_devices == -1:
    num_devices = available
  if not 1 <= num_devices <= available:
    raise ValueError(f"mesh needs {num_devices} devices but {available} are available")
  if model_axis < 1 or num_devices % model_axis:
    raise ValueError(f"model axis {model_axis} does not divide {num_devices} devices")
  shape, names = (num_devices // model_axis, model_axis), (DATA_AXIS, MODEL_AXIS)
  if devices is not None:
    return Mesh(np.asarray(list(devices)[:num_devices]).reshape(shape), names)
  return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * 2,
                       devices=jax.devices()[:num_devices])


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
  """Splits axis ``batch_axis`` over the data axis; other axes are replicated."""
  return NamedSharding(mesh, P(*([None] * batch_axis), DATA_AXIS))


def class_sharding(mesh: Mesh) -> NamedSharding:
  """Rows (classes) of a (C, K) array split over the model axis."""
  return NamedSharding(mesh, P(MODEL_AXIS, None))


def logits_sharding(mesh: Mesh) -> NamedSharding:
  """(B, C) logits: batch over data, classes over model."""
  return NamedSharding(mesh, P(DATA_AXIS, MODEL_AXIS))


def place(tree, sharding_of):
  """Puts a pytree of host arrays (identical on every process) on devices; ``sharding_of(path,
  leaf)`` gives each leaf's sharding. Each process only copies its addressable shards."""
  def put(path, a):
    a = np.asarray(a)
    return jax.make_array_from_callback(a.shape, sharding_of(path, a), lambda idx: a[idx])
  return jax.tree_util.tree_map_with_path(put, tree)


def replicate(tree, mesh: Mesh):
  """Places a pytree of host arrays (identical on every process) replicated on the mesh."""
  sharding = replicated(mesh)
  return place(tree, lambda path, a: sharding)


def _held_rows(sharding, size: int) -> np.ndarray:
  """Rows int64, ascending, of a (size,) array split by ``sharding`` that this process's devices
  hold (``addressable_devices_indices_map``; replicas counted once)."""
  held = sharding.addressable_devices_indices_map((size,)).values()
  spans = sorted({(s.start or 0, size if s.stop is None else s.stop) for (s,) in held})
  return np.concatenate([np.arange(start, stop) for start, stop in spans])


def process_rows(mesh: Mesh, global_batch_size: int) -> np.ndarray:
  """Rows int64 (b,), ascending, of a global batch of ``global_batch_size`` rows that this
  process feeds: the rows its devices hold under ``batch_sharding``, in the order
  ``global_batch`` expects them."""
  data = mesh.shape[DATA_AXIS]
  if global_batch_size % data:
    raise ValueError(f"global batch {global_batch_size} is not divisible by the {data} devices "
                     "of the data axis")
  return _held_rows(batch_sharding(mesh), global_batch_size)


def process_share(mesh: Mesh, n: int) -> np.ndarray:
  """This process's share of n independent rows (e.g. queries) split over every device of the
  mesh, in mesh order (n padded to a multiple of the devices): row ids int64 (m,), ascending,
  -1 for padding; m is the same on every process whose devices are as many."""
  devices = mesh.devices.size
  size = -(-n // devices) * devices
  rows = _held_rows(NamedSharding(mesh, P(tuple(mesh.axis_names))), size)
  return np.where(rows < n, rows, -1)


def local_mesh(mesh: Mesh) -> Mesh:
  """A 1-D mesh (axis ``data``) of this process's devices of ``mesh``, in mesh order: work on it
  needs no other process."""
  return Mesh(np.asarray(mesh.local_devices), (DATA_AXIS,))


def gather_rows(ids, values, n: int) -> np.ndarray:
  """(n, ...) rows from every process: each gives ``values`` (m, ...) of its rows ``ids`` int
  (m,) (-1: none), m the same on every process; rows nobody gives are 0. A collective: every
  process calls it. Values travel as their bytes (float64 stays exact)."""
  values, ids = np.ascontiguousarray(values), np.asarray(ids)
  if jax.process_count() > 1:
    row_shape, dtype = values.shape[1:], values.dtype
    words = values.reshape(len(ids), -1).view(np.uint8)
    ids = np.asarray(multihost_utils.process_allgather(ids.astype(np.int32))).reshape(-1)
    words = np.asarray(multihost_utils.process_allgather(words))
    values = words.reshape(len(ids), -1).view(dtype).reshape((len(ids),) + row_shape)
  out = np.zeros((n,) + values.shape[1:], values.dtype)
  keep = ids >= 0
  out[ids[keep]] = values[keep]
  return out


def global_batch(mesh: Mesh, local_rows, batch_axis: int = 0):
  """Builds a global array sharded on ``batch_axis`` from this process's rows (numpy): its rows
  ``process_rows`` of the global batch, in that order."""
  local_rows = np.asarray(local_rows)
  data = mesh.shape[DATA_AXIS]
  shape = list(local_rows.shape)
  shape[batch_axis] = shape[batch_axis] // len(process_rows(mesh, data)) * data
  return jax.make_array_from_process_local_data(batch_sharding(mesh, batch_axis), local_rows,
                                                tuple(shape))


def is_main_process() -> bool:
  return jax.process_index() == 0


def any_process(flag: bool) -> bool:
  """True on every process when ``flag`` is true on any (a collective: all must call it)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.any(multihost_utils.process_allgather(np.asarray([flag]))))


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier ``name`` (no-op for one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def agreed_max(value: float) -> float:
  """The largest ``value`` over processes, the same on every one (a collective)."""
  if jax.process_count() == 1:
    return float(value)
  return float(np.max(multihost_utils.process_allgather(np.asarray([value], np.float32))))


def unresponsive_processes(tag: str, seconds: float) -> list:
  """After a failed collective: the processes that do not check in under ``tag`` through the
  coordination service within ``seconds`` (every live process calls this); [0] when the service
  itself (on process 0) is gone."""
  client, me = distributed.global_state.client, jax.process_index()
  try:
    client.key_value_set(f"{tag}/{me}", "alive")
  except Exception:  # pylint: disable=broad-except
    return [0]
  deadline, lost = time.monotonic() + seconds, []
  for p in range(jax.process_count()):
    try:
      if p != me:
        client.blocking_key_value_get(f"{tag}/{p}",
                                      max(1, int(1000 * (deadline - time.monotonic()))))
    except Exception:  # pylint: disable=broad-except
      lost.append(p)
  return lost


def processes_differing(value: str) -> list:
  """Indices of the processes whose ``value`` differs from process 0's: the same list on every
  process ([] for one process). A collective: every process must call it."""
  if jax.process_count() == 1:
    return []
  digest = np.frombuffer(hashlib.sha256(value.encode()).digest(), np.uint8)
  gathered = np.asarray(multihost_utils.process_allgather(digest))
  return [i for i in range(len(gathered)) if not np.array_equal(gathered[i], gathered[0])]
