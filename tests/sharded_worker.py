"""One process of the device-order tests (``test_multihost.test_interleaved_device_order_*``).

  python tests/sharded_worker.py OUT.npz [COORDINATOR NUM_PROCESSES PROCESS_ID]

For meshes of all devices in two orders, "grouped" (``jax.devices()``: process by process) and
"interleaved" (one device of each process in turn), with model axes 1 and all devices: the
global training batch of steps 0-1 as assembled from this process's rows (``data.host_batch`` +
``parallel.global_batch``, gathered), the codes of the initial state (``evaluation.encode_split``)
and the APs of those codes (``metrics.average_precisions`` over the mesh, R = 5 and all, class
labels and random multi-hot labels), and ``evaluation.evaluate``'s mAP. Process 0 writes them to
OUT.npz with keys ``{order}{model_axis}_{name}``.
"""
import sys

import jax
import numpy as np

from orthohash_jax import config_base, evaluation, metrics, parallel, run
from orthohash_jax import data as data_lib


def blobs():
  """48 training = database items in 4 classes, 12 queries; float32 (N, 8)."""
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(4), 12).astype(np.int32)
  x = (rng.normal(size=(4, 8))[y] * 3 + rng.normal(size=(48, 8))).astype(np.float32)
  return data_lib.RetrievalData("blobs", 4, x, y, x[::4], y[::4], x, y)


def interleaved(devices):
  """Devices ordered p0d0, p1d0, p0d1, p1d1, ... (every process's k-th device in turn)."""
  by_process = {}
  for d in devices:
    by_process.setdefault(d.process_index, []).append(d)
  return [d for group in zip(*by_process.values()) for d in group]


def main(out, *dist):
  if dist:
    parallel.initialize(dist[0], int(dist[1]), int(dist[2]))
  data = blobs()
  config = config_base.base_config()
  config.update(hidden=(16,), num_bits=16, batch_size=16, eval_batch_size=8, num_epochs=2,
                eval_topk=5)
  multi_hot = (np.random.default_rng(1).random((48, 6)) < 0.3).astype(np.uint8)
  results = {}
  for order, devices in (("grouped", jax.devices()), ("interleaved", interleaved(jax.devices()))):
    for model_axis in (1, len(devices)):
      mesh = parallel.make_mesh(-1, model_axis, devices)
      config.model_axis = model_axis
      key = f"{order}{model_axis}_"
      xs, _ = data_lib.host_batch(config, data, 0, 2, mesh=mesh)
      whole = jax.jit(lambda a: a, out_shardings=parallel.replicated(mesh))(
          parallel.global_batch(mesh, xs, batch_axis=1))
      results[key + "batch"] = np.asarray(whole)
      trainer = run.make_trainer(config, data, mesh)
      state = trainer.initial_state()
      q = evaluation.encode_split(trainer, data, state, "query")
      db = evaluation.encode_split(trainer, data, state, "db")
      results[key + "codes"] = np.concatenate([q, db])
      for topk in (5, None):
        results[key + f"aps{topk}"] = metrics.average_precisions(
            q, db, data.query_y, data.db_y, topk, mesh)
        results[key + f"multi_aps{topk}"] = metrics.average_precisions(
            q, db, multi_hot[::4], multi_hot, topk, mesh)
      results[key + "mAP"] = np.float64(evaluation.evaluate(trainer, data, state)["mAP"])
  if parallel.is_main_process():
    np.savez(out, **results)


if __name__ == "__main__":
  main(*sys.argv[1:])
