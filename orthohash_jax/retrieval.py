"""Packed binary codes and exact Hamming retrieval (jnp, jit-able).

Packing convention (shared with ``export`` and ``search``):
* A K-bit code is stored as uint32 words, shape (N, ceil(K / 32)).
* Bit j (least significant first) of word w holds dimension 32 * w + j; that bit is 1 where the
  continuous/±1 code is > 0 (or where a bool code is True), i.e. b = sign(v) with sign(0) = -1.
* When K is not a multiple of 32 the unused high bits of the last word are 0 in every code, so
  they never add to a Hamming distance.

Ranking convention: neighbours are ordered by (Hamming distance, database index) ascending, so
ties, which are frequent at small K, are broken by database index, stably and deterministically.

``hamming_topk(q (Q, W) uint32, db (N, W) uint32, k)`` -> (dist int32 (Q, k), idx int32 (Q, k))
is exact and never sorts or stores a (Q, N) matrix. Per chunk of queries (one compiled call):
1. L1 = minimum distance over each block of 32 database items, uint8 (Qc, N / 32), in one fused
   XOR + popcount + min pass; L2 = minima over 32 L1 entries, ... until a level has <= 64 k (``LEVEL_FACTOR``).
2. The first k items by (distance, index) lie in the first k blocks by (block minimum, block
   index); so from the top level down, keep k entries, expand each to its 32 children.
3. "Keep the first k by (value, position)" (``_select_first``) uses that values are small ints:
   threshold u = smallest t with #(v <= t) >= k by binary search, each count a bit-pack of
   (v <= t) + popcount; keep v < u and the first k - #(v < u) entries with v == u in position
   order (prefix popcounts over uint32 mask words, searchsorted, n-th set bit in a word).
4. The k survivors (in index order) are sorted by the key distance * k + slot.
``method="matmul"`` computes the level-1 distances as (K - q.d) / 2 of ±1 bf16 codes with f32
accumulation (the fast route on GPU/TPU; ``default_method()`` picks it off CPU); ``faiss_topk``
uses faiss IndexBinaryFlat (optional) and re-chooses the items tied at the k-th distance in
index order, so every path returns identical results. ``hamming_rank`` = top-N (full ranking).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

WORD_BITS = 32


def num_words(num_bits: int) -> int:
  return -(-int(num_bits) // WORD_BITS)


def pack_codes(x):
  """Packs codes (N, K) (real: bit = x > 0; bool: bit = x) into uint32 (N, ceil(K / 32))."""
  x = jnp.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"codes must be (N, K), got shape {x.shape}")
  bits = x if x.dtype == jnp.bool_ else x > 0
  n, k = bits.shape
  words = num_words(k)
  bits = jnp.pad(bits, ((0, 0), (0, words * WORD_BITS - k))).reshape(n, words, WORD_BITS)
  shifts = jnp.arange(WORD_BITS, dtype=jnp.uint32)
  return jnp.sum(bits.astype(jnp.uint32) << shifts, axis=-1, dtype=jnp.uint32)


@functools.partial(jax.jit, static_argnames="num_bits")
def unpack_codes(packed, num_bits: int):
  """Inverse of ``pack_codes``: uint32 (N, W) -> int8 (N, num_bits) of ±1."""
  shifts = jnp.arange(WORD_BITS, dtype=jnp.uint32)
  bits = (packed[..., None] >> shifts) & 1
  bits = bits.reshape(packed.shape[0], -1)[:, :num_bits]
  return (2 * bits.astype(jnp.int8) - 1).astype(jnp.int8)


def check_codes(codes, num_bits: int, name: str):
  """Validates packed codes of ``num_bits`` bits: uint32 (N, ceil(K / 32)), unused high bits 0."""
  if codes.dtype != np.uint32 or codes.ndim != 2:
    raise ValueError(f"{name} must be packed uint32 (N, W), got {codes.dtype} {codes.shape}")
  words = num_words(num_bits)
  if codes.shape[1] != words:
    raise ValueError(f"{name} has {codes.shape[1]} words per code, {num_bits} bits need {words}")
  spare = words * WORD_BITS - num_bits
  if spare and codes.size and np.any(codes[:, -1] >> np.uint32(WORD_BITS - spare)):
    raise ValueError(f"{name} has bits set above bit {num_bits}; codes must be zero-padded")
  return codes


def check_packed(q_packed, db_packed):
  """Validates two packed code arrays: uint32, 2-D, same number of words."""
  for name, a in (("query", q_packed), ("database", db_packed)):
    if a.ndim != 2 or a.dtype != jnp.uint32:
      raise ValueError(f"{name} codes must be packed uint32 (N, W), got {a.dtype} {a.shape}; "
                       "use pack_codes first")
  if q_packed.shape[1] != db_packed.shape[1]:
    raise ValueError(f"query and database codes have {q_packed.shape[1]} vs {db_packed.shape[1]} words")


@jax.jit
def hamming_distance(q_packed, db_packed):
  """Hamming distances, int32 (Q, N), by XOR + population count over uint32 words."""
  x = jnp.bitwise_xor(q_packed[:, None, :], db_packed[None, :, :])
  return jnp.sum(jax.lax.population_count(x), axis=-1, dtype=jnp.int32)


# ---- fast exact top-k: block minima + bit-packed selection (no full sort, no (Q, N) matrix) ----

BLOCK = 32  # items per block; also bits per mask word
# A block level is built while a level holds more than LEVEL_FACTOR * BLOCK * k entries: with
# fewer, the k blocks kept would cover most items, and gathering them costs more than selecting
# among all distances directly (measured: NUS-WIDE size, k = 5000, N = 193,734).
LEVEL_FACTOR = 2
_SHIFTS = np.arange(WORD_BITS, dtype=np.uint32)


def _value_dtype(max_value):
  return jnp.uint8 if max_value < 255 else jnp.int32


def _pack_mask(mask):
  """bool (Q, 32 M) -> uint32 (Q, M): bit j of word w is entry 32 w + j."""
  q = mask.shape[0]
  bits = mask.reshape(q, -1, WORD_BITS).astype(jnp.uint32) << _SHIFTS
  return jnp.sum(bits, axis=-1, dtype=jnp.uint32)


def _count_le(values, t):
  """int32 (Q,): entries of values (Q, 32 M) that are <= t (Q,)."""
  words = _pack_mask(values <= t[:, None].astype(values.dtype))
  return jnp.sum(jax.lax.population_count(words), axis=1, dtype=jnp.int32)


def _nth_bit(x, r):
  """Position of the r-th (1-based) set bit of uint32 x; x must have >= r set bits."""
  pos = jnp.zeros(x.shape, jnp.uint32)
  for step in (16, 8, 4, 2, 1):
    cand = pos + step
    below = jax.lax.population_count(x & ((jnp.uint32(1) << cand) - 1)).astype(jnp.int32)
    pos = jnp.where(below < r, cand, pos)
  return pos.astype(jnp.int32)


def _compact(words, k):
  """Positions (Q, k) int32, ascending, of the first k set bits of uint32 (Q, M); -1 past the end."""
  counts = jax.lax.population_count(words).astype(jnp.int32)
  cum = jnp.cumsum(counts, axis=1)
  rank = jnp.arange(1, k + 1, dtype=jnp.int32)
  word = jax.vmap(lambda c: jnp.searchsorted(c, rank, side="left"))(cum)
  valid = word < words.shape[1]
  word = jnp.minimum(word, words.shape[1] - 1)
  before = jnp.take_along_axis(cum - counts, word, axis=1)
  bit = _nth_bit(jnp.take_along_axis(words, word, axis=1), rank[None, :] - before)
  return jnp.where(valid, word * WORD_BITS + bit, -1)


def _first_bits_mask(words, m):
  """words (Q, M) uint32 with only the first m (Q,) set bits (in position order) kept."""
  counts = jax.lax.population_count(words).astype(jnp.int32)
  cum = jnp.cumsum(counts, axis=1)
  last = jnp.sum(cum < m[:, None], axis=1, dtype=jnp.int32)  # word holding the m-th set bit
  last_c = jnp.minimum(last, words.shape[1] - 1)[:, None]
  r = m[:, None] - jnp.take_along_axis(cum - counts, last_c, axis=1)
  x = jnp.take_along_axis(words, last_c, axis=1)
  bit = _nth_bit(x, jnp.maximum(r, 1)).astype(jnp.uint32)
  partial_word = x & ((jnp.uint32(2) << bit) - 1)  # bits 0..bit (wraps to all ones at bit 31)
  partial_word = jnp.where(r > 0, partial_word, 0)
  col = jnp.arange(words.shape[1], dtype=jnp.int32)[None, :]
  return jnp.where(col < last[:, None], words, jnp.where(col == last[:, None], partial_word, 0))


def _select_first(values, k, max_value):
  """Positions (Q, k), ascending, of the first k entries of values (Q, 32 M) by (value, position).

  Threshold u = smallest t with #(values <= t) >= k, by binary search on bit-packed counts; keep
  every entry < u and the first k - #(values < u) entries equal to u.
  """
  q = values.shape[0]
  lo = jnp.full((q,), -1, jnp.int32)  # count(<= lo) < k
  hi = jnp.full((q,), max_value, jnp.int32)  # count(<= hi) >= k
  below = jnp.zeros((q,), jnp.int32)  # count(<= lo)
  for _ in range(int(max_value + 1).bit_length()):
    mid = (lo + hi) // 2
    c = _count_le(values, jnp.maximum(mid, 0))
    c = jnp.where(mid < 0, 0, c)
    enough = c >= k
    hi = jnp.where(enough, mid, hi)
    below = jnp.where(enough, below, c)
    lo = jnp.where(enough, lo, mid)
  u = hi[:, None].astype(values.dtype)
  ties = _first_bits_mask(_pack_mask(values == u), k - below)
  return _compact(_pack_mask(values < u) | ties, k)


def _pad_rows(x, multiple, fill):
  pad = -x.shape[-1] % multiple
  return x if pad == 0 else jnp.pad(x, ((0, 0), (0, pad)), constant_values=fill)


def _matmul_distance(q_packed, db_packed):
  """int32 (Q, N) Hamming distances as (K - q.d) / 2 of ±1 codes, bf16 in, f32 accumulate."""
  bits = WORD_BITS * q_packed.shape[1]
  qs = unpack_codes(q_packed, bits).astype(jnp.bfloat16)
  ds = unpack_codes(db_packed, bits).astype(jnp.bfloat16)
  dot = jnp.dot(qs, ds.T, preferred_element_type=jnp.float32)
  return ((bits - dot) * 0.5).astype(jnp.int32)


def _level_sizes(num_items, k):
  """Sizes of the block-minimum levels that are built: level l + 1 = blocks of 32 of level l."""
  sizes = [num_items]
  while sizes[-1] > LEVEL_FACTOR * BLOCK * k:
    sizes.append(-(-sizes[-1] // BLOCK))
  return sizes


@functools.partial(jax.jit, static_argnames=("k", "method"))
def topk_chunk(q_packed, db_padded, k, num_items, method):
  """Exact top-k of one query chunk against db_padded, whose first num_items rows are the
  database (rows padded to a multiple of 32 with any codes); one compiled call, traceable inside
  ``shard_map``. Returns (dist int32 (q, k), idx int32 (q, k)) by (distance, index).

  ``num_items`` is traced (k <= num_items is the caller's check): one compilation serves every
  database size with the same padded shape (compiling takes seconds, far more than a call at
  N = 1e5, and streamed chunks of a code file all share one shape).
  """
  max_value = WORD_BITS * q_packed.shape[1] + 1  # sentinel distance of padding items
  vdtype = _value_dtype(max_value)
  sizes = _level_sizes(db_padded.shape[0], k)
  distance = _matmul_distance if method == "matmul" else hamming_distance
  item_ok = jnp.arange(db_padded.shape[0]) < num_items

  def item_distances(idx):  # idx (q, M) -> values (q, M)
    codes = jnp.take(db_padded, jnp.maximum(idx, 0), axis=0)
    d = jnp.sum(jax.lax.population_count(q_packed[:, None, :] ^ codes), -1, dtype=jnp.int32)
    return jnp.where(idx < num_items, d, max_value).astype(vdtype)

  # Full levels: L1 = min over blocks of 32 items, L2 = min over 32 L1 entries, ...
  levels = []
  if len(sizes) > 1:
    d = jnp.where(item_ok[None, :], distance(q_packed, db_padded), max_value)
    levels.append(_pad_rows(jnp.min(d.reshape(d.shape[0], -1, BLOCK), -1).astype(vdtype),
                            BLOCK, max_value))
    for _ in sizes[2:]:
      lv = levels[-1]
      levels.append(_pad_rows(jnp.min(lv.reshape(lv.shape[0], -1, BLOCK), -1), BLOCK, max_value))
  # Top level: all entries are candidates; then walk down, keeping the first k blocks by
  # (minimum, index), which always contain the first k children by (value, index).
  if levels:
    values, idx = levels[-1], None
  else:
    idx = jnp.broadcast_to(jnp.arange(db_padded.shape[0], dtype=jnp.int32), (q_packed.shape[0], db_padded.shape[0]))
    values = jnp.where(item_ok[None, :], distance(q_packed, db_padded), max_value).astype(vdtype)
    # Materialize the uint8 distances once: fused into each of the ~10 selection passes, the
    # XOR + popcount is recomputed per pass (measured ~3x slower for k = 5000, N = 117,218).
    values = jax.lax.optimization_barrier(values)
  for level in range(len(levels) - 1, -1, -1):
    pos = _select_first(values, k, max_value)
    parent = pos if idx is None else jnp.take_along_axis(idx, pos, axis=1)
    idx = (parent[:, :, None] * BLOCK + jnp.arange(BLOCK, dtype=jnp.int32)).reshape(parent.shape[0], -1)
    values = item_distances(idx) if level == 0 else jnp.take_along_axis(levels[level - 1], idx, axis=1)
  pos = _select_first(values, k, max_value)
  idx = jnp.take_along_axis(idx, pos, axis=1)
  dist = jnp.take_along_axis(values, pos, axis=1).astype(jnp.int32)
  if (max_value + 1) * k >= 2**31:  # the one-key sort below would overflow
    return jax.lax.sort((dist, idx), dimension=1, num_keys=1, is_stable=True)
  # idx is ascending, so sorting the unique keys distance * k + slot gives (distance, index) order.
  key = jnp.sort(dist * k + jnp.arange(k, dtype=jnp.int32), axis=1)
  return key // k, jnp.take_along_axis(idx, key % k, axis=1)


def default_method() -> str:
  """"popcount" (XOR + population count) on CPU, "matmul" (±1 codes, bf16 matmul) on GPU/TPU."""
  return "popcount" if jax.default_backend() == "cpu" else "matmul"


def queries_per_call(num_items, k, method):
  """Queries per call: a power of two <= 256 keeping the per-call arrays to ~2^23 entries
  (2^26 for "matmul", whose (chunk, N) f32 distances live in accelerator memory)."""
  if method == "matmul" or num_items <= LEVEL_FACTOR * BLOCK * k:
    width = num_items
  else:
    width = 2 * max(num_items // BLOCK, BLOCK * k)
  budget = 1 << (26 if method == "matmul" else 23)
  return int(min(256, 1 << max(0, (budget // width).bit_length() - 1)))


def hamming_topk(q_packed, db_packed, k: int, method=None, query_chunk=None, num_items=None):
  """Exact k nearest neighbours: (dist int32 (Q, k), idx int32 (Q, k)), by (distance, index).

  ``method``: "popcount" or "matmul" (None: ``default_method()``); ``query_chunk``: queries per
  compiled call (None: chosen so one call holds a few MiB); ``num_items``: only the first
  num_items rows of db_packed are the database, the rest padding (None: all rows), so that
  databases of different sizes padded to one shape share one compilation. Never sorts or stores a
  (Q, N) matrix: block minima over 32 items (and 32 blocks, ...) pick k blocks, then k items, by
  bit-packed counts.
  """
  q_packed, db_packed = jnp.asarray(q_packed), jnp.asarray(db_packed)
  check_packed(q_packed, db_packed)
  num_items = db_packed.shape[0] if num_items is None else int(num_items)
  if not 1 <= k <= num_items:
    raise ValueError(f"k must be in [1, database size {num_items}], got {k}")
  method = method or default_method()
  if method not in ("popcount", "matmul"):
    raise ValueError(f"method must be 'popcount' or 'matmul', got {method!r}")
  k = int(k)
  chunk = int(query_chunk or queries_per_call(db_packed.shape[0], k, method))
  db = jnp.pad(db_packed, ((0, -db_packed.shape[0] % BLOCK), (0, 0)))
  num_q = q_packed.shape[0]
  qs = jnp.pad(q_packed, ((0, -num_q % chunk), (0, 0)))
  parts = [topk_chunk(qs[s:s + chunk], db, k, num_items, method) for s in range(0, len(qs), chunk)]
  dist = jnp.concatenate([p[0] for p in parts])[:num_q]
  idx = jnp.concatenate([p[1] for p in parts])[:num_q]
  return dist, idx


def hamming_rank(q_packed, db_packed, method=None, query_chunk=None):
  """Full ranking: (dist int32 (Q, N), idx int32 (Q, N)) by (distance, index); O(Q N) memory."""
  return hamming_topk(q_packed, db_packed, jnp.asarray(db_packed).shape[0], method, query_chunk)



@functools.partial(jax.jit, static_argnames=("k", "num_items"))
def _first_at_distance(q_packed, db_padded, t, m, k, num_items):
  """Positions (Q, k) of the first m (Q,) items at distance t (Q,), in index order; -1 after."""
  item_ok = jnp.arange(db_padded.shape[0]) < num_items
  mask = (hamming_distance(q_packed, db_padded) == t[:, None]) & item_ok[None, :]
  return _compact(_first_bits_mask(_pack_mask(mask), m), k)


def faiss_topk(q_packed, db_packed, k: int, index=None):
  """``hamming_topk`` through faiss IndexBinaryFlat (optional dependency), same output and ties.

  faiss gives the k-th distance t and every item closer than t; the items at distance t are then
  re-chosen in index order by a fused jnp pass. ``index``: a prebuilt faiss index of db_packed.
  """
  import faiss  # pylint: disable=import-outside-toplevel

  q_np, db_np = np.ascontiguousarray(q_packed), np.ascontiguousarray(db_packed)
  check_packed(q_np, db_np)
  num_items = db_np.shape[0]
  if not 1 <= k <= num_items:
    raise ValueError(f"k must be in [1, database size {num_items}], got {k}")
  if index is None:
    index = faiss.IndexBinaryFlat(WORD_BITS * db_np.shape[1])
    index.add(db_np.view(np.uint8))
  dist, idx = index.search(q_np.view(np.uint8), int(k))
  t = dist[:, -1:]
  below = (dist < t).sum(1)
  key = np.where(dist < t, dist.astype(np.int64) * num_items + idx, np.iinfo(np.int64).max)
  order = np.argsort(key, axis=1, kind="stable")
  near_d, near_i = np.take_along_axis(dist, order, 1), np.take_along_axis(idx, order, 1)
  db = jnp.pad(jnp.asarray(db_np), ((0, -num_items % BLOCK), (0, 0)))
  ties = np.concatenate([np.asarray(_first_at_distance(
      jnp.asarray(q_np[s:s + 64]), db, jnp.asarray(t[s:s + 64, 0]),
      jnp.asarray(k - below[s:s + 64]), int(k), num_items)) for s in range(0, len(q_np), 64)])
  col = np.arange(k)[None, :]
  tie_pos = np.clip(col - below[:, None], 0, k - 1)
  out_i = np.where(col < below[:, None], near_i, np.take_along_axis(ties, tie_pos, 1))
  out_d = np.where(col < below[:, None], near_d, t)
  return out_d.astype(np.int32), out_i.astype(np.int32)
