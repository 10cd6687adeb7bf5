"""The exact Hamming top-k kernel behind ``retrieval.hamming_topk`` (jnp, jit-able).

Codes are packed as in ``retrieval``: a K-bit code is uint32 words (N, W = ceil(K / 32)), bit j
(least significant first) of word w holding dimension 32 w + j, unused high bits 0.

Blocked arrays. ``topk_chunk`` takes the database as blocked word planes (W, 32, N / 32)
(``block_planes``: [w, j, m] = word w of code 32 m + j), and every array it selects from is
blocked alike: (Q, 32, M) holds logical entry 32 m + j at [:, j, m]. Loops over m then read
contiguous memory and vectorize on CPU, and bit-packing a mask (bit j of word m = entry
32 m + j) is an OR over axis 1. The kept codes' distances are (Q, leaf, k): rows 0 to leaf - 1
of the same layout, entry 32 r + i = code i of kept entry r. Per chunk of queries (one compiled
call):
1. uint8 distances (Q, 32, M), or for N > 64 k (``LEVEL_FACTOR``) L1 = minimum over each run of
   ``leaf_size`` codes (16 or 32; fused loops over the plane slices), L2 = minima over 32
   L1 entries, ...
2. The first k items by (distance, index) lie in the first k entries by (minimum, index), each
   entry covering a run of consecutive items; so from the top level down, keep k entries and
   expand each to its children (32 entries of the level below, or its leaf codes). Kept entries
   are held as indices p (Q, k); child j of p is read at flat offset j M + p of the blocked
   level below, code c at [c % 32, c // 32] of the planes, by gathers with in-range indices
   (``take_rows``).
3. "Keep the first k by (value, position)" (``_select_first``) uses that values are small ints:
   threshold u = smallest t with #(v <= t) >= k, found by counting 4 values of t per pass (bytes
   of one uint32 per block) starting just under the u of the level above (an upper bound: a
   block with minimum <= t holds an entry <= t; usually u or u + 1) or, at the top level,
   around the same quantile of a 1-in-16 sample; keep v < u
   and the first k - #(v < u) entries with v == u (both masks packed in one pass) in position
   order (prefix sums of word popcounts by float32 matmuls, n-th set bit in a word), compacted
   by a scatter-add of word ends and a prefix sum.
4. The k survivors come out in index order; ``retrieval.rank_order`` ranks them by
   (distance, index).
``method="matmul"`` computes the distances as (K - q.d) / 2 of ±1 bf16 codes with f32
accumulation (the fast route on GPU/TPU). ``first_at_distance`` re-chooses the items tied at a
given distance in index order (``retrieval.faiss_topk``).
XLA's CPU fusion recomputes cheap producers in every consumer and drops optimization barriers,
so arrays read by several passes (or broadcast, like kept block indices over their children)
are computed inside a ``cond`` branch (``_materialized``).
"""
import functools

import jax
import jax.numpy as jnp

WORD_BITS = 32
LOG_BLOCK = 5
BLOCK = 1 << LOG_BLOCK  # items per block (32); also bits per mask word
# Codes per level-1 entry (``leaf_size``): SHORT_LEAF where N < SHORT_LEAF_RATIO k, else BLOCK.
SHORT_LEAF = 16
SHORT_LEAF_RATIO = 256
# A level is built on top of one with more than LEVEL_FACTOR * BLOCK * k entries (codes for
# level 1): with fewer, the k entries kept would cover most of it, and gathering their children
# costs more than selecting among all of it directly.
LEVEL_FACTOR = 2
THRESHOLDS = 4  # values of t counted per pass of the threshold search (one byte each per block)
SAMPLE_STRIDE = 16  # the top level's threshold search starts at the quantile of 1 entry in 16
_EXACT_F32 = 1 << 24  # float32 sums of integers are exact below this


def signs(packed, dtype):
  """Packed codes uint32 (N, W) -> ±1 codes (N, 32 W) of ``dtype`` (bit 1 -> +1, bit 0 -> -1)."""
  bits = (packed[..., None] >> jnp.arange(WORD_BITS, dtype=jnp.uint32)) & 1
  return (2 * bits.astype(dtype) - 1).reshape(packed.shape[0], -1)


@jax.jit
def block_planes(packed):
  """Packed codes uint32 (N, W), N a multiple of 32 -> blocked word planes uint32 (W, 32, N / 32):
  [w, j, m] = word w of code 32 m + j, the database layout of ``topk_chunk`` (see "Blocked
  arrays" in the module docstring)."""
  return packed.reshape(-1, BLOCK, packed.shape[1]).transpose(2, 1, 0)


def planes_distance(q_packed, planes):
  """uint32 (Q, ...) Hamming distances of packed queries (Q, W) to word planes (W, ...) (either
  layout of ``block_planes`` or (W, N)); traceable. Computed on planes flattened to (W, N) and
  reshaped back (free in row-major layout): XLA's CPU loop over a 3-D broadcast is slower."""
  flat = planes.reshape(planes.shape[0], -1)
  dist = sum(jax.lax.population_count(q_packed[:, w, None] ^ flat[w][None])
             for w in range(q_packed.shape[1]))
  return dist.reshape((q_packed.shape[0],) + planes.shape[1:])



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


def _blocked_offset(pos, num_blocks):
  """Flat offsets in a blocked array (..., 32, num_blocks) of logical positions pos: entry
  32 m + j lies at [j, m], offset j num_blocks + m."""
  return (pos & (BLOCK - 1)) * num_blocks + (pos >> LOG_BLOCK)


def _take_blocked(values, pos):
  """Entries at logical positions pos (Q, P) of blocked values (Q, 32, M) (pos = -1, the "past
  the end" of ``_compact``, gives some entry)."""
  return take_rows(values.reshape(values.shape[0], -1), _blocked_offset(pos, values.shape[2]))


def _child_entry(parent, pos, children=BLOCK):
  """Logical entries one level down at positions pos (Q, P) of the children of the entries
  parent (Q, K), ``children`` (<= 32) per entry, gathered as (Q, children, K) (position 32 r + j
  = child j of parent r; see ``_children_at``): child j of entry p is entry children * p + j."""
  return take_rows(parent, pos >> LOG_BLOCK) * children + (pos & (BLOCK - 1))


def _children_at(parent, num_blocks):
  """Flat offsets (Q, 32, P) in a blocked (Q or 1, 32, num_blocks) array of the 32 children of
  the blocks parent (Q, P): child j of block p is logical entry 32 p + j, stored at [j, p]."""
  return jnp.arange(BLOCK, dtype=jnp.int32)[None, :, None] * num_blocks + parent[:, None, :]


def _pack_slices(bits):
  """32 bool (Q, M) slices -> uint32 (Q, M) with bit j from slice j: a blocked mask (Q, 32, M)
  packed so that bit j of word m is logical entry 32 m + j. An OR of the shifted slices (one
  fused elementwise loop, faster on CPU than a reduction over the blocked middle axis). Compute
  each slice from a slice of the input (not slices of one computed mask), so
  that XLA fuses the comparison into the loop instead of storing the mask."""
  return functools.reduce(jnp.bitwise_or, [b.astype(jnp.uint32) << j for j, b in enumerate(bits)])


def _matmul_exact(x, y):
  return jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST)


def prefix_sum(x, max_total):
  """Inclusive prefix sums along axis 1 of non-negative int32 (Q, L), row sums <= max_total.

  Float32 matmuls with triangular 0/1 matrices, within blocks of 32 and (recursively) over the
  block totals: exact while max_total < 2^24, and faster than ``jnp.cumsum`` on CPU, which is
  the fallback above that.
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
  is faster on CPU than over the blocked middle axis.
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
  query's miss costs the whole chunk a pass. The values of t are loop state, so that XLA reads
  them instead of recomputing them for every entry.
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
  k_sample = max(1, k * sample.shape[1] // values.shape[1])
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


def _select_first(values, k, max_value, bound=None):
  """(positions (Q, k), u (Q,)): the logical positions, ascending, of the first k entries of
  blocked values (Q, S <= 32, M) by (value, position): with u = smallest t with #(values <= t) >= k
  (``_threshold``), every entry < u and the first k - #(values < u) entries equal to u.
  ``bound`` (Q,), optional: a known upper bound of u, usually u itself or u + 1 (the u of the
  block minima a level up: every block with minimum <= t holds an entry <= t), from which the
  threshold search starts instead of a sample's quantile. The two masks are packed in one pass
  into their own buffers, and the positions computed into theirs: XLA would otherwise redo the
  packing in each consumer of the masks, and the whole compaction for each of the 32 children
  that the caller expands every position into."""
  guess = _guess_threshold(values, k, max_value) if bound is None else bound - 1
  u, below = _threshold(values, k, max_value, guess)
  live = jnp.all(u >= 0)
  less, equal = _materialized(_split_masks, live, values, u)
  pos = _materialized(lambda m: _compact(m, k), live, less | _first_bits_mask(equal, k - below))
  return pos, u


def _matmul_distance(q_packed, planes):
  """int32 (Q, 32, M) Hamming distances to blocked planes (W, 32, M) as (K - q.d) / 2 of ±1
  codes, bf16 in, f32 accumulate."""
  bits = WORD_BITS * q_packed.shape[1]
  qs = signs(q_packed, jnp.bfloat16)
  ds = signs(planes.reshape(planes.shape[0], -1).T, jnp.bfloat16)
  dot = jnp.dot(qs, ds.T, preferred_element_type=jnp.float32)
  return ((bits - dot) * 0.5).astype(jnp.int32).reshape((-1,) + planes.shape[1:])


def leaf_size(num_items, k):
  """Codes per level-1 entry for a database of num_items codes and k neighbours: 16 where
  N < 256 k, else 32. Halving the runs halves the codes gathered and ranked per query (leaf k)
  and doubles the level-1 entries (N / leaf), which cost about as much each on XLA:CPU. Top-k
  at k = 1000 (1,000-5,000 queries), runs of 16 vs 32: 64 bits 0.28 vs 0.33 s at N = 128,495,
  0.081 vs 0.088 s at 256,000, 0.112 vs 0.108 s at 350,000, 0.29 vs 0.26 s at 1M; 128 bits
  0.159 vs 0.175 s at 128,495, 0.145 vs 0.141 s at 256,000, 0.27 vs 0.21 s at 512,000."""
  return SHORT_LEAF if num_items < SHORT_LEAF_RATIO * k else BLOCK


def _leaf_minima(q_packed, planes, num_items, leaf):
  """Level 1: uint8 (Q, 32 M / leaf), entry e = the minimum distance over the ``leaf`` codes
  leaf e + i (i < leaf; leaf divides 32) of blocked planes (W, 32, M), by one fused loop over
  ``leaf`` plane slices per entry of a block (a reduce over axis 1 would first store the (Q, N)
  distances: XLA's CPU reductions do not fuse their producer). The loops compute (M, Q),
  vectorized over the queries, each plane word read once and broadcast (vectorized over M, they
  would read 32 W streams of words per query); each is transposed before the entries of a block
  are interleaved (interleaving (M, Q) arrays and transposing after was 6x slower). Codes from
  num_items on are padding: entries of padding only get K + 1, the entry holding the first
  padding code is recomputed from its real codes (cheaper than masking every code in the
  loops)."""
  max_value = WORD_BITS * q_packed.shape[1] + 1
  per_block = BLOCK // leaf
  q_t = q_packed.T
  minima = jnp.stack([functools.reduce(jnp.minimum, [
      sum(jax.lax.population_count(planes[w, j][:, None] ^ q_t[w][None, :])
          for w in range(q_packed.shape[1])) for j in range(leaf * g, leaf * (g + 1))]).T
                      for g in range(per_block)], 2).reshape(q_packed.shape[0], -1)
  last = jnp.minimum(num_items // leaf, minima.shape[1] - 1)  # the entry holding num_items
  codes = jax.lax.dynamic_slice(planes, (0, leaf * (last % per_block), last // per_block),
                                (planes.shape[0], leaf, 1))
  real = leaf * last + jnp.arange(leaf)[:, None] < num_items
  last_min = jnp.min(jnp.where(real, planes_distance(q_packed, codes), max_value), axis=(1, 2))
  entry = jnp.arange(minima.shape[1])
  minima = jnp.where(entry == last, last_min[:, None], jnp.where(entry < last, minima, max_value))
  return minima.astype(_value_dtype(max_value))


def _level_sizes(num_items, k):
  """Sizes of the minimum levels that are built, from the codes up: level 1 = minima over
  ``leaf_size`` codes, level l + 1 = minima over BLOCK entries of level l."""
  sizes = [num_items]
  while sizes[-1] > LEVEL_FACTOR * BLOCK * k:
    sizes.append(-(-sizes[-1] // (leaf_size(num_items, k) if len(sizes) == 1 else BLOCK)))
  return sizes


@functools.partial(jax.jit, static_argnames=("k", "method"))
def topk_chunk(q_packed, planes, k, num_items, method):
  """Exact top-k of one query chunk against blocked word planes (W, 32, M) (``block_planes``)
  of N = 32 M codes whose first num_items are the database (the rest padding, any codes); one
  compiled call, traceable inside ``shard_map``. Returns (dist (q, k), idx int32 (q, k)): the
  first k items by (distance, index), listed in index order (``retrieval.rank_order`` ranks
  them); dist is uint8 (int32 from K = 254 bits: the padding sentinel K + 1 must fit).

  ``num_items`` is traced (k <= num_items is the caller's check): one compilation serves every
  database size with the same padded shape (streamed chunks of a code file all share one
  shape).
  """
  max_value = WORD_BITS * q_packed.shape[1] + 1  # sentinel distance of padding items
  vdtype = _value_dtype(max_value)
  num_blocks = planes.shape[2]
  sizes = _level_sizes(BLOCK * num_blocks, k)
  leaf = leaf_size(BLOCK * num_blocks, k)
  distance = _matmul_distance if method == "matmul" else planes_distance
  flat_index = _blocked_index(num_blocks).reshape(1, -1)  # logical index of each flat entry
  live = num_items > 0

  def full_distances(q_packed, planes):  # flat (Q, N), then blocked (see planes_distance)
    flat = distance(q_packed, planes).reshape(q_packed.shape[0], -1)
    return jnp.where(flat_index < num_items, flat, max_value).astype(vdtype).reshape(
        (q_packed.shape[0],) + planes.shape[1:])

  flat_planes = planes.reshape(planes.shape[0], -1)

  def item_distances(parent):  # the leaf codes of each entry of parent (q, P) -> (q, leaf, P)
    code = parent[:, None, :] * leaf + jnp.arange(leaf, dtype=jnp.int32)[None, :, None]
    at = _blocked_offset(code, num_blocks)
    d = sum(jax.lax.population_count(q_packed[:, w, None, None] ^ take_items(flat_planes[w], at))
            for w in range(q_packed.shape[1]))
    return jnp.where(code < num_items, d, max_value).astype(vdtype)

  # Large N: level 1 = minima over leaf codes, level 2 over 32 level-1 entries, ...
  levels = []
  if len(sizes) > 1 and method == "matmul":
    full = full_distances(q_packed, planes).reshape(-1, BLOCK // leaf, leaf, num_blocks)
    levels.append(_blocked(jnp.min(full, axis=2).transpose(0, 2, 1).reshape(full.shape[0], -1),
                           max_value))
  elif len(sizes) > 1:
    levels.append(_blocked(_materialized(functools.partial(_leaf_minima, leaf=leaf), live,
                                         q_packed, planes, num_items), max_value))
  if len(sizes) > 1:
    for _ in sizes[2:]:
      levels.append(_blocked(jnp.min(levels[-1], axis=1), max_value))
    values = levels[-1]
  else:
    values = _materialized(full_distances, live, q_packed, planes)
  # Walk down from the top level, keeping the first k blocks by (minimum, index), which always
  # contain the first k children by (value, index); candidates stay blocked, in index order.
  parent = u = None  # (q, k): the blocks kept at the level above, in index order; their u
  for level in range(len(levels) - 1, -1, -1):
    pos, u = _select_first(values, k, max_value, u)
    parent = pos if parent is None else _child_entry(parent, pos)
    if level:
      below = levels[level - 1]
      values = take_rows(below.reshape(below.shape[0], -1), _children_at(parent, below.shape[2]))
    else:
      values = _materialized(item_distances, live, parent)
  pos, _ = _select_first(values, k, max_value, u)
  return _take_blocked(values, pos), (pos if parent is None else _child_entry(parent, pos, leaf))


def queries_per_call(num_items, k, method):
  """Queries per call: a power of two <= 256 keeping the per-call arrays to ~2^23 entries
  (2^26 for "matmul", whose (chunk, N) f32 distances live in accelerator memory)."""
  if method == "matmul" or len(_level_sizes(num_items, k)) == 1:  # no level: all distances
    width = num_items
  else:
    leaf = leaf_size(num_items, k)
    width = 2 * max(num_items // leaf, leaf * k)
  budget = 1 << (26 if method == "matmul" else 23)
  return int(min(256, 1 << max(0, (budget // width).bit_length() - 1)))


@functools.partial(jax.jit, static_argnames=("k", "num_items"))
def first_at_distance(q_packed, planes, t, m, k, num_items):
  """Positions (Q, k) of the first m (Q,) items at distance t (Q,), in index order; -1 after.
  ``planes``: blocked word planes (W, 32, M)."""
  real = _blocked_index(planes.shape[2]) < num_items
  bits = [(planes_distance(q_packed, planes[:, j]).astype(jnp.int32) == t[:, None]) & real[j]
          for j in range(BLOCK)]
  return _compact(_first_bits_mask(_pack_slices(bits), m), k)
