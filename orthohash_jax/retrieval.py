"""Packed binary codes and exact Hamming retrieval (jnp, jit-able): the public interface.

Packing convention (shared with ``codes_file`` and ``search``):
* A K-bit code is stored as uint32 words, shape (N, ceil(K / 32)).
* Bit j (least significant first) of word w holds dimension 32 * w + j; that bit is 1 where the
  continuous/±1 code is > 0 (or where a bool code is True), i.e. b = sign(v) with sign(0) = -1.
* When K is not a multiple of 32 the unused high bits of the last word are 0 in every code, so
  they never add to a Hamming distance.
``as_packed`` takes codes either way (uint32 as packed, anything else packed); ``check_codes``
validates packed codes of K bits.

Ranking convention: neighbours are ordered by (Hamming distance, database index) ascending, so
ties, which are frequent at small K, are broken by database index, stably and deterministically.
``check_k`` is the one check of a neighbour count: k in [1, database size N].

``hamming_topk(q (Q, W) uint32, db (N, W) uint32, k)`` -> (dist int32 (Q, k), idx int32 (Q, k))
is exact and never sorts or stores a (Q, N) matrix of more than one query chunk (the kernel:
``hamming_kernel``). The database may also be given as ``blocked_codes(db)``, prepared once for
many searches. ``method="matmul"`` computes the distances by a bf16 matmul of ±1 codes (the fast
route on GPU/TPU; ``default_method()`` picks it off CPU); ``faiss_topk`` uses faiss
IndexBinaryFlat (optional) and re-chooses the items tied at the k-th distance in index order, so
every path returns identical results. ``hamming_rank`` = top-N (full ranking).
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from orthohash_jax import hamming_kernel

WORD_BITS = hamming_kernel.WORD_BITS  # bits per packed word


def num_words(num_bits: int) -> int:
  return -(-int(num_bits) // WORD_BITS)


@jax.jit
def pack_codes(x):
  """Packs codes (N, K) (real: bit = x > 0; bool: bit = x) into uint32 (N, ceil(K / 32)).
  Compiled as one call (op-by-op dispatch is far slower)."""
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
  return hamming_kernel.signs(packed, jnp.int8)[:, :num_bits]


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


def as_packed(codes, num_bits=None, name="codes"):
  """Packed codes uint32 (N, W) as numpy: uint32 codes as given, real / ±1 / bool (N, K) codes
  packed (bit = value > 0). With ``num_bits``: unpacked codes must have K = num_bits columns and
  the result is checked (``check_codes``); ``name`` names the codes in error messages."""
  codes = np.asarray(codes)
  if codes.dtype != np.uint32:
    if codes.ndim != 2 or codes.shape[1] != (num_bits or codes.shape[1]):
      raise ValueError(f"{name} must be packed uint32 (N, W) or unpacked (N, "
                       f"{num_bits or 'K'}), got {codes.dtype} {codes.shape}")
    codes = np.asarray(pack_codes(codes))
  if num_bits is not None:
    return check_codes(codes, num_bits, name)
  if codes.ndim != 2:
    raise ValueError(f"{name} must be packed uint32 (N, W), got shape {codes.shape}")
  return codes


def check_k(k, num_items: int, name: str = "k") -> int:
  """int(k), which must lie in [1, num_items] (a number of neighbours of a database of
  num_items codes); ``name`` names k in the error message."""
  if not 1 <= int(k) <= num_items:
    raise ValueError(f"{name} must be in [1, database size {num_items}], got {k}")
  return int(k)


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
  contiguous words and vectorize on CPU, which they do not when XLA fuses the transposition into
  the distance loop.
  """
  return packed.T


@jax.jit
def _distance_int32(q_packed, planes):
  return hamming_kernel.planes_distance(q_packed, planes).astype(jnp.int32)


def hamming_distance(q_packed, db_packed):
  """Hamming distances, int32 (Q, N), by XOR + population count over uint32 words."""
  return _distance_int32(jnp.asarray(q_packed), word_planes(jnp.asarray(db_packed)))


def rank_order(dist):
  """int32 (Q, k) permutation of each row of distances (Q, k) listed in index order into
  (distance, index) order: numpy's stable radix sort of 8/16-bit keys on the host (XLA's CPU
  sort is slower)."""
  dist = np.asarray(dist)
  if dist.dtype != np.uint8 and dist.size and dist.min() >= 0 and dist.max() < 2**16:
    dist = dist.astype(np.uint16)
  return np.argsort(dist, axis=1, kind="stable").astype(np.int32)


def default_method() -> str:
  """"popcount" (XOR + population count) on CPU, "matmul" (±1 codes, bf16 matmul) on GPU/TPU."""
  return "popcount" if jax.default_backend() == "cpu" else "matmul"


class BlockedCodes(NamedTuple):
  """A database in ``hamming_kernel.topk_chunk``'s layout, built once by ``blocked_codes`` and
  reused by every search (as a FAISS index is): blocked word planes uint32 (W, 32, M) of the
  codes padded to 32 M rows, and num_items, the number of real codes (the first rows)."""
  planes: jax.Array
  num_items: int


def _replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def blocked_codes(db_packed, num_items=None, mesh=None) -> BlockedCodes:
  """Packed codes uint32 (N, W) -> ``BlockedCodes``; ``num_items``: only the first num_items rows
  are the database, the rest padding (None: all rows); ``mesh`` (several devices of this
  process): the planes placed on each of its devices once, for every query-sharded search."""
  db_packed = jnp.asarray(db_packed)
  _check_array("database", db_packed)
  num_items = db_packed.shape[0] if num_items is None else int(num_items)
  padded = jnp.pad(db_packed, ((0, -db_packed.shape[0] % hamming_kernel.BLOCK), (0, 0)))
  planes = hamming_kernel.block_planes(padded)
  if mesh is not None and mesh.devices.size > 1:
    planes = jax.device_put(planes, _replicated(mesh))
  return BlockedCodes(planes, num_items)


@functools.lru_cache(maxsize=None)
def _query_sharded_kernel(mesh, k: int, method: str):
  """``hamming_kernel.topk_chunk`` with the queries split over every device of ``mesh`` and the
  database replicated: one ``shard_map`` call, no communication."""
  axes = tuple(mesh.axis_names)

  def local(q, planes, num_items):
    return hamming_kernel.topk_chunk(q, planes, k, num_items, method)

  return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(axes), P(), P()),
                               out_specs=(P(axes), P(axes))))


def _query_sharded_topk(q_packed, db, k, method, chunk, mesh):
  """``hamming_topk_unranked`` with chunks of ``chunk`` queries on every device of ``mesh``
  (numpy results); the database planes are copied to every device once, here or, for many
  searches, by ``blocked_codes(..., mesh=mesh)``."""
  num_q, devices = q_packed.shape[0], mesh.devices.size
  per = min(chunk, 1 << (-(-num_q // devices) - 1).bit_length())  # fewer for few queries
  step = per * devices
  qs = np.pad(np.asarray(q_packed), ((0, -num_q % step), (0, 0)))
  fn = _query_sharded_kernel(mesh, k, method)
  planes = db.planes
  if planes.sharding != _replicated(mesh):
    planes = jax.device_put(planes, _replicated(mesh))
  split = NamedSharding(mesh, P(tuple(mesh.axis_names)))
  parts = [fn(jax.device_put(qs[s:s + step], split), planes, np.int32(db.num_items))
           for s in range(0, len(qs), step)]
  return tuple(np.concatenate([np.asarray(p[i]) for p in parts])[:num_q] for i in range(2))


def hamming_topk_unranked(q_packed, db_packed, k: int, method=None, query_chunk=None,
                          num_items=None, mesh=None):
  """The k nearest neighbours as a set: (dist (Q, k), idx int32 (Q, k)) listed in index order,
  dist uint8 (int32 from K = 254 bits), as device arrays; ``rank_order`` ranks them.

  ``db_packed``: packed codes uint32 (N, W), or ``BlockedCodes`` (built once for many searches);
  ``method``: "popcount" or "matmul" (None: ``default_method()``); ``query_chunk``: queries per
  compiled call (None: chosen so one call holds a few MiB); ``num_items`` (packed codes only):
  only the first num_items rows of db_packed are the database, the rest padding (None: all
  rows), so that databases of different sizes padded to one shape share one compilation.
  ``mesh`` (devices of this process only): the queries split over its devices, the database
  replicated on each (numpy results, the same values; a ``BlockedCodes`` built with the same
  mesh is not copied again).
  """
  db = db_packed if isinstance(db_packed, BlockedCodes) else blocked_codes(db_packed, num_items)
  q_packed = jnp.asarray(q_packed)
  _check_array("query", q_packed)
  _check_widths(q_packed.shape[1], db.planes.shape[0])
  k = check_k(k, db.num_items)
  method = method or default_method()
  if method not in ("popcount", "matmul"):
    raise ValueError(f"method must be 'popcount' or 'matmul', got {method!r}")
  rows = hamming_kernel.BLOCK * db.planes.shape[2]
  chunk = int(query_chunk or hamming_kernel.queries_per_call(rows, k, method))
  if mesh is not None and mesh.devices.size > 1:
    return _query_sharded_topk(q_packed, db, k, method, chunk, mesh)
  num_q = q_packed.shape[0]
  qs = jnp.pad(q_packed, ((0, -num_q % chunk), (0, 0)))
  parts = [hamming_kernel.topk_chunk(qs[s:s + chunk], db.planes, k, db.num_items, method)
           for s in range(0, len(qs), chunk)]
  return tuple(jnp.concatenate([p[i] for p in parts])[:num_q] for i in range(2))


def hamming_topk(q_packed, db_packed, k: int, method=None, query_chunk=None, num_items=None):
  """Exact k nearest neighbours: (dist int32 (Q, k), idx int32 (Q, k)), by (distance, index);
  arguments as ``hamming_topk_unranked``. Never sorts or stores a (Q, N) matrix."""
  dist, idx = hamming_topk_unranked(q_packed, db_packed, k, method, query_chunk, num_items)
  order = rank_order(dist)
  return (hamming_kernel.take_rows(dist, order).astype(jnp.int32),
          hamming_kernel.take_rows(idx, order))


def hamming_rank(q_packed, db_packed, method=None, query_chunk=None):
  """Full ranking: (dist int32 (Q, N), idx int32 (Q, N)) by (distance, index); O(Q N) memory."""
  return hamming_topk(q_packed, db_packed, jnp.asarray(db_packed).shape[0], method, query_chunk)


def import_faiss():
  """The faiss module (an optional dependency: ``faiss-cpu``); a ValueError saying how to get
  it when it is not installed."""
  try:
    import faiss  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ValueError("FAISS needs faiss-cpu (pip install faiss-cpu)") from None
  return faiss


def faiss_topk(q_packed, db_packed, k: int, index=None):
  """``hamming_topk`` through faiss IndexBinaryFlat (optional dependency), same output and ties.

  faiss gives the k-th distance t and every item closer than t; the items at distance t are then
  re-chosen in index order by a fused jnp pass. ``index``: a prebuilt faiss index of db_packed.
  """
  faiss = import_faiss()
  q_np, db_np = np.ascontiguousarray(q_packed), np.ascontiguousarray(db_packed)
  check_packed(q_np, db_np)
  num_items = db_np.shape[0]
  k = check_k(k, num_items)
  if index is None:
    index = faiss.IndexBinaryFlat(WORD_BITS * db_np.shape[1])
    index.add(db_np.view(np.uint8))
  dist, idx = index.search(q_np.view(np.uint8), k)
  t = dist[:, -1:]
  below = (dist < t).sum(1)
  key = np.where(dist < t, dist.astype(np.int64) * num_items + idx, np.iinfo(np.int64).max)
  order = np.argsort(key, axis=1, kind="stable")
  near_d, near_i = np.take_along_axis(dist, order, 1), np.take_along_axis(idx, order, 1)
  planes = blocked_codes(db_np).planes
  ties = np.concatenate([np.asarray(hamming_kernel.first_at_distance(
      jnp.asarray(q_np[s:s + 64]), planes, jnp.asarray(t[s:s + 64, 0]),
      jnp.asarray(k - below[s:s + 64]), k, num_items)) for s in range(0, len(q_np), 64)])
  col = np.arange(k)[None, :]
  tie_pos = np.clip(col - below[:, None], 0, k - 1)
  out_i = np.where(col < below[:, None], near_i, np.take_along_axis(ties, tie_pos, 1))
  out_d = np.where(col < below[:, None], near_d, t)
  return out_d.astype(np.int32), out_i.astype(np.int32)
