"""Any TFDS image dataset, streamed through ``tfds.data_source`` (random access, no TensorFlow).

``config.dataset = "tfds"`` with ``tfds_name`` (e.g. imagenette, oxford_flowers102,
cifar100), or ``"cifar10"`` (``tfds_name`` cifar10 unless set). ``data_dir`` is the TFDS data
directory; the dataset must be prepared there in the ``array_record`` file format (TFDS data
sources cannot read TFRecord; nothing is downloaded unless ``download``).

Splits (``tfds_splits``):
- ``"train=S1,query=S2,db=S3"``: each of our splits is a TFDS split expression (``train``,
  ``validation``, ``train[:90%]``, ``train+test``, ...), read in its order.
- ``"per_class=S"``: the examples of the expression S (e.g. ``train+test``: train first) are
  cut class by class with ``per_class_split`` and ``split_seed`` into ``num_query_per_class``
  queries, ``num_train_per_class`` training images and the rest; the database is the training
  images plus the rest. With ``train+test`` on cifar10 (100 / 500 per class) this is the
  "cifar10-1" protocol of the hashing papers: 1,000 queries, 5,000 training, 59,000 database.

Rows: the source is a ``streaming.ImageSource``: the ``image_feature`` of an example is read
undecoded (``tfds.decode.SkipDecoding``: the stored PNG / JPEG bytes; a feature of raw pixels
is PNG-encoded) and goes through the configured transforms (``train_transform`` /
``eval_transform``, ``image_mode``, ``pixel_norm``) in the ``data_workers`` threads; only the
rows asked for are read. configs/cifar10.py takes the 32 x 32 images as they are (transform
"none", ``pixel_norm`` "unit": the device computes x / 255, bit-equal to the float32 arrays the
in-memory loader held before) and augments them on the device (``augment_crop_pad``).

Labels: the ``label_feature`` (a ClassLabel; num_classes from the dataset info) of every
example is read once when the source is opened (one pass over the records, images not decoded),
into one int32 array per split.

Config keys: dataset, tfds_name, tfds_splits, image_feature, label_feature, data_dir,
download, num_query_per_class, num_train_per_class, split_seed and the streaming keys (seed,
data_workers, skip_bad_images, image_size, image_mode, train_transform, train_resize,
eval_transform, eval_resize, jpeg_draft, pixel_norm).
"""
import io

import numpy as np

from orthohash_jax.data import DataError, listfile, per_class_split, records, streaming

_LABEL_BATCH = 4096  # examples deserialised per call while reading the labels


def parse_splits(text: str) -> dict:
  """"per_class=S" -> {"per_class": S}; "train=S1,query=S2,db=S3" -> {"train": S1, ...}."""
  items = [item.partition("=") for item in text.split(",")]
  parsed = {key: value for key, sep, value in items if sep and value}
  if len(parsed) != len(items) or set(parsed) not in ({"per_class"}, set(records.SPLITS)):
    raise DataError(f"tfds_splits must be 'per_class=SPLIT' or 'train=SPLIT,query=SPLIT,"
                    f"db=SPLIT', got {text!r}")
  return parsed


class TfdsSource(streaming.ImageSource):
  """``streaming.ImageSource`` over TFDS data sources (see module docstring)."""

  def __init__(self, name, parts, labels, num_classes, image_feature, *args):
    """``parts`` maps each split to (TFDS data source, int64 row -> example index); ``labels``
    to int32 class ids; ``args``: those of ``ImageSource`` after ``multilabel``."""
    self._parts, self._image_feature = parts, image_feature
    as_sparse = {s: listfile.Labels.from_ids(y) for s, y in labels.items()}
    super().__init__(name, num_classes, as_sparse, False, *args)

  def _open(self, split, rows):
    source, index = self._parts[split]
    examples = source.__getitems__([int(index[r]) for r in rows])
    out = []
    for r, example in zip(rows, examples):
      image = example[self._image_feature]
      if not isinstance(image, bytes):
        image = records.png(image)
      out.append((io.BytesIO(image), f"{self.name} {split} row {r} (example {index[r]})"))
    return out


def _read_labels(source, key: str) -> np.ndarray:
  labels = np.empty(len(source), np.int32)
  for start in range(0, len(source), _LABEL_BATCH):
    batch = source.__getitems__(range(start, min(start + _LABEL_BATCH, len(source))))
    labels[start:start + len(batch)] = [example[key] for example in batch]
  return labels


def open_source(name: str, split: str, data_dir, image_feature: str, label_feature: str,
                download: bool = False):
  """The TFDS data source of the split expression ``split`` of dataset ``name`` in ``data_dir``,
  its ``image_feature`` undecoded (``tfds.decode.SkipDecoding``: the stored bytes); a source that
  cannot be opened, or without both features, is one DataError naming it."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=download,
                              decoders={image_feature: tfds.decode.SkipDecoding()})
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"{name}: cannot open the TFDS data source {split!r} in "
                    f"{data_dir}: {str(e).splitlines()[0]}") from e
  features = source.dataset_info.features
  for key in (image_feature, label_feature):
    if key not in features:
      raise DataError(f"{name}: no feature {key!r} (features: {sorted(features.keys())})")
  return source


def load(config) -> TfdsSource:
  """Streaming source of a TFDS dataset; keys as in the module docstring."""
  name = config.tfds_name or config.dataset
  if name == "tfds":
    raise DataError("tfds: set tfds_name to the TFDS dataset (e.g. imagenette)")
  splits = parse_splits(config.tfds_splits)
  opened = {e: open_source(name, e, config.data_dir, config.image_feature, config.label_feature,
                           config.download)
            for e in dict.fromkeys(splits.values())}
  features = next(iter(opened.values())).dataset_info.features
  num_classes = features[config.label_feature].num_classes
  labels_of = {e: _read_labels(s, config.label_feature) for e, s in opened.items()}
  if "per_class" in splits:
    source, y = opened[splits["per_class"]], labels_of[splits["per_class"]]
    query, train, rest = per_class_split(
        y, (config.num_query_per_class, config.num_train_per_class, None),
        seed=config.split_seed)
    index = {"train": train, "query": query, "db": np.sort(np.concatenate([train, rest]))}
    parts = {s: (source, index[s]) for s in records.SPLITS}
    labels = {s: y[index[s]] for s in records.SPLITS}
  else:
    parts = {s: (opened[splits[s]], np.arange(len(opened[splits[s]]))) for s in records.SPLITS}
    labels = {s: labels_of[splits[s]] for s in records.SPLITS}
  train_t, eval_t = streaming.transforms_from_config(config)
  mean_std = streaming.PIXEL_NORMS[config.pixel_norm](train_t.channels)
  return TfdsSource(name, parts, labels, num_classes, config.image_feature, train_t, eval_t,
                    config.seed, config.data_workers, config.skip_bad_images, mean_std)
