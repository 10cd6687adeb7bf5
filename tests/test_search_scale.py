"""Search beyond one array: streamed .npy code files, mesh-sharded and 2-process search, each
compared with in-memory ``retrieval.hamming_topk`` and a brute-force reference, ties included."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import free_port
from orthohash_jax import parallel, retrieval, search

# every case compiles its own shard / merge shapes or starts processes (6 to 24 s of CPU each)
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tie_codes(rng, n, num_bits):
  """Packed codes from 4 centres with 3% flipped bits: many equal distances."""
  centres = rng.random((4, num_bits)) < 0.5
  bits = centres[rng.integers(0, 4, n)] ^ (rng.random((n, num_bits)) < 0.03)
  return np.asarray(retrieval.pack_codes(bits)), bits


def _brute_force(q_bits, db_bits, k):
  dist = (q_bits[:, None, :] != db_bits[None, :, :]).sum(-1)
  order = np.lexsort((np.broadcast_to(np.arange(len(db_bits)), dist.shape), dist), axis=1)[:, :k]
  return np.take_along_axis(dist, order, axis=1), order


@pytest.fixture(name="data")
def fixture_data(tmp_path):
  rng = np.random.default_rng(0)
  db, db_bits = _tie_codes(rng, 3001, 40)
  q, q_bits = _tie_codes(rng, 9, 40)
  path = tmp_path / "db.npy"
  np.save(path, db)
  return path, db, db_bits, q, q_bits


@pytest.mark.parametrize("k,chunk_rows", [(1, 500), (37, 256), (300, 1000), (3001, 4096)])
def test_code_file_matches_in_memory(data, k, chunk_rows):
  path, db, db_bits, q, q_bits = data
  index = search.FileIndex(path, 40, chunk_rows=chunk_rows)
  assert len(index) == 3001
  dist, idx = index.search(q, k)
  ref_d, ref_i = _brute_force(q_bits, db_bits, k)
  np.testing.assert_array_equal(dist, ref_d)
  np.testing.assert_array_equal(idx, ref_i)
  mem_d, mem_i = retrieval.hamming_topk(q, db, k)
  np.testing.assert_array_equal(idx, mem_i)
  np.testing.assert_array_equal(dist, mem_d)


def test_shard_search_pads_and_offsets(data):
  path, db, db_bits, q, q_bits = data
  index = search.FileIndex(path, 40, chunk_rows=7)
  dist, idx = index.shard_search(q, 20, 2990, 3001)  # 11 rows: 9 padding columns
  ref_d, ref_i = _brute_force(q_bits, db_bits[2990:], 11)
  np.testing.assert_array_equal(idx[:, :11], ref_i + 2990)
  np.testing.assert_array_equal(dist[:, :11], ref_d)
  assert (idx[:, 11:] == -1).all() and (dist[:, 11:] == 41).all()
  merged = search.search_process_shard(lambda kk: index.shard_search(q, kk, 0, 3001), 20)
  np.testing.assert_array_equal(merged[1], _brute_force(q_bits, db_bits, 20)[1])


@pytest.mark.parametrize("n,k", [(3001, 50), (70, 70), (1000, 1)])
def test_mesh_sharded_matches_in_memory(data, n, k):
  _, db, db_bits, q, q_bits = data
  mesh = parallel.make_mesh()
  assert mesh.devices.size == len(jax.devices())
  index = search.HammingIndex(40)
  index.add(db[:n])
  dist, idx = index.search(q, k, mesh=mesh)
  ref_d, ref_i = _brute_force(q_bits, db_bits[:n], k)
  np.testing.assert_array_equal(dist, ref_d)
  np.testing.assert_array_equal(idx, ref_i)


def _cli(devices, *args):
  """A search CLI process on ``devices`` CPU devices (stdout and stderr piped)."""
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
         "JAX_PLATFORMS": "cpu"}
  return subprocess.Popen([sys.executable, "-m", "orthohash_jax.search", *args], cwd=ROOT,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_mesh_sharded_four_devices_subprocess(data, tmp_path):
  """A real 4-device mesh (the test process may have 1 device): run the CLI with --mesh."""
  path, _, db_bits, q, q_bits = data
  queries, out = tmp_path / "q.npy", tmp_path / "nn.npz"
  np.save(queries, q)
  proc = _cli(4, f"--codes={path}", "--num_bits=40", f"--queries={queries}", "--k=45", "--mesh")
  assert proc.wait(300) == 2 and "streamed on one device" in proc.stderr.read()  # file: no mesh
  npz = tmp_path / "db.npz"
  np.savez(npz, db_codes=np.load(path), num_bits=40)
  proc = _cli(4, f"--codes={npz}", f"--queries={queries}", "--k=45", "--mesh", f"--output={out}")
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-2000:]
  ref_d, ref_i = _brute_force(q_bits, db_bits, 45)
  np.testing.assert_array_equal(np.load(out)["indices"], ref_i)
  np.testing.assert_array_equal(np.load(out)["distances"], ref_d)


def test_two_processes_merge_on_process_zero(data, tmp_path):
  path, _, db_bits, q, q_bits = data
  queries, out = tmp_path / "q.npy", tmp_path / "nn.npz"
  np.save(queries, q)
  port = free_port()
  procs = [_cli(2, f"--codes={path}", "--num_bits=40", f"--queries={queries}", "--k=60",
                "--chunk_rows=512", f"--output={out}", f"--coordinator=127.0.0.1:{port}",
                "--num_processes=2", f"--process_id={i}") for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
  assert "saved" in outs[0][0] and "saved" not in outs[1][0]  # only process 0 reports
  ref_d, ref_i = _brute_force(q_bits, db_bits, 60)
  np.testing.assert_array_equal(np.load(out)["indices"], ref_i)
  np.testing.assert_array_equal(np.load(out)["distances"], ref_d)


def test_code_file_bad_input(tmp_path, capsys):
  rng = np.random.default_rng(1)
  db, _ = _tie_codes(rng, 100, 64)
  good, queries = tmp_path / "db.npy", tmp_path / "q.npz"
  np.save(good, db)
  np.savez(queries, query_codes=db[:3], num_bits=64)
  truncated = tmp_path / "truncated.npy"
  truncated.write_bytes(good.read_bytes()[:-5])
  short = tmp_path / "short.npy"
  short.write_bytes(good.read_bytes()[:-8])  # whole rows, but fewer than the header says
  wrong_dtype = tmp_path / "int64.npy"
  np.save(wrong_dtype, db.astype(np.int64))
  q48 = tmp_path / "q48.npz"
  np.savez(q48, query_codes=db[:3], num_bits=48)
  cases = [
      ([f"--codes={truncated}", "--num_bits=64", f"--queries={queries}"], "multiple of the row"),
      ([f"--codes={short}", "--num_bits=64", f"--queries={queries}"], "header says"),
      ([f"--codes={wrong_dtype}", "--num_bits=64", f"--queries={queries}"], "uint32"),
      ([f"--codes={good}", "--num_bits=32", f"--queries={queries}"], "words per code"),
      ([f"--codes={good}", "--num_bits=64", f"--queries={q48}"], "48 bits"),
      ([f"--codes={good}", f"--queries={queries}"], "needs --num_bits"),
      ([f"--codes={good}", "--num_bits=64", f"--queries={queries}", "--k=0"], "k must be"),
      ([f"--codes={good}", "--num_bits=64", f"--queries={queries}", "--k=101"], "k must be"),
      ([f"--codes={tmp_path / 'none.npy'}", "--num_bits=64", f"--queries={queries}"], "cannot"),
  ]
  for argv, message in cases:
    assert search.main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, (argv, err)
  with pytest.raises(ValueError, match="query codes"):
    search.FileIndex(good, 64).search(db[:2, :1], 3)
