import numpy as np
import pytest

from orthohash_jax import codebook


@pytest.mark.parametrize("method", ["bernoulli", "gaussian", "hadamard", "maxmin"])
def test_binary_deterministic_and_shaped(method):
  a = codebook.make_codebook(method, 10, 64, seed=3)
  b = codebook.make_codebook(method, 10, 64, seed=3)
  assert a.shape == (10, 64) and a.dtype == np.float32
  assert set(np.unique(a)) <= {-1.0, 1.0}
  np.testing.assert_array_equal(a, b)


def test_seeds_differ():
  assert not np.array_equal(codebook.make_codebook("bernoulli", 10, 64, 0),
                            codebook.make_codebook("bernoulli", 10, 64, 1))


def test_hadamard_rows_orthogonal():
  cb = codebook.make_codebook("hadamard", 32, 16)
  gram = cb @ cb.T
  # rows and their negations: inner product 0 except with itself (16) or its negation (-16)
  for i in range(32):
    for j in range(32):
      expected = 16 if i == j else (-16 if abs(i - j) == 16 else 0)
      assert gram[i, j] == expected


@pytest.mark.parametrize("classes,bits,match", [(10, 48, "power of two"), (33, 16, "at most 32")])
def test_hadamard_errors_suggest_bernoulli(classes, bits, match):
  with pytest.raises(ValueError, match=match) as e:
    codebook.make_codebook("hadamard", classes, bits)
  assert "bernoulli" in str(e.value)


def test_maxmin_beats_bernoulli_min_distance():
  mm = codebook.codebook_stats(codebook.make_codebook("maxmin", 100, 16, seed=0))
  be = codebook.codebook_stats(codebook.make_codebook("bernoulli", 100, 16, seed=0))
  assert mm["min_hamming"] > be["min_hamming"]


def test_stats_match_brute_force():
  cb = codebook.make_codebook("bernoulli", 7, 24, seed=5)
  d = [np.sum(cb[i] != cb[j]) for i in range(7) for j in range(i + 1, 7)]
  stats = codebook.codebook_stats(cb)
  assert stats["min_hamming"] == min(d)
  assert stats["mean_hamming"] == pytest.approx(np.mean(d))
  np.testing.assert_allclose(stats["bit_balance"], (cb > 0).mean(0))


def test_bad_input():
  with pytest.raises(ValueError, match="unknown codebook"):
    codebook.make_codebook("sobol", 3, 8)
  with pytest.raises(ValueError, match=r"\+1 or -1"):
    codebook.codebook_stats(np.array([[1.0, 0.0]]))
  with pytest.raises(ValueError, match="num_bits >= 1"):
    codebook.make_codebook("bernoulli", 3, 0)


@pytest.mark.parametrize("bits", [16, 32, 64])
def test_maxmin_reaches_its_starting_distance_for_two_classes(bits):
  """For two classes a random candidate lies >= round(0.61 K) bits away within the 1,000 tries
  of the first round (probability over 0.99999 at these K), so the greedy search never lowers
  its starting distance: the pair is that far apart for every seed."""
  start = round(0.61 * bits)
  for seed in range(8):
    cb = codebook.make_codebook("maxmin", 2, bits, seed=seed)
    assert codebook.codebook_stats(cb)["min_hamming"] >= start
