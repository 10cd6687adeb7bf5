"""Exact Hamming search and mAP@all speed: orthohash_jax vs FAISS IndexBinaryFlat and numpy.

One run covers, on random codes and on tie-heavy codes (few centres, 20% of bits flipped):
* search: N in {1e5, 1e6}, Q = 1000, k in {100, 1000}, K in {64, 128}: pairs/s (Q N / seconds)
  of ``retrieval.hamming_topk`` and of faiss (when installed), their ratio, and whether the
  returned distances agree;
* mAP@all: Q = 1000, N = 69,000 (CIFAR-10 sizes), 10 classes, K in {64, 128}: seconds of
  ``metrics.mean_average_precision`` vs a straightforward numpy reference (±1 float matmul, stable
  argsort, cumulative precision), and whether the values are equal; plus ours alone at N = 1e6.
Times exclude compilation (one warm-up call per shape). ``--quick``: small smoke version.

  python experiments/bench_retrieval.py --output=bench_retrieval.json [--quick]
"""
import argparse
import json
import resource
import time

import jax
import numpy as np

from orthohash_jax import metrics, retrieval


def make_codes(rng, n, num_bits, kind, centres, labels):
  """±1 float32 codes (n, K): "random", or "ties" (centre of the label, 20% of bits flipped)."""
  if kind == "random":
    return np.where(rng.random((n, num_bits), np.float32) < 0.5, 1.0, -1.0).astype(np.float32)
  x = centres[labels]
  return np.where(rng.random((n, num_bits), np.float32) < 0.2, -x, x).astype(np.float32)


def make_packed(rng, n, num_bits, kind, centres, labels, chunk=100_000):
  """``make_codes`` packed to uint32 (n, W), generated in chunks to bound memory."""
  return np.concatenate([np.asarray(retrieval.pack_codes(make_codes(
      rng, min(chunk, n - s), num_bits, kind, centres, labels[s:s + chunk])))
                         for s in range(0, n, chunk)])


def timed(fn, repeats=1):
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return best, out


def bench_search(rng, kind, n, num_q, k, num_bits, repeats):
  centres = np.where(rng.random((64, num_bits)) < 0.5, 1.0, -1.0)
  db = make_packed(rng, n, num_bits, kind, centres, rng.integers(0, 64, n))
  q = make_packed(rng, num_q, num_bits, kind, centres, rng.integers(0, 64, num_q))
  retrieval.hamming_topk(q[:1], db, k)  # compile
  ours_s, (dist, _) = timed(lambda: retrieval.hamming_topk(q, db, k), repeats)
  row = {"data": kind, "N": n, "Q": num_q, "k": k, "bits": num_bits,
         "ours_s": ours_s, "ours_pairs_per_s": num_q * n / ours_s}
  try:
    import faiss  # pylint: disable=import-outside-toplevel
  except ImportError:
    return row
  index = faiss.IndexBinaryFlat(retrieval.WORD_BITS * db.shape[1])
  index.add(db.view(np.uint8))
  faiss_s, (faiss_d, _) = timed(lambda: index.search(q.view(np.uint8), k), repeats)
  row.update(faiss_s=faiss_s, faiss_pairs_per_s=num_q * n / faiss_s, ratio=faiss_s / ours_s,
             distances_equal=bool(np.array_equal(np.asarray(dist), faiss_d)))
  return row


def numpy_map(q, db, q_labels, db_labels, chunk=100):
  """Reference mAP@all: ±1 float matmul distances, stable argsort, cumulative precision."""
  aps = []
  for s in range(0, len(q), chunk):
    dist = (q.shape[1] - q[s:s + chunk] @ db.T) / 2
    order = np.argsort(dist, axis=1, kind="stable")
    rel = db_labels[order] == q_labels[s:s + chunk, None]
    hits = np.cumsum(rel, axis=1)
    prec = (hits / np.arange(1, len(db) + 1) * rel).sum(1)
    aps.append(np.where(hits[:, -1] > 0, prec / np.maximum(hits[:, -1], 1), 0.0))
  return float(np.concatenate(aps).mean())


def bench_map(rng, kind, n, num_q, num_bits, num_classes=10):
  centres = np.where(rng.random((num_classes, num_bits)) < 0.5, 1.0, -1.0)
  db_labels, q_labels = rng.integers(0, num_classes, n), rng.integers(0, num_classes, num_q)
  db = make_codes(rng, n, num_bits, kind, centres, db_labels)
  q = make_codes(rng, num_q, num_bits, kind, centres, q_labels)
  pdb, pq = np.asarray(retrieval.pack_codes(db)), np.asarray(retrieval.pack_codes(q))
  metrics.mean_average_precision(pq[:8], pdb, q_labels[:8], db_labels)  # compile
  ours_s, ours = timed(lambda: metrics.mean_average_precision(pq, pdb, q_labels, db_labels))
  ref_s, ref = timed(lambda: numpy_map(q, db, q_labels, db_labels))
  return {"data": kind, "N": n, "Q": num_q, "bits": num_bits, "ours_s": ours_s,
          "numpy_s": ref_s, "speedup": ref_s / ours_s, "map": ours,
          "abs_diff": abs(ours - ref), "equal": abs(ours - ref) < 1e-9}


def bench_map_large(rng, n, num_q, num_bits=64, num_classes=100):
  """mAP@all of ours only at database size n (the numpy reference would take minutes)."""
  centres = np.where(rng.random((num_classes, num_bits)) < 0.5, 1.0, -1.0)
  db_labels, q_labels = rng.integers(0, num_classes, n), rng.integers(0, num_classes, num_q)
  pdb = make_packed(rng, n, num_bits, "ties", centres, db_labels)
  pq = make_packed(rng, num_q, num_bits, "ties", centres, q_labels)
  metrics.mean_average_precision(pq[:2], pdb, q_labels[:2], db_labels)  # compile
  ours_s, ours = timed(lambda: metrics.mean_average_precision(pq, pdb, q_labels, db_labels))
  return {"data": "ties", "N": n, "Q": num_q, "bits": num_bits, "ours_s": ours_s, "map": ours,
          "s_per_1000_queries": ours_s * 1000 / num_q}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--output", help="JSON file for the tables")
  parser.add_argument("--quick", action="store_true", help="small smoke version")
  parser.add_argument("--repeats", type=int, default=1, help="best of this many search timings")
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  if args.quick:
    sizes, ks, bits, num_q, map_n, map_q = (20_000,), (10, 100), (64,), 100, 5_000, 100
  else:
    sizes, ks, bits, num_q, map_n, map_q = (100_000, 1_000_000), (100, 1000), (64, 128), 1000, 69_000, 1000
  search_rows, map_rows = [], []
  print(f"{'data':7} {'N':>8} {'k':>5} {'K':>4} {'ours pairs/s':>13} {'faiss pairs/s':>14} "
        f"{'ours/faiss':>10} {'dist ==':>7}")
  for kind in ("random", "ties"):
    for n in sizes:
      for k in ks:
        for num_bits in bits:
          r = bench_search(rng, kind, n, num_q, k, num_bits, args.repeats)
          search_rows.append(r)
          print(f"{kind:7} {n:8d} {k:5d} {num_bits:4d} {r['ours_pairs_per_s']:13.3e} "
                f"{r.get('faiss_pairs_per_s', float('nan')):14.3e} {r.get('ratio', float('nan')):10.2f} "
                f"{str(r.get('distances_equal', '-')):>7}", flush=True)
  print(f"\nmAP@all, Q = {map_q}, N = {map_n}, 10 classes")
  print(f"{'data':7} {'K':>4} {'ours s':>8} {'numpy s':>8} {'speedup':>8} {'mAP':>8} {'equal':>6}")
  for kind in ("random", "ties"):
    for num_bits in bits:
      r = bench_map(rng, kind, map_n, map_q, num_bits)
      map_rows.append(r)
      print(f"{kind:7} {num_bits:4d} {r['ours_s']:8.3f} {r['numpy_s']:8.3f} {r['speedup']:8.1f} "
            f"{r['map']:8.4f} {str(r['equal']):>6}", flush=True)
  if not args.quick:
    large = bench_map_large(rng, 1_000_000, 200)
    map_rows.append(large)
    print(f"mAP@all ours, Q = 200, N = 1e6, 64 bits, 100 classes: {large['ours_s']:.1f} s "
          f"(10,000 queries: ~{large['s_per_1000_queries'] * 10:.0f} s)", flush=True)
  peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f"\npeak RSS of the whole run: {peak_mb:.0f} MiB")
  if args.output:
    with open(args.output, "w") as f:
      json.dump({"search": search_rows, "map_all": map_rows, "peak_rss_mib": peak_mb,
                 "backend": jax.default_backend()}, f, indent=1)


if __name__ == "__main__":
  main()
