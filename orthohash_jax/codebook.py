"""Binary orthogonal class targets ("codebooks") for OrthoHash.

``make_codebook(method, num_classes, num_bits, seed)`` returns a float32 (C, K) array of +-1.
Generation uses ``numpy.random.default_rng(seed)`` so a codebook is identical on every host and
platform for the same (method, C, K, seed); it is fixed (never trained) and saved with each run.

Methods (paper Sec. 3.2.1; the authors' code letters in brackets):
* "bernoulli" [B]: every bit +1 with p = 0.5 (expected pairwise Hamming distance K/2).
* "gaussian"  [N]: sign of N(0, 1) samples (0 maps to +1); same distribution as bernoulli, other
  random stream.
* "hadamard": rows of the K x K Sylvester Hadamard matrix, then their negations (as CSQ), so up
  to 2K classes with pairwise distance K/2 (K between a row and its negation). Needs K a power of
  two; the seed is not used.
* "maxmin"    [O]: greedy: each class draws Bernoulli candidates until one lies at least
  ``d_min`` bits from every earlier class; d_min starts at round(0.61 K) and drops by one bit
  whenever ``max_tries`` candidates fail.
"""
import numpy as np

METHODS = ("bernoulli", "gaussian", "hadamard", "maxmin")


def _check_sizes(num_classes, num_bits):
  if int(num_classes) < 1 or int(num_bits) < 1:
    raise ValueError(f"need num_classes >= 1 and num_bits >= 1, got C={num_classes}, K={num_bits}")


def _signs(bits):
  return np.where(bits, 1.0, -1.0).astype(np.float32)


def hadamard_matrix(n: int) -> np.ndarray:
  """Sylvester Hadamard matrix, float32 (n, n) of +-1; n must be a power of two."""
  if n < 1 or n & (n - 1):
    raise ValueError(f"Hadamard codebooks need num_bits a power of two, got {n}; "
                     "use codebook='bernoulli' instead")
  h = np.ones((1, 1), np.float32)
  while h.shape[0] < n:
    h = np.block([[h, h], [h, -h]])
  return h


def _maxmin(num_classes, num_bits, rng, start_ratio=0.61, max_tries=1000, chunk=64):
  codes = np.empty((num_classes, num_bits), np.float32)
  d_min = int(round(start_ratio * num_bits))
  codes[0] = _signs(rng.random(num_bits) < 0.5)
  for c in range(1, num_classes):
    placed = False
    while not placed:
      for _ in range(0, max_tries, chunk):
        cand = _signs(rng.random((chunk, num_bits)) < 0.5)
        dist = (num_bits - cand @ codes[:c].T) / 2  # (chunk, c)
        ok = np.flatnonzero(dist.min(axis=1) >= d_min)
        if ok.size:
          codes[c] = cand[ok[0]]
          placed = True
          break
      else:
        d_min -= 1
  return codes


def make_codebook(method: str, num_classes: int, num_bits: int, seed: int = 0) -> np.ndarray:
  """Fixed class targets, float32 (num_classes, num_bits) of +-1 (see module docstring)."""
  _check_sizes(num_classes, num_bits)
  rng = np.random.default_rng(seed)
  if method == "bernoulli":
    return _signs(rng.random((num_classes, num_bits)) < 0.5)
  if method == "gaussian":
    return _signs(rng.standard_normal((num_classes, num_bits)) >= 0)
  if method == "hadamard":
    h = hadamard_matrix(num_bits)
    if num_classes > 2 * num_bits:
      raise ValueError(f"a {num_bits}-bit Hadamard codebook holds at most {2 * num_bits} classes, "
                       f"got {num_classes}; use codebook='bernoulli' instead")
    return np.concatenate([h, -h])[:num_classes]
  if method == "maxmin":
    return _maxmin(num_classes, num_bits, rng)
  raise ValueError(f"unknown codebook method {method!r}; choose one of {METHODS}")


def check_binary(codebook) -> np.ndarray:
  """Returns the codebook as float32 (C, K), raising ValueError unless every entry is +-1."""
  cb = np.asarray(codebook, np.float32)
  if cb.ndim != 2:
    raise ValueError(f"codebook must be (C, K), got shape {cb.shape}")
  if not np.all(np.abs(cb) == 1):
    raise ValueError("codebook entries must all be +1 or -1")
  return cb


def codebook_stats(codebook) -> dict:
  """Pairwise Hamming distances and bit balance of a +-1 codebook (C, K).

  Returns floats ``min_hamming``, ``mean_hamming`` (over class pairs; 0 for C = 1),
  ``max_bit_imbalance`` (max over bits of |fraction of +1 - 0.5|) and ``bit_balance`` (K,), the
  fraction of +1 per bit. Costs O(C^2 K).
  """
  cb = check_binary(codebook)
  c, k = cb.shape
  balance = (cb > 0).mean(axis=0)
  if c > 1:
    dist = (k - cb @ cb.T) / 2
    pairs = dist[np.triu_indices(c, 1)]
    min_d, mean_d = float(pairs.min()), float(pairs.mean())
  else:
    min_d = mean_d = 0.0
  return {"min_hamming": min_d, "mean_hamming": mean_d,
          "max_bit_imbalance": float(np.abs(balance - 0.5).max()), "bit_balance": balance}
