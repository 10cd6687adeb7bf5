"""Paper dataset configs: settings, unset data_dir, and one epoch on tiny real-format list files."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from orthohash_jax import data as data_lib
import reference
from orthohash_jax import config_base, models, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# dataset: (R of mAP@R of the hashing papers, multi-hot list files as published)
PAPER = {"imagenet100": (1000, False), "nuswide": (5000, True), "coco": (5000, True),
         "cifar10": (None, False)}


def load_config(name, variant=""):
  path = os.path.join(ROOT, "configs", f"{name}.py")
  config = config_base.load_config_file(f"{path}:{variant}" if variant else path)
  config.lock()
  return config


@pytest.mark.parametrize("name", sorted(PAPER))
def test_config_depth_and_unset_data_dir(name):
  config = load_config(name)
  assert (config.dataset, config.eval_topk) == (name, PAPER[name][0])
  assert config.data_dir is None
  with pytest.raises(data_lib.DataError, match=rf"^{name}: .*None"):
    data_lib.load(config)


@pytest.mark.parametrize("name", ["imagenet100", "nuswide", "coco"])
def test_small_variant_convolves_at_an_eighth_of_the_image_side(name, monkeypatch):
  config = load_config(name, "small")
  assert (config.backbone, config.stem_stride, config.image_size) == ("cnn_gap", 8, 224)
  assert load_config(name).stem_stride == 1  # the paper's AlexNet has no stem
  seen = []
  conv_call = nnx.Conv.__call__
  monkeypatch.setattr(nnx.Conv, "__call__", lambda self, x: seen.append(x.shape) or conv_call(
      self, x))
  x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  codes = jax.eval_shape(lambda x: models.build_model(config, (224, 224, 3), 10, None)(
      x, train=False)[0], x)  # traced: nothing is computed
  assert codes.shape == (2, config.num_bits)
  assert seen == [(2, 28, 28, 3), (2, 14, 14, 32), (2, 7, 7, 64)]


def label_rows(multilabel, per_class, rng, classes=3):
  """(classes * per_class, classes) 0/1 rows: one-hot, or with a random second label."""
  rows = np.repeat(np.eye(classes, dtype=np.uint8), per_class, axis=0)
  if multilabel:
    rows[np.arange(len(rows)), rng.integers(0, classes, len(rows))] = 1
    rows[0] = 1  # at least one row with several labels
  return rows


def write_split(root, filename, rows, rng):
  """One 40x30 PNG per row, coloured by its first label plus noise, and the list file."""
  colours = np.array([[220, 30, 30], [30, 220, 30], [30, 30, 220]])
  lines = []
  for i, row in enumerate(rows):
    name = f"images/{filename[:-4]}_{i:03d}.png"
    px = colours[np.argmax(row)] + rng.integers(-30, 30, size=(30, 40, 3))
    Image.fromarray(np.clip(px, 0, 255).astype(np.uint8)).save(root / name)
    lines.append(name + " " + " ".join(map(str, row)))
  (root / filename).write_text("\n".join(lines) + "\n")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["imagenet100", "nuswide", "coco"])
def test_list_file_config_trains_one_epoch(name, tmp_path):
  multilabel = PAPER[name][1]
  rng = np.random.default_rng(0)
  root = tmp_path / "data"
  (root / "images").mkdir(parents=True)
  rows = {"train.txt": label_rows(multilabel, 8, rng), "test.txt": label_rows(multilabel, 2, rng),
          "database.txt": label_rows(multilabel, 6, rng)}
  for filename, split_rows in rows.items():
    write_split(root, filename, split_rows, rng)
  config = load_config(name, "small")
  # the paper's transforms at a small size (40x30 files, 64x64 crops, the smallest the 8x8
  # stem and three 2x2 max-pools take) to keep the test fast
  config.update({"data_dir": str(root), "num_classes": 3, "num_epochs": 1, "batch_size": 8,
                 "num_bits": 16, "eval_topk": 10, "image_size": 64, "train_resize": 72,
                 "eval_resize": 68 if config.eval_resize else None})
  workdir = str(tmp_path / "run")
  summary = run.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert results == json.loads(json.dumps(summary))
  assert (results["dataset"], results["multilabel"], results["num_bits"], results["eval_topk"],
          results["num_queries"], results["num_database"], results["steps"]) == (
              name, multilabel, 16, 10, 6, 18, 3)
  with np.load(os.path.join(workdir, "codes.npz")) as f:
    codes = {k: f[k] for k in f.files}
  expected_labels = {"query_labels": rows["test.txt"], "db_labels": rows["database.txt"]}
  for key, want in expected_labels.items():
    np.testing.assert_array_equal(codes[key], want if multilabel else np.argmax(want, axis=1))
  q_bits = reference.unpack(codes["query_codes"], 16)
  db_bits = reference.unpack(codes["db_codes"], 16)
  assert results["mAP"] == pytest.approx(reference.mean_average_precision(
      q_bits, db_bits, codes["query_labels"], codes["db_labels"], 10))
