import jax
import numpy as np
import pytest

from orthohash_jax import hamming_kernel, retrieval

BITS = [16, 32, 48, 64, 128, 2048]


def np_pack(bits):
  """Independent packing: dimension d -> word d // 32, bit d % 32."""
  n, k = bits.shape
  out = np.zeros((n, -(-k // 32)), np.uint64)
  for d in range(k):
    out[:, d // 32] |= bits[:, d].astype(np.uint64) << np.uint64(d % 32)
  return out.astype(np.uint32)


@pytest.mark.parametrize("k", BITS)
def test_pack_unpack_roundtrip(k):
  rng = np.random.default_rng(k)
  x = rng.normal(size=(5, k)).astype(np.float32)
  packed = np.asarray(retrieval.pack_codes(x))
  assert packed.dtype == np.uint32 and packed.shape == (5, -(-k // 32))
  np.testing.assert_array_equal(packed, np_pack(x > 0))
  unpacked = np.asarray(retrieval.unpack_codes(packed, k))
  assert unpacked.dtype == np.int8
  np.testing.assert_array_equal(unpacked, np.where(x > 0, 1, -1))
  np.testing.assert_array_equal(np.asarray(retrieval.pack_codes(x > 0)), packed)


def test_pack_is_jittable_and_bit_order():
  x = np.zeros((1, 40), bool)
  x[0, [0, 33]] = True
  packed = np.asarray(jax.jit(retrieval.pack_codes)(x))
  np.testing.assert_array_equal(packed, [[1, 2]])


@pytest.mark.parametrize("k", [k if k in (16, 32, 64) else pytest.param(k, marks=pytest.mark.slow)
                               for k in BITS])
@pytest.mark.parametrize("q", [1, 7])
def test_hamming_distance_and_topk_brute_force(k, q):
  rng = np.random.default_rng(q * k)
  qb = rng.random((q, k)) < 0.5
  # few distinct database codes, so distance ties are everywhere
  base = rng.random((6, k)) < 0.5
  db = base[rng.integers(0, 6, 50)]
  dist = np.asarray(retrieval.hamming_distance(np_pack(qb), np_pack(db)))
  expected = (qb[:, None, :] != db[None, :, :]).sum(-1)
  np.testing.assert_array_equal(dist, expected)
  for topk in (1, 13, 50):
    d, idx = retrieval.hamming_topk(np_pack(qb), np_pack(db), topk)
    for i in range(q):
      order = np.lexsort((np.arange(50), expected[i]))[:topk]
      np.testing.assert_array_equal(idx[i], order)
      np.testing.assert_array_equal(d[i], expected[i][order])


def test_topk_bad_input():
  a = np.zeros((2, 2), np.uint32)
  with pytest.raises(ValueError, match="k must be in"):
    retrieval.hamming_topk(a, a, 3)
  with pytest.raises(ValueError, match="words"):
    retrieval.hamming_topk(a, np.zeros((2, 1), np.uint32), 1)
  with pytest.raises(ValueError, match="packed uint32"):
    retrieval.hamming_topk(a.astype(np.int32), a, 1)


def test_threshold_search_from_any_guess():
  """The k-th smallest value u and #(values < u), from a first guess that hits, misses by a few
  values on either side (then the adjacent values are counted) or far (even splits), or from no
  guess, against a numpy sort."""
  rng = np.random.default_rng(7)
  max_value = 65
  values = rng.binomial(64, 0.3, (6, 32, 40)).astype(np.uint8)  # many ties, range ~8..32
  values[0] = 0  # one query with every value equal
  flat = np.sort(values.reshape(6, -1), axis=1)
  search = jax.jit(lambda v, g, k: hamming_kernel._threshold(v, k, max_value, g))
  for k in (1, 5, 37, 300, 1280):
    u_ref = flat[:, k - 1].astype(np.int32)
    for offset in (None, -9, -4, -3, -2, -1, 0, 1, 2, 3, 5, 40):
      guess = None if offset is None else np.clip(u_ref + offset, 0, max_value)
      u, below = search(values, guess, k)
      np.testing.assert_array_equal(np.asarray(u), u_ref, err_msg=f"k={k} offset={offset}")
      np.testing.assert_array_equal(np.asarray(below), (flat < u_ref[:, None]).sum(1))
