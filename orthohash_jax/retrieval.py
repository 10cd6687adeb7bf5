"""Packed binary codes and exact Hamming retrieval (jnp, jit-able).

Packing convention (shared with ``export`` and ``search``):
* A K-bit code is stored as uint32 words, shape (N, ceil(K / 32)).
* Bit j (least significant first) of word w holds dimension 32 * w + j; that bit is 1 where the
  continuous/±1 code is > 0 (or where a bool code is True), i.e. b = sign(v) with sign(0) = -1.
* When K is not a multiple of 32 the unused high bits of the last word are 0 in every code, so
  they never add to a Hamming distance.

Ranking convention: neighbours are ordered by (Hamming distance, database index) ascending, so
ties, which are frequent at small K, are broken by database index, stably and deterministically.
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


@functools.partial(jax.jit, static_argnames="k")
def _sorted_topk(q_packed, db_packed, k):
  dist = hamming_distance(q_packed, db_packed)
  idx = jnp.broadcast_to(jnp.arange(dist.shape[1], dtype=jnp.int32), dist.shape)
  dist, idx = jax.lax.sort((dist, idx), dimension=1, num_keys=2)
  return dist[:, :k], idx[:, :k]


def hamming_topk(q_packed, db_packed, k: int):
  """Exact k nearest neighbours: (dist int32 (Q, k), idx int32 (Q, k)), by (distance, index)."""
  q_packed, db_packed = jnp.asarray(q_packed), jnp.asarray(db_packed)
  check_packed(q_packed, db_packed)
  if not 1 <= k <= db_packed.shape[0]:
    raise ValueError(f"k must be in [1, database size {db_packed.shape[0]}], got {k}")
  return _sorted_topk(q_packed, db_packed, int(k))
