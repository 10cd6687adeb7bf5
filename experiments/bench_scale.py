"""Exact Hamming search at 1e7 / 1e8 / 1e9 codes: a streamed .npy code file vs FAISS in memory.

Data: one file of N_max = max(--sizes) random 64-bit codes, uint32 (N_max, 2) ``.npy`` (8 GB at
1e9), written once to ``--dir`` and reused; size N searches its first N rows. Q = 100 random
queries (seed 0), k = 100. Per size, each measurement runs in a fresh child process, so its peak
RSS (``ru_maxrss``) is its own:
* ``mmap``: ``search.FileIndex(file).shard_search`` of rows [0, N) (chunks of ``--chunk_rows``
  rows read with pread while the previous chunk is searched, top-k merged exactly);
* ``faiss``: the N rows read into memory, IndexBinaryFlat.add, search (only N <= --faiss_max).
Reported: seconds (search only; FAISS's add is reported apart), pairs/s = Q N / seconds, peak RSS,
and whether FAISS's distances equal ours. The page cache is whatever the machine holds: a file
larger than free RAM is read from disk. Compilation is excluded (one warm-up on a small prefix).

  flock /tmp/bench.lock python -m experiments.bench_scale [--sizes=1e7,1e8,1e9] \
      [--dir=/tmp/orthohash_scale] [--output=bench_scale.json]
"""
import argparse
import json
import os
import resource
import time

import numpy as np

from experiments import child as child_lib
from orthohash_jax import search

NUM_BITS, NUM_QUERIES, K = 64, 100, 100


def code_file(directory, n, chunk=1 << 24):
  """Path of the (n, 2) uint32 code file, written in chunks (seeded) if missing or smaller."""
  path = os.path.join(directory, f"codes64_{n}.npy")
  if os.path.exists(path):
    return path
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(1)
  tmp = path + ".part"
  with open(tmp, "wb") as f:
    np.lib.format.write_array_header_1_0(f, {"descr": "<u4", "fortran_order": False,
                                             "shape": (n, 2)})
    for s in range(0, n, chunk):
      rng.integers(0, 2**32, (min(chunk, n - s), 2), dtype=np.uint32).tofile(f)
  os.replace(tmp, path)
  return path


def queries():
  return np.random.default_rng(0).integers(0, 2**32, (NUM_QUERIES, 2), dtype=np.uint32)


def child(kind, path, n, chunk_rows):
  """Runs one measurement in this process and prints a JSON line."""
  q = queries()
  out = {"kind": kind, "N": n}
  if kind == "mmap":
    index = search.FileIndex(path, NUM_BITS, chunk_rows)
    index.shard_search(q, K, 0, min(n, chunk_rows))  # compile (the one chunk shape)
    start = time.perf_counter()
    dist, _ = index.shard_search(q, K, 0, n)
  else:
    import faiss  # pylint: disable=import-outside-toplevel
    start = time.perf_counter()
    index = faiss.IndexBinaryFlat(NUM_BITS)
    index.add(search.CodeFile(path, NUM_BITS).read(0, n).view(np.uint8))
    out["load_add_s"] = time.perf_counter() - start
    start = time.perf_counter()
    dist, _ = index.search(q.view(np.uint8), K)
  out["seconds"] = time.perf_counter() - start
  out["pairs_per_s"] = NUM_QUERIES * n / out["seconds"]
  out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  np.save(f"{path}.{kind}_{n}_dist.npy", dist)
  print(json.dumps(out), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="1e7,1e8,1e9")
  parser.add_argument("--dir", default="/tmp/orthohash_scale")
  parser.add_argument("--chunk_rows", type=int, default=search.CHUNK_ROWS)
  parser.add_argument("--faiss_max", type=float, default=1e8, help="largest N for FAISS")
  parser.add_argument("--output", help="JSON file for the table")
  parser.add_argument("--child", choices=("mmap", "faiss"), help=argparse.SUPPRESS)
  parser.add_argument("--path", help=argparse.SUPPRESS)
  parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args.child, args.path, args.n, args.chunk_rows)
    return
  sizes = [int(float(s)) for s in args.sizes.split(",")]
  path = code_file(args.dir, max(sizes))
  print(f"load average at start: {os.getloadavg()}; file {path}", flush=True)
  rows = []
  print(f"{'N':>12} {'path':6} {'seconds':>9} {'pairs/s':>10} {'peak RSS MiB':>13} {'dist ==':>8}")
  for n in sizes:
    kinds = ["mmap"] + (["faiss"] if n <= args.faiss_max else [])
    for kind in kinds:
      r = child_lib.run_json("experiments.bench_scale", [
          f"--child={kind}", f"--path={path}", f"--n={n}", f"--chunk_rows={args.chunk_rows}"])
      if kind == "faiss":
        r["distances_equal"] = bool(np.array_equal(np.load(f"{path}.mmap_{n}_dist.npy"),
                                                   np.load(f"{path}.faiss_{n}_dist.npy")))
      rows.append(r)
      print(f"{n:12d} {kind:6} {r['seconds']:9.2f} {r['pairs_per_s']:10.3e} "
            f"{r['peak_rss_mib']:13.0f} {str(r.get('distances_equal', '-')):>8}", flush=True)
  mmap = {r["N"]: r["pairs_per_s"] for r in rows if r["kind"] == "mmap"}
  print(f"pairs/s at {max(sizes):.0e} / at {min(sizes):.0e}: "
        f"{mmap[max(sizes)] / mmap[min(sizes)]:.2f}")
  print(f"load average at end: {os.getloadavg()}", flush=True)
  if args.output:
    with open(args.output, "w") as f:
      json.dump({"rows": rows, "Q": NUM_QUERIES, "k": K, "bits": NUM_BITS}, f, indent=1)


if __name__ == "__main__":
  main()
