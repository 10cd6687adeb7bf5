"""Revisited Oxford/Paris E/M/H scores and GLDv2 mAP@100 against hand computations."""
import numpy as np
import pytest

from orthohash_jax import revisited

# Query 0 ranks db [3, 1, 4, 0, 5, 2, 7, 6]; gnd easy = [1, 5], hard = [0], junk = [4].
# Query 1 ranks db [2, 0, 1, 3, 4, 5, 6, 7]; gnd easy = [], hard = [2], junk = [].
RANKING = np.array([[3, 1, 4, 0, 5, 2, 7, 6], [2, 0, 1, 3, 4, 5, 6, 7]])
GND = [{"easy": [1, 5], "hard": [0], "junk": [4], "bbx": [0, 0, 1, 1]},
       {"easy": [], "hard": [2], "junk": []}]

# Hand computation. AP adds (j/r + (j+1)/(r+1)) / 2 / n_ok for the j-th positive at junk-free
# 0-based rank r (j/r = 1 at r = 0); mP@k uses kq = min(last 1-based position, k).
# Query 0, medium: ok {1, 5, 0}, junk {4} at rank 2; positives at ranks 1, 3, 4 -> 1, 2, 3.
#   AP = [(0 + 1/2) + (1/2 + 2/3) + (2/3 + 3/4)] / 2 / 3 = (6 + 14 + 17) / 72 = 37/72.
#   1-based positions 2, 3, 4: P@1 = 0/1, P@5 = P@10 = 3/4 (kq = 4).
# Query 0, easy: ok {1, 5}, junk {4, 0} at ranks 2, 3; positives at ranks 1, 4 -> 1, 2.
#   AP = [(0 + 1/2) + (1/2 + 2/3)] / 2 / 2 = 5/12; positions 2, 3: P@1 = 0, P@5 = P@10 = 2/3.
# Query 0, hard: ok {0}, junk {4, 1, 5}; positive at rank 3 with 2 junk above -> 1.
#   AP = (0 + 1/2) / 2 = 1/4; position 2: P@1 = 0, P@5 = P@10 = 1/2.
# Query 1: no easy positive (excluded from easy); medium and hard ok {2} at rank 0: AP = 1, P = 1.
EXPECTED = {
    "easy": {"num_queries": 1, "map": 5 / 12, "mp@1": 0.0, "mp@5": 2 / 3, "mp@10": 2 / 3},
    "medium": {"num_queries": 2, "map": (37 / 72 + 1) / 2, "mp@1": 0.5, "mp@5": 7 / 8,
               "mp@10": 7 / 8},
    "hard": {"num_queries": 2, "map": (1 / 4 + 1) / 2, "mp@1": 0.5, "mp@5": 3 / 4,
             "mp@10": 3 / 4},
}


def test_revisited_hand_example():
  got = revisited.revisited_map(RANKING, GND)
  assert got.keys() == EXPECTED.keys()
  for setup, scores in EXPECTED.items():
    assert got[setup] == pytest.approx(scores), setup


def _revisitop_reference(ranking, gnd, ks):
  """A loop-by-loop transcription of revisitop compute_map (junk shifted out by counting)."""
  out = {}
  for setup, (ok_keys, junk_keys) in revisited.SETUPS.items():
    aps, prs = [], []
    for row, entry in zip(ranking, gnd):
      ok = [i for key in ok_keys for i in entry[key]]
      junk = [i for key in junk_keys for i in entry[key]]
      if not ok:
        continue
      pos = [p for p, i in enumerate(row) if i in ok]
      junk_pos = [p for p, i in enumerate(row) if i in junk]
      shifted, k, ij = [], 0, 0
      for p in pos:
        while ij < len(junk_pos) and p > junk_pos[ij]:
          k, ij = k + 1, ij + 1
        shifted.append(p - k)
      ap = 0.0
      for j, r in enumerate(shifted):
        p0 = 1.0 if r == 0 else j / r
        ap += (p0 + (j + 1) / (r + 1)) / 2 / len(ok)
      aps.append(ap)
      one_based = [p + 1 for p in shifted]
      prs.append([sum(p <= min(max(one_based), kk) for p in one_based) / min(max(one_based), kk)
                  for kk in ks])
    out[setup] = (np.mean(aps), np.mean(prs, axis=0))
  return out


def test_revisited_matches_brute_force():
  rng = np.random.default_rng(0)
  num_db, ks = 40, (1, 5, 10)
  ranking, gnd = [], []
  for _ in range(25):
    ids = rng.permutation(num_db)
    n_easy, n_hard, n_junk = rng.integers(1, 6, size=3)
    gnd.append({"easy": ids[:n_easy].tolist(), "hard": ids[n_easy:n_easy + n_hard].tolist(),
                "junk": ids[n_easy + n_hard:n_easy + n_hard + n_junk].tolist()})
    ranking.append(rng.permutation(num_db))
  got = revisited.revisited_map(np.array(ranking), gnd, ks)
  ref = _revisitop_reference(ranking, gnd, ks)
  for setup, (ap, prs) in ref.items():
    assert got[setup]["map"] == pytest.approx(ap)
    assert [got[setup][f"mp@{k}"] for k in ks] == pytest.approx(prs)


def test_revisited_truncated_ranking_counts_unranked_positives():
  # ok {0, 1}; only 0 is ranked, at rank 0: AP = (1 + 1) / 2 / 2 = 1/2; P@5 uses kq = 1.
  got = revisited.revisited_map(np.array([[0, 2, 3]]), [{"easy": [0, 1], "hard": [], "junk": []}])
  assert got["easy"]["map"] == pytest.approx(0.5)
  assert got["easy"]["mp@5"] == pytest.approx(1.0)
  assert got["hard"]["num_queries"] == 0 and np.isnan(got["hard"]["map"])


def test_gldv2_map_hand_example():
  # Query 0 (k = 100): ranking [2, 3, 2, 1, 9, ...], relevant {2, 1, 9} (2 listed twice).
  #   Hits at positions 1, 4, 5 (the repeated 2 at position 3 does not count):
  #   (1/1 + 2/4 + 3/5) / min(3, 100) = 2.1 / 3 = 0.7.
  # Query 1: 150 relevant items and the top 100 are all relevant: 100 / min(150, 100) = 1.
  # Query 2: no ground truth, skipped. Mean = (0.7 + 1) / 2 = 0.85.
  num_db = 200
  row0 = np.concatenate([[2, 3, 2, 1, 9], np.arange(10, num_db)])
  ranking = np.stack([row0[:num_db - 5], np.arange(num_db - 5), np.arange(num_db - 5)])
  ground_truth = [np.array([2, 1, 9, 2]), np.arange(150), None]
  assert revisited.gldv2_map_at_k(ranking, ground_truth) == pytest.approx(0.85)
  assert revisited.gldv2_map_at_k(ranking[:1], ground_truth[:1], k=4) == pytest.approx(
      (1 + 2 / 4) / 3)


def test_gldv2_map_matches_brute_force():
  rng = np.random.default_rng(1)
  ranking = rng.integers(0, 30, size=(20, 60))
  ground_truth = [rng.choice(30, size=rng.integers(1, 12), replace=False) for _ in range(20)]
  expected = []
  for row, rel in zip(ranking, ground_truth):
    seen, hits, ap = set(), 0, 0.0
    for i, idx in enumerate(row[:25]):
      if idx not in seen and idx in set(rel.tolist()):
        hits += 1
        ap += hits / (i + 1)
      seen.add(idx)
    expected.append(ap / min(len(rel), 25))
  assert revisited.gldv2_map_at_k(ranking, ground_truth, k=25) == pytest.approx(np.mean(expected))


def test_bad_ranking_shape():
  with pytest.raises(ValueError, match="3 rows but there are 2 queries"):
    revisited.revisited_map(np.zeros((3, 4), int), GND)
  with pytest.raises(ValueError, match="no query has ground truth"):
    revisited.gldv2_map_at_k(np.zeros((1, 4), int), [None])
