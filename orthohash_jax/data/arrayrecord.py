"""Streaming source over ArrayRecord shards (``dataset="arrayrecord"``), local or gs://.

``data_dir`` holds what ``python -m orthohash_jax.data.write_arrayrecord`` writes (layout:
``records``). The source implements the input interface of ``streaming.ImageSource`` with the
same transforms, workers, bad-image handling and randomness (``np.random.default_rng([seed,
step, position])``): a batch depends on (seed, step) only, so resume and multi-process runs
read the batches of the list-file path, and records converted with their bytes kept decode to
the very pixels of the image files.

Reading: one ``grain.sources.ArrayRecordDataSource`` per split over its shards in order
(random access by global index; each shard is opened on its first read; the shard sizes come
from ``metadata.json``, so opening the source reads no shard). A batch's records are fetched
with one ``__getitems__`` call (grain reads the shards concerned in parallel), then decoded by
the ``data_workers`` threads. Threads rather than worker processes: Pillow releases the GIL
while it decodes and resamples, and the threads cost less CPU per image than the torch
DataLoader's processes doing the same Pillow work (``experiments/bench_input.py``: 2.8 against
3.0 ms per 500 x 375 JPEG, docs/performance.md). Only the rows asked for are read: each process
asks for its rows of every global batch (``data.host_batch``) and of the evaluation splits.

Labels: ``labels-{split}.npz`` (int32 class ids, or uint8 (N, C) multi-hot for multi-label
data), loaded whole; nothing else is held per record.

Config keys: data_dir, seed, data_workers, skip_bad_images, image_size, image_mode,
train_transform, train_resize, eval_transform, eval_resize, jpeg_draft, pixel_norm.
"""
import io

import numpy as np
from etils import epath
from grain import sources

from orthohash_jax.data import DataError, records, streaming


class ArrayRecordSource(streaming.ImageSource):
  """``streaming.ImageSource`` over the shards of ``data_dir`` (see module docstring)."""

  def __init__(self, data_dir: str, meta: dict, *args):
    """``meta``: ``records.read_metadata(data_dir)``; ``args``: those of ``ImageSource`` after
    ``multilabel``."""
    self._dir = str(data_dir).rstrip("/")
    self._files, self._sources, self._starts = {}, {}, {}
    for split in records.SPLITS:
      info = meta["splits"][split]
      files = [f"{self._dir}/{name}" for name in info["files"]]
      self._files[split] = files
      self._starts[split] = np.concatenate([[0], np.cumsum(info["sizes"])])
      # "file[0:n]" gives grain the record count without opening the file.
      self._sources[split] = sources.ArrayRecordDataSource(
          [f"{f}[0:{n}]" for f, n in zip(files, info["sizes"]) if n])
    labels = {s: records.read_labels(self._dir, s) for s in records.SPLITS}
    for split in records.SPLITS:
      if len(labels[split].indptr) - 1 != meta["splits"][split]["size"]:
        raise DataError(f"{self._dir}: {records.labels_name(split)} holds "
                        f"{len(labels[split].indptr) - 1} rows, metadata.json says "
                        f"{meta['splits'][split]['size']}")
    super().__init__("arrayrecord", int(meta["num_classes"]), labels, bool(meta["multilabel"]),
                     *args)

  def read_records(self, split: str, rows) -> list:
    """The raw records of ``rows`` (global indices) of ``split``, in order (a process may have
    no rows of a small evaluation split; grain refuses an empty read)."""
    return list(self._sources[split].__getitems__(rows)) if len(rows) else []

  def _open(self, split, rows):
    out = []
    for r, record in zip(rows, self.read_records(split, rows)):
      image, _, path = records.decode(record)
      shard = int(np.searchsorted(self._starts[split], r, side="right")) - 1
      out.append((io.BytesIO(image),
                  f"{self._files[split][shard]}:{r - self._starts[split][shard]}: {path}"))
    return out


def load(config) -> ArrayRecordSource:
  """Streaming source of ``config.data_dir``; keys as in the module docstring."""
  if not config.data_dir:
    raise DataError("arrayrecord: set data_dir to the folder written by python -m "
                    "orthohash_jax.data.write_arrayrecord")
  meta = records.read_metadata(config.data_dir)
  train, evaluate = streaming.transforms_from_config(config)
  mean_std = streaming.PIXEL_NORMS[config.pixel_norm](train.channels)
  return ArrayRecordSource(epath.Path(config.data_dir), meta, train, evaluate, config.seed,
                           config.data_workers, config.skip_bad_images, mean_std)
