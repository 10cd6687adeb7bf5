"""experiments/: run_grid tables on digits, and the analysis plots of plot_analysis."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from orthohash_jax import retrieval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from experiments import plot_analysis  # pylint: disable=wrong-import-position


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
  out = tmp_path_factory.mktemp("grid")
  proc = subprocess.run(
      [sys.executable, "experiments/run_grid.py", "--config=configs/digits.py",
       "--methods=CE+BN,OrthoCos+BN", "--bits=16", f"--out={out}", "--set", "num_epochs=1"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return out


def test_run_grid_table_and_csv(grid):
  with open(grid / "runs.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["method"], r["bits"], r["seed"]) for r in rows] == [("CE+BN", "16", "0"),
                                                                 ("OrthoCos+BN", "16", "0")]
  table = (grid / "table.md").read_text().splitlines()
  assert table[0] == "| method | 16 bits |"
  for row, loss in zip(rows, ("ce", "orthohash")):
    workdir = grid / "runs" / f"{row['method']}_16b_s0"
    results = json.loads((workdir / "results.json").read_text())
    config = json.loads((workdir / "config.json").read_text())
    assert (config["loss"], config["use_bn"], config["num_bits"], config["num_epochs"]) == (
        loss, True, 16, 1)
    assert float(row["mAP"]) == pytest.approx(results["mAP"])
    assert f"| {row['method']} | {results['mAP']:.4f} |" in table


def test_pair_distances_against_numpy():
  rng = np.random.default_rng(0)
  q, db = rng.normal(size=(5, 40)), rng.normal(size=(9, 40))
  q_y, db_y = rng.integers(0, 3, 5), rng.integers(0, 3, 9)
  intra, inter = plot_analysis.pair_distances(retrieval.pack_codes(q), retrieval.pack_codes(db),
                                              q_y, db_y)
  dist = ((q[:, None] > 0) != (db[None] > 0)).sum(-1)
  same = q_y[:, None] == db_y[None]
  np.testing.assert_array_equal(np.sort(intra), np.sort(dist[same]))
  np.testing.assert_array_equal(np.sort(inter), np.sort(dist[~same]))


def test_plots_from_workdir(grid, tmp_path):
  workdir = grid / "runs" / "OrthoCos+BN_16b_s0"
  assert plot_analysis.main([f"--workdir={workdir}", f"--out={tmp_path}"]) == 0
  for name in ("hamming_histogram.png", "pr_curve.png"):
    with Image.open(tmp_path / name) as img:
      assert img.format == "PNG" and img.size[0] > 300
  with np.load(workdir / "codes.npz") as f:
    q = np.asarray(retrieval.unpack_codes(f["query_codes"], 16))
    db = np.asarray(retrieval.unpack_codes(f["db_codes"], 16))
    same = f["query_labels"][:, None] == f["db_labels"][None]
  dist = (q[:, None] != db[None]).sum(-1)
  means = plot_analysis.plot_histogram(
      plot_analysis.codes_file.load_codes(str(workdir / "codes.npz")), str(tmp_path / "h.png"))
  assert means["intra-class"] == pytest.approx(dist[same].mean())
  assert means["inter-class"] == pytest.approx(dist[~same].mean())


def test_training_with_analysis(tmp_path):
  assert plot_analysis.main(["--config=configs/digits.py", "--every_epochs=2", f"--out={tmp_path}",
                             "--set", "num_epochs=3", "num_bits=16"]) == 0
  records = json.loads((tmp_path / "analysis.json").read_text())
  assert [r["epoch"] for r in records] == [0, 2, 3]
  assert records[-1]["mAP"] > records[0]["mAP"] + 0.3
  assert records[-1]["separability"] > records[0]["separability"] + 2
  assert records[-1]["quantization_angle"] < records[0]["quantization_angle"]
  for name in ("figure4.png", "hamming_histogram.png", "pr_curve.png"):
    assert (tmp_path / name).stat().st_size > 10_000


def test_bad_input(tmp_path, capsys):
  assert plot_analysis.main([f"--workdir={tmp_path}", f"--out={tmp_path}/o"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and "codes.npz" in err[0]
