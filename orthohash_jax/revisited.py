"""Instance-level evaluation: revisited Oxford/Paris (E/M/H) and GLDv2 retrieval mAP@100.

Pure numpy. Both metrics take a ranking: int (Q, N) database indices per query, best first
(N may be smaller than the database: a truncated ranking misses the positives beyond it).

Revisited Oxford/Paris (Radenovic et al. 2018, ``revisitop/python/evaluate.py``)
* ``gnd``: one dict per query with index lists ``easy``, ``hard``, ``junk`` (``bbx`` ignored).
* Setups: easy (ok = easy, junk = junk + hard), medium (ok = easy + hard, junk = junk),
  hard (ok = hard, junk = junk + easy).
* Junk images are removed from the ranking before scoring.
* AP is the trapezoidal area under the PR curve: the j-th positive (0-based) at rank r (0-based,
  junk removed) adds (j / r + (j + 1) / (r + 1)) / 2 / n_ok, with j / r = 1 at r = 0; n_ok counts
  all positives of the query, ranked or not.
* mP@k: with 1-based positive positions, kq = min(last positive position, k) and
  P = #(positions <= kq) / kq.
* Queries with no positive in a setup are excluded from that setup's means.

GLDv2 retrieval (Kaggle 2019 metric, mAP@100)
* ``ground_truth``: per query an int array of relevant database indices, or None (no ground
  truth: the query is skipped). AP = sum_{i<=100} P@i * rel_i / min(#relevant, 100), where a
  database index repeated in a ranking counts only at its first position.
"""
import numpy as np

SETUPS = {
    "easy": (("easy",), ("junk", "hard")),
    "medium": (("easy", "hard"), ("junk",)),
    "hard": (("hard",), ("junk", "easy")),
}


def _indices(entry, keys):
  return np.unique(np.concatenate([np.asarray(entry.get(k, ()), np.int64).ravel() for k in keys]))


def _check_ranking(ranking, num_queries):
  ranking = np.asarray(ranking)
  if ranking.ndim != 2 or not np.issubdtype(ranking.dtype, np.integer):
    raise ValueError(f"ranking must be an int (Q, N) array, got {ranking.dtype} {ranking.shape}")
  if len(ranking) != num_queries:
    raise ValueError(f"ranking has {len(ranking)} rows but there are {num_queries} queries")
  return ranking


def trapezoid_ap(positions, num_positives: int) -> float:
  """revisitop ``compute_ap``: ``positions`` are the sorted 0-based ranks of the ranked positives
  (junk removed); ``num_positives`` counts all positives of the query."""
  positions = np.asarray(positions, np.float64)
  j = np.arange(len(positions))
  before = np.where(positions == 0, 1.0, j / np.maximum(positions, 1))
  after = (j + 1) / (positions + 1)
  return float(np.sum((before + after) / 2) / num_positives)


def revisited_map(ranking, gnd, ks=(1, 5, 10)) -> dict:
  """Revisited Oxford/Paris scores: {setup: {"map", "mp@k"..., "num_queries"}} for easy/medium/hard.

  ``num_queries`` is the number of queries with at least one positive (the others are excluded).
  """
  ranking = _check_ranking(ranking, len(gnd))
  results = {}
  for setup, (ok_keys, junk_keys) in SETUPS.items():
    aps, precisions = [], []
    for row, entry in zip(ranking, gnd):
      ok = _indices(entry, ok_keys)
      if len(ok) == 0:
        continue
      kept = row[~np.isin(row, _indices(entry, junk_keys))]
      positions = np.flatnonzero(np.isin(kept, ok))
      aps.append(trapezoid_ap(positions, len(ok)))
      if len(positions) == 0:
        precisions.append([0.0] * len(ks))
        continue
      last = positions[-1] + 1
      precisions.append([np.sum(positions < min(last, k)) / min(last, k) for k in ks])
    scores = {"num_queries": len(aps), "map": float(np.mean(aps)) if aps else float("nan")}
    means = np.mean(precisions, axis=0) if aps else [float("nan")] * len(ks)
    scores.update({f"mp@{k}": float(p) for k, p in zip(ks, means)})
    results[setup] = scores
  return results


def gldv2_map_at_k(ranking, ground_truth, k: int = 100) -> float:
  """GLDv2 retrieval mAP@k over the queries that have ground truth (None/empty entries skipped)."""
  ranking = _check_ranking(ranking, len(ground_truth))
  aps = []
  for row, relevant in zip(ranking, ground_truth):
    if relevant is None or len(relevant) == 0:
      continue
    relevant = np.unique(np.asarray(relevant, np.int64))
    top = row[:k]
    first = np.zeros(len(top), bool)
    first[np.unique(top, return_index=True)[1]] = True
    hits = first & np.isin(top, relevant)
    precision = np.cumsum(hits) / np.arange(1, len(top) + 1)
    aps.append(np.sum(precision * hits) / min(len(relevant), k))
  if not aps:
    raise ValueError("no query has ground truth")
  return float(np.mean(aps))
