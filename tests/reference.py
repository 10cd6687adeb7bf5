"""Straightforward numpy references for retrieval metrics (loops and full sorts, no tricks).

Codes are {0, 1} or +-1 arrays (N, K) (compared elementwise); labels int (N,) class ids or
(N, C) multi-hot rows (relevant = a shared label). Ties in Hamming distance are broken by
database index (stable sort), as the library promises.
"""
import numpy as np


def hamming(q_bits, db_bits) -> np.ndarray:
  """Hamming distances int (Q, N) of elementwise-compared codes."""
  return (np.asarray(q_bits)[:, None, :] != np.asarray(db_bits)[None, :, :]).sum(-1)


def relevance(q_labels, db_labels) -> np.ndarray:
  """bool (Q, N): same class, or at least one shared label for multi-hot rows."""
  q_labels, db_labels = np.asarray(q_labels), np.asarray(db_labels)
  if q_labels.ndim == 2:
    return (q_labels.astype(np.int64) @ db_labels.T.astype(np.int64)) > 0
  return q_labels[:, None] == db_labels[None, :]


def ranking(dist) -> np.ndarray:
  """Database indices (Q, N) by (distance, index)."""
  return np.stack([np.lexsort((np.arange(len(d)), d)) for d in dist])


def average_precision(ranked_relevance, topk=None) -> float:
  """AP@topk of one ranked boolean list: mean of precision@i over relevant positions i <= topk
  (divided by the relevant items retrieved in the top k; 0 when there are none)."""
  ranked = np.asarray(ranked_relevance, bool)[:topk]
  hits = np.cumsum(ranked)
  if not hits[-1]:
    return 0.0
  return float((hits / np.arange(1, len(ranked) + 1))[ranked].sum() / hits[-1])


def mean_average_precision(q_bits, db_bits, q_labels, db_labels, topk=None) -> float:
  dist = hamming(q_bits, db_bits)
  rel = relevance(q_labels, db_labels)
  order = ranking(dist)
  return float(np.mean([average_precision(r[o], topk) for r, o in zip(rel, order)]))


def unpack(packed, num_bits) -> np.ndarray:
  """uint32 words (N, W) -> {0, 1} (N, num_bits), bit j of word w = dimension 32w + j."""
  packed = np.asarray(packed, np.uint32)
  bits = (packed[:, :, None] >> np.arange(32, dtype=np.uint32)) & 1
  return bits.reshape(len(packed), -1)[:, :num_bits].astype(np.uint8)
