"""Device meshes, shardings and multi-process set-up.

The training state is replicated (``P()``); batches are split along the ``data`` mesh axis, so
under ``jax.jit`` every reduction over the batch, BatchNorm statistics included, is computed over
the global batch, whatever the number of devices or processes.

Multi-process: each process calls ``initialize`` (a no-op for a single process), holds the
same in-memory dataset, and feeds only its own slice of every global batch
(``process_batch_slice``), which ``global_batch`` assembles into one global ``jax.Array``.
"""
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def initialize(coordinator_address=None, num_processes=None, process_id=None):
  """Starts ``jax.distributed`` when several processes are requested; otherwise does nothing.

  Arguments default to the environment variables ``JAX_COORDINATOR_ADDRESS``,
  ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``; on TPU pods and SLURM clusters, where JAX detects
  them itself, pass ``coordinator_address="auto"``.
  """
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  num_processes = int(num_processes or os.environ.get("JAX_NUM_PROCESSES", 1))
  process_id = process_id if process_id is not None else os.environ.get("JAX_PROCESS_ID")
  if coordinator_address == "auto":
    jax.distributed.initialize()
  elif num_processes > 1:
    if jax.default_backend() == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes=num_processes,
                               process_id=int(process_id))


def make_mesh(num_devices: int = -1) -> Mesh:
  """1-D data-parallel mesh over the first ``num_devices`` devices (-1: all, across processes)."""
  devices = jax.devices()
  if num_devices == -1:
    num_devices = len(devices)
  if not 1 <= num_devices <= len(devices):
    raise ValueError(f"mesh needs {num_devices} devices but {len(devices)} are available")
  return Mesh(np.asarray(devices[:num_devices]), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
  """Splits axis ``batch_axis`` over the data axis; other axes are replicated."""
  return NamedSharding(mesh, P(*([None] * batch_axis), DATA_AXIS))


def replicate(tree, mesh: Mesh):
  """Places a pytree of host arrays (identical on every process) replicated on the mesh."""
  sharding = replicated(mesh)
  return jax.tree.map(
      lambda a: jax.make_array_from_callback(np.shape(a), sharding, lambda idx: np.asarray(a)[idx]),
      tree)


def process_batch_slice(global_batch_size: int) -> slice:
  """The rows of every global batch that this process feeds."""
  count = jax.process_count()
  if global_batch_size % count:
    raise ValueError(f"global batch {global_batch_size} is not divisible by {count} processes")
  per = global_batch_size // count
  return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def global_batch(mesh: Mesh, local_rows, batch_axis: int = 0):
  """Builds a global array sharded on ``batch_axis`` from this process's rows (numpy)."""
  sharding = batch_sharding(mesh, batch_axis)
  shape = list(np.shape(local_rows))
  shape[batch_axis] *= jax.process_count()
  return jax.make_array_from_process_local_data(sharding, np.asarray(local_rows), tuple(shape))


def is_main_process() -> bool:
  return jax.process_index() == 0
