"""write_arrayrecord and the ArrayRecord source: the same rows, labels and training as the IDX
and list-file paths; bad inputs, skipping, resuming; each batch reads only its rows."""
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, config_of, write_idx
from conftest import write_image_lists
from orthohash_jax import config_base, run
from orthohash_jax import data as data_lib
from orthohash_jax.data import DataError, arrayrecord, idx, records, streaming
from orthohash_jax.data import write_arrayrecord


def _fashion_idx(root, seed=0, sizes=(("train", 60), ("t10k", 40))):
  rng = np.random.default_rng(seed)
  root.mkdir()
  for split, n in sizes:
    write_idx(str(root / f"{split}-images-idx3-ubyte.gz"), rng.integers(0, 256, (n, 28, 28)))
    write_idx(str(root / f"{split}-labels-idx1-ubyte.gz"), np.arange(n) % 10)


def _convert(*args):
  return write_arrayrecord.main([*args, "--workers=0"])


def _list_config(root, **kw):
  base = {"dataset": "listfile", "data_dir": str(root), "num_classes": 3, "seed": 7,
          "data_workers": 2, "image_size": 32, "train_transform": "random_resized_crop",
          "train_resize": 36, "eval_transform": "resize_center_crop", "eval_resize": 36}
  base.update(kw)
  return config_of(base)


def test_fashion_mnist_records_equal_idx_rows(tmp_path):
  _fashion_idx(tmp_path / "idx")
  out = tmp_path / "ar"
  assert _convert("--dataset=fashion_mnist", f"--output={out}", f"--data_dir={tmp_path / 'idx'}",
                  "--num_query_per_class=3", "--num_train_per_class=4", "--shard_size=16") == 0
  want = idx.load(config_of({"data_dir": str(tmp_path / "idx"), "num_query_per_class": 3,
                             "num_train_per_class": 4}))
  src = arrayrecord.load(config_of({"dataset": "arrayrecord", "data_dir": str(out),
                                    "image_mode": "L", "train_transform": "none",
                                    "eval_transform": "none", "pixel_norm": "unit"}))
  try:
    assert (src.num_classes, src.multilabel, src.input_shape) == (10, False, (28, 28, 1))
    for split in ("train", "query", "db"):
      n = src.size(split)
      if split == "train":
        x = src.train_rows(np.arange(n).reshape(4, -1), np.arange(4), np.arange(n // 4))
      else:
        x = src.eval_rows(split, np.arange(n))
      np.testing.assert_array_equal(x.reshape((n, 28, 28, 1)), getattr(want, f"{split}_x"))
      np.testing.assert_array_equal(src.labels(split), getattr(want, f"{split}_y"))
      assert src.labels(split).dtype == np.int32
  finally:
    src.close()
  meta = json.loads((out / "metadata.json").read_text())
  assert meta["splits"]["db"]["sizes"] == [16, 16, 16, 16, 6]
  assert meta["image_encoding"] == "png" and meta["skipped"]["count"] == 0


def test_record_layout_round_trip():
  record = records.encode(b"\x89PNG...", [3, 17], "images/00012.png")
  assert record[:4] == (2).to_bytes(4, "little")
  image, classes, path = records.decode(record)
  assert (bytes(image), classes.tolist(), path) == (b"\x89PNG...", [3, 17], "images/00012.png")
  assert classes.dtype == np.int32


@pytest.mark.parametrize("multilabel", [False, True])
def test_list_files_with_bytes_kept_decode_identically(tmp_path, multilabel):
  rows = write_image_lists(tmp_path / "lists")
  if multilabel:
    text = (tmp_path / "lists" / "train.txt").read_text().replace(" 1 0 0\n", " 1 0 1\n")
    (tmp_path / "lists" / "train.txt").write_text(text)
  assert _convert("--dataset=listfile", "--num_classes=3", f"--data_dir={tmp_path / 'lists'}",
                  f"--output={tmp_path / 'ar'}", "--shard_size=3") == 0
  files = streaming.load(_list_config(tmp_path / "lists"))
  recs = arrayrecord.load(_list_config(tmp_path / "ar", dataset="arrayrecord"))
  try:
    assert recs.multilabel == files.multilabel == multilabel
    for split in ("train", "query", "db"):
      np.testing.assert_array_equal(recs.labels(split), files.labels(split))
      picks = np.arange(files.size(split))[::-1]
      np.testing.assert_array_equal(recs.eval_rows(split, picks), files.eval_rows(split, picks))
    indices = np.array([[3, 1, 4, 1], [5, 9, 2, 6]])
    np.testing.assert_array_equal(recs.train_rows(indices, [10, 11], np.arange(4)),
                                  files.train_rows(indices, [10, 11], np.arange(4)))
  finally:
    files.close()
    recs.close()
  assert len(rows["train.txt"]) == recs.size("train")


def test_resize_reencodes_larger_images_only(tmp_path):
  write_image_lists(tmp_path / "lists")  # 40-89 px images
  assert _convert("--dataset=listfile", "--num_classes=3", f"--data_dir={tmp_path / 'lists'}",
                  f"--output={tmp_path / 'ar'}", "--resize=50", "--jpeg_quality=80") == 0
  src = arrayrecord.load(_list_config(tmp_path / "ar", dataset="arrayrecord"))
  names = [line.split()[0] for line in (tmp_path / "lists" / "database.txt").read_text().split("\n")
           if line]
  for i, record in enumerate(src.read_records("db", list(range(len(names))))):
    image, _, path = records.decode(record)
    assert path == names[i]
    with Image.open(tmp_path / "lists" / names[i]) as original, Image.open(io.BytesIO(image)) as img:
      if min(original.size) > 50:
        assert img.format == "JPEG" and min(img.size) == 50
        assert img.size == streaming.transforms_lib.resized_shape(*original.size, 50)
      else:
        assert image == (tmp_path / "lists" / names[i]).read_bytes()
  src.close()


def test_bad_inputs_stop_with_file_and_line_or_are_skipped(tmp_path, capsys):
  write_image_lists(tmp_path / "lists")
  (tmp_path / "lists" / "img" / "train_4.png").write_bytes(b"not an image")
  args = ["--dataset=listfile", "--num_classes=3", f"--data_dir={tmp_path / 'lists'}"]
  assert _convert(*args, f"--output={tmp_path / 'a'}") == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: ")
  assert "train.txt:5: " in err and "train_4.png: cannot read the image" in err
  with open(tmp_path / "lists" / "database.txt", "a") as f:
    f.write("img/database_0.png 1 0 0\n")  # a repeated path
  assert _convert(*args, f"--output={tmp_path / 'b'}") == 2
  assert "database.txt:9: img/database_0.png is a duplicate of line 1" in capsys.readouterr().err
  with pytest.warns(UserWarning):
    assert _convert(*args, f"--output={tmp_path / 'c'}", "--skip_bad") == 0
  meta = json.loads((tmp_path / "c" / "metadata.json").read_text())
  assert meta["skipped"]["count"] == 2
  assert meta["splits"]["train"]["size"] == 9 and meta["splits"]["db"]["size"] == 8
  src = arrayrecord.load(_list_config(tmp_path / "c", dataset="arrayrecord"))
  assert src.labels("train").tolist() == [i % 3 for i in range(10) if i != 4]
  src.close()


def test_label_out_of_range_from_tfds_rows(tmp_path):
  rows = write_arrayrecord.Rows("arrays", 0, 2, "x", names=np.array([b"a", b"b"]),
                                labels=write_arrayrecord.listfile.Labels(
                                    np.array([0, 1, 2]), np.array([1, 12], np.int32)),
                                images=np.zeros((2, 4, 4), np.uint8))
  shard = write_arrayrecord.Shard(rows, "s", 10, 0, 90, False, str(tmp_path), str(tmp_path))
  with pytest.raises(DataError, match=r"x: image b: label 12 outside \[0, 10\)"):
    write_arrayrecord.write_shard(shard)


def test_refuses_other_output_and_resumes_a_half_written_one(tmp_path, capsys, monkeypatch):
  _fashion_idx(tmp_path / "idx")
  args = ["--dataset=fashion_mnist", f"--data_dir={tmp_path / 'idx'}", "--num_query_per_class=3",
          "--num_train_per_class=4", "--shard_size=16"]
  assert _convert(*args, f"--output={tmp_path / 'whole'}") == 0
  write_shard, written = write_arrayrecord.write_shard, []

  def dies_at_the_fifth(shard):
    if len(written) == 4:
      raise OSError("disk full")
    written.append(shard.name)
    return write_shard(shard)
  monkeypatch.setattr(write_arrayrecord, "write_shard", dies_at_the_fifth)
  out = tmp_path / "cut"
  assert _convert(*args, f"--output={out}") == 2
  assert "error: disk full" in capsys.readouterr().err
  assert not (out / "metadata.json").exists()
  finished = {name: (out / name).stat().st_mtime_ns for name in written}
  monkeypatch.setattr(write_arrayrecord, "write_shard", write_shard)
  assert _convert(*args, f"--output={out}") == 0
  assert {n: (out / n).stat().st_mtime_ns for n in written} == finished  # kept, not rewritten
  whole = {p.name: p.read_bytes() for p in (tmp_path / "whole").iterdir()}
  assert {p.name: p.read_bytes() for p in out.iterdir()} == whole
  assert _convert(*args, f"--output={out}") == 0
  assert "already complete" in capsys.readouterr().out
  assert _convert(*args[:-1], "--shard_size=8", f"--output={out}") == 2
  assert "holds another conversion (plan.json differs in options)" in capsys.readouterr().err
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "x.txt").write_text("x")
  assert _convert(*args, f"--output={tmp_path / 'other'}") == 2
  assert "is not empty and holds no plan.json" in capsys.readouterr().err


def test_each_batch_reads_only_its_rows(tmp_path):
  write_image_lists(tmp_path / "lists", n_train=12)
  assert _convert("--dataset=listfile", "--num_classes=3", f"--data_dir={tmp_path / 'lists'}",
                  f"--output={tmp_path / 'ar'}", "--shard_size=5") == 0
  src = arrayrecord.load(_list_config(tmp_path / "ar", dataset="arrayrecord"))
  reads = []
  for split, source in src._sources.items():  # pylint: disable=protected-access
    original = source.__getitems__
    source.__getitems__ = (lambda keys, split=split, original=original:
                           reads.append((split, list(keys))) or original(keys))
  try:
    indices = np.array([[7, 2, 11, 0], [5, 5, 10, 3]])
    src.train_rows(indices[:, 2:], [0, 1], [2, 3])  # process 1 of 2: positions 2, 3
    src.eval_rows("db", np.array([6, 1]))
    assert src.eval_rows("query", np.zeros(0, int)).shape == (0, 32, 32, 3)  # a process's share
    # Shards of 5 records: rows 11, 10 lie in shard 2, rows 0, 3 in shard 0; grain opens a
    # shard on its first read, so shard 1 was never opened.
    opened = [k for k, reader in enumerate(src._sources["train"]._readers)  # pylint: disable=protected-access
              if reader is not None]
  finally:
    src.close()
  assert reads == [("train", [11, 0, 10, 3]), ("db", [6, 1])]
  assert opened == [0, 2]


@pytest.mark.slow
def test_fashion_arrayrecord_trains_exactly_like_idx(tmp_path):
  """configs/fashion_mnist.py on the IDX files and on their conversion (PNG, lossless, written
  by 2 processes) with dataset="arrayrecord": identical results.json mAP and codes."""
  _fashion_idx(tmp_path / "idx", seed=1, sizes=(("train", 120), ("t10k", 40)))
  sizes = ["--num_query_per_class=2", "--num_train_per_class=8"]
  assert write_arrayrecord.main(["--dataset=fashion_mnist", f"--output={tmp_path / 'ar'}",
                                 f"--data_dir={tmp_path / 'idx'}", "--shard_size=32",
                                 "--workers=2", *sizes]) == 0
  results = []
  for variant, data_dir in (("idx", tmp_path / "idx"), ("files", tmp_path / "ar")):
    config = config_base.load_config_file(os.path.join(ROOT,
                                                       f"configs/fashion_mnist.py:{variant}"))
    if variant == "files":
      config.update(dataset="arrayrecord", num_classes=None)
    config.update(data_dir=str(data_dir), num_query_per_class=2, num_train_per_class=8,
                  num_epochs=3, batch_size=16, hidden=(32,), num_bits=16)
    run.train_and_evaluate(config, str(tmp_path / variant))
    results.append(json.loads((tmp_path / variant / "results.json").read_text()))
  assert results[0]["mAP"] == results[1]["mAP"] and results[0]["steps"] == 15
  a, b = (np.load(tmp_path / v / "codes.npz") for v in ("idx", "files"))
  np.testing.assert_array_equal(a["db_codes"], b["db_codes"])
  np.testing.assert_array_equal(a["query_codes"], b["query_codes"])


@pytest.mark.slow
def test_imagenet100_list_files_and_their_records_train_alike(tmp_path):
  """A generated ImageNet100-format dataset (256 x 256 JPEG / PNG, 100 one-hot columns) and its
  conversion with the bytes kept, trained with configs/imagenet100.py:small: the same mAP."""
  from experiments import smoke_images  # pylint: disable=g-import-not-at-top
  data = tmp_path / "imagenet100"
  assert smoke_images.main(["--dataset=imagenet100", f"--out={data}", "--train=64",
                            "--test=8", "--database=24"]) == 0
  assert _convert("--dataset=imagenet100", f"--data_dir={data}",
                  f"--output={tmp_path / 'ar'}", "--shard_size=20") == 0
  results = []
  for dataset, data_dir in (("imagenet100", data), ("arrayrecord", tmp_path / "ar")):
    config = config_base.load_config_file(os.path.join(ROOT, "configs/imagenet100.py:small"))
    config.update(dataset=dataset, data_dir=str(data_dir), num_epochs=1, image_size=64,
                  eval_batch_size=16, checkpoint_every_steps=100, eval_topk=10)
    run.train_and_evaluate(config, str(tmp_path / dataset))
    results.append(json.loads((tmp_path / dataset / "results.json").read_text()))
  assert results[0]["steps"] == results[1]["steps"] == 2
  assert results[0]["mAP"] == results[1]["mAP"]
  a, b = (np.load(tmp_path / d / "codes.npz") for d in ("imagenet100", "arrayrecord"))
  np.testing.assert_array_equal(a["db_codes"], b["db_codes"])


def test_gs_output_and_reading_from_the_bucket(tmp_path, gcs):
  """A conversion to gs:// (written locally, uploaded shard by shard) read back from the bucket
  through grain: the rows and labels of the same conversion written locally."""
  _fashion_idx(tmp_path / "idx")
  args = ["--dataset=fashion_mnist", f"--data_dir={tmp_path / 'idx'}", "--num_query_per_class=3",
          "--num_train_per_class=4", "--shard_size=16"]
  bucket = gcs.prefix("fmnist_ar")
  assert _convert(*args, f"--output={bucket}") == 0
  assert _convert(*args, f"--output={tmp_path / 'local'}") == 0
  keys = {"image_mode": "L", "train_transform": "none", "eval_transform": "none",
          "pixel_norm": "unit", "dataset": "arrayrecord"}
  remote = arrayrecord.load(config_of({**keys, "data_dir": bucket}))
  local = arrayrecord.load(config_of({**keys, "data_dir": str(tmp_path / "local")}))
  try:
    for split in ("train", "query", "db"):
      rows = np.arange(local.size(split))[::-1]
      np.testing.assert_array_equal(remote.eval_rows(split, rows), local.eval_rows(split, rows))
      np.testing.assert_array_equal(remote.labels(split), local.labels(split))
  finally:
    remote.close()
    local.close()


def test_tfds_dataset_converted_equals_streaming_it(tmp_path, capsys):
  """A TFDS dataset (built here, array_record) converted with its stored PNG bytes kept: the
  ArrayRecord source gives the rows and labels of the tfds source on the same splits."""
  from test_tfds_source import build_tfds  # pylint: disable=g-import-not-at-top
  build_tfds(tmp_path / "tfds", "tiny_images", {"train": 30, "test": 12})
  splits = "train=train[:20],query=test,db=train"
  assert _convert("--dataset=tfds", "--tfds_name=tiny_images", f"--data_dir={tmp_path / 'tfds'}",
                  f"--tfds_splits={splits}", f"--output={tmp_path / 'ar'}", "--shard_size=8") == 0
  keys = {"train_transform": "none", "eval_transform": "none", "pixel_norm": "unit"}
  streamed = data_lib.load(config_of({**keys, "dataset": "tfds", "tfds_name": "tiny_images",
                                      "data_dir": str(tmp_path / "tfds"), "tfds_splits": splits}))
  recs = arrayrecord.load(config_of({**keys, "dataset": "arrayrecord",
                                     "data_dir": str(tmp_path / "ar")}))
  try:
    assert (recs.size("train"), recs.size("query"), recs.size("db")) == (20, 12, 30)
    for split in ("train", "query", "db"):
      rows = np.arange(recs.size(split))
      np.testing.assert_array_equal(recs.eval_rows(split, rows), streamed.eval_rows(split, rows))
      np.testing.assert_array_equal(recs.labels(split), streamed.labels(split))
  finally:
    streamed.close()
    recs.close()
  assert _convert("--dataset=tfds", "--tfds_name=tiny_images", f"--data_dir={tmp_path / 'tfds'}",
                  "--tfds_splits=train=train", f"--output={tmp_path / 'bad'}") == 2
  capsys.readouterr()
  assert _convert("--dataset=tfds", "--tfds_name=tiny_images", f"--data_dir={tmp_path / 'tfds'}",
                  f"--tfds_splits={splits}", f"--output={tmp_path / 'bad'}",
                  "--label_feature=lbl") == 2  # opened as dataset=tfds opens it: one error line
  (line,) = capsys.readouterr().err.splitlines()
  assert line.startswith("error: tiny_images: no feature 'lbl'"), line


@pytest.mark.slow
def test_fashion_arrayrecord_on_two_processes_of_two_devices(tmp_path):
  """The Fashion-MNIST conversion trained by 2 processes x 2 devices: each process reads only
  its rows, and the mAP is the 1-process IDX run's (a short run: the distributed sums have not
  drifted, see tests/test_multihost.py)."""
  from test_streaming import run_two_processes  # pylint: disable=g-import-not-at-top
  _fashion_idx(tmp_path / "idx", seed=2, sizes=(("train", 120), ("t10k", 40)))
  sizes = ["--num_query_per_class=2", "--num_train_per_class=8"]
  assert _convert("--dataset=fashion_mnist", f"--output={tmp_path / 'ar'}",
                  f"--data_dir={tmp_path / 'idx'}", "--shard_size=32", *sizes) == 0
  config = config_base.load_config_file(os.path.join(ROOT, "configs/fashion_mnist.py:idx"))
  config.update(data_dir=str(tmp_path / "idx"), num_query_per_class=2, num_train_per_class=8,
                num_epochs=2, batch_size=16, hidden=(32,), num_bits=16, adam_eps=1e-3)
  single = run.train_and_evaluate(config, str(tmp_path / "single"))
  config = config_base.load_config_file(os.path.join(ROOT, "configs/fashion_mnist.py:files"))
  config.update(dataset="arrayrecord", num_classes=None, data_dir=str(tmp_path / "ar"),
                num_query_per_class=2, num_train_per_class=8, num_epochs=2, batch_size=16,
                hidden=(32,), num_bits=16, adam_eps=1e-3)
  out = run_two_processes(config, tmp_path, 2)
  train = [{tuple(r) for chunk in o["reads"]["train"] for r in chunk} for o in out]
  assert {p for _, p, _ in train[0]} == set(range(8)) and {p for _, p, _ in train[1]} == set(
      range(8, 16))
  assert len(train[0] | train[1]) == single["steps"] * 16
  assert out[0]["mAP"] == pytest.approx(single["mAP"], abs=1e-6)
