"""``python -m orthohash_jax.export`` in-process with the run's restore and evaluation replaced by
known codes: the files it writes are the ones it names, and no output may land on a run's
files (issue 36 #6, #16)."""
import json
import os
import types

import ml_collections
import numpy as np
import pytest

from orthohash_jax import codes_file, evaluation, export, retrieval, run, search


def known_result(rng, num_bits=16):
  signs = lambda n: np.where(rng.random((n, num_bits)) < 0.5, -1.0, 1.0)
  return {"query_codes": retrieval.pack_codes(signs(5)),
          "db_codes": retrieval.pack_codes(signs(20)),
          "query_labels": np.arange(5, dtype=np.int32),
          "db_labels": np.arange(20, dtype=np.int32) % 5, "mAP": 0.5}


@pytest.fixture
def fake_run(tmp_path, monkeypatch):
  """A workdir with config.json and a checkpoints/ directory; restore and evaluation replaced."""
  workdir = tmp_path / "run"
  (workdir / "checkpoints" / "7").mkdir(parents=True)
  (workdir / "config.json").write_text(json.dumps({"num_bits": 16}))
  result = known_result(np.random.default_rng(0))
  config = ml_collections.ConfigDict({"num_bits": 16})
  trainer = types.SimpleNamespace(config=config)
  data = types.SimpleNamespace(close=lambda: None)
  monkeypatch.setattr(run, "restore_run", lambda w: (trainer, data, None, 7))
  monkeypatch.setattr(evaluation, "evaluate", lambda t, d, s: result)
  return workdir, result


def test_export_names_every_file_it_writes_the_faiss_index_too(fake_run, tmp_path, capsys):
  pytest.importorskip("faiss")
  workdir, result = fake_run
  out = tmp_path / "out" / "codes.npz"
  out.parent.mkdir()
  assert export.main([f"--workdir={workdir}", f"--output={out}", "--faiss"]) == 0
  faiss_file = tmp_path / "out" / "codes.faissbin"
  assert capsys.readouterr().out.strip() == (f"wrote {out} and {faiss_file} (checkpoint step 7, "
                                             "mAP 0.5000)")
  assert sorted(os.listdir(out.parent)) == ["codes.faissbin", "codes.npz"]
  np.testing.assert_array_equal(codes_file.load_codes(str(out))["db_codes"], result["db_codes"])


@pytest.mark.parametrize("name", ["config.json", "codes.npz", "results.json", "metrics.jsonl",
                                  "codebook.npy", "progress.json", "checkpoints/7/x.npz"])
def test_an_output_on_a_run_file_is_refused_and_the_file_kept(fake_run, capsys, name):
  workdir, _ = fake_run
  before = (workdir / "config.json").read_bytes()
  assert export.main([f"--workdir={workdir}", f"--output={workdir / name}"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: --output ") and "elsewhere" in err[0], err
  assert (workdir / "config.json").read_bytes() == before
  assert not (workdir / "codes.npz").exists() or name != "codes.npz"


def test_the_faiss_index_beside_an_output_may_not_be_a_run_file_either(fake_run, capsys):
  workdir, _ = fake_run
  (workdir / "codes.npz").write_bytes(b"kept")
  assert export.main([f"--workdir={workdir}", f"--output={workdir / 'codes.npz'}",
                      "--faiss"]) == 2
  assert (workdir / "codes.npz").read_bytes() == b"kept"
  assert "is a file of the run" in capsys.readouterr().err


def test_search_output_on_a_run_file_is_refused(fake_run, capsys):
  workdir, result = fake_run
  codes = workdir.parent / "codes.npz"
  codes_file.save_codes(str(codes), result, 16, {})
  assert search.main([f"--codes={codes}", "--k=2", f"--output={workdir / 'results.json'}"]) == 2
  assert "is a file of the run" in capsys.readouterr().err
  assert not (workdir / "results.json").exists()


def test_an_output_named_like_a_run_file_elsewhere_is_written(fake_run, tmp_path):
  workdir, _ = fake_run
  out = tmp_path / "not_a_run" / "config.json"
  out.parent.mkdir()
  assert export.main([f"--workdir={workdir}", f"--output={out}"]) == 0
  assert codes_file.load_codes(str(out))["num_bits"] == 16
