"""experiments/: run_grid tables on digits, the analysis plots of plot_analysis, the accelerator
check in its CPU mode and the predictions' arithmetic."""
import csv
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from experiments import accelerator_check, plot_analysis, predict_accelerators, run_grid
from experiments import bench_layers, bench_train, smoke_images
from orthohash_jax import codes_file, retrieval
from orthohash_jax.data import listfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
  out = tmp_path_factory.mktemp("grid")
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.run_grid", "--config=configs/digits.py",
       "--methods=CE+BN,OrthoCos+BN", "--bits=16", f"--out={out}", "--set", "num_epochs=1"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return out


@pytest.mark.slow
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


@pytest.mark.slow
def test_plots_from_workdir(grid, tmp_path):
  workdir = grid / "runs" / "OrthoCos+BN_16b_s0"
  assert plot_analysis.main([f"--workdir={workdir}", f"--out={tmp_path}"]) == 0
  for name in ("hamming_histogram.png", "pr_curve.png", "retrieval.png"):
    with Image.open(tmp_path / name) as img:
      assert img.format == "PNG" and img.size[0] > 300
  with np.load(workdir / "codes.npz") as f:
    q = np.asarray(retrieval.unpack_codes(f["query_codes"], 16))
    db = np.asarray(retrieval.unpack_codes(f["db_codes"], 16))
    same = f["query_labels"][:, None] == f["db_labels"][None]
  dist = (q[:, None] != db[None]).sum(-1)
  codes = plot_analysis.codes_file.load_codes(str(workdir / "codes.npz"))
  means = plot_analysis.plot_histogram(codes, str(tmp_path / "h.png"))
  assert means["intra-class"] == pytest.approx(dist[same].mean())
  assert means["inter-class"] == pytest.approx(dist[~same].mean())
  assert means["separability"] == pytest.approx(dist[~same].mean() - dist[same].mean())
  # the grid: one query per class, its top 10 by (distance, index), relevance by label
  data = plot_analysis.load_run_data(str(workdir))
  shown = plot_analysis.plot_retrieval(codes, data, str(tmp_path / "r.png"), 4, 10)
  labels = codes["query_labels"]
  assert list(shown["queries"]) == [int(np.flatnonzero(labels == c)[0]) for c in range(4)]
  for row, qi in enumerate(shown["queries"]):
    order = np.lexsort((np.arange(len(db)), dist[qi]))[:10]
    np.testing.assert_array_equal(shown["indices"][row], order)
    np.testing.assert_array_equal(shown["distances"][row], dist[qi, order])
    np.testing.assert_array_equal(shown["relevant"][row], same[qi, order])


@pytest.mark.slow
def test_histograms_of_grid_runs_side_by_side(grid, tmp_path):
  runs = [grid / "runs" / f"{m}_16b_s0" for m in ("CE+BN", "OrthoCos+BN")]
  assert plot_analysis.main([f"--workdirs={runs[0]},{runs[1]}", "--labels=CE,Ortho",
                             f"--out={tmp_path}"]) == 0
  means = json.loads((tmp_path / "histograms.json").read_text())
  assert list(means) == ["CE", "Ortho"]
  for label, workdir in zip(means, runs):  # each panel as the run's own histogram
    codes = codes_file.load_codes(str(workdir / "codes.npz"))
    assert means[label] == plot_analysis.plot_histogram(codes, str(tmp_path / "one.png"))


def _fake_run(path, num_bits, seed):
  """A workdir with a codes.npz of random codes (10 queries, 30 database items, 3 classes);
  returns (unpacked query codes, db codes, query labels, db labels)."""
  rng = np.random.default_rng(seed)
  q, db = rng.normal(size=(10, num_bits)), rng.normal(size=(30, num_bits))
  q_y, db_y = np.arange(10) % 3, np.arange(30) % 3
  path.mkdir()
  packed = {"query_codes": retrieval.pack_codes(q), "db_codes": retrieval.pack_codes(db)}
  codes_file.save_codes(str(path / "codes.npz"), {**packed, "query_labels": q_y, "db_labels": db_y},
                        num_bits, {})
  return q > 0, db > 0, q_y, db_y


def test_histograms_of_several_runs(tmp_path, capsys):
  runs = {"a": (16, 0), "b": (32, 1), "c": (16, 2)}
  expected = {}
  for name, (num_bits, seed) in runs.items():
    q, db, q_y, db_y = _fake_run(tmp_path / name, num_bits, seed)
    dist, same = (q[:, None] != db[None]).sum(-1), q_y[:, None] == db_y[None]
    expected[name] = {"intra-class": dist[same].mean(), "inter-class": dist[~same].mean()}
  workdirs = ",".join(str(tmp_path / name) for name in runs)
  assert plot_analysis.main([f"--workdirs={workdirs}", "--labels=C,B,A",
                             f"--out={tmp_path}/o"]) == 0
  means = json.loads((tmp_path / "o" / "histograms.json").read_text())
  assert list(means) == ["C", "B", "A"]
  for label, name in zip(means, runs):
    assert means[label]["intra-class"] == pytest.approx(expected[name]["intra-class"])
    assert means[label]["inter-class"] == pytest.approx(expected[name]["inter-class"])
    assert means[label]["separability"] == pytest.approx(
        expected[name]["inter-class"] - expected[name]["intra-class"])
  with Image.open(tmp_path / "o" / "hamming_histograms.png") as img:
    assert img.size == (1800, 400)  # three 6 x 4 inch panels at 100 dpi
  assert "B: {" in capsys.readouterr().out
  # without --labels the panels are named after the workdirs
  assert plot_analysis.main([f"--workdirs={workdirs}", f"--out={tmp_path}/p"]) == 0
  assert list(json.loads((tmp_path / "p" / "histograms.json").read_text())) == ["a", "b", "c"]


@pytest.mark.parametrize("flags,message", [
    (["--workdirs={a},{b}", "--labels=x"], "--labels has 1 names for 2 --workdirs"),
    (["--workdirs={a},{b}", "--labels=x,x"], "distinct non-empty names"),
    (["--workdirs={a},{a}/missing"], "codes.npz"),
])
def test_histograms_of_several_runs_bad_input(tmp_path, capsys, flags, message):
  _fake_run(tmp_path / "a", 16, 0)
  _fake_run(tmp_path / "b", 16, 1)
  flags = [f.format(a=tmp_path / "a", b=tmp_path / "b") for f in flags]
  assert plot_analysis.main([*flags, f"--out={tmp_path}/o"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
  assert not (tmp_path / "o" / "hamming_histograms.png").exists()


def test_labels_need_workdirs(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    plot_analysis.main([f"--workdir={tmp_path}", "--labels=a", f"--out={tmp_path}/o"])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error:") and "--labels goes with --workdirs" in err[0]


@pytest.mark.slow
def test_training_with_analysis(tmp_path, capsys):
  assert plot_analysis.main(["--config=configs/digits.py", "--every_epochs=2", f"--out={tmp_path}",
                             "--set", "num_epochs=3", "num_bits=16"]) == 0
  records = json.loads((tmp_path / "analysis.json").read_text())
  assert [r["epoch"] for r in records] == [0, 2, 3]
  out = capsys.readouterr().out.splitlines()
  printed = [json.loads(line) for line in out if line.startswith('{"epoch"')]
  assert printed == records  # epoch 0's scores printed too (issue 36 #9)
  assert out[-1] == (f"wrote {', '.join(str(tmp_path / n) for n in ('analysis.json', 'figure4.png', 'hamming_histogram.png', 'pr_curve.png', 'retrieval.png'))}"
                     f" and the run in {tmp_path / 'run'}")
  # the last record scores the run's final state as the run did
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert records[-1]["mAP"] == pytest.approx(results["mAP"], rel=1e-6)
  assert records[-1]["quantization_angle"] == pytest.approx(results["quantization_angle"],
                                                            rel=1e-6)
  assert records[-1]["mAP"] > records[0]["mAP"] + 0.3
  assert records[-1]["separability"] > records[0]["separability"] + 2
  assert records[-1]["quantization_angle"] < records[0]["quantization_angle"]
  for name in ("figure4.png", "hamming_histogram.png", "pr_curve.png", "retrieval.png"):
    assert (tmp_path / name).stat().st_size > 10_000


def test_bad_input(tmp_path, capsys):
  assert plot_analysis.main([f"--workdir={tmp_path}", f"--out={tmp_path}/o"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and "codes.npz" in err[0]


def test_experiment_scripts_report_bad_arguments_in_one_line(capsys, monkeypatch, tmp_path):
  for bits in ("abc", "0"):
    monkeypatch.setattr(sys, "argv", ["run_grid.py", "--config=configs/digits.py",
                                      f"--bits={bits}", f"--out={tmp_path}"])
    with pytest.raises(SystemExit) as e:
      run_grid.main()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--bits" in err[0]
  assert plot_analysis.main([f"--config={ROOT}/configs/digits.py", f"--out={tmp_path}",
                             "--set", "num_bits=abc"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "num_bits must be an integer, got 'abc'" in err[0]


@pytest.mark.slow
def test_accelerator_check_on_cpu_writes_every_section(tmp_path):
  assert accelerator_check.main([f"--out={tmp_path}"]) == 0  # CPU: the reduced mode
  report = json.loads((tmp_path / "accelerator_check.json").read_text())
  assert report["quick"] and report["backend"] == "cpu"
  sections = report["sections"]
  assert list(sections) == ["tests", "train", "backbones", "retrieval", "input"]
  assert all("error" not in s and s["rows"] for s in sections.values())
  assert [r["group"] for r in sections["tests"]["rows"]] == [
      g[0] for g in accelerator_check.TEST_GROUPS]
  assert all(r["ok"] for r in sections["tests"]["rows"])
  assert [(r["arch"], r["dtype"]) for r in sections["backbones"]["rows"]] == [
      ("alexnet", "float32"), ("alexnet", "bfloat16")]
  for row in sections["backbones"]["rows"]:
    assert row["step_flops"] > 0 and row["step_bytes"] > 0 and 0 < row["mfu"]
    assert row["achieved_flops_per_s"] == pytest.approx(
        row["step_flops"] * row["images_per_s"] / row["batch"])
  assert sections["input"]["rows"][0]["images_per_s_per_core"] == pytest.approx(
      1000 / sections["input"]["rows"][0]["cpu_ms_per_image"])
  text = (tmp_path / "accelerator_check.md").read_text()
  for name in sections:
    assert f"## {name}\n" in text
  assert "| alexnet | bfloat16 | 2 |" in text


def test_prediction_is_linear_in_the_batch_and_bound_by_the_slower_resource():
  # 10 FLOPs / 3 bytes per image, 100 FLOPs / 50 bytes per step
  costs = {b: (100 + 10 * b, 50 + 3 * b) for b in (4, 8)}
  assert predict_accelerators.at_batch(costs[4], costs[8], 4, 8) == (2660, 818)
  peak = accelerator_check.Peak("x", bf16_flops=20, fp32_flops=10, memory_bytes_per_s=1,
                                source="")
  assert predict_accelerators.roofline_seconds((100, 5), peak, "float32") == 10
  assert predict_accelerators.roofline_seconds((100, 5), peak, "bfloat16") == 5
  assert predict_accelerators.roofline_seconds((100, 50), peak, "bfloat16") == 50


def test_accelerator_scripts_report_bad_flags_in_one_line(tmp_path, capsys):
  for main, argv in ((accelerator_check.main, [f"--out={tmp_path}", "--test_timeout=0"]),
                     (predict_accelerators.main, ["--batches=8,4"]),
                     (predict_accelerators.main, ["--batches=4,x"])):
    with pytest.raises(SystemExit) as e:
      main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")


@pytest.mark.slow
@pytest.mark.parametrize("dataset,classes,multilabel", [("imagenet100", 100, False),
                                                        ("nuswide", 21, True)])
def test_smoke_images_write_a_paper_datasets_layout(dataset, classes, multilabel, tmp_path):
  assert smoke_images.main([f"--dataset={dataset}", f"--out={tmp_path}", "--train=3",
                            "--test=2", "--database=2"]) == 0
  labels_per_row = set()
  for filename, n in (("train.txt", 3), ("test.txt", 2), ("database.txt", 2)):
    names, _, rows = listfile.parse_list(str(tmp_path / filename), classes)
    names = [os.fsdecode(n) for n in names]
    assert len(names) == n and [os.path.splitext(p)[1] for p in names][:2] == [".jpg", ".png"]
    labels_per_row |= set(rows.counts.tolist())
    for name in names:
      with Image.open(tmp_path / name) as img:
        assert img.size == (256, 256) and img.format == ("JPEG" if name.endswith("jpg") else "PNG")
  assert labels_per_row == ({1, 2} if multilabel else {1})


def test_bench_layers_finds_every_convolution_once():
  """Distinct convolution shapes with their counts: AlexNet 5, VGG16 13 (9 shapes), ResNet-50 53
  (stem + 16 bottlenecks x 3 + 4 downsamples); only the first one sees the image."""
  pytest.importorskip("torch")
  for arch, total, distinct in (("alexnet", 5, 5), ("vgg16", 13, 9), ("resnet50", 53, None)):
    shapes = bench_layers.conv_shapes(arch, 1, 64)
    assert sum(n for *_, n in shapes) == total
    assert distinct is None or len(shapes) == distinct
    assert [first for *_, first, _ in shapes] == [True] + [False] * (len(shapes) - 1)


def test_bench_train_floor_runs_the_matmuls_that_step_gflop_counts():
  sizes, batch = [12, 8, 6, 3], 5
  rng = np.random.default_rng(0)
  ws = [rng.standard_normal((a, b), np.float32) for a, b in zip(sizes[:-1], sizes[1:])]
  x = rng.standard_normal((batch, sizes[0]), np.float32)
  f = jax.jit(lambda x, ws: bench_train.backprop_matmuls(x, ws, lambda a: a.T))
  flops = f.lower(x, ws).compile().cost_analysis()["flops"]
  # the [0, 0] reads and the scalar sum add at most a few flops to the matmuls'
  assert bench_train.step_gflop(sizes, batch) * 1e9 <= flops < bench_train.step_gflop(
      sizes, batch) * 1e9 + 10
  # it is the backward pass of 0.5 |x W1 W2 W3|^2: the [0, 0] elements of its weight gradients
  grads = jax.grad(lambda ws: 0.5 * jnp.sum(functools.reduce(jnp.matmul, ws, x) ** 2))(ws)
  np.testing.assert_allclose(f(x, ws), sum(g[0, 0] for g in grads), rtol=1e-5)
  assert bench_train.matmul_floor_ms("jax", sizes, batch, steps=4) > 0
