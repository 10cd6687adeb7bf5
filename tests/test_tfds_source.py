"""TFDS datasets through ``tfds.data_source`` (no TensorFlow), on datasets built here in the
array_record format by a small GeneratorBasedBuilder (never a download) and on TFDS's mock."""
import io
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from conftest import ROOT, config_of
from orthohash_jax import config_base, run
from orthohash_jax import data as data_lib
from orthohash_jax.data import tfds_source


def build_tfds(data_dir, name, sizes, shape=(8, 8, 3), classes=10, version="1.0.0",
               with_id=False, seed=0, raw=False):
  """Prepares TFDS dataset ``name`` (splits of ``sizes``, random uint8 images stored as PNG,
  labels (7 i + len(split)) % classes) in ``data_dir`` as array_record. Images are handed to
  TFDS as PNG files, so no TensorFlow is needed. ``name``/``version`` may be a catalogue
  dataset's (e.g. cifar10 3.0.2 with ``with_id``): data_source then reads these files.
  ``raw``: the image is a uint8 Tensor feature (pixels) instead."""
  rng = np.random.default_rng(seed)
  made = {s: (rng.integers(0, 256, (n,) + shape, dtype=np.uint8),
              (np.arange(n) * 7 + len(s)) % classes) for s, n in sizes.items()}

  def info(self):
    features = {"image": (tfds.features.Tensor(shape=shape, dtype=np.uint8) if raw
                          else tfds.features.Image(shape=shape)),
                "label": tfds.features.ClassLabel(num_classes=classes)}
    if with_id:
      features["id"] = tfds.features.Text()
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

  def split_generators(self, dl_manager):
    del dl_manager
    return {s: self._generate_examples(s) for s in sizes}

  def generate_examples(self, split):
    del self
    x, y = made[split]
    for i in range(len(y)):
      png = io.BytesIO()
      Image.fromarray(x[i] if shape[-1] > 1 else x[i, ..., 0]).save(png, "PNG")
      png.seek(0)
      example = {"image": x[i] if raw else png, "label": int(y[i])}
      if with_id:
        example["id"] = f"{split}_{i}"
      yield i, example

  builder = type("LocalBuilder", (tfds.core.GeneratorBasedBuilder,),
                 {"name": name, "VERSION": tfds.core.Version(version), "_info": info,
                  "_split_generators": split_generators, "_generate_examples": generate_examples},
                 skip_registration=True)
  builder(data_dir=str(data_dir), file_format="array_record").download_and_prepare()


def decoded(data_dir, name, split):
  """(uint8 images, int32 labels) of a TFDS split as TFDS decodes them (the reference)."""
  source = tfds.data_source(name, split=split, data_dir=str(data_dir), download=False)
  examples = [source[i] for i in range(len(source))]
  return (np.stack([np.asarray(e["image"]) for e in examples]),
          np.array([e["label"] for e in examples], np.int32))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  build_tfds(data_dir, "tiny_images", {"train": 60, "test": 30})
  return data_dir


def _config(data_dir, **kw):
  return config_of({"dataset": "tfds", "tfds_name": "tiny_images", "data_dir": str(data_dir),
                    "train_transform": "none", "eval_transform": "none", "pixel_norm": "unit",
                    "data_workers": 2, **kw})


def test_per_class_protocol_rows_and_labels(tiny):
  x, y = decoded(tiny, "tiny_images", "train+test")
  src = data_lib.load(_config(tiny, tfds_splits="per_class=train+test", num_query_per_class=2,
                              num_train_per_class=3, split_seed=4))
  try:
    assert (src.num_classes, src.multilabel, src.input_shape) == (10, False, (8, 8, 3))
    query, train, rest = data_lib.per_class_split(y, (2, 3, None), seed=4)
    db = np.sort(np.concatenate([train, rest]))
    for split, rows in (("query", query), ("train", train), ("db", db)):
      assert src.labels(split).dtype == np.int32
      np.testing.assert_array_equal(src.labels(split), y[rows])
      np.testing.assert_array_equal(src.eval_rows(split, np.arange(len(rows))), x[rows])
    got = src.train_rows(np.array([[4, 0], [29, 4]]), [0, 1], [0, 1])
    np.testing.assert_array_equal(got, x[train[[[4, 0], [29, 4]]]])
  finally:
    src.close()


def test_split_expressions_and_reads_of_asked_rows_only(tiny):
  src = data_lib.load(_config(tiny, tfds_splits="train=train[:40],query=test,db=train"))
  x, y = decoded(tiny, "tiny_images", "train")
  reads = []
  source, _ = src._parts["db"]  # pylint: disable=protected-access
  original = source.__getitems__
  source.__getitems__ = lambda keys: reads.append(list(keys)) or original(keys)
  try:
    assert (src.size("train"), src.size("query"), src.size("db")) == (40, 30, 60)
    np.testing.assert_array_equal(src.labels("train"), y[:40])
    np.testing.assert_array_equal(src.eval_rows("db", np.array([59, 3])), x[[59, 3]])
    assert reads == [[59, 3]]
  finally:
    src.close()


@pytest.mark.parametrize("splits", ["train=train", "per_class=", "train=a,query=b,db=c,x=d"])
def test_bad_split_text_and_unavailable_source_are_data_errors(tiny, tmp_path, splits):
  with pytest.raises(data_lib.DataError, match="tfds_splits must be"):
    data_lib.load(_config(tiny, tfds_splits=splits))
  with pytest.raises(data_lib.DataError, match="cifar10: cannot open the TFDS data source"):
    data_lib.load(config_of({"dataset": "cifar10", "data_dir": str(tmp_path)}))
  with pytest.raises(data_lib.DataError, match="no feature 'img'"):
    data_lib.load(_config(tiny, image_feature="img"))


def test_raw_pixel_feature_without_tensorflow(tmp_path):
  """An image stored as a uint8 Tensor feature (pixels, not PNG) is read through PNG."""
  with pytest.raises(ImportError):
    import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  build_tfds(tmp_path, "raw_images", {"train": 20, "test": 10}, shape=(6, 5, 1), raw=True)
  x, y = decoded(tmp_path, "raw_images", "test")
  src = data_lib.load(_config(tmp_path, tfds_name="raw_images", image_mode="L",
                              tfds_splits="train=train,query=test,db=test"))
  try:
    assert src.input_shape == (6, 5, 1)
    np.testing.assert_array_equal(src.eval_rows("query", np.arange(10)), x)
    np.testing.assert_array_equal(src.labels("db"), y)
  finally:
    src.close()


def test_parse_splits():
  assert tfds_source.parse_splits("per_class=train+test") == {"per_class": "train+test"}
  assert tfds_source.parse_splits("train=train[:90%],query=test,db=train") == {
      "train": "train[:90%]", "query": "test", "db": "train"}


@pytest.mark.slow
def test_cifar10_streamed_trains_like_the_in_memory_arrays(tmp_path, monkeypatch):
  """configs/cifar10.py on a cifar10 built here (32 x 32 PNG in array_record) equals, to the
  bit, the run on the arrays the loader held before (float32 x / 255 of the decoded images,
  the same split): identical results.json mAP and codes."""
  build_tfds(tmp_path / "tfds", "cifar10", {"train": 100, "test": 40}, shape=(32, 32, 3),
             version="3.0.2", with_id=True)
  config = config_base.load_config_file(os.path.join(ROOT, "configs", "cifar10.py"))
  config.update(data_dir=str(tmp_path / "tfds"), num_query_per_class=2, num_train_per_class=8,
                num_epochs=2, batch_size=16, num_bits=16, eval_batch_size=32, backbone="mlp",
                hidden=(32,))  # the data path is under test, not the CNN (slow to compile)
  streamed = run.train_and_evaluate(config, str(tmp_path / "streamed"))
  x, y = decoded(tmp_path / "tfds", "cifar10", "train+test")
  x = x.astype(np.float32) / 255.0
  query, train, rest = data_lib.per_class_split(y, (2, 8, None), seed=0)
  db = np.sort(np.concatenate([train, rest]))
  arrays = data_lib.RetrievalData("cifar10", 10, x[train], y[train], x[query], y[query], x[db],
                                  y[db])
  monkeypatch.setattr(data_lib, "load", lambda config: arrays)
  in_memory = run.train_and_evaluate(config, str(tmp_path / "arrays"))
  assert streamed["steps"] == in_memory["steps"] == 10
  assert streamed["mAP"] == in_memory["mAP"]
  a, b = (np.load(tmp_path / w / "codes.npz") for w in ("streamed", "arrays"))
  np.testing.assert_array_equal(a["db_codes"], b["db_codes"])
  assert json.loads((tmp_path / "streamed" / "results.json").read_text())["mAP"] == streamed["mAP"]
