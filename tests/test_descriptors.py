"""Descriptor datasets: FIRe-style pickles -> convert_fire -> npz/json -> loaders -> metrics."""
import importlib.util
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from conftest import config_of
from orthohash_jax import data as data_lib
from orthohash_jax import revisited
from orthohash_jax.data import convert_fire, descriptors


def _fire_split(rng, n, dim=6, labels=True, prefix="x"):
  """The FIRe dict layout: codes (N, D), 1-indexed labels, image ids."""
  out = {"codes": rng.normal(size=(n, dim)).astype(np.float32),
         "id": [f"{prefix}{i:03d}" for i in range(n)]}
  if labels:
    out["labels"] = rng.integers(1, 6, size=n)
  return out


def _pickle(path, obj):
  with open(path, "wb") as f:
    pickle.dump(obj, f)
  return str(path)


def _convert(src, dst, *extra):
  assert convert_fire.main([f"--input={src}", f"--output={dst}", *extra]) == 0


def _gldv2_dir(tmp_path):
  rng = np.random.default_rng(0)
  fire = {"train": _fire_split(rng, 12, prefix="t"),
          "test": _fire_split(rng, 3, labels=False, prefix="q"),
          "database": _fire_split(rng, 8, labels=False, prefix="d")}
  root = tmp_path / "gldv2"
  root.mkdir()
  for split, obj in fire.items():
    _convert(_pickle(tmp_path / f"{split}.txt", obj), root / f"{split}.npz")
  (root / "ground_truth.csv").write_text(
      "id,images,Usage\nq000,d003 d001 d003,Public\nq002,d007,Private\nq001,None,Ignored\n")
  return root, fire


def test_convert_and_load_gldv2(tmp_path):
  root, fire = _gldv2_dir(tmp_path)
  with np.load(root / "train.npz") as f:
    np.testing.assert_array_equal(f["labels"], fire["train"]["labels"] - 1)
    assert f["codes"].dtype == np.float32 and f["ids"][0] == "t000"
  d = data_lib.load(config_of({"dataset": "gldv2", "data_dir": str(root)}))
  assert isinstance(d, descriptors.InstanceData) and d.num_classes == 81313
  np.testing.assert_array_equal(d.train_x, fire["train"]["codes"])
  np.testing.assert_array_equal(d.train_y, fire["train"]["labels"] - 1)
  np.testing.assert_array_equal(d.query_x, fire["test"]["codes"])
  np.testing.assert_array_equal(d.db_x, fire["database"]["codes"])
  np.testing.assert_array_equal(d.query_y, [-1, -1, -1])
  assert d.train_y.dtype == np.int32 and not d.multilabel
  assert list(d.db_ids) == fire["database"]["id"]
  # d003 listed twice counts once; q001 ("None") has no ground truth.
  np.testing.assert_array_equal(d.ground_truth[0], [1, 3])
  assert d.ground_truth[1] is None
  np.testing.assert_array_equal(d.ground_truth[2], [7])
  # Query 0 ranks d3 first and d1 third: (1 + 2/3) / 2; query 2 ranks d7 second: 1/2.
  ranking = np.array([[3, 0, 1, 2], [0, 1, 2, 3], [0, 7, 1, 2]])
  expected = ((1 + 2 / 3) / 2 + 0.5) / 2
  assert revisited.gldv2_map_at_k(ranking, d.ground_truth) == pytest.approx(expected)


def test_gldv2_errors(tmp_path):
  root, _ = _gldv2_dir(tmp_path)
  config = config_of({"dataset": "gldv2", "data_dir": str(root)})
  (root / "ground_truth.csv").write_text("id,images\nq000,d003 zzz\n")
  with pytest.raises(data_lib.DataError,
                     match=r"ground_truth.csv: 1 database ids not found, e.g. 'zzz'"):
    data_lib.load(config)
  (root / "ground_truth.csv").write_text("query,images\n")
  with pytest.raises(data_lib.DataError, match="header must have columns id and images"):
    data_lib.load(config)
  np.savez(root / "train.npz", codes=np.zeros((2, 6), np.float32), ids=np.array(["a", "b"]))
  with pytest.raises(data_lib.DataError, match=r"train.npz: labels are required"):
    data_lib.load(config)
  np.savez(root / "train.npz", codes=np.zeros((2, 6), np.float32), ids=np.array(["a", "a"]),
           labels=np.zeros(2, int))
  with pytest.raises(data_lib.DataError, match=r"train.npz: 1 duplicate ids"):
    data_lib.load(config)
  os.remove(root / "test.npz")
  with pytest.raises(data_lib.DataError, match=r"test.npz: descriptor file not found"):
    descriptors.read_descriptors(str(root / "test.npz"))


def test_revisited_gnd_conversion_and_order(tmp_path):
  rng = np.random.default_rng(2)
  imlist = [f"oxc1_{i}" for i in range(7)]
  qimlist = ["all_souls_1", "radcliffe_2"]
  gnd = {"imlist": imlist, "qimlist": qimlist, "gnd": [
      {"easy": np.array([1, 5]), "hard": np.array([0]), "junk": np.array([4]),
       "bbx": np.array([1.5, 2.0, 30.0, 40.0])},
      {"easy": np.array([], int), "hard": np.array([2]), "junk": np.array([], int), "bbx": None}]}
  root = tmp_path / "roxford5k"
  root.mkdir()
  _convert(_pickle(tmp_path / "gnd_roxford5k.pkl", gnd), root / "gnd_roxford5k.json")
  # Descriptors stored in a different order than imlist/qimlist.
  db_codes, q_codes = rng.normal(size=(7, 4)), rng.normal(size=(2, 4))
  perm = rng.permutation(7)
  _convert(_pickle(tmp_path / "database.txt", {"codes": db_codes[perm],
                                                "id": [imlist[i] for i in perm]}),
           root / "database.npz")
  _convert(_pickle(tmp_path / "test.txt", {"codes": q_codes[::-1], "id": qimlist[::-1],
                                            "labels": np.zeros(2)}), root / "test.npz",
           "--drop_labels")
  r = descriptors.load_revisited(str(root), "roxford5k")
  np.testing.assert_allclose(r.db_x, db_codes.astype(np.float32))
  np.testing.assert_allclose(r.query_x, q_codes.astype(np.float32))
  assert r.gnd[0] == {"easy": [1, 5], "hard": [0], "junk": [4], "bbx": [1.5, 2.0, 30.0, 40.0]}
  assert r.gnd[1] == {"easy": [], "hard": [2], "junk": []}
  # Same ranking as the hand example of test_revisited.py: medium mAP (37/72 + 1) / 2.
  ranking = np.array([[3, 1, 4, 0, 5, 2, 6], [2, 0, 1, 3, 4, 5, 6]])
  assert revisited.revisited_map(ranking, r.gnd)["medium"]["map"] == pytest.approx(109 / 144)
  with pytest.raises(data_lib.DataError, match=r"gnd_rparis6k.json: ground truth file not found"):
    descriptors.load_revisited(str(root), "rparis6k")


def test_converter_errors(tmp_path, monkeypatch):
  rng = np.random.default_rng(3)
  zero_based = _fire_split(rng, 4)
  zero_based["labels"] = np.arange(4)
  src = _pickle(tmp_path / "train.txt", zero_based)
  with pytest.raises(data_lib.DataError, match="labels must be 1-indexed"):
    convert_fire.convert(src, str(tmp_path / "train.npz"))
  with pytest.raises(data_lib.DataError, match="the output must be .npz"):
    convert_fire.convert(src, str(tmp_path / "train.json"))
  with zipfile.ZipFile(tmp_path / "zipped.txt", "w") as z:  # the torch.save zip layout
    z.writestr("archive/data.pkl", b"")
  legacy = _pickle(tmp_path / "legacy.txt", convert_fire.TORCH_LEGACY_MAGIC)
  with monkeypatch.context() as m:
    m.setitem(sys.modules, "torch", None)  # as on a machine without PyTorch
    for name in ("zipped.txt", "legacy.txt"):
      with pytest.raises(data_lib.DataError, match=name + r" was written by torch.save; .*PyTorch"):
        convert_fire.convert(str(tmp_path / name), str(tmp_path / "out.npz"))
  if importlib.util.find_spec("torch") is not None:  # broken torch files: one clear error
    for path in (str(tmp_path / "zipped.txt"), legacy):
      with pytest.raises(data_lib.DataError, match="torch.load cannot read"):
        convert_fire.convert(path, str(tmp_path / "out.npz"))
  (tmp_path / "text.txt").write_text("path 0 1\n")
  with pytest.raises(data_lib.DataError, match="not a pickle file"):
    convert_fire.convert(str(tmp_path / "text.txt"), str(tmp_path / "out.npz"))


def test_converter_cli_reports_errors(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "orthohash_jax.data.convert_fire",
       f"--input={tmp_path / 'absent.txt'}", f"--output={tmp_path / 'out.npz'}"],
      capture_output=True, text=True, check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip() == f"error: {tmp_path / 'absent.txt'}: file not found"
