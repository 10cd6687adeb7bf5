import itertools

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from orthohash_jax import metrics, parallel


def ranking(q_bits, db_bits):
  dist = (q_bits[:, None, :] != db_bits[None, :, :]).sum(-1)
  return dist, [np.lexsort((np.arange(len(db_bits)), d)) for d in dist]


def relevant(ql, dl):
  if ql.ndim == 2:
    return (ql @ dl.T) > 0
  return ql[:, None] == dl[None, :]


def brute_ap(rel_sorted, topk):
  rel = rel_sorted[:topk].astype(float)
  if rel.sum() == 0:
    return 0.0
  hits = np.cumsum(rel)
  return float(sum(hits[i] / (i + 1) for i in range(len(rel)) if rel[i]) / rel.sum())


def make_data(seed, k, nq=6, ndb=40, multilabel=False, distinct=5):
  rng = np.random.default_rng(seed)
  base = rng.random((distinct, k)) < 0.5
  qb = base[rng.integers(0, distinct, nq)] ^ (rng.random((nq, k)) < 0.05)
  db = base[rng.integers(0, distinct, ndb)] ^ (rng.random((ndb, k)) < 0.05)
  if multilabel:
    ql = (rng.random((nq, 4)) < 0.4).astype(np.uint8)
    dl = (rng.random((ndb, 4)) < 0.4).astype(np.uint8)
  else:
    ql, dl = rng.integers(0, 3, nq), rng.integers(0, 3, ndb)
  return qb, db, ql, dl


@pytest.mark.parametrize("k", [16, 48, 64, pytest.param(2048, marks=pytest.mark.slow)])
@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize("topk", [None, 1, 7])
def test_map_matches_brute_force(k, multilabel, topk):
  qb, db, ql, dl = make_data(k + int(multilabel), k, multilabel=multilabel)
  _, orders = ranking(qb, db)
  rel = relevant(ql, dl)
  expected = np.mean([brute_ap(rel[i][o], topk or len(db)) for i, o in enumerate(orders)])
  got = metrics.mean_average_precision(np.where(qb, 1.0, -1.0), np.where(db, 1.0, -1.0), ql, dl,
                                       topk)
  assert got == pytest.approx(expected, abs=1e-12)


def test_single_query_and_zero_relevance_counts_as_zero():
  qb, db, _, _ = make_data(0, 32, nq=1)
  ql, dl = np.array([5]), np.zeros(len(db), int)
  assert metrics.mean_average_precision(qb, db, ql, dl) == 0.0


def tie_aware_brute(dist, rel, topk):
  """Average AP over every order within distance groups (tiny inputs only)."""
  groups = [np.flatnonzero(dist == d) for d in np.unique(dist)]
  aps = []
  for perms in itertools.product(*[itertools.permutations(g) for g in groups]):
    order = np.concatenate(perms)
    aps.append(brute_ap(rel[order], topk))
  return np.mean(aps)


@pytest.mark.parametrize("topk", [None, 2])
def test_tie_aware_map_is_expected_ap(topk):
  # distances 0,0,1,1,1,3,3: the cut-off 2 falls on a group boundary, where the value is exact
  q = np.zeros((1, 8), bool)
  db = np.zeros((7, 8), bool)
  db[2:5, 0] = True
  db[5:, :3] = True
  ql, dl = np.array([1]), np.array([1, 0, 1, 0, 1, 1, 0])
  dist = (db != q).sum(1)
  expected = tie_aware_brute(dist, dl == 1, topk or len(db))
  got = metrics.tie_aware_mean_average_precision(q, db, ql, dl, topk)
  assert got == pytest.approx(expected, abs=1e-12)


def test_tie_aware_equals_plain_without_ties():
  rng = np.random.default_rng(0)
  db = np.array([[int(b) for b in f"{i:08b}"] for i in range(1, 9)], bool)
  q = np.zeros((1, 8), bool)
  dist = db.sum(1)
  keep = np.unique(dist, return_index=True)[1]  # one item per distance: no ties
  ql, dl = np.array([0]), rng.integers(0, 2, len(keep))
  plain = metrics.mean_average_precision(q, db[keep], ql, dl)
  tie = metrics.tie_aware_mean_average_precision(q, db[keep], ql, dl)
  assert plain == pytest.approx(tie, abs=1e-12)


@pytest.mark.slow
def test_precision_at_k_radius_and_pr_curve():
  qb, db, ql, dl = make_data(3, 24, nq=5, ndb=30)
  dist, orders = ranking(qb, db)
  rel = relevant(ql, dl)
  for k in (1, 10, 30):
    expected = np.mean([rel[i][o[:k]].mean() for i, o in enumerate(orders)])
    assert metrics.precision_at_k(qb, db, ql, dl, k) == pytest.approx(expected)
  inside = dist <= 2
  prec = [(inside[i] & rel[i]).sum() / inside[i].sum() if inside[i].any() else 0.0
          for i in range(5)]
  assert metrics.precision_within_radius(qb, db, ql, dl, 2) == pytest.approx(np.mean(prec))
  curve = metrics.precision_recall_curve(qb, db, ql, dl)
  for r in (0, 5, 12, 24):
    inside = dist <= r
    ok = inside.any(1)
    p = np.mean([(inside[i] & rel[i]).sum() / inside[i].sum() for i in range(5) if ok[i]])
    rec = np.mean([(inside[i] & rel[i]).sum() / rel[i].sum() for i in range(5) if rel[i].any()])
    assert curve["precision"][r] == pytest.approx(p)
    assert curve["recall"][r] == pytest.approx(rec)
  assert curve["recall"][-1] == pytest.approx(1.0)


def test_analysis_metrics():
  v = np.array([[1.0, 1.0], [2.0, -0.1], [-1.0, 3.0], [-2.0, -2.0]])
  angle = np.degrees(np.arccos([1.0, 2.1 / (np.sqrt(4.01) * np.sqrt(2)), 4 / (np.sqrt(10) *
                                                                                np.sqrt(2)), 1.0]))
  assert metrics.quantization_angle(v) == pytest.approx(angle.mean())
  labels = np.array([0, 0, 1, 1])
  b = np.sign(v)
  d = (2 - b @ b.T) / 2
  intra = [d[0, 1], d[2, 3]]
  inter = [d[i, j] for i in (0, 1) for j in (2, 3)]
  assert metrics.separability(v, labels) == pytest.approx(np.mean(inter) - np.mean(intra))
  h = np.sign(np.stack([v[:2].mean(0), v[2:].mean(0)]))
  assert metrics.orthogonality(v, labels) == pytest.approx(np.linalg.norm(h @ h.T / 2 - np.eye(2)))


def test_bad_input():
  qb, db, ql, dl = make_data(0, 16)
  with pytest.raises(ValueError, match="topk must be in"):
    metrics.mean_average_precision(qb, db, ql, dl, topk=len(db) + 1)
  with pytest.raises(ValueError, match="labels"):
    metrics.mean_average_precision(qb, db, ql[:2], dl)
  with pytest.raises(ValueError, match="words"):
    metrics.mean_average_precision(np.ones((2, 40)), np.ones((3, 16)), ql[:2], dl[:3])


@pytest.mark.parametrize("topk", [5, 39, 120])
def test_map_multilabel_many_classes_matches_brute_force(topk):
  """40 classes: multi-hot rows bit-packed over two uint32 words; R below and above N / 32."""
  rng = np.random.default_rng(topk)
  qb, db, _, _ = make_data(topk, 24, nq=37, ndb=130)
  ql = (rng.random((37, 40)) < 0.04).astype(np.int64)
  dl = (rng.random((130, 40)) < 0.04).astype(np.int64)
  ql[:, 35] |= rng.random(37) < 0.3  # a class in the second word
  dl[:, 35] |= rng.random(130) < 0.3
  dist, orders = ranking(qb, db)
  rel = relevant(ql, dl)
  np.testing.assert_array_equal(metrics.relevance(ql, dl), rel)  # bit-packed words
  expected = [brute_ap(rel[i][o], topk) for i, o in enumerate(orders)]
  np.testing.assert_allclose(metrics.average_precisions(qb, db, ql, dl, topk), expected,
                             rtol=0, atol=1e-12)
  inside = dist <= 9
  prec = np.where(inside.any(1), (inside & rel).sum(1) / np.maximum(inside.sum(1), 1), 0.0)
  assert metrics.precision_within_radius(qb, db, ql, dl, 9) == pytest.approx(prec.mean(), abs=1e-12)
  hits = np.mean([rel[i][o[:topk]].mean() for i, o in enumerate(orders)])
  assert metrics.precision_at_k(qb, db, ql, dl, topk) == pytest.approx(hits, abs=1e-12)


@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize("topk", [7, None])
def test_map_over_a_mesh_equals_unsharded_and_brute_force(multilabel, topk):
  """Queries split over a 1-, 4- and (2 x 2)-device mesh (this process's 4 fake devices): APs
  bit-equal to the unsharded computation (13 queries: the split pads), which matches brute
  force; 12 distinct codes, so ties are many."""
  qb, db, ql, dl = make_data(3, 20, nq=13, ndb=300, multilabel=multilabel, distinct=12)
  ref = metrics.average_precisions(qb, db, ql, dl, topk)
  dist, order = ranking(qb, db)
  rel = relevant(ql, dl)
  np.testing.assert_allclose(ref, [brute_ap(r[o], topk) for r, o in zip(rel, order)],
                             rtol=1e-12)
  for mesh in (parallel.make_mesh(1), parallel.make_mesh(4), parallel.make_mesh(4, 2)):
    np.testing.assert_array_equal(metrics.average_precisions(qb, db, ql, dl, topk, mesh), ref)
    assert metrics.mean_average_precision(qb, db, ql, dl, topk, mesh) == ref.mean()


def test_mesh_map_places_the_database_once_for_all_chunks(monkeypatch):
  """AP@7 over a 4-device mesh in 5 chunks of 3 queries: the database planes are copied to the
  devices (a ``device_put`` with the replicated spec P()) once, not once per chunk, and the APs
  equal the unsharded ones."""
  qb, db, ql, dl = make_data(4, 20, nq=13, ndb=300, distinct=12)
  ref = metrics.average_precisions(qb, db, ql, dl, 7)
  monkeypatch.setattr(metrics, "TOPK_QUERY_CHUNK", 3)
  put, replicated = jax.device_put, []

  def counting_put(x, device=None, *args, **kwargs):
    if isinstance(device, NamedSharding) and device.spec == P():
      replicated.append(np.shape(x))
    return put(x, device, *args, **kwargs)

  monkeypatch.setattr(jax, "device_put", counting_put)
  np.testing.assert_array_equal(
      metrics.average_precisions(qb, db, ql, dl, 7, parallel.make_mesh(4)), ref)
  assert len(replicated) == 1 and len(replicated[0]) == 3  # the (W, 32, M) planes, once


@pytest.mark.parametrize("multilabel", [False, True])
def test_chunked_map_all_and_pair_counts_match_brute_force(monkeypatch, multilabel):
  """Chunks of 3 queries (the last one padded): mAP@all (the counting-sort ranking, AP from the
  relevant ranks only) and the device pair counts against brute force, codes with many ties."""
  monkeypatch.setattr(metrics, "MAP_PAIRS", 120)
  qb, db, ql, dl = make_data(5, 36, nq=13, ndb=40, multilabel=multilabel, distinct=4)
  dist, order = ranking(qb, db)
  rel = relevant(ql, dl)
  np.testing.assert_allclose(metrics.average_precisions(qb, db, ql, dl),
                             [brute_ap(r[o], None) for r, o in zip(rel, order)], rtol=1e-12)
  intra, inter = metrics.pair_distance_counts(qb, db, ql, dl)
  np.testing.assert_array_equal(intra, np.bincount(dist[rel], minlength=65))
  np.testing.assert_array_equal(inter, np.bincount(dist[~rel], minlength=65))


def test_one_ahead_yields_every_item_after_producing_the_next():
  pulled = []

  def produce(n):
    for i in range(n):
      pulled.append(i)
      yield i if i != 1 else None  # None is an item like any other

  seen = []
  for item in metrics._one_ahead(produce(4)):
    seen.append((item, list(pulled)))
  assert seen == [(0, [0, 1]), (None, [0, 1, 2]), (2, [0, 1, 2, 3]), (3, [0, 1, 2, 3])]
  assert not list(metrics._one_ahead(produce(0)))
