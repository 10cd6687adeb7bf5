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
is exact and never sorts or stores a (Q, N) matrix of more than one query chunk. The database
may also be given as ``blocked_codes(db)``, prepared once for many searches.

Blocked arrays. ``topk_chunk`` takes the database as blocked word planes (W, 32, N / 32)
(``block_planes``: [w, j, m] = word w of code 32 m + j), and every array it selects from is
blocked alike: (Q, 32, M) holds logical entry 32 m + j at [:, j, m]. Loops over m then read
contiguous memory and vectorize on CPU, and bit-packing a mask (bit j of word m = entry
32 m + j) is an OR over axis 1. Per chunk of queries (one compiled call):
1. uint8 distances (Q, 32, M), or for N > 64 k (``LEVEL_FACTOR``) L1 = minimum over each block of
   32 codes (one fused loop over the 32 plane slices), L2 = minima over 32 L1 entries, ...
2. The first k items by (distance, index) lie in the first k blocks by (block minimum, block
   index); so from the top level down, keep k entries, expand each to its 32 children. Kept
   blocks are held as indices p (Q, k); child j of p is read at flat offset j M + p of the
   blocked level below (or planes), by gathers with in-range indices (``take_rows``).
3. "Keep the first k by (value, position)" (``_select_first``) uses that values are small ints:
   threshold u = smallest t with #(v <= t) >= k, found by counting 4 values of t per pass (bytes
   of one uint32 per block) starting around the same quantile of a 1-in-16 sample (usually one
   pass); keep v < u and the first k - #(v < u) entries with v == u (both masks packed in one
   pass) in position order (prefix sums of word popcounts by float32 matmuls, n-th set bit in a
   word), compacted by a scatter-add of word ends and a prefix sum.
4. The k survivors come out in index order; ``rank_order`` (numpy's stable radix sort of the
   distances, on the host) ranks them by (distance, index).
``method="matmul"`` computes the distances as (K - q.d) / 2 of ±1 bf16 codes with f32
accumulation (the fast route on GPU/TPU; ``default_method()`` picks it off CPU); ``faiss_topk``
uses faiss IndexBinaryFlat (optional) and re-chooses the items tied at the k-th distance in
index order, so every path returns identical results. ``hamming_rank`` = top-N (full ranking).
XLA's CPU fusion recomputes cheap producers in every consumer and drops optimization barriers,
so arrays read by several passes (or broadcast, like kept block indices over their children)
are computed inside a ``cond`` branch (``_materialized``).
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

WORD_BITS = 32


def num_words(num_bits: int) -> int:
  return -(-int(num_bits) // WORD_BITS)


@jax.jit
def pack_codes(x):
  """Packs codes (N, K) (real: bit = x > 0; bool: bit = x) into uint32 (N, ceil(K / 32)).
  Compiled as one call: op by op it took 10x longer (0.06 s for 117k x 80 labels, measured)."""
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


def _check_array(name, packed):
  if packed.ndim != 2 or packed.dtype != jnp.uint32:
    raise ValueError(f"{name} codes must be packed uint32 (N, W), got {packed.dtype} "
                     f"{packed.shape}; use pack_codes first")


def _check_widths(q_words, db_words):
  if q_words != db_words:
    raise ValueError(f"query and database codes have {q_words} vs {db_words} words")


def check_packed(q_packed, db_packed):
  """Validates two packed code arrays: uint32, 2-D, same number of words."""
  _check_array("query", q_packed)
  _check_array("database", db_packed)
  _check_widths(q_packed.shape[1], db_packed.shape[1])


@jax.jit
def word_planes(packed):
  """Packed codes uint32 (N, W) -> word planes uint32 (W, N): row w holds word w of every code.

  Its own compiled call, so that the planes are materialized: distance loops over N then read
  contiguous words and vectorize (measured 3-10x faster on CPU than reading (N, W) rows, which is
  what XLA does when the transposition is fused into the distance loop).
  """
  return packed.T


@jax.jit
def block_planes(packed):
  """Packed codes uint32 (N, W), N a multiple of 32 -> blocked word planes uint32 (W, 32, N / 32):
  [w, j, m] = word w of code 32 m + j, the database layout of ``topk_chunk`` (see "Blocked
  arrays" in the module docstring)."""
  return packed.reshape(-1, BLOCK, packed.shape[1]).transpose(2, 1, 0)


def planes_distance(q_packed, planes):
  """uint32 (Q, ...) Hamming distances of packed queries (Q, W) to word planes (W, ...) (either
  layout above); traceable. Computed on planes flattened to (W, N) and reshaped back (free in
  row-major layout): XLA's CPU loop over a 3-D broadcast is ~2.5x slower (measured)."""
  flat = planes.reshape(planes.shape[0], -1)
  dist = sum(jax.lax.population_count(q_packed[:, w, None] ^ flat[w][None])
             for w in range(q_packed.shape[1]))
  return dist.reshape((q_packed.shape[0],) + planes.shape[1:])


@jax.jit
def _distance_int32(q_packed, planes):
  return planes_distance(q_packed, planes).astype(jnp.int32)


def hamming_distance(q_packed, db_packed):
  """Hamming distances, int32 (Q, N), by XOR + population count over uint32 words."""
  return _distance_int32(jnp.asarray(q_packed), word_planes(jnp.asarray(db_packed)))


# ---- fast exact top-k: block minima + bit-packed selection (no full sort, no (Q, N) matrix) ----

LOG_BLOCK = 5
BLOCK = 1 << LOG_BLOCK  # items per block (32); also bits per mask word
# A block level is built while a level holds more than LEVEL_FACTOR * BLOCK * k entries: with
# fewer, the k blocks kept would cover most items, and gathering them costs more than selecting
# among all distances directly (measured: NUS-WIDE size, k = 5000, N = 193,734).
LEVEL_FACTOR = 2
THRESHOLDS = 4  # values of t counted per pass of the threshold search (one byte each per block)
SAMPLE_STRIDE = 16  # the threshold search starts at the matching quantile of 1 entry in 16
_SHIFTS = np.arange(WORD_BITS, dtype=np.uint32)[None, :, None]
_EXACT_F32 = 1 << 24  # float32 sums of integers are exact below this


def _value_dtype(max_value):
  return jnp.uint8 if max_value < 255 else jnp.int32


def _blocked_index(num_blocks):
  """int32 (32, M): the logical index 32 m + j of each entry [j, m] of a blocked array."""
  return (BLOCK * jnp.arange(num_blocks, dtype=jnp.int32)[None, :]
          + jnp.arange(BLOCK, dtype=jnp.int32)[:, None])


def _blocked(x, fill):
  """Plain (Q, L) -> blocked (Q, 32, ceil(L / 32)), padded with fill."""
  x = jnp.pad(x, ((0, 0), (0, -x.shape[1] % BLOCK)), constant_values=fill)
  return x.reshape(x.shape[0], -1, BLOCK).transpose(0, 2, 1)


def _materialized(fn, live, *args):
  """fn(*args) (an array or a tuple of arrays), computed into its own buffers: XLA fuses a cheap
  producer into every consumer and recomputes it there (here: distances, in each selection pass),
  and drops optimization barriers on CPU, but it keeps the branches of a conditional apart.
  ``live`` must be a traced true bool."""
  out = jax.eval_shape(fn, *args)

  def skipped(*args):  # never runs; it reads every argument, so that inside ``shard_map`` its
    # result varies over the same mesh axes as fn's, as ``cond`` requires
    zero = sum(jnp.ravel(a)[0].astype(jnp.int32) for a in args) * 0
    return jax.tree.map(lambda o: jnp.zeros(o.shape, o.dtype) + zero.astype(o.dtype), out)

  return jax.lax.cond(live, fn, skipped, *args)


def take_rows(x, at):
  """x[i, at[i, ...]] for (Q, L) x and int32 (Q, ...) at in [0, L) (traceable): a gather
  without the out-of-range and negative-index handling of jnp's default mode, which costs more
  than the gather on CPU (XLA clamps the indices anyway)."""
  return jnp.take_along_axis(x, at.reshape(at.shape[0], -1), axis=1, mode="promise_in_bounds",
                             wrap_negative_indices=False).reshape(at.shape)


def take_items(table, at):
  """table[at] for int32 indices at in [0, len(table)) (traceable), gathered as ``take_rows``."""
  return table.at[at].get(mode="promise_in_bounds", wrap_negative_indices=False)


def _take_blocked(values, pos):
  """Entries at logical positions pos (Q, P) of blocked values (Q, 32, M) (pos = -1, the "past
  the end" of ``_compact``, gives some entry)."""
  flat = values.reshape(values.shape[0], -1)
  return take_rows(flat, (pos & (BLOCK - 1)) * values.shape[2] + (pos >> LOG_BLOCK))


def _child_entry(parent, pos):
  """Logical entries one level down at positions pos (Q, P) of the children (32 per block, see
  ``_children_at``) of the blocks parent (Q, K): child j of block p is entry 32 p + j."""
  return take_rows(parent, pos >> LOG_BLOCK) * BLOCK + (pos & (BLOCK - 1))


def _children_at(parent, num_blocks):
  """Flat offsets (Q, 32, P) in a blocked (Q or 1, 32, num_blocks) array of the 32 children of
  the blocks parent (Q, P): child j of block p is logical entry 32 p + j, stored at [j, p]."""
  return jnp.arange(BLOCK, dtype=jnp.int32)[None, :, None] * num_blocks + parent[:, None, :]


def _pack_slices(bits):
  """32 bool (Q, M) slices -> uint32 (Q, M) with bit j from slice j: a blocked mask (Q, 32, M)
  packed so that bit j of word m is logical entry 32 m + j. An OR of the shifted slices (one
  fused elementwise loop; a reduction over the blocked middle axis is ~1.5x slower on CPU,
  measured). Compute each slice from a slice of the input (not slices of one computed mask), so
  that XLA fuses the comparison into the loop instead of storing the mask."""
  return functools.reduce(jnp.bitwise_or, [b.astype(jnp.uint32) << j for j, b in enumerate(bits)])


def _matmul_exact(x, y):
  return jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST)


def prefix_sum(x, max_total):
  """Inclusive prefix sums along axis 1 of non-negative int32 (Q, L), row sums <= max_total.

  Float32 matmuls with triangular 0/1 matrices, within blocks of 32 and (recursively) over the
  block totals: exact while max_total < 2^24, and ~10x faster than ``jnp.cumsum`` on CPU
  (measured), which is the fallback above that.
  """
  q, length = x.shape
  if max_total >= _EXACT_F32:
    return jnp.cumsum(x, axis=1, dtype=jnp.int32)
  blocks = jnp.pad(x, ((0, 0), (0, -length % BLOCK))).reshape(q, -1, BLOCK).astype(jnp.float32)
  upper = jnp.triu(jnp.ones((BLOCK, BLOCK), jnp.float32))  # upper[i, j] = i <= j
  within = _matmul_exact(blocks, upper)
  totals = within[:, :, -1].astype(jnp.int32)
  if totals.shape[1] > 1:
    offsets = (prefix_sum(totals, max_total) - totals).astype(jnp.float32)
    within = within + offsets[:, :, None]
  return within.reshape(q, -1)[:, :length].astype(jnp.int32)


def _count_le(values, ts):
  """int32 (Q, T): entries of blocked values (Q, S <= 32, M) <= ts[:, t] (values' dtype), T <= 4.

  Counting ignores order, so the values are read as (Q, M, S) (the same buffer): per group of S
  the T indicators are summed as the bytes of one uint32 (a count <= 32 fits a byte), and the
  group bytes are then summed by a matmul (exact: counts < 2^24). Reducing over the minor axis
  is ~2x faster on CPU than over the blocked middle axis (measured).
  """
  q, num = ts.shape
  groups = values.reshape(q, values.shape[2], values.shape[1])
  packed = sum((groups <= ts[:, j, None, None]).astype(jnp.uint32) << (8 * j)
               for j in range(num))
  per_group = jnp.sum(packed, axis=2, dtype=jnp.uint32)
  fields = jnp.stack([(per_group >> (8 * j)) & 255 for j in range(num)], 1)
  if values.shape[1] * values.shape[2] >= _EXACT_F32:
    return jnp.sum(fields, axis=-1, dtype=jnp.int32)
  ones = jnp.ones((per_group.shape[1],), jnp.float32)
  return _matmul_exact(fields.astype(jnp.float32), ones).astype(jnp.int32)


def _threshold(values, k, max_value, guess=None):
  """(u, below) int32 (Q,): u = smallest t with #(values <= t) >= k, below = #(values < u).

  Narrows (lo, hi], with count(<= lo) < k <= count(<= hi), by counting THRESHOLDS values of t per
  pass over values, until hi = lo + 1. The first pass counts guess - 2 .. guess + 1 when a guess
  (Q,) is given (usually the answer: one pass). A guess misses mostly by one or two values, so
  the next pass counts the THRESHOLDS values next to the side of the window that u lies beyond;
  later passes split (lo, hi] evenly. Every query of the chunk takes part in every pass, so one
  query's miss costs the whole chunk a pass (measured: 1 query in ~50 at ImageNet100 size, most
  chunks of 128). The values of t are loop state, so that XLA reads them instead of recomputing
  them for every entry.
  """
  parts = THRESHOLDS + 1
  frac = jnp.arange(1, parts, dtype=jnp.int32)

  def split(lo, hi):  # THRESHOLDS values in (lo, hi]
    return lo[:, None] + ((hi - lo)[:, None] * frac + parts - 1) // parts

  def body(state):
    lo, hi, below, ts, after_guess = state
    counts = _count_le(values, ts)
    enough = counts >= k
    ts = ts.astype(jnp.int32)
    new_lo = jnp.maximum(lo, jnp.max(jnp.where(enough, -1, ts), axis=1))
    below = jnp.where(new_lo > lo, jnp.max(jnp.where(enough, -1, counts), axis=1), below)
    new_hi = jnp.minimum(hi, jnp.min(jnp.where(enough, ts, max_value), axis=1))
    above = (after_guess & (new_hi == hi))[:, None]  # u > the window: count lo + 1 .. lo + 4
    under = (after_guess & (new_lo == lo))[:, None]  # u < the window: hi - 4 .. hi - 1
    ts = jnp.where(above, new_lo[:, None] + frac,
                   jnp.where(under, new_hi[:, None] - parts + frac, split(new_lo, new_hi)))
    ts = jnp.clip(ts, 0, max_value).astype(values.dtype)
    return new_lo, new_hi, below, ts, after_guess & False

  # Loop state derived from values: inside ``shard_map`` it then varies over the same mesh axes.
  zero = values[:, 0, 0].astype(jnp.int32) * 0
  lo, hi = zero - 1, zero + max_value
  if guess is None:
    ts = split(lo, hi).astype(values.dtype)
  else:
    ts = jnp.clip(guess[:, None] + frac - 3, 0, max_value).astype(values.dtype)
  state = (lo, hi, zero, ts, jnp.bool_(guess is not None))
  _, hi, below, _, _ = jax.lax.while_loop(lambda s: jnp.any(s[1] - s[0] > 1), body, state)
  return hi, below


def _guess_threshold(values, k, max_value):
  """A guess (Q,) of ``_threshold``'s u: the same quantile of the entries 32 m and 32 m + 16
  (1 in SAMPLE_STRIDE); None where the sample would be too small to help."""
  if values.shape[2] < BLOCK or k < 4 * SAMPLE_STRIDE:
    return None
  sample = values[:, ::SAMPLE_STRIDE, :]
  k_sample = max(1, k * sample.shape[1] // BLOCK)
  return _threshold(sample, k_sample, max_value)[0]


def _nth_bit(x, r):
  """Position of the r-th (1-based) set bit of uint32 x; x must have >= r set bits."""
  pos = jnp.zeros(x.shape, jnp.uint32)
  for step in (16, 8, 4, 2, 1):
    cand = pos + step
    below = jax.lax.population_count(x & ((jnp.uint32(1) << cand) - 1)).astype(jnp.int32)
    pos = jnp.where(below < r, cand, pos)
  return pos.astype(jnp.int32)


def _compact(words, k):
  """Positions (Q, k) int32, ascending, of the first k set bits of uint32 (Q, M); -1 past the end.

  Slot j lies in the first word whose inclusive bit count exceeds j: the number of words whose
  count is <= j, i.e. a prefix sum of a scatter-add of 1 at each word's count (no search).
  """
  q, num_words_ = words.shape
  counts = jax.lax.population_count(words).astype(jnp.int32)
  ends = prefix_sum(counts, WORD_BITS * num_words_)
  rows = jnp.arange(q)[:, None]
  hits = jnp.zeros((q, k), jnp.int32).at[rows, ends].add(1, mode="drop")
  word = prefix_sum(hits, num_words_)
  valid = word < num_words_
  word = jnp.minimum(word, num_words_ - 1)
  start = take_rows(ends - counts, word)
  rank = jnp.arange(1, k + 1, dtype=jnp.int32)[None, :] - start
  bit = _nth_bit(take_rows(words, word), rank)
  return jnp.where(valid, word * WORD_BITS + bit, -1)


def _first_bits_mask(words, m):
  """words (Q, M) uint32 with only the first m (Q,) set bits (in position order) kept."""
  counts = jax.lax.population_count(words).astype(jnp.int32)
  before = prefix_sum(counts, WORD_BITS * words.shape[1]) - counts
  keep = jnp.clip(m[:, None] - before, 0, WORD_BITS)  # bits kept per word
  bit = _nth_bit(words, jnp.maximum(keep, 1)).astype(jnp.uint32)
  partial_word = words & ((jnp.uint32(2) << bit) - 1)  # bits 0..bit (wraps to all ones at bit 31)
  return jnp.where(keep >= counts, words, jnp.where(keep > 0, partial_word, 0))


def _split_masks(values, u):
  """Blocked values (Q, 32, M), u (Q,) -> packed masks uint32 (Q, M) of values < u and == u."""
  u = u[:, None].astype(values.dtype)
  rows = [values[:, j] for j in range(values.shape[1])]
  return _pack_slices([r < u for r in rows]), _pack_slices([r == u for r in rows])


def _select_first(values, k, max_value):
  """Logical positions (Q, k), ascending, of the first k entries of blocked values (Q, 32, M) by
  (value, position): with u = smallest t with #(values <= t) >= k (``_threshold``), every entry
  < u and the first k - #(values < u) entries equal to u. The two masks are packed in one pass
  into their own buffers, and the positions computed into theirs: XLA would otherwise redo the
  packing in each consumer of the masks, and the whole compaction for each of the 32 children
  that the caller expands every position into (measured: 8 of 27 ms per call at ImageNet100
  size)."""
  u, below = _threshold(values, k, max_value, _guess_threshold(values, k, max_value))
  live = jnp.all(u >= 0)
  less, equal = _materialized(_split_masks, live, values, u)
  return _materialized(lambda m: _compact(m, k), live, less | _first_bits_mask(equal, k - below))


def _matmul_distance(q_packed, planes):
  """int32 (Q, 32, M) Hamming distances to blocked planes (W, 32, M) as (K - q.d) / 2 of ±1
  codes, bf16 in, f32 accumulate."""
  bits = WORD_BITS * q_packed.shape[1]
  qs = unpack_codes(q_packed, bits).astype(jnp.bfloat16)
  ds = unpack_codes(planes.reshape(planes.shape[0], -1).T, bits).astype(jnp.bfloat16)
  dot = jnp.dot(qs, ds.T, preferred_element_type=jnp.float32)
  return ((bits - dot) * 0.5).astype(jnp.int32).reshape((-1,) + planes.shape[1:])


def _block_minima(q_packed, planes, num_items):
  """uint8 (Q, M): minimum distance over each block of 32 codes of blocked planes (W, 32, M), by
  one fused loop over the 32 plane slices (a reduce over axis 1 would first store the (Q, N)
  distances, ~3x slower: XLA's CPU reductions do not fuse their producer). The loop computes
  (M, Q), vectorized over the queries, each plane word read once and broadcast: vectorized over
  M, it reads 32 W streams of words for every query, and at 128 bits that loop was 1.6x slower
  (measured, Q = 128 x N = 2^20; 64 bits 1.1x). Codes from num_items on are padding: blocks of
  padding only get K + 1, the block holding the first padding code is recomputed from its real
  codes (masking every code in the loop costs ~2x, measured)."""
  max_value = WORD_BITS * q_packed.shape[1] + 1
  num_blocks = planes.shape[2]
  q_t = q_packed.T
  minima = functools.reduce(jnp.minimum, [
      sum(jax.lax.population_count(planes[w, j][:, None] ^ q_t[w][None, :])
          for w in range(q_packed.shape[1])) for j in range(BLOCK)]).T
  last = jnp.minimum(num_items // BLOCK, num_blocks - 1)  # the block holding code num_items
  codes = jax.lax.dynamic_slice_in_dim(planes, last, 1, axis=2)
  real = BLOCK * last + jnp.arange(BLOCK)[:, None] < num_items
  last_min = jnp.min(jnp.where(real, planes_distance(q_packed, codes), max_value), axis=(1, 2))
  block = jnp.arange(num_blocks)
  minima = jnp.where(block == last, last_min[:, None], jnp.where(block < last, minima, max_value))
  return minima.astype(_value_dtype(max_value))


def _level_sizes(num_items, k):
  """Sizes of the block-minimum levels that are built: level l + 1 = blocks of 32 of level l."""
  sizes = [num_items]
  while sizes[-1] > LEVEL_FACTOR * BLOCK * k:
    sizes.append(-(-sizes[-1] // BLOCK))
  return sizes


@functools.partial(jax.jit, static_argnames=("k", "method"))
def topk_chunk(q_packed, planes, k, num_items, method):
  """Exact top-k of one query chunk against blocked word planes (W, 32, M) (``block_planes``)
  of N = 32 M codes whose first num_items are the database (the rest padding, any codes); one
  compiled call, traceable inside ``shard_map``. Returns (dist (q, k), idx int32 (q, k)): the
  first k items by (distance, index), listed in index order (``rank_order`` ranks them); dist is
  uint8 (int32 from K = 254 bits: the padding sentinel K + 1 must fit).

  ``num_items`` is traced (k <= num_items is the caller's check): one compilation serves every
  database size with the same padded shape (compiling takes seconds, far more than a call at
  N = 1e5, and streamed chunks of a code file all share one shape).
  """
  max_value = WORD_BITS * q_packed.shape[1] + 1  # sentinel distance of padding items
  vdtype = _value_dtype(max_value)
  num_blocks = planes.shape[2]
  sizes = _level_sizes(BLOCK * num_blocks, k)
  distance = _matmul_distance if method == "matmul" else planes_distance
  flat_index = _blocked_index(num_blocks).reshape(1, -1)  # logical index of each flat entry
  live = num_items > 0

  def full_distances(q_packed, planes):  # flat (Q, N), then blocked (see planes_distance)
    flat = distance(q_packed, planes).reshape(q_packed.shape[0], -1)
    return jnp.where(flat_index < num_items, flat, max_value).astype(vdtype).reshape(
        (q_packed.shape[0],) + planes.shape[1:])

  flat_planes = planes.reshape(planes.shape[0], -1)

  def item_distances(parent):  # the 32 children of each block of parent (q, P) -> (q, 32, P)
    at = _children_at(parent, num_blocks)
    d = sum(jax.lax.population_count(q_packed[:, w, None, None] ^ take_items(flat_planes[w], at))
            for w in range(q_packed.shape[1]))
    idx = parent[:, None, :] * BLOCK + jnp.arange(BLOCK, dtype=jnp.int32)[None, :, None]
    return jnp.where(idx < num_items, d, max_value).astype(vdtype)

  # Large N: level 1 = minima over blocks of 32 items, level 2 over 32 level-1 entries, ...
  levels = []
  if len(sizes) > 1 and method == "matmul":
    levels.append(_blocked(jnp.min(full_distances(q_packed, planes), axis=1), max_value))
  elif len(sizes) > 1:
    levels.append(_blocked(_materialized(_block_minima, live, q_packed, planes, num_items),
                           max_value))
  if len(sizes) > 1:
    for _ in sizes[2:]:
      levels.append(_blocked(jnp.min(levels[-1], axis=1), max_value))
    values = levels[-1]
  else:
    values = _materialized(full_distances, live, q_packed, planes)
  # Walk down from the top level, keeping the first k blocks by (minimum, index), which always
  # contain the first k children by (value, index); candidates stay blocked, in index order.
  parent = None  # (q, k): the blocks kept at the level above, in index order
  for level in range(len(levels) - 1, -1, -1):
    pos = _select_first(values, k, max_value)
    parent = pos if parent is None else _child_entry(parent, pos)
    if level:
      below = levels[level - 1]
      values = take_rows(below.reshape(below.shape[0], -1), _children_at(parent, below.shape[2]))
    else:
      values = _materialized(item_distances, live, parent)
  pos = _select_first(values, k, max_value)
  return _take_blocked(values, pos), (pos if parent is None else _child_entry(parent, pos))


def rank_order(dist):
  """int32 (Q, k) permutation of each row of distances (Q, k) listed in index order into
  (distance, index) order: numpy's stable radix sort of 8/16-bit keys (XLA's CPU sort is ~10x
  slower, measured)."""
  dist = np.asarray(dist)
  if dist.dtype != np.uint8 and dist.size and dist.min() >= 0 and dist.max() < 2**16:
    dist = dist.astype(np.uint16)
  return np.argsort(dist, axis=1, kind="stable").astype(np.int32)


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


class BlockedCodes(NamedTuple):
  """A database in ``topk_chunk``'s layout, built once by ``blocked_codes`` and reused by every
  search (as a FAISS index is): blocked word planes uint32 (W, 32, M) of the codes padded to
  32 M rows, and num_items, the number of real codes (the first rows)."""
  planes: jax.Array
  num_items: int


def blocked_codes(db_packed, num_items=None) -> BlockedCodes:
  """Packed codes uint32 (N, W) -> ``BlockedCodes``; ``num_items``: only the first num_items rows
  are the database, the rest padding (None: all rows)."""
  db_packed = jnp.asarray(db_packed)
  _check_array("database", db_packed)
  num_items = db_packed.shape[0] if num_items is None else int(num_items)
  return BlockedCodes(block_planes(jnp.pad(db_packed, ((0, -db_packed.shape[0] % BLOCK), (0, 0)))),
                      num_items)


def hamming_topk_unranked(q_packed, db_packed, k: int, method=None, query_chunk=None,
                          num_items=None):
  """The k nearest neighbours as a set: (dist (Q, k), idx int32 (Q, k)) listed in index order,
  dist uint8 (int32 from K = 254 bits), as device arrays; ``rank_order`` ranks them.

  ``db_packed``: packed codes uint32 (N, W), or ``BlockedCodes`` (built once for many searches);
  ``method``: "popcount" or "matmul" (None: ``default_method()``); ``query_chunk``: queries per
  compiled call (None: chosen so one call holds a few MiB); ``num_items`` (packed codes only):
  only the first num_items rows of db_packed are the database, the rest padding (None: all
  rows), so that databases of different sizes padded to one shape share one compilation.
  """
  db = db_packed if isinstance(db_packed, BlockedCodes) else blocked_codes(db_packed, num_items)
  q_packed = jnp.asarray(q_packed)
  _check_array("query", q_packed)
  _check_widths(q_packed.shape[1], db.planes.shape[0])
  if not 1 <= k <= db.num_items:
    raise ValueError(f"k must be in [1, database size {db.num_items}], got {k}")
  method = method or default_method()
  if method not in ("popcount", "matmul"):
    raise ValueError(f"method must be 'popcount' or 'matmul', got {method!r}")
  k = int(k)
  rows = BLOCK * db.planes.shape[2]
  chunk = int(query_chunk or queries_per_call(rows, k, method))
  num_q = q_packed.shape[0]
  qs = jnp.pad(q_packed, ((0, -num_q % chunk), (0, 0)))
  parts = [topk_chunk(qs[s:s + chunk], db.planes, k, db.num_items, method)
           for s in range(0, len(qs), chunk)]
  return tuple(jnp.concatenate([p[i] for p in parts])[:num_q] for i in range(2))


def hamming_topk(q_packed, db_packed, k: int, method=None, query_chunk=None, num_items=None):
  """Exact k nearest neighbours: (dist int32 (Q, k), idx int32 (Q, k)), by (distance, index);
  arguments as ``hamming_topk_unranked``. Never sorts or stores a (Q, N) matrix."""
  dist, idx = hamming_topk_unranked(q_packed, db_packed, k, method, query_chunk, num_items)
  order = rank_order(dist)
  return take_rows(dist, order).astype(jnp.int32), take_rows(idx, order)


def hamming_rank(q_packed, db_packed, method=None, query_chunk=None):
  """Full ranking: (dist int32 (Q, N), idx int32 (Q, N)) by (distance, index); O(Q N) memory."""
  return hamming_topk(q_packed, db_packed, jnp.asarray(db_packed).shape[0], method, query_chunk)



@functools.partial(jax.jit, static_argnames=("k", "num_items"))
def _first_at_distance(q_packed, planes, t, m, k, num_items):
  """Positions (Q, k) of the first m (Q,) items at distance t (Q,), in index order; -1 after.
  ``planes``: blocked word planes (W, 32, M)."""
  real = _blocked_index(planes.shape[2]) < num_items
  bits = [(planes_distance(q_packed, planes[:, j]).astype(jnp.int32) == t[:, None]) & real[j]
          for j in range(BLOCK)]
  return _compact(_first_bits_mask(_pack_slices(bits), m), k)


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
  planes = blocked_codes(db_np).planes
  ties = np.concatenate([np.asarray(_first_at_distance(
      jnp.asarray(q_np[s:s + 64]), planes, jnp.asarray(t[s:s + 64, 0]),
      jnp.asarray(k - below[s:s + 64]), int(k), num_items)) for s in range(0, len(q_np), 64)])
  col = np.arange(k)[None, :]
  tie_pos = np.clip(col - below[:, None], 0, k - 1)
  out_i = np.where(col < below[:, None], near_i, np.take_along_axis(ties, tie_pos, 1))
  out_d = np.where(col < below[:, None], near_d, t)
  return out_d.astype(np.int32), out_i.astype(np.int32)
