"""Streaming list-file source: rows, determinism over workers, bad images, memory, and the
Fashion-MNIST list files against the IDX path."""
import concurrent.futures
import gc
import tracemalloc

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, config_of, free_port, sigterm_during_step, write_idx
from conftest import write_image_lists as _write
from orthohash_jax import config_base, run
from orthohash_jax import data as data_lib
from orthohash_jax.data import DataError, arrayrecord, idx, streaming, transforms
from orthohash_jax.data import write_arrayrecord
from orthohash_jax.data import write_listfiles

def _config(root, **kw):
  base = {"dataset": "listfile", "data_dir": str(root), "num_classes": 3, "seed": 7,
          "data_workers": 2, "skip_bad_images": False, "image_size": 32, "image_mode": "RGB",
          "train_transform": "random_resized_crop", "train_resize": 36,
          "eval_transform": "resize_center_crop", "eval_resize": 36, "jpeg_draft": False,
          "pixel_norm": "imagenet"}
  base.update(kw)
  return config_of(base)


def _files(root, list_name):
  return [root / line.split()[0] for line in (root / list_name).read_text().splitlines()]


def test_interface_labels_and_eval_rows(tmp_path):
  rows = _write(tmp_path)
  src = streaming.load(_config(tmp_path))
  try:
    assert (src.name, src.num_classes, src.multilabel) == ("listfile", 3, False)
    assert src.input_shape == (32, 32, 3) and src.input_dtype == np.uint8
    np.testing.assert_allclose(src.mean_std[0], [123.675, 116.28, 103.53], rtol=1e-6)
    for split, name in (("train", "train.txt"), ("query", "test.txt"), ("db", "database.txt")):
      assert src.size(split) == len(rows[name])
      np.testing.assert_array_equal(src.labels(split), rows[name].argmax(1))
    picks = np.array([5, 0, 7, 7])
    got = src.eval_rows("db", picks)
    files = _files(tmp_path, "database.txt")
    t = transforms.Transform("resize_center_crop", size=32, resize=36)
    for k, i in enumerate(picks):
      with Image.open(files[i]) as img:
        np.testing.assert_array_equal(got[k], t(img))
  finally:
    src.close()


def test_train_rows_from_seed_step_position_only(tmp_path):
  _write(tmp_path)
  indices = np.array([[3, 1, 4, 1], [5, 9, 2, 6], [5, 3, 5, 8]])
  steps, positions = np.array([10, 11, 12]), np.array([0, 1, 2, 3])
  outs = []
  for workers in (0, 1, 3):
    src = streaming.load(_config(tmp_path, data_workers=workers))
    outs.append(src.train_rows(indices, steps, positions))
    # Two "processes", each asking for its half of every global batch.
    halves = [src.train_rows(indices[:, sl], steps, positions[sl])
              for sl in (slice(0, 2), slice(2, 4))]
    np.testing.assert_array_equal(np.concatenate(halves, axis=1), outs[-1])
    src.close()
  assert outs[0].shape == (3, 4, 32, 32, 3) and outs[0].dtype == np.uint8
  for out in outs[1:]:
    np.testing.assert_array_equal(out, outs[0])
  files = _files(tmp_path, "train.txt")
  t = transforms.Transform("random_resized_crop", size=32)
  for s, p in ((0, 2), (2, 0), (2, 2)):
    with Image.open(files[indices[s, p]]) as img:
      want = t(img, np.random.default_rng([7, steps[s], positions[p]]))
    np.testing.assert_array_equal(outs[0][s, p], want)
  # The same row at other steps or positions gets other augmentations.
  assert not np.array_equal(outs[0][2, 0], outs[0][2, 2])


def test_concurrent_requests_resolve_independently(tmp_path):
  """Batches requested from several threads at once (as experiments/bench_input.py keeps 3 in
  flight) equal the same batches requested one by one."""
  _write(tmp_path)
  src = streaming.load(_config(tmp_path, data_workers=2))
  try:
    with concurrent.futures.ThreadPoolExecutor(5) as ahead:
      pending = [ahead.submit(src.train_rows, np.array([[i, i + 1]]), [i], [0, 1])
                 for i in range(4)]
      pending.append(ahead.submit(src.eval_rows, "query", np.arange(3)))
      results = [p.result() for p in pending]
    for i in range(4):
      np.testing.assert_array_equal(results[i],
                                    src.train_rows(np.array([[i, i + 1]]), [i], [0, 1]))
    np.testing.assert_array_equal(results[4], src.eval_rows("query", np.arange(3)))
  finally:
    src.close()


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_images_name_list_file_and_line(tmp_path, workers):
  _write(tmp_path)
  files = _files(tmp_path, "train.txt")
  files[3].write_bytes(b"")  # a missing file is found when the lists load (test_listfile)
  files[6].write_bytes(b"not an image at all")
  src = streaming.load(_config(tmp_path, data_workers=workers))
  try:
    with pytest.raises(DataError, match=r"train.txt:4: .*train_3.jpg: cannot decode"):
      src.train_rows(np.array([[0, 3, 6, 1]]), [0], np.arange(4))
    with pytest.raises(DataError, match=r"train.txt:7: .*train_6.png: cannot decode"):
      src.train_rows(np.array([[0, 6, 2, 3]]), [0], np.arange(4))
    # The pool still works after an error.
    assert src.train_rows(np.array([[0, 1]]), [0], [0, 1]).shape == (1, 2, 32, 32, 3)
  finally:
    src.close()


def test_skip_bad_images_counts_and_fills(tmp_path):
  _write(tmp_path)
  files = _files(tmp_path, "train.txt")
  files[3].unlink()
  with pytest.warns(UserWarning, match="1 of the .* listed images are missing"):
    src = streaming.load(_config(tmp_path, skip_bad_images=True))
  try:
    with pytest.warns(UserWarning, match="train.txt:4: .*skipped"):
      out = src.train_rows(np.array([[3, 0], [1, 3]]), [0, 1], [0, 1])
    np.testing.assert_array_equal(out[0, 0], np.broadcast_to([124, 116, 104], (32, 32, 3)))
    np.testing.assert_array_equal(out[1, 1], out[0, 0])
    assert not np.array_equal(out[0, 1], out[0, 0])
    assert len(src.skipped) == 1 and src.skipped[0].endswith("train_3.jpg")
  finally:
    src.close()


def test_none_transform_rejects_other_sizes(tmp_path):
  _write(tmp_path)
  src = streaming.load(_config(tmp_path, train_transform="none", eval_transform="none"))
  try:
    with Image.open(_files(tmp_path, "train.txt")[0]) as img:
      assert src.input_shape == (img.size[1], img.size[0], 3)
    with pytest.raises(DataError, match="differs from the first training image"):
      src.eval_rows("db", np.arange(8))
  finally:
    src.close()


def _eval_peak(root, n, batch=16):
  """Peak traced bytes of streaming ``n`` database rows through eval_rows in batches."""
  src = streaming.load(_config(root, data_workers=2))
  gc.collect()
  tracemalloc.start()
  total = 0
  for start in range(0, n, batch):
    total += int(src.eval_rows("db", np.arange(start, min(start + batch, n)) % 8).sum())
  peak = tracemalloc.get_traced_memory()[1]
  tracemalloc.stop()
  src.close()
  return peak


def test_memory_does_not_grow_with_rows_read(tmp_path):
  _write(tmp_path)
  small, large = _eval_peak(tmp_path, 32), _eval_peak(tmp_path, 320)
  assert large < 1.5 * small + 200_000, (small, large)


def test_fashion_mnist_list_files_equal_idx_rows(tmp_path):
  rng = np.random.default_rng(0)
  idx_dir, out = tmp_path / "idx", tmp_path / "files"
  idx_dir.mkdir()
  images = {"train": rng.integers(0, 256, (60, 28, 28)), "t10k": rng.integers(0, 256, (40, 28, 28))}
  labels = {"train": np.arange(60) % 10, "t10k": (np.arange(40) * 3) % 10}
  for split in images:
    write_idx(str(idx_dir / f"{split}-images-idx3-ubyte.gz"), images[split])
    write_idx(str(idx_dir / f"{split}-labels-idx1-ubyte.gz"), labels[split])
  assert write_listfiles.main(["--dataset=fashion_mnist", f"--output={out}",
                               f"--data_dir={idx_dir}", "--num_query_per_class=3",
                               "--num_train_per_class=4"]) == 0
  want = idx.load(config_of({"data_dir": str(idx_dir), "num_query_per_class": 3,
                             "num_train_per_class": 4}))
  src = streaming.load(_config(out, num_classes=10, image_mode="L", train_transform="none",
                               eval_transform="none", pixel_norm="unit"))
  try:
    assert src.input_shape == (28, 28, 1)
    for split in ("train", "query", "db"):
      n = src.size(split)
      if split == "train":  # as the loop asks: (steps, batch) of rows
        x = src.train_rows(np.arange(n).reshape(4, -1), np.arange(4), np.arange(n // 4))
      else:
        x = src.eval_rows(split, np.arange(n))
      np.testing.assert_array_equal(x.reshape((n, 28, 28, 1)), getattr(want, f"{split}_x"))
      np.testing.assert_array_equal(src.labels(split), getattr(want, f"{split}_y"))
  finally:
    src.close()


def test_write_listfiles_bad_input_is_one_line(tmp_path, capsys):
  assert write_listfiles.main(["--dataset=fashion_mnist", f"--output={tmp_path / 'o'}",
                               f"--data_dir={tmp_path / 'missing'}"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1


def test_normalization_table_equals_host_numpy_exactly():
  x = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3)).astype(np.uint8)
  mean_std = streaming.PIXEL_NORMS["imagenet"](3)
  table = data_lib.normalization_table(mean_std)
  assert table.shape == (256, 3) and table.dtype == np.float32
  got = jax.jit(lambda x, t: t[x.astype(jnp.int32), jnp.arange(3)])(x, table)
  np.testing.assert_array_equal(np.asarray(got), (x.astype(np.float32) - mean_std[0]) / mean_std[1])


@pytest.mark.slow
def test_fashion_files_train_exactly_like_idx(tmp_path):
  """configs/fashion_mnist.py and its :files variant on the files written from the same IDX
  files: identical batches, so identical parameters and results.json mAP."""
  rng = np.random.default_rng(1)
  idx_dir, out = tmp_path / "idx", tmp_path / "files"
  idx_dir.mkdir()
  for split, n in (("train", 120), ("t10k", 40)):
    write_idx(str(idx_dir / f"{split}-images-idx3-ubyte.gz"), rng.integers(0, 256, (n, 28, 28)))
    write_idx(str(idx_dir / f"{split}-labels-idx1-ubyte.gz"), np.arange(n) % 10)
  sizes = ["--num_query_per_class=2", "--num_train_per_class=8"]
  assert write_listfiles.main(["--dataset=fashion_mnist", f"--output={out}",
                               f"--data_dir={idx_dir}", *sizes]) == 0
  results = []
  for variant, data_dir in (("idx", idx_dir), ("files", out)):
    config = config_base.load_config_file(os.path.join(ROOT, f"configs/fashion_mnist.py:{variant}"))
    config.update(data_dir=str(data_dir), num_query_per_class=2, num_train_per_class=8,
                  num_epochs=3, batch_size=16, hidden=(32,), num_bits=16)
    workdir = tmp_path / variant
    run.train_and_evaluate(config, str(workdir))
    results.append(json.loads((workdir / "results.json").read_text()))
  assert results[0]["mAP"] == results[1]["mAP"] and results[0]["steps"] == 15
  a, b = (np.load(tmp_path / v / "codes.npz") for v in ("idx", "files"))
  np.testing.assert_array_equal(a["db_codes"], b["db_codes"])


def _run_config(root, **kw):
  return _config(root, num_epochs=3, batch_size=4, num_bits=16, hidden=(16,), image_size=16,
                 train_resize=18, eval_resize=18, eval_batch_size=8, steps_per_chunk=1,
                 checkpoint_every_steps=100, **kw)


def _records_config(tmp_path, config):
  """``config`` moved onto the ArrayRecord conversion of its list files (bytes kept)."""
  assert write_arrayrecord.main(["--dataset=listfile", "--num_classes=3", "--workers=0",
                                 f"--data_dir={config.data_dir}", "--shard_size=5",
                                 f"--output={tmp_path / 'records'}"]) == 0
  config.update(dataset="arrayrecord", data_dir=str(tmp_path / "records"), num_classes=None)
  return config


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["listfile", "arrayrecord"])
def test_streaming_run_resumes_identically_after_sigterm(tmp_path, monkeypatch, dataset):
  (tmp_path / "data").mkdir()
  _write(tmp_path / "data", n_train=12)
  config = _run_config(tmp_path / "data")
  if dataset == "arrayrecord":
    config = _records_config(tmp_path, config)
  source = arrayrecord.ArrayRecordSource if dataset == "arrayrecord" else streaming.ImageListSource
  run.train_and_evaluate(config, str(tmp_path / "whole"))
  original = sigterm_during_step(monkeypatch, source, 4)
  with pytest.raises(run.Interrupted, match="interrupted at step 5"):
    run.train_and_evaluate(config, str(tmp_path / "cut"))
  monkeypatch.setattr(source, "train_rows", original)
  run.train_and_evaluate(config, str(tmp_path / "cut"))
  a, b = (np.load(tmp_path / w / "codes.npz") for w in ("whole", "cut"))
  np.testing.assert_array_equal(a["db_codes"], b["db_codes"])
  np.testing.assert_array_equal(a["query_codes"], b["query_codes"])


TWO_PROCESS_SCRIPT = """
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from orthohash_jax import config_base, run
from orthohash_jax.data import streaming
reads = {"train": [], "eval": []}
train_rows, eval_rows = streaming.ImageSource.train_rows, streaming.ImageSource.eval_rows
def log_train(self, indices, steps, positions):
  reads["train"].append([[int(s), int(p), int(i)] for s, row in zip(steps, indices)
                         for p, i in zip(positions, row)])
  return train_rows(self, indices, steps, positions)
def log_eval(self, split, indices):
  reads["eval"].append([split, [int(i) for i in indices]])
  return eval_rows(self, split, indices)
streaming.ImageSource.train_rows, streaming.ImageSource.eval_rows = log_train, log_eval
config = config_base.base_config()
config.update(json.loads(sys.argv[3]))
summary = run.train_and_evaluate(config, sys.argv[4])
json.dump({"reads": reads, "mAP": summary["mAP"]}, open(sys.argv[5], "w"))
"""


def run_two_processes(config, tmp_path, devices):
  """Trains ``config`` in 2 processes of ``devices`` CPU devices each (``TWO_PROCESS_SCRIPT``,
  workdir tmp_path/multi); returns each process's {"reads": {"train": [[step, position, row],
  ...] per call, "eval": [split, rows] per call}, "mAP"}."""
  address = f"127.0.0.1:{free_port()}"
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
         "JAX_PLATFORMS": "cpu"}
  procs = [subprocess.Popen(
      [sys.executable, "-c", TWO_PROCESS_SCRIPT, address, str(i), json.dumps(config.to_dict()),
       str(tmp_path / "multi"), str(tmp_path / f"reads{i}.json")],
      cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True) for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  return [json.loads((tmp_path / f"reads{i}.json").read_text()) for i in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["listfile", "arrayrecord"])
def test_two_processes_read_disjoint_slices(tmp_path, dataset):
  """Two processes (one device each for list files, two each for their ArrayRecord shards):
  every (step, position) and evaluation row read once, by its process, and the single-process
  (4-device) mAP."""
  (tmp_path / "data").mkdir()
  _write(tmp_path / "data", n_train=12)
  config = _run_config(tmp_path / "data", data_workers=1)
  if dataset == "arrayrecord":
    config = _records_config(tmp_path, config)
  config.update(adam_eps=1e-3)  # see test_multihost: compares the distributed computation
  single = run.train_and_evaluate(config, str(tmp_path / "single"))
  out = run_two_processes(config, tmp_path, 2 if dataset == "arrayrecord" else 1)
  train = [{tuple(r) for chunk in o["reads"]["train"] for r in chunk} for o in out]
  assert not train[0] & train[1]  # no (step, position) read by both processes
  assert {p for _, p, _ in train[0]} == {0, 1} and {p for _, p, _ in train[1]} == {2, 3}
  assert len(train[0] | train[1]) == 9 * 4  # every position of every step, once
  for split in ("query", "db"):
    rows = [sorted(i for s, chunk in o["reads"]["eval"] if s == split for i in chunk)
            for o in out]
    assert not set(rows[0]) & set(rows[1])
    assert sorted(rows[0] + rows[1]) == list(range(3 if split == "query" else 8))
  assert out[0]["mAP"] == pytest.approx(single["mAP"], abs=1e-6)


def test_eval_resize_follows_image_size_unless_set():
  config = config_base.load_config_file(os.path.join(ROOT, "configs/imagenet100.py:small"))
  config.image_size = 64
  assert streaming.transforms_from_config(config)[1].resize == 64  # 64 of a 64-px resize
  config.eval_resize = 72
  assert streaming.transforms_from_config(config)[1].resize == 72
  nuswide = config_base.load_config_file(os.path.join(ROOT, "configs/nuswide.py:small"))
  assert streaming.transforms_from_config(nuswide)[1].resize == 256  # the authors' 256 -> 224
