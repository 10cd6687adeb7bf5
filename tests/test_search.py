"""Exactness of fast Hamming search, HammingIndex / CLI and counting-based metrics vs numpy."""
import os
import subprocess
import sys

import numpy as np
import pytest

from orthohash_jax import metrics, retrieval, search


def _codes(rng, n, k, ties=False, centres=None):
  """±1 float codes (n, k): uniform, or few centres with 3% flipped bits (many equal distances)."""
  if not ties:
    return np.where(rng.random((n, k)) < 0.5, 1.0, -1.0)
  centres = np.where(rng.random((3, k)) < 0.5, 1.0, -1.0) if centres is None else centres
  x = centres[rng.integers(0, len(centres), n)]
  return np.where(rng.random((n, k)) < 0.03, -x, x)


def _brute_force(q, db, k):
  """Independent reference from unpacked codes: distances, then sort by (distance, index)."""
  dist = (q[:, None, :] != db[None, :, :]).sum(-1)
  order = np.lexsort((np.broadcast_to(np.arange(len(db)), dist.shape), dist), axis=1)[:, :k]
  return np.take_along_axis(dist, order, axis=1), order


def _reference_ap(dist, rel, depth):
  order = np.argsort(dist, axis=1, kind="stable")[:, :depth]
  ranked = np.take_along_axis(rel, order, axis=1)
  hits = np.cumsum(ranked, axis=1)
  prec = (hits / np.arange(1, depth + 1) * ranked).sum(1)
  return np.where(hits[:, -1] > 0, prec / np.maximum(hits[:, -1], 1), 0.0), ranked.sum(1) / depth


CASES = [  # (num_bits, N, Q, k, ties)
    (64, 5000, 7, 100, False),  # one block level
    (64, 5000, 7, 100, True),
    (64, 3000, 5, 1, True),  # two block levels
    (40, 2000, 6, 37, True),  # K not a multiple of 32, odd k
    (20, 1000, 1, 999, False),  # Q = 1
    (64, 700, 3, 700, True),  # k = N
    (96, 4000, 4, 13, False),
]
# each shape compiles its own top-k (5 to 13 s of CPU): the default run keeps the first two
CASES_MARKED = CASES[:2] + [pytest.param(*case, marks=pytest.mark.slow) for case in CASES[2:]]


@pytest.mark.parametrize("num_bits,n,nq,k,ties", CASES_MARKED)
@pytest.mark.parametrize("method", ["popcount", pytest.param("matmul", marks=pytest.mark.slow)])
def test_topk_matches_brute_force(num_bits, n, nq, k, ties, method):
  rng = np.random.default_rng(num_bits * n + k)
  db = _codes(rng, n, num_bits, ties)
  q = _codes(rng, nq, num_bits, ties)
  dist, idx = retrieval.hamming_topk(retrieval.pack_codes(q), retrieval.pack_codes(db), k,
                                     method=method)
  ref_d, ref_i = _brute_force(q, db, k)
  np.testing.assert_array_equal(np.asarray(dist), ref_d)
  np.testing.assert_array_equal(np.asarray(idx), ref_i)


def test_topk_when_a_level_bound_is_far_above_the_threshold():
  """Each level's threshold search starts at the u of the level above, an upper bound that is
  usually tight; here it is far off: a few blocks of copies of the query (distance 0) hold more
  than k items, while most block minima lie near 20, so the search walks far down."""
  rng = np.random.default_rng(3)
  q = _codes(rng, 2, 64)
  db = _codes(rng, 4000, 64)
  db[32:64] = q[0]  # block 1 all at distance 0 from query 0
  db[96 + rng.permutation(32)[:20]] = q[1]  # 20 copies of query 1 in block 3, 7 in block 40
  db[1280 + rng.permutation(32)[:7]] = q[1]
  for k in (1, 10, 27, 40):
    dist, idx = retrieval.hamming_topk(retrieval.pack_codes(q), retrieval.pack_codes(db), k)
    ref_d, ref_i = _brute_force(q, db, k)
    np.testing.assert_array_equal(np.asarray(dist), ref_d, err_msg=f"k={k}")
    np.testing.assert_array_equal(np.asarray(idx), ref_i, err_msg=f"k={k}")


@pytest.mark.parametrize("method", ["popcount", pytest.param("matmul", marks=pytest.mark.slow)])
def test_topk_padding_around_leaf_and_block_edges(method):
  """Databases padded to a common shape whose real size ends anywhere in a level-1 entry (16
  codes) or a block (32), with padding rows equal to query 0 (distance 0) and the last real row
  at distance 1 from it (so the entry holding the end is kept): no padding row is ever
  returned, and the results are those of the unpadded database. One and two levels."""
  rng = np.random.default_rng(11)
  q = _codes(rng, 3, 64, True)
  centres = np.where(rng.random((3, 64)) < 0.5, 1.0, -1.0)
  for total, sizes, ks in ((640, (300, 304, 310, 320, 336, 352, 639, 640), (1, 5, 9)),
                           (4096, (4000, 4080, 4095), (1, 2))):
    db = _codes(rng, total, 64, True, centres)
    for n in sizes:
      real = db[:n].copy()
      real[-1] = q[0] * np.where(np.arange(64) == 5, -1, 1)
      padded = np.asarray(retrieval.pack_codes(np.concatenate([real, np.repeat(
          q[:1], total - n, axis=0)])))
      for k in ks:
        dist, idx = retrieval.hamming_topk(retrieval.pack_codes(q), padded, k, method=method,
                                           num_items=n)
        ref_d, ref_i = _brute_force(q, real, k)
        np.testing.assert_array_equal(np.asarray(idx), ref_i, err_msg=f"n={n} k={k}")
        np.testing.assert_array_equal(np.asarray(dist), ref_d, err_msg=f"n={n} k={k}")


@pytest.mark.slow
def test_topk_query_chunks_and_rank():
  rng = np.random.default_rng(3)
  db, q = _codes(rng, 2500, 64, True), _codes(rng, 11, 64, True)
  pq, pdb = retrieval.pack_codes(q), retrieval.pack_codes(db)
  ref_d, ref_i = _brute_force(q, db, len(db))
  dist, idx = retrieval.hamming_topk(pq, pdb, 50, query_chunk=4)
  np.testing.assert_array_equal(np.asarray(idx), ref_i[:, :50])
  dist, idx = retrieval.hamming_rank(pq, pdb)
  np.testing.assert_array_equal(np.asarray(dist), ref_d)
  np.testing.assert_array_equal(np.asarray(idx), ref_i)


def test_blocked_database_reused_across_searches_and_index_adds():
  """A database blocked once (``blocked_codes``, with trailing padding rows) serves several query
  sets with the packed-codes results; an index's cached copy is rebuilt after ``add``."""
  rng = np.random.default_rng(8)
  db, q1, q2 = _codes(rng, 700, 64, True), _codes(rng, 5, 64, True), _codes(rng, 3, 64, True)
  padded = np.pad(np.asarray(retrieval.pack_codes(db)), ((0, 40), (0, 0)), constant_values=7)
  blocked = retrieval.blocked_codes(padded, num_items=len(db))
  for q in (q1, q2):
    dist, idx = retrieval.hamming_topk(retrieval.pack_codes(q), blocked, 30)
    ref_d, ref_i = _brute_force(q, db, 30)
    np.testing.assert_array_equal(np.asarray(dist), ref_d)
    np.testing.assert_array_equal(np.asarray(idx), ref_i)
  with pytest.raises(ValueError, match="k must be"):
    retrieval.hamming_topk(retrieval.pack_codes(q1), blocked, len(db) + 1)
  with pytest.raises(ValueError, match="words"):
    retrieval.hamming_topk(retrieval.pack_codes(np.ones((2, 96))), blocked, 3)
  index = search.HammingIndex(64)
  index.add(db[:400])
  index.search(q1, 30)
  index.add(db[400:])
  dist, idx = index.search(q1, 30)
  ref_d, ref_i = _brute_force(q1, db, 30)
  np.testing.assert_array_equal(dist, ref_d)
  np.testing.assert_array_equal(idx, ref_i)


def test_topk_rejects_bad_k():
  codes = retrieval.pack_codes(np.ones((4, 8)))
  for k in (0, 5):
    with pytest.raises(ValueError, match="k must be"):
      retrieval.hamming_topk(codes, codes, k)


@pytest.mark.parametrize("num_bits,n,nq,k,ties", [CASES[1], CASES[3], CASES[5]])
def test_faiss_backend_matches_brute_force(num_bits, n, nq, k, ties):
  pytest.importorskip("faiss")
  rng = np.random.default_rng(n)
  db, q = _codes(rng, n, num_bits, ties), _codes(rng, nq, num_bits, ties)
  index = search.HammingIndex(num_bits, backend="faiss")
  index.add(db)
  dist, idx = index.search(q, k)
  ref_d, ref_i = _brute_force(q, db, k)
  np.testing.assert_array_equal(dist, ref_d)
  np.testing.assert_array_equal(idx, ref_i)


@pytest.mark.slow
def test_index_add_save_load(tmp_path):
  rng = np.random.default_rng(5)
  db, q = _codes(rng, 900, 40, True), _codes(rng, 6, 40, True)
  labels = rng.integers(0, 4, 900)
  index = search.HammingIndex(40)
  index.add(db[:500], labels[:500])
  index.add(retrieval.pack_codes(db[500:]), labels[500:])
  path = tmp_path / "index.npz"
  index.save(path)
  loaded = search.HammingIndex.load(path)
  assert len(loaded) == 900 and loaded.num_bits == 40
  np.testing.assert_array_equal(loaded.labels, labels)
  dist, idx = loaded.search(q, 25)
  ref_d, ref_i = _brute_force(q, db, 25)
  np.testing.assert_array_equal(dist, ref_d)
  np.testing.assert_array_equal(idx, ref_i)
  with pytest.raises(ValueError, match="labels"):
    index.add(db[:3])


def _export_file(path, rng, n=600, nq=5, num_bits=48):
  db, q = _codes(rng, n, num_bits, True), _codes(rng, nq, num_bits, True)
  np.savez(path, db_codes=np.asarray(retrieval.pack_codes(db)), num_bits=num_bits,
           db_labels=rng.integers(0, 3, n), query_codes=np.asarray(retrieval.pack_codes(q)),
           query_labels=rng.integers(0, 3, nq), config='{"bits": 48}')
  return db, q


@pytest.mark.slow
def test_cli_saves_exact_neighbours(tmp_path, capsys):
  """--output is written under exactly its name, which is the one printed; a directory is
  refused in one line, and nothing is left behind."""
  codes = tmp_path / "codes.npz"
  db, q = _export_file(codes, np.random.default_rng(6))
  ref_d, ref_i = _brute_force(q, db, 17)
  for out in (tmp_path / "nn.npz", tmp_path / "nnout"):
    assert search.main([f"--codes={codes}", "--k=17", f"--output={out}"]) == 0
    assert capsys.readouterr().out == f"saved {len(q)} x 17 neighbours to {out}\n"
    with np.load(out) as result:
      np.testing.assert_array_equal(result["indices"], ref_i)
      np.testing.assert_array_equal(result["distances"], ref_d)
  outdir = tmp_path / "out"
  outdir.mkdir()
  assert search.main([f"--codes={codes}", "--k=17", f"--output={outdir}"]) == 2
  captured = capsys.readouterr()
  assert captured.out == "" and captured.err == f"error: {outdir} is a directory; give the path " \
      "of the .npz file to write\n"
  assert sorted(os.listdir(tmp_path)) == ["codes.npz", "nn.npz", "nnout", "out"]
  assert not os.listdir(outdir)


@pytest.mark.slow
def test_cli_prints(tmp_path, capsys):
  codes = tmp_path / "codes.npz"
  db, q = _export_file(codes, np.random.default_rng(7))
  assert search.main([f"--codes={codes}", "--k=3", f"--queries={codes}"]) == 0
  lines = capsys.readouterr().out.splitlines()
  _, ref_i = _brute_force(q, db, 3)
  assert len(lines) == len(q) + 1  # with labels: a last line with the mean precision
  assert lines[0].split(": ")[1].split()[0].split(":")[0] == str(ref_i[0, 0])


def test_cli_bad_input_exit_2(tmp_path, capsys):
  codes = tmp_path / "codes.npz"
  _export_file(codes, np.random.default_rng(8))
  bad_dtype, bad_words, no_key = tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "c.npz"
  np.savez(bad_dtype, db_codes=np.zeros((5, 2), np.float32), num_bits=48)
  np.savez(bad_words, db_codes=np.zeros((5, 1), np.uint32), num_bits=48,
           query_codes=np.zeros((1, 1), np.uint32))
  np.savez(no_key, codes=np.zeros((5, 2), np.uint32))
  for argv in ([f"--codes={tmp_path / 'missing.npz'}"], [f"--codes={codes}", "--k=601"],
               [f"--codes={bad_dtype}"], [f"--codes={bad_words}"], [f"--codes={no_key}"],
               [f"--codes={codes}", f"--queries={no_key}"]):
    assert search.main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err


def test_cli_subprocess_no_traceback(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "orthohash_jax.search",
                         f"--codes={tmp_path / 'missing.npz'}"], capture_output=True, text=True,
                        check=False)
  assert proc.returncode == 2
  assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")


@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize("depth,num_bits", [(None, 32), (10, 32), (300, 32), (None, 300)])
def test_metrics_match_numpy(multilabel, depth, num_bits):
  rng = np.random.default_rng(9)
  centres = np.where(rng.random((4, num_bits)) < 0.5, 1.0, -1.0)
  db_lab, q_lab = rng.integers(0, 4, 2000), rng.integers(0, 4, 40)
  db = centres[db_lab] * np.where(rng.random((2000, num_bits)) < 0.1, -1, 1)
  q = centres[q_lab]
  if multilabel:
    db_lab = np.eye(4, dtype=np.int64)[db_lab] | (rng.random((2000, 4)) < 0.2)
    q_lab = np.eye(4, dtype=np.int64)[q_lab]
    rel = (q_lab @ db_lab.T) > 0
  else:
    rel = q_lab[:, None] == db_lab[None, :]
  dist = (q[:, None, :] != db[None, :, :]).sum(-1)
  ref_ap, ref_pk = _reference_ap(dist, rel, depth or len(db))
  aps = metrics.average_precisions(q, db, q_lab, db_lab, topk=depth)
  np.testing.assert_allclose(aps, ref_ap, rtol=0, atol=1e-12)
  assert metrics.mean_average_precision(q, db, q_lab, db_lab, depth) == pytest.approx(
      ref_ap.mean(), abs=1e-12)
  assert metrics.precision_at_k(q, db, q_lab, db_lab, depth or len(db)) == pytest.approx(
      ref_pk.mean(), abs=1e-12)


@pytest.mark.slow
def test_cli_prints_labels_and_precision(tmp_path, capsys):
  codes = tmp_path / "codes.npz"
  db, q = _export_file(codes, np.random.default_rng(9))
  assert search.main([f"--codes={codes}", "--k=4"]) == 0
  lines = capsys.readouterr().out.splitlines()
  with np.load(codes) as f:
    q_labels, db_labels = f["query_labels"], f["db_labels"]
  ref_d, ref_i = _brute_force(q, db, 4)
  precisions = (db_labels[ref_i] == q_labels[:, None]).mean(1)
  assert len(lines) == len(q) + 1
  for qi, line in enumerate(lines[:-1]):
    head, items = line.split(": ")
    assert head == f"{qi} label={q_labels[qi]} P@4={precisions[qi]:.4f}"
    assert items.split() == [f"{i}:{d}:{db_labels[i]}" for i, d in zip(ref_i[qi], ref_d[qi])]
  assert lines[-1] == f"mean P@4={precisions.mean():.4f} over {len(q)} queries"
  # a queries file without labels: database labels only
  np.savez(tmp_path / "q.npz", query_codes=np.asarray(retrieval.pack_codes(q)))
  assert search.main([f"--codes={codes}", "--k=2", f"--queries={tmp_path / 'q.npz'}"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == "0: " + " ".join(f"{i}:{d}:{db_labels[i]}"
                                      for i, d in zip(ref_i[0, :2], ref_d[0, :2]))


def test_relevance_of_neighbours_multilabel():
  db_labels = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]], np.uint8)
  q_labels = np.array([[0, 1, 0], [1, 0, 1]], np.uint8)
  rel = metrics.relevance(q_labels, db_labels, np.array([[0, 1, 2], [2, 1, 0]]))
  np.testing.assert_array_equal(rel, [[False, True, False], [False, True, True]])
  np.testing.assert_array_equal(metrics.relevance(np.array([3, 5]), np.array([5, 3, 3]),
                                                  np.array([[1, 0], [2, 0]])),
                                [[True, False], [False, True]])
  with pytest.raises(ValueError, match="labels must both be"):
    metrics.relevance(np.array([1, 2]), db_labels, np.array([[0], [1]]))
  lines = search.format_results(np.array([[0, 2]]), np.array([[1, 2]]), db_labels,
                                q_labels[:1])
  assert lines == ["0 label=1 P@2=0.5000: 1:0:1,2 2:2:-", "mean P@2=0.5000 over 1 queries"]


# ---- moved from test_robustness.py: damaged code files at the CLI
from orthohash_jax import codes_file  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_search_cli_reads_damaged_code_files_in_one_line(tmp_path, capsys):
  result = {"query_codes": np.zeros((2, 1), np.uint32), "db_codes": np.zeros((3, 1), np.uint32),
            "query_labels": np.zeros(2, np.int32), "db_labels": np.zeros(3, np.int32)}
  path = str(tmp_path / "codes.npz")
  codes_file.save_codes(path, result, 8, {})
  raw = bytearray(open(path, "rb").read())
  raw[150:154] = b"\xff\xff\xff\xff"  # a CRC mismatch inside the first member
  open(path, "wb").write(bytes(raw))
  (tmp_path / "text.npz").write_text("not a zip")
  for bad, message in ((path, "not a readable .npz file"),
                       (str(tmp_path / "text.npz"), "not a .npz file (it starts with b'not a ')")):
    assert search.main([f"--codes={bad}", "--k=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {bad}: {message}"), err
