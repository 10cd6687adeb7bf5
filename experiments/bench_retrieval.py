"""Exact Hamming search and mAP@all speed: orthohash_jax vs FAISS IndexBinaryFlat and numpy.

One run covers, on random codes and on tie-heavy codes (few centres, 20% of bits flipped):
* search: N in {1e5, 1e6}, Q = 1000, k in {100, 1000}, K in {64, 128}: pairs/s (Q N / seconds)
  of ``retrieval.hamming_topk`` and of faiss (when installed), their ratio, and whether the
  returned distances agree; each side's database is prepared once, outside the timings (FAISS
  ``index.add``, our ``retrieval.blocked_codes``), as ``search.HammingIndex`` does;
* mAP@all: Q = 1000, N = 69,000 (CIFAR-10 sizes), 10 classes, K in {64, 128}: seconds of
  ``metrics.mean_average_precision`` vs a straightforward numpy reference (±1 float matmul, stable
  argsort, cumulative precision), and whether the values are equal; plus ours alone at N = 1e6;
* paper sizes, 64 bits, codes with class structure (centre of the item's first label, 20% of bits
  flipped): ImageNet100 (5,000 x 128,495, mAP@1000, 100 classes, single-label), NUS-WIDE
  (2,100 x 193,734, mAP@5000, 21 classes, multi-label) and MS-COCO (5,000 x 117,218, mAP@5000,
  80 classes, multi-label): ours vs ``authors_map``, an equivalent of the OrthoHash authors'
  ``calculate_mAP`` (needs torch, the optional ``bench`` extra). Their ``torch.topk`` does not
  order ties by index, so the values differ slightly; the table shows the difference. With
  faiss installed, also the time of FAISS's native search for the top R alone (no AP), and for
  the multi-label sets the time of the same codes with single labels (their first class): the
  multi-label pair rate as a fraction of the single-label one; and two stages of ours alone
  (``stage_timers``): the top-R search (no relevance, ranking or AP) and one pass writing the
  Q x N uint8 distances, beside a twentieth of the authors' time;
* scale: a synthetic evaluation of ``--scale_n`` (5M) database items and ``--scale_q`` (10,000)
  queries, 64 bits, mAP@1000, single-label (100 classes) and multi-label (21 classes, 1-3 per
  item), on 1 and 2 processes (``--scale_processes``; ``metrics.mean_average_precision`` over a
  mesh of every process's devices: each process ranks its share of the queries), each process
  its own subprocess pinned to its own core (as hosts have their own), plus 1 process with a
  quarter of the queries: wall time, pairs/s, CPU time and peak RSS of every process, the mAPs
  (equal on 1 and 2 processes). On a shared machine the CPU times are the fairer comparison:
  a process pinned to one core gets all of it when the other jobs move to the other core.
Times exclude compilation (one warm-up call per shape) and are the best of ``--repeats``, ours and
the reference alternating. ``--quick``: small smoke version; ``--sections``: any of search,
map_all, paper, scale.

  python -m experiments.bench_retrieval --output=bench_retrieval.json [--quick]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

# numpy's OpenBLAS keeps its idle threads spinning for ~0.1 s after each call (the numpy
# reference's matmuls), which takes a core from whatever runs next, here the next timing of ours
# (XLA runs its loops on every core): measured 0.36 -> 0.39 s for mAP@all. Idle threads sleep at
# once with this (set before numpy loads OpenBLAS); the reference took the same time either way
# (4.3-5.0 s, within noise).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

try:
  import torch  # the optional ``bench`` extra: only the authors' reference needs it
except ImportError:
  torch = None
try:
  import faiss  # optional: the top-k reference of the search section
except ImportError:
  faiss = None

from orthohash_jax import metrics, parallel, retrieval


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
  return timed_pair(fn, None, repeats)[0]


def timed_pair(ours, reference, repeats, *others):
  """Best of ``repeats`` (seconds, output) of ours, the reference (None: ours only) and any
  others, run alternately, so that all meet the same phases of a noisy machine."""
  fns = [fn for fn in (ours, reference, *others) if fn is not None]
  best, outs = [float("inf")] * len(fns), [None] * len(fns)
  for _ in range(repeats):
    for i, fn in enumerate(fns):
      start = time.perf_counter()
      outs[i] = jax.block_until_ready(fn())
      best[i] = min(best[i], time.perf_counter() - start)
  return list(zip(best, outs))


def bench_search(rng, kind, n, num_q, k, num_bits, repeats):
  centres = np.where(rng.random((64, num_bits)) < 0.5, 1.0, -1.0)
  db = make_packed(rng, n, num_bits, kind, centres, rng.integers(0, 64, n))
  q = make_packed(rng, num_q, num_bits, kind, centres, rng.integers(0, 64, num_q))
  blocked = retrieval.blocked_codes(db)  # built once, as the FAISS index is
  retrieval.hamming_topk(q, blocked, k)  # compile every shape
  reference = None
  if faiss is not None:
    index = faiss.IndexBinaryFlat(retrieval.WORD_BITS * db.shape[1])
    index.add(db.view(np.uint8))
    reference = lambda: index.search(q.view(np.uint8), k)
  timings = timed_pair(lambda: retrieval.hamming_topk(q, blocked, k), reference, repeats)
  ours_s, (dist, _) = timings[0]
  row = {"data": kind, "N": n, "Q": num_q, "k": k, "bits": num_bits,
         "ours_s": ours_s, "ours_pairs_per_s": num_q * n / ours_s}
  if reference is None:
    return row
  faiss_s, (faiss_d, _) = timings[1]
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


def bench_map(rng, kind, n, num_q, num_bits, repeats, num_classes=10):
  centres = np.where(rng.random((num_classes, num_bits)) < 0.5, 1.0, -1.0)
  db_labels, q_labels = rng.integers(0, num_classes, n), rng.integers(0, num_classes, num_q)
  db = make_codes(rng, n, num_bits, kind, centres, db_labels)
  q = make_codes(rng, num_q, num_bits, kind, centres, q_labels)
  pdb, pq = np.asarray(retrieval.pack_codes(db)), np.asarray(retrieval.pack_codes(q))
  metrics.mean_average_precision(pq[:8], pdb, q_labels[:8], db_labels)  # compile
  (ours_s, ours), (ref_s, ref) = timed_pair(
      lambda: metrics.mean_average_precision(pq, pdb, q_labels, db_labels),
      lambda: numpy_map(q, db, q_labels, db_labels), repeats)
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


PAPER_SIZES = (  # name, queries, database, R, classes, multi-label
    ("ImageNet100", 5000, 128_495, 1000, 100, False),
    ("NUS-WIDE", 2100, 193_734, 5000, 21, True),
    ("MS-COCO", 5000, 117_218, 5000, 80, True),
)


def authors_map(q_codes, db_codes, q_hot, db_hot, r):
  """mAP@R by the algorithm of the OrthoHash authors' ``calculate_mAP`` (kamwoh/orthohash,
  functions/hashing.py), written here: sign codes; distances (K - q.d) / 2 by a float matmul per
  32 database rows; torch.topk of the R smallest; then per query in numpy, relevant = the query's
  positive classes match a database row anywhere (zeros of the query replaced by -1), AP from
  cumulative precision. Labels are one-hot / multi-hot (N, C)."""
  db, q = torch.sign(torch.from_numpy(db_codes)), torch.sign(torch.from_numpy(q_codes))
  num_bits = db.shape[1]
  with torch.no_grad():
    dist = torch.cat([0.5 * (num_bits - q @ rows.T) for rows in torch.split(db, 32)], 1)
    top = torch.topk(dist, r, dim=1, largest=False)[1].numpy()
  aps = []
  for i in range(len(q_hot)):
    label = np.where(q_hot[i] == 0, -1, q_hot[i])
    match = np.sum(db_hot[top[i]] == label, 1) > 0
    hits = np.cumsum(match)
    num_rel = hits[-1]
    aps.append(np.sum(hits / np.arange(1, r + 1) * match) / num_rel if num_rel else 0.0)
  return float(np.mean(aps))


def multi_hot(rng, classes, num_classes, extra):
  """Multi-hot uint8 (n, num_classes): each item's class in ``classes`` (n,), plus ``extra``
  random classes, each kept with probability 1/2 (so 1 to extra + 1 classes per item)."""
  hot = np.zeros((len(classes), num_classes), np.uint8)
  hot[np.arange(len(classes)), classes] = 1
  for _ in range(extra):
    more = rng.integers(0, num_classes, len(classes))
    hot[np.arange(len(classes)), more] |= (rng.random(len(classes)) < 0.5).astype(np.uint8)
  return hot


def paper_data(rng, num_q, n, num_classes, multilabel, num_bits=64):
  """±1 float32 codes and labels: ids (N,) (single-label) or multi-hot uint8 (N, C) with 1-3
  classes per item; each code is its first class's centre with 20% of the bits flipped."""
  centres = np.where(rng.random((num_classes, num_bits)) < 0.5, 1.0, -1.0)
  out = []
  for size in (num_q, n):
    first = rng.integers(0, num_classes, size)
    codes = make_codes(rng, size, num_bits, "ties", centres, first)
    out.append((codes, multi_hot(rng, first, num_classes, 2 if multilabel else 0)))
  return out


def stage_timers(pq, pdb, r):
  """Two stages of ours at mAP@R of the paper sizes' 64-bit codes, each over the queries in
  ``metrics.TOPK_QUERY_CHUNK`` chunks: the top R alone (``retrieval.hamming_topk_unranked``:
  the search, without relevance, ranking or AP) and one pass writing the Q x N uint8 distances
  (which a matmul-and-top-k evaluation such as the authors' stores; the kernel stores them too
  where it builds no level)."""
  blocked, planes = retrieval.blocked_codes(pdb), retrieval.word_planes(pdb)
  chunks = [pq[s:s + metrics.TOPK_QUERY_CHUNK]
            for s in range(0, len(pq), metrics.TOPK_QUERY_CHUNK)]

  def top_r():
    return [retrieval.hamming_topk_unranked(c, blocked, r)[1] for c in chunks]

  def distances():  # blocks on each chunk: only one chunk's distances in memory
    return [jax.block_until_ready(metrics._small_distances_jit(c, planes, np.uint8)).shape
            for c in chunks]  # pylint: disable=protected-access

  top_r(), distances()  # compile every chunk shape
  return top_r, distances


def bench_paper(rng, name, num_q, n, r, num_classes, multilabel, repeats):
  (q, q_hot), (db, db_hot) = paper_data(rng, num_q, n, num_classes, multilabel)
  q_lab, db_lab = (q_hot, db_hot) if multilabel else (q_hot.argmax(1), db_hot.argmax(1))
  pq, pdb = np.asarray(retrieval.pack_codes(q)), np.asarray(retrieval.pack_codes(db))
  metrics.mean_average_precision(pq, pdb, q_lab, db_lab, r)  # compile every chunk shape
  reference = None if torch is None else (lambda: authors_map(q, db, q_hot, db_hot, r))
  search_only = None  # FAISS's native search for the top R alone (no AP), for scale
  if faiss is not None:
    index = faiss.IndexBinaryFlat(retrieval.WORD_BITS * pdb.shape[1])
    index.add(pdb.view(np.uint8))
    search_only = lambda: index.search(pq.view(np.uint8), r)
  single = None  # multi-label sets: the same codes ranked with single labels (the first class)
  if multilabel:
    q_first, db_first = q_hot.argmax(1), db_hot.argmax(1)
    metrics.mean_average_precision(pq, pdb, q_first, db_first, r)
    single = lambda: metrics.mean_average_precision(pq, pdb, q_first, db_first, r)
  top_r, distances = stage_timers(pq, pdb, r)
  timings = timed_pair(lambda: metrics.mean_average_precision(pq, pdb, q_lab, db_lab, r),
                       reference, repeats, search_only, single, top_r, distances)
  ours_s, ours = timings.pop(0)
  row = {"data": name, "Q": num_q, "N": n, "R": r, "multilabel": multilabel, "ours_s": ours_s,
         "map": ours, "pairs_per_s": num_q * n / ours_s}
  if reference is not None:
    ref_s, ref = timings.pop(0)
    row.update(authors_s=ref_s, authors_map=ref, speedup=ref_s / ours_s,
               abs_diff=abs(ours - ref))
  if search_only is not None:
    row["faiss_top_r_s"] = timings.pop(0)[0]
    row["vs_faiss"] = row["faiss_top_r_s"] / ours_s
  if single is not None:
    row["single_label_s"] = timings.pop(0)[0]
    row["multi_vs_single_rate"] = row["single_label_s"] / ours_s
  row["top_r_s"], row["distances_s"] = (t for t, _ in timings)
  return row


SCALE_R, SCALE_BITS = 1000, 64


def scale_data(n, num_q, seed=0):
  """Packed 64-bit codes (queries, database) and labels {"single": ids (N,), "multi": multi-hot
  uint8 (N, 21)} of the scale section, the same on every process (seeded); each code is its
  first class's centre with 20% of the bits flipped (the single label is that class)."""
  rng = np.random.default_rng(seed)
  centres = np.where(rng.random((100, SCALE_BITS)) < 0.5, 1.0, -1.0)
  out = []
  for size in (num_q, n):
    first = rng.integers(0, 100, size)
    hot = multi_hot(rng, first % 21, 21, 2)
    out.append((make_packed(rng, size, SCALE_BITS, "ties", centres, first),
                {"single": first, "multi": hot}))
  return out


def scale_worker(spec, n, repeats):
  """One process of the scale section; spec "P,p,port,Q". Prints one JSON line on process 0:
  the best of ``repeats`` timings (each ends with the APs gathered on every process)."""
  num_processes, process_id, port, num_q = (int(v) for v in spec.split(","))
  os.sched_setaffinity(0, {process_id % os.cpu_count()})  # before XLA sizes its thread pool
  if num_processes > 1:
    parallel.initialize(f"127.0.0.1:{port}", num_processes, process_id)
  (q, q_labels), (db, db_labels) = scale_data(n, num_q)
  mesh = parallel.make_mesh()
  warm = min(num_q, 512 * num_processes)  # compiles every chunk shape
  rows = {}
  for kind in ("single", "multi"):
    metrics.mean_average_precision(q[:warm], db, q_labels[kind][:warm], db_labels[kind],
                                   SCALE_R, mesh)
    best, cpu = float("inf"), float("inf")
    for _ in range(repeats):
      parallel.barrier(f"scale {kind}")
      start, cpu_start = time.perf_counter(), time.process_time()
      value = metrics.mean_average_precision(q, db, q_labels[kind], db_labels[kind], SCALE_R,
                                             mesh)
      best = min(best, time.perf_counter() - start)
      cpu = min(cpu, time.process_time() - cpu_start)
    cpus = parallel.gather_rows([process_id], [cpu], num_processes)
    rows[kind] = {"seconds": best, "map": value, "cpu_seconds": cpus.tolist(),
                  "pairs_per_s": num_q * n / best}
  rss = parallel.gather_rows([process_id], [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                            / 1024], num_processes)
  if parallel.is_main_process():
    print(json.dumps({"processes": num_processes, "Q": num_q, "N": n, "R": SCALE_R,
                      "peak_rss_mib": rss.tolist(), **rows}), flush=True)


def bench_scale(n, num_q, process_counts, repeats=1):
  """Runs ``scale_worker`` as 1, 2, ... processes (and 1 process with num_q / 4 queries)."""
  runs = [(p, num_q) for p in process_counts] + [(1, num_q // 4)]
  rows = []
  for num_processes, queries in runs:
    port = 12000 + os.getpid() % 20000
    cmd = lambda i: [sys.executable, "-m", "experiments.bench_retrieval",  # noqa: E731
                     f"--scale_worker={num_processes},{i},{port},{queries}", f"--scale_n={n}",
                     f"--repeats={repeats}"]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
           "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen(cmd(i), env=env, stdout=subprocess.PIPE, text=True)
             for i in range(num_processes)]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
      raise RuntimeError(f"scale worker failed ({num_processes} processes)")
    rows.append(json.loads(outs[0].strip().splitlines()[-1]))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--output", help="JSON file for the tables")
  parser.add_argument("--quick", action="store_true", help="small smoke version")
  parser.add_argument("--repeats", type=int, default=1,
                      help="best of this many timings per side (ours and the reference alternate)")
  parser.add_argument("--sections", default="search,map_all,paper")
  parser.add_argument("--bits", default="64,128", help="code lengths of search and mAP@all")
  parser.add_argument("--sizes", default="100000,1000000", help="database sizes of search")
  parser.add_argument("--paper_sizes", default=",".join(p[0] for p in PAPER_SIZES),
                      help="paper sizes to run (names)")
  parser.add_argument("--map_large", type=int, default=1, help="also mAP@all of ours at N = 1e6")
  parser.add_argument("--scale_n", type=int, default=5_000_000, help="database of scale")
  parser.add_argument("--scale_q", type=int, default=10_000, help="queries of scale")
  parser.add_argument("--scale_processes", default="1,2", help="process counts of scale")
  parser.add_argument("--scale_worker", help=argparse.SUPPRESS)  # internal: one scale process
  args = parser.parse_args()
  if args.scale_worker:
    scale_worker(args.scale_worker, args.scale_n, args.repeats)
    return
  sections = args.sections.split(",")
  rng = np.random.default_rng(0)
  print(f"load average at start: {os.getloadavg()}", flush=True)
  if args.quick:
    sizes, ks, bits, num_q, map_n, map_q = (20_000,), (10, 100), (64,), 100, 5_000, 100
    paper = [(name, q // 50, n // 50, r // 50, c, m) for name, q, n, r, c, m in PAPER_SIZES]
  else:
    sizes, ks, num_q, map_n, map_q = (tuple(int(n) for n in args.sizes.split(",")), (100, 1000),
                                      1000, 69_000, 1000)
    bits = tuple(int(b) for b in args.bits.split(","))
    paper = [p for p in PAPER_SIZES if p[0] in args.paper_sizes.split(",")]
  search_rows, map_rows, paper_rows, scale_rows = [], [], [], []
  if "search" in sections:
    print(f"{'data':7} {'N':>8} {'k':>5} {'K':>4} {'ours pairs/s':>13} {'faiss pairs/s':>14} "
          f"{'ours/faiss':>10} {'dist ==':>7}")
    for kind in ("random", "ties"):
      for n in sizes:
        for k in ks:
          for num_bits in bits:
            r = bench_search(rng, kind, n, num_q, k, num_bits, args.repeats)
            search_rows.append(r)
            print(f"{kind:7} {n:8d} {k:5d} {num_bits:4d} {r['ours_pairs_per_s']:13.3e} "
                  f"{r.get('faiss_pairs_per_s', float('nan')):14.3e} "
                  f"{r.get('ratio', float('nan')):10.2f} {str(r.get('distances_equal', '-')):>7}",
                  flush=True)
  if "map_all" in sections:
    print(f"\nmAP@all, Q = {map_q}, N = {map_n}, 10 classes")
    print(f"{'data':7} {'K':>4} {'ours s':>8} {'numpy s':>8} {'speedup':>8} {'mAP':>8} {'equal':>6}")
    for kind in ("random", "ties"):
      for num_bits in bits:
        r = bench_map(rng, kind, map_n, map_q, num_bits, args.repeats)
        map_rows.append(r)
        print(f"{kind:7} {num_bits:4d} {r['ours_s']:8.3f} {r['numpy_s']:8.3f} {r['speedup']:8.1f} "
              f"{r['map']:8.4f} {str(r['equal']):>6}", flush=True)
    if not args.quick and args.map_large:
      large = bench_map_large(rng, 1_000_000, 200)
      map_rows.append(large)
      print(f"mAP@all ours, Q = 200, N = 1e6, 64 bits, 100 classes: {large['ours_s']:.1f} s "
            f"(10,000 queries: ~{large['s_per_1000_queries'] * 10:.0f} s)", flush=True)
  if "paper" in sections:
    print("\nmAP@R at the paper's sizes, 64 bits: ours vs the authors' algorithm (torch)")
    print(f"{'data':12} {'Q':>5} {'N':>7} {'R':>5} {'ours s':>7} {'authors s':>9} {'speedup':>7} "
          f"{'mAP':>7} {'|diff|':>8} {'faiss top-R s':>13} {'vs faiss':>8} {'multi/single':>12}")
    for spec in paper:
      r = bench_paper(rng, *spec, args.repeats)
      paper_rows.append(r)
      print(f"{r['data']:12} {r['Q']:5d} {r['N']:7d} {r['R']:5d} {r['ours_s']:7.2f} "
            f"{r.get('authors_s', float('nan')):9.2f} {r.get('speedup', float('nan')):7.1f} "
            f"{r['map']:7.4f} {r.get('abs_diff', float('nan')):8.1e} "
            f"{r.get('faiss_top_r_s', float('nan')):13.2f} {r.get('vs_faiss', float('nan')):8.2f} "
            f"{r.get('multi_vs_single_rate', float('nan')):12.2f}", flush=True)
    print(f"\nstages of ours (s): top R alone, Q x N distances alone, beside the time 20x "
          f"the authors' allows\n{'data':12} {'ours':>6} {'top R':>6} {'distances':>9} "
          f"{'authors / 20':>12}")
    for r in paper_rows:
      print(f"{r['data']:12} {r['ours_s']:6.2f} {r['top_r_s']:6.2f} {r['distances_s']:9.2f} "
            f"{r.get('authors_s', float('nan')) / 20:12.2f}", flush=True)
  if "scale" in sections:
    n, num_q = (200_000, 2000) if args.quick else (args.scale_n, args.scale_q)
    print(f"\nscale: Q = {num_q}, N = {n}, 64 bits, mAP@{SCALE_R}, one core per process")
    print(f"{'procs':>5} {'Q':>6} {'label':>6} {'seconds':>8} {'pairs/s':>9} {'mAP':>8} "
          f"{'CPU s per process':>18} {'peak RSS MiB per process':>24}")
    scale_rows = bench_scale(n, num_q, [int(p) for p in args.scale_processes.split(",")],
                             args.repeats)
    for r in scale_rows:
      for kind in ("single", "multi"):
        print(f"{r['processes']:5d} {r['Q']:6d} {kind:>6} {r[kind]['seconds']:8.2f} "
              f"{r[kind]['pairs_per_s']:9.2e} {r[kind]['map']:8.5f} "
              f"{' '.join(f'{c:.2f}' for c in r[kind]['cpu_seconds']):>18} "
              f"{' '.join(f'{m:.0f}' for m in r['peak_rss_mib']):>24}", flush=True)
    full = [r for r in scale_rows if r["Q"] == num_q]
    equal = all(r[k]["map"] == full[0][k]["map"] for r in full for k in ("single", "multi"))
    print(f"mAPs equal (bit for bit) on every process count: {equal}; "
          f"{full[-1]['processes']} processes / 1, wall time: "
          + ", ".join(f"{k} {full[-1][k]['seconds'] / full[0][k]['seconds']:.2f}"
                      for k in ("single", "multi"))
          + "; CPU time of the busiest process: "
          + ", ".join(f"{k} {max(full[-1][k]['cpu_seconds']) / full[0][k]['cpu_seconds'][0]:.2f}"
                      for k in ("single", "multi")))
  peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f"\npeak RSS of the whole run: {peak_mb:.0f} MiB; load average at end: {os.getloadavg()}")
  if args.output:
    with open(args.output, "w") as f:
      json.dump({"search": search_rows, "map_all": map_rows, "paper": paper_rows,
                 "scale": scale_rows,
                 "peak_rss_mib": peak_mb, "backend": jax.default_backend()}, f, indent=1)


if __name__ == "__main__":
  main()
