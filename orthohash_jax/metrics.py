"""Retrieval metrics on binary codes, and the analysis metrics of the paper's Figure 4.

Inputs
* codes: packed uint32 (N, W) (see ``retrieval``), or real / ±1 (N, K), which are packed for you
  (bit = value > 0, ``retrieval.as_packed``).
* labels: int (N,) class ids (single-label: relevant = same class) or 0/1 (N, C) multi-hot
  (multi-label: relevant = shares at least one label). ``relevance`` gives it for every
  database item or for given neighbours (e.g. a search's), the one definition used everywhere.

Conventions (recorded in every results file)
* Ranking by (Hamming distance, database index): ties are broken by database index, stably.
  ``tie_aware_mean_average_precision`` removes this dependence by averaging over all orders
  within equal distances.
* AP@R = sum_{i<=R} P@i * rel_i / (number of relevant items in the top R); a query with no
  relevant item in its top R scores AP = 0 and still counts in the mean (the protocol of the
  authors' code and of DeepHash-pytorch). ``topk=None`` means R = database size (mAP@all).
* Precision/recall by Hamming radius r: items with distance <= r are retrieved.

Computation (exact, same values as a full stable sort; memory O(chunk x N))
* R < N (mAP@R, P@k): per chunk of queries, the R neighbours as a set from
  ``retrieval.hamming_topk_unranked`` (exact, no sort of the database) and their relevance in one
  gather: label equality of int32 class ids, or a shared bit of multi-hot labels bit-packed to
  uint32 rows (``label_rows``). P@k needs no ranking; for AP, ``retrieval.rank_order`` (a radix
  sort of the R distances on the host) ranks them, and the device forms rel_p * hits_p with
  exact integer prefix sums; sum_p rel_p hits_p / p is taken in float64.
* R = N (mAP@all): per chunk of queries (about ``MAP_PAIRS`` pairs: blocks of queries even at
  N = 1M) the device computes distances and relevance (class ids equal, or packed multi-hot
  words ANDed) in one fused pass; numpy's stable radix argsort of the 8/16-bit distances (a
  counting pass: at most K + 1 distinct keys) ranks by (distance, index), which is exactly the
  index tie-break (chunks on ``THREADS`` = min(4, CPU cores) threads; the values do not depend on
  it). AP from the ranks pos_t of the relevant items only: (1 / r) sum_t t / pos_t.
* ``mesh`` (``average_precisions``, ``mean_average_precision``): the queries split over every
  device of every process (``parallel.process_share``); each process ranks its share on its own
  devices and the APs are gathered exactly: the values equal those without a mesh, bit for bit.
* Per-distance counts (PR curve, radius precision, tie-aware mAP) by bincount of the distances;
  ``pair_distance_counts`` counts on the device (O(bins) on the host per chunk).
* No BLAS call (numpy ``@`` on floats) between device calls: OpenBLAS's idle threads keep
  spinning after a call and take cores from XLA, which runs its loops on every core.
"""
import concurrent.futures
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from orthohash_jax import hamming_kernel, parallel, retrieval

QUERY_CHUNK = 16  # at most; fewer for large databases (about 2^20 distances per chunk)
MAP_PAIRS = 1 << 24  # query-database pairs per chunk of mAP@all (11 bytes each on the host)
# Query chunks ranked concurrently (numpy's sorts release the GIL): one per core, at most 4.
THREADS = min(4, os.cpu_count() or 1)
TOPK_QUERY_CHUNK = 512  # queries per top-R call (memory O(chunk x R) plus the database)


def _query_chunk(num_db, pairs=1 << 20):
  """Queries per chunk of about ``pairs`` query-database pairs (at most ``QUERY_CHUNK``)."""
  return max(1, min(QUERY_CHUNK, pairs // max(num_db, 1)))


def _label_kind(q_labels, db_labels) -> bool:
  """Whether numpy labels are multi-hot (both (N, C), same C), not class ids (both (N,))."""
  if q_labels.ndim != db_labels.ndim or q_labels.ndim not in (1, 2):
    raise ValueError(f"labels must both be (N,) ids or both (N, C) multi-hot, got shapes "
                     f"{q_labels.shape} and {db_labels.shape}")
  multilabel = q_labels.ndim == 2
  if multilabel and q_labels.shape[1] != db_labels.shape[1]:
    raise ValueError(f"multi-hot labels have {q_labels.shape[1]} vs {db_labels.shape[1]} classes")
  return multilabel


def check_labels(q_labels, db_labels, num_queries, num_db):
  """Validates label arrays; returns them as numpy plus a ``multilabel`` flag."""
  q_labels, db_labels = np.asarray(q_labels), np.asarray(db_labels)
  multilabel = _label_kind(q_labels, db_labels)
  if len(q_labels) != num_queries or len(db_labels) != num_db:
    raise ValueError(f"{len(q_labels)} query / {len(db_labels)} database labels for "
                     f"{num_queries} / {num_db} codes")
  return q_labels, db_labels, multilabel


def _relevance_fn(q_labels, db_labels, multilabel):
  """fn(rows, items=None) -> bool: whether database items share a label with the queries
  q_labels[rows] (rows: a slice of queries): (q, N) for every item, or (q, k) for the items
  ``items`` int (q, k), one row per query. Multi-hot labels are compared as bit-packed words
  (``label_rows``, as word planes (W, N) on the host), packed once."""
  if not multilabel:
    return lambda rows, items=None: q_labels[rows][:, None] == (
        db_labels[None, :] if items is None else db_labels[items])
  q_words, db_words = (np.ascontiguousarray(np.asarray(rows).T)
                       for rows in label_rows(q_labels, db_labels, True))
  return lambda rows, items=None: functools.reduce(np.logical_or, [
      (q[rows][:, None] & (d[None] if items is None else d[items])) != 0
      for q, d in zip(q_words, db_words)])


def relevance(q_labels, db_labels, indices=None):
  """Whether database items share a label with the queries (same class id, or a shared label of
  multi-hot rows): bool (Q, N) over the whole database, or with ``indices`` int (Q, k) (e.g. the
  neighbours of each query) bool (Q, k), whether item indices[q, j] is relevant to query q (only
  those items' labels are read)."""
  q_labels, db_labels = np.asarray(q_labels), np.asarray(db_labels)
  multilabel = _label_kind(q_labels, db_labels)
  if indices is None:
    return _relevance_fn(q_labels, db_labels, multilabel)(slice(None))
  items, at = np.unique(np.asarray(indices), return_inverse=True)
  return _relevance_fn(q_labels, db_labels[items], multilabel)(slice(None),
                                                                at.reshape(np.shape(indices)))


def _prepare(q_codes, db_codes, q_labels, db_labels):
  q, db = retrieval.as_packed(q_codes), retrieval.as_packed(db_codes)
  retrieval.check_packed(q, db)
  q_labels, db_labels, multilabel = check_labels(q_labels, db_labels, len(q), len(db))
  return q, db, q_labels, db_labels, multilabel


def _distance_dtype(q):
  """Host dtype of distances of packed codes like q (Q, W): uint8, uint16 from K = 255 bits."""
  return np.uint8 if retrieval.WORD_BITS * q.shape[1] < 255 else np.uint16


@functools.partial(jax.jit, static_argnames="dtype")
def _small_distances_jit(q, planes, dtype):
  return hamming_kernel.planes_distance(q, planes).astype(dtype)


def _small_distances(q, planes, chunk):
  """Distances uint8 (uint16 for K > 254) (len(q) <= chunk, N) to the database as word planes
  (``retrieval.word_planes``); one compiled shape per chunk."""
  dtype = _distance_dtype(q)
  padded = np.pad(q, ((0, chunk - len(q)), (0, 0)))
  return np.asarray(_small_distances_jit(jnp.asarray(padded), planes, dtype))[:len(q)]


def _chunks(q, db, q_labels, db_labels, multilabel):
  """Yields (distances uint (q, N), relevance bool (q, N)) for chunks of queries."""
  planes = retrieval.word_planes(jnp.asarray(db))
  chunk = _query_chunk(len(db))
  relevant = _relevance_fn(q_labels, db_labels, multilabel)
  for s in range(0, len(q), chunk):
    dist = _small_distances(q[s:s + chunk], planes, chunk)
    yield dist, relevant(slice(s, s + chunk))


def _distances_relevance(q, planes, q_labels, db_labels, dtype):
  """(distances (q, N) of ``dtype``, relevance uint8 (q, N)) to the database as word planes;
  labels as ``label_rows``: class ids (equal) or bit-packed multi-hot rows, the database's as
  word planes (W_l, N) (a shared bit: AND of the words, no matmul). Traceable."""
  dist = hamming_kernel.planes_distance(q, planes).astype(dtype)
  if db_labels.ndim == 1:
    rel = q_labels[:, None] == db_labels[None, :]
  else:
    rel = functools.reduce(jnp.bitwise_or, [q_labels[:, w, None] & db_labels[w][None, :]
                                            for w in range(db_labels.shape[0])]) != 0
  return dist, rel.astype(jnp.uint8)


_distances_relevance_jit = jax.jit(_distances_relevance, static_argnames="dtype")


def _device_labels(q, db, q_labels, db_labels, multilabel):
  """(database word planes, query label rows numpy, database label rows on the device) as
  ``_distances_relevance`` takes them."""
  q_ids, db_ids = (np.asarray(a) for a in label_rows(q_labels, db_labels, multilabel))
  planes = retrieval.word_planes(jnp.asarray(db))
  return planes, q_ids, (retrieval.word_planes(jnp.asarray(db_ids)) if multilabel
                         else jnp.asarray(db_ids))


def _map_ranked(fn, q, db, q_labels, db_labels, multilabel, depth):
  """[fn(relevance uint8 (q, depth) in (distance, index) order), ...] over query chunks.

  The device computes a chunk's distances (uint8; uint16 from K = 255 bits) and relevance;
  numpy's stable argsort of the distances (a radix sort for 8/16-bit keys: a counting pass)
  ranks by (distance, index), and one flat gather puts the relevance in that order. Chunks of
  about ``MAP_PAIRS`` query-database pairs (up to ``QUERY_CHUNK`` queries; several queries per
  call up to N = 2^20) run on ``THREADS`` threads (the sorts release the GIL).
  """
  chunk = _query_chunk(len(db), MAP_PAIRS)
  dtype = _distance_dtype(q)
  planes, q_ids, db_ids = _device_labels(q, db, q_labels, db_labels, multilabel)

  def run(s):
    rows = slice(s, s + chunk)
    n = len(q[rows])
    pad = lambda a: jnp.asarray(np.pad(a, [(0, chunk - n)] + [(0, 0)] * (a.ndim - 1)))
    dist, rel = _distances_relevance_jit(pad(q[rows]), planes, pad(q_ids[rows]), db_ids, dtype)
    order = np.argsort(np.asarray(dist)[:n], axis=1, kind="stable")[:, :depth]
    order += (np.arange(n) * len(db))[:, None]
    return fn(np.asarray(rel)[:n].ravel()[order])

  with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
    return list(pool.map(run, range(0, len(q), chunk)))


def label_rows(q_labels, db_labels, multilabel):
  """Labels as compact device rows: class ids int32 (N,) (one id space for queries and database)
  or multi-hot (N, C) bit-packed to uint32 (N, ceil(C / 32)) as in ``retrieval.pack_codes``."""
  if multilabel:
    return retrieval.pack_codes(q_labels > 0), retrieval.pack_codes(db_labels > 0)
  _, ids = np.unique(np.concatenate([q_labels, db_labels]), return_inverse=True)
  return jnp.asarray(ids[:len(q_labels)], jnp.int32), jnp.asarray(ids[len(q_labels):], jnp.int32)


@jax.jit
def _gathered_relevance(idx, q_rows, db_rows):
  """bool (q, R): database rows idx (q, R) share a label (id or bit) with their query."""
  got = hamming_kernel.take_items(db_rows, idx)
  if db_rows.ndim == 1:
    return got == q_rows[:, None]
  return jnp.any((got & q_rows[:, None, :]) != 0, axis=-1)


@jax.jit
def _ranked_hits(idx, order, q_rows, db_rows):
  """(rel * hits int32 (q, R), relevant count int32 (q,)) of the neighbours idx (q, R), listed in
  index order, in the rank order ``order`` (q, R): hits = relevant items up to each rank."""
  ranked = hamming_kernel.take_rows(idx, order)
  rel = _gathered_relevance(ranked, q_rows, db_rows).astype(jnp.int32)
  hits = hamming_kernel.prefix_sum(rel, rel.shape[1])
  return rel * hits, hits[:, -1]


def _topk_chunks(q, db, q_labels, db_labels, multilabel, depth, mesh=None):
  """Yields (dist, idx, q_rows, db_rows, n) per chunk of ``TOPK_QUERY_CHUNK`` queries: the first
  depth neighbours listed in index order (``retrieval.hamming_topk_unranked``), the chunk's label
  rows, padded like the chunk to a power of two (few shapes: few compilations), the database's
  label rows, and the chunk's true size n.
  Memory O(chunk x depth) on top of the database."""
  q_rows, db_rows = label_rows(q_labels, db_labels, multilabel)
  blocked = retrieval.blocked_codes(db, mesh=mesh)  # replicated once for every chunk
  for s in range(0, len(q), TOPK_QUERY_CHUNK):
    n = min(TOPK_QUERY_CHUNK, len(q) - s)
    size = min(TOPK_QUERY_CHUNK, 1 << (n - 1).bit_length())
    pad = lambda a: jnp.pad(jnp.asarray(a[s:s + n]), [(0, size - n)] + [(0, 0)] * (a.ndim - 1))
    dist, idx = retrieval.hamming_topk_unranked(pad(q), blocked, depth, mesh=mesh)
    yield dist, idx, pad(q_rows), db_rows, n


def _one_ahead(items):
  """The items of an iterator, each yielded once the next has been produced: producing a chunk
  dispatches its device work (JAX runs it asynchronously), which then proceeds while the
  caller works on the current chunk on the host."""
  items, end = iter(items), object()
  current = next(items, end)
  while current is not end:
    following = next(items, end)
    yield current
    current = following


def _topk_average_precisions(q, db, q_labels, db_labels, multilabel, depth, mesh=None):
  """AP@R (Q,) for R < N: per chunk, the R neighbours' relevance and running hits in rank order
  on the device (exact integers); sum_p rel_p hits_p / p in float64 on the host, by ``einsum``,
  not ``@`` (no BLAS call: see the module notes). The next chunk's top R is dispatched before
  this chunk is ranked on the host (two chunks in flight)."""
  inv_rank = 1.0 / np.arange(1, depth + 1)
  aps = []
  for dist, idx, q_rows, db_rows, n in _one_ahead(_topk_chunks(q, db, q_labels, db_labels,
                                                               multilabel, depth, mesh)):
    terms, num_rel = _ranked_hits(idx, retrieval.rank_order(dist), q_rows, db_rows)
    prec_sum = np.einsum("ij,j->i", np.asarray(terms)[:n], inv_rank)
    num_rel = np.asarray(num_rel)[:n]
    aps.append(np.where(num_rel > 0, prec_sum / np.maximum(num_rel, 1), 0.0))
  return np.concatenate(aps)


def _topk_hits(q, db, q_labels, db_labels, multilabel, depth):
  """Relevant items (Q,) among the first depth neighbours (no ranking needed)."""
  return np.concatenate([
      np.asarray(jnp.sum(_gathered_relevance(idx, q_rows, db_rows), axis=1))[:n]
      for _, idx, q_rows, db_rows, n in _topk_chunks(q, db, q_labels, db_labels, multilabel,
                                                     depth)])


def _uses_topk(depth, num_db):
  return depth < num_db


def _average_precisions(ranked):
  """AP per row of relevance (q, depth) in rank order; 0 for rows without a relevant item.

  With pos_t the (1-based) rank of the t-th relevant item of a row and r its relevant items,
  AP = (1 / r) sum_t t / pos_t (= sum_p rel_p hits_p / p / r): only the relevant positions are
  visited, one ``flatnonzero`` per row (faster than one over the chunk with per-row
  bookkeeping: 0.10 vs 0.14 s of CPU per 1,000 rows of 69,000).
  """
  aps = np.zeros(len(ranked))
  for i, row in enumerate(ranked.view(bool) if ranked.dtype == np.uint8 else ranked):
    pos = np.flatnonzero(row) + 1.0
    if len(pos):
      aps[i] = np.sum(np.arange(1.0, len(pos) + 1) / pos) / len(pos)
  return aps


def _depth(topk, num_db):
  """R of AP@R: ``topk`` (None: the database size N), in [1, N]."""
  return num_db if topk is None else retrieval.check_k(topk, num_db, "topk")


def _local_average_precisions(q, db, q_labels, db_labels, multilabel, depth, mesh=None):
  """AP@depth float64 (Q,) of the queries q on this process (``mesh``: its devices, for R < N)."""
  if not len(q):
    return np.zeros(0)
  if _uses_topk(depth, len(db)):
    return _topk_average_precisions(q, db, q_labels, db_labels, multilabel, depth, mesh)
  return np.concatenate(_map_ranked(_average_precisions, q, db, q_labels, db_labels, multilabel,
                                    depth))


def average_precisions(q_codes, db_codes, q_labels, db_labels, topk=None, mesh=None):
  """AP@R per query, float64 (Q,), ranking by (distance, index); see module conventions.

  ``mesh``: the queries split over every device of every process of the mesh
  (``parallel.process_share``): each process ranks only its share, on its own devices, and the
  APs are gathered (a collective: every process calls it and gets all Q values, equal bit for
  bit to those without a mesh)."""
  q, db, q_labels, db_labels, multilabel = _prepare(q_codes, db_codes, q_labels, db_labels)
  depth = _depth(topk, len(db))
  if mesh is None:
    return _local_average_precisions(q, db, q_labels, db_labels, multilabel, depth)
  ids = parallel.process_share(mesh, len(q))
  mine = ids[ids >= 0]
  aps = np.zeros(len(ids))
  aps[ids >= 0] = _local_average_precisions(q[mine], db, q_labels[mine], db_labels, multilabel,
                                            depth, parallel.local_mesh(mesh))
  return parallel.gather_rows(ids, aps, len(q))


def mean_average_precision(q_codes, db_codes, q_labels, db_labels, topk=None, mesh=None) -> float:
  """mAP@R (R = ``topk``, None = all) ranking by (Hamming distance, database index); ``mesh``:
  computed over its devices and processes (``average_precisions``)."""
  return float(average_precisions(q_codes, db_codes, q_labels, db_labels, topk, mesh).mean())


def _distance_counts(dist, rel, num_bits_max):
  """Per query and distance d in [0, D]: items n (q, D+1) and relevant items r (q, D+1)."""
  nq = dist.shape[0]
  flat = (np.arange(nq)[:, None] * (num_bits_max + 1) + dist).ravel()
  size = nq * (num_bits_max + 1)
  n = np.bincount(flat, minlength=size).reshape(nq, -1)
  r = np.bincount(flat, weights=rel.ravel().astype(np.float64), minlength=size).reshape(nq, -1)
  return n.astype(np.float64), r


@functools.partial(jax.jit, static_argnames=("bins", "dtype"))
def _pair_counts_jit(q, planes, q_labels, db_labels, num_q, bins, dtype):
  """int32 (2, bins): pairs of the first num_q queries by (not relevant, distance)."""
  dist, rel = _distances_relevance(q, planes, q_labels, db_labels, dtype)
  real = jnp.arange(q.shape[0])[:, None] < num_q
  key = jnp.where(real, dist.astype(jnp.int32) + bins * (1 - rel.astype(jnp.int32)), 2 * bins)
  return jnp.zeros(2 * bins, jnp.int32).at[key.ravel()].add(1, mode="drop").reshape(2, bins)


def pair_distance_counts(q_codes, db_codes, q_labels, db_labels):
  """(intra, inter) int64 (K_max + 1,), K_max = 32 W: the Hamming distances of all query-database
  pairs, relevant (intra) and not (inter). Counted on the device per chunk of about
  ``MAP_PAIRS`` pairs: only the counts reach the host (O(bins) host memory per chunk)."""
  q, db, q_labels, db_labels, multilabel = _prepare(q_codes, db_codes, q_labels, db_labels)
  bins = retrieval.WORD_BITS * q.shape[1] + 1
  chunk = _query_chunk(len(db), MAP_PAIRS)
  planes, q_ids, db_ids = _device_labels(q, db, q_labels, db_labels, multilabel)
  counts = np.zeros((2, bins), np.int64)
  for s in range(0, len(q), chunk):
    n = len(q[s:s + chunk])
    pad = lambda a: jnp.asarray(np.pad(a[s:s + n], [(0, chunk - n)] + [(0, 0)] * (a.ndim - 1)))
    counts += np.asarray(_pair_counts_jit(pad(q), planes, pad(q_ids), db_ids, n, bins,
                                          _distance_dtype(q)))
  return counts[0], counts[1]


def tie_aware_mean_average_precision(q_codes, db_codes, q_labels, db_labels, topk=None) -> float:
  """Expected AP@R over uniformly random orders within each Hamming-distance tie group.

  Computed from per-distance counts (McSherry & Najork 2008 style) in O(K) per query: a tie group
  of n items with r relevant after N0 items with R0 relevant adds, for its positions t = 1..n',
  sum_t [ (R0 + 1) r/n + (t - 1) r (r - 1) / (n (n - 1)) ] / (N0 + t), n' = min(n, R - N0).
  The numerator is the exact expectation; the denominator (relevant items in the top R) is its
  expectation, so the value is exact when R = database size or R falls on a group boundary, and
  the ratio of expectations when a tie group straddles R.
  """
  q, db, q_labels, db_labels, multilabel = _prepare(q_codes, db_codes, q_labels, db_labels)
  depth = _depth(topk, len(db))
  max_d = 32 * q.shape[1]
  harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, len(db) + 1))])
  aps = []
  for dist, rel in _chunks(q, db, q_labels, db_labels, multilabel):
    n, r = _distance_counts(dist, rel, max_d)
    n0 = np.cumsum(n, axis=1) - n
    r0 = np.cumsum(r, axis=1) - r
    shown = np.clip(depth - n0, 0, n)  # n': positions of the group inside the top R
    end = (n0 + shown).astype(np.int64)
    h_sum = harmonic[end] - harmonic[n0.astype(np.int64)]  # sum_t 1 / (N0 + t)
    pair = np.where(n > 1, r * (r - 1) / np.maximum(n * (n - 1), 1), 0.0)
    frac = r / np.maximum(n, 1)
    # sum_t (t - 1) / (N0 + t) = n' - (N0 + 1) * h_sum
    numer = ((r0 + 1) * frac * h_sum + pair * (shown - (n0 + 1) * h_sum)).sum(1)
    denom = (frac * shown).sum(1)
    aps.append(np.where(denom > 0, numer / np.maximum(denom, 1e-300), 0.0))
  return float(np.concatenate(aps).mean())


def precision_at_k(q_codes, db_codes, q_labels, db_labels, k: int) -> float:
  """Mean over queries of (relevant items in the top k) / k, ranking by (distance, index)."""
  q, db, q_labels, db_labels, multilabel = _prepare(q_codes, db_codes, q_labels, db_labels)
  k = retrieval.check_k(k, len(db))
  if _uses_topk(k, len(db)):
    hits = _topk_hits(q, db, q_labels, db_labels, multilabel, k)
  else:
    hits = np.concatenate(_map_ranked(lambda rel: rel.sum(1), q, db, q_labels, db_labels,
                                      multilabel, k))
  return float(hits.mean() / k)


def precision_recall_curve(q_codes, db_codes, q_labels, db_labels) -> dict:
  """Precision and recall for Hamming radius r = 0..K (retrieved = distance <= r).

  Returns ``radius`` int (K+1,), ``precision`` and ``recall`` float (K+1,): precision is averaged
  over queries that retrieve at least one item at that radius (NaN if none does), recall over
  queries with at least one relevant item in the database.
  """
  q, db, q_labels, db_labels, multilabel = _prepare(q_codes, db_codes, q_labels, db_labels)
  max_d = 32 * q.shape[1]
  n_list, r_list = [], []
  for dist, rel in _chunks(q, db, q_labels, db_labels, multilabel):
    n, r = _distance_counts(dist, rel, max_d)
    n_list.append(np.cumsum(n, 1))
    r_list.append(np.cumsum(r, 1))
  retrieved, hits = np.concatenate(n_list), np.concatenate(r_list)
  total_rel = hits[:, -1:]
  with np.errstate(invalid="ignore", divide="ignore"):
    prec = np.where(retrieved > 0, hits / retrieved, np.nan)
    precision = np.nanmean(prec, axis=0) if len(prec) else prec
    recall = (hits / total_rel)[total_rel[:, 0] > 0].mean(0)
  return {"radius": np.arange(max_d + 1), "precision": precision, "recall": recall}


def precision_within_radius(q_codes, db_codes, q_labels, db_labels, radius: int = 2) -> float:
  """Mean precision of items within Hamming radius ``radius``; queries retrieving none score 0."""
  q, db, q_labels, db_labels, multilabel = _prepare(q_codes, db_codes, q_labels, db_labels)
  precs = []
  for dist, rel in _chunks(q, db, q_labels, db_labels, multilabel):
    inside = dist <= radius
    found = inside.sum(1)
    precs.append(np.where(found > 0, (inside & rel).sum(1) / np.maximum(found, 1), 0.0))
  return float(np.concatenate(precs).mean())


# ---- analysis metrics (paper Figure 4) ----

def quantization_angle(codes) -> float:
  """Mean angle in degrees between continuous codes v (N, K) and sign(v) (sign(0) = -1)."""
  v = np.asarray(codes, np.float64)
  b = np.where(v > 0, 1.0, -1.0)
  cos = (v * b).sum(1) / np.maximum(np.linalg.norm(v, axis=1) * np.sqrt(v.shape[1]), 1e-300)
  return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).mean())


def separability(codes, labels, distance="hamming") -> float:
  """E[D_inter] - E[D_intra] over all pairs i != j of (N, K) codes with int (N,) labels.

  ``distance``: "hamming" (of sign codes) or "cosine" (1 - cosine similarity of the raw codes).
  O(N^2) memory: subsample large sets first.
  """
  v = np.asarray(codes, np.float64)
  labels = np.asarray(labels)
  if distance == "hamming":
    b = np.where(v > 0, 1.0, -1.0)
    d = (v.shape[1] - b @ b.T) / 2
  elif distance == "cosine":
    u = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-300)
    d = 1.0 - u @ u.T
  else:
    raise ValueError(f"distance must be 'hamming' or 'cosine', got {distance!r}")
  same = labels[:, None] == labels[None, :]
  off_diag = ~np.eye(len(v), dtype=bool)
  intra, inter = d[same & off_diag], d[~same]
  if not intra.size or not inter.size:
    raise ValueError("separability needs at least two classes and a class with two items")
  return float(inter.mean() - intra.mean())


def orthogonality(codes, labels) -> float:
  """||H H^T / K - I||_F where H (C, K) = sign of the mean code of each class (sign(0) = -1)."""
  v = np.asarray(codes, np.float64)
  labels = np.asarray(labels)
  classes = np.unique(labels)
  centres = np.stack([v[labels == c].mean(0) for c in classes])
  h = np.where(centres > 0, 1.0, -1.0)
  return float(np.linalg.norm(h @ h.T / v.shape[1] - np.eye(len(classes))))
