"""The record layout and the files of an ArrayRecord dataset (written by ``write_arrayrecord``,
read by ``arrayrecord``).

Directory (local or gs://):
- ``metadata.json``: ``format`` (``FORMAT``), ``num_classes``, ``multilabel``, ``splits``
  {"train" | "query" | "db": {"size": N, "files": [shard names in order], "sizes": [records
  per shard]}}, ``image_encoding``, ``source`` and ``options`` of the conversion, ``skipped``
  {"count", "examples"}. Written last: a directory without it is incomplete.
- ``{split}-{k:05d}-of-{n:05d}.array_record``: the split's records in order; record i of the
  split is the i-th over the shards in order (the global index the source reads by).
- ``labels-{split}.npz``: the split's labels without reading a record: ``indptr`` int64
  (N + 1,) and ``indices`` int32, row i's class ids being ``indices[indptr[i]:indptr[i + 1]]``
  (``listfile.Labels``).

Record (little-endian): uint32 k, k x int32 class ids (ascending; k = 1 for single-label data),
uint32 m, m bytes of the source path (UTF-8), then the encoded image (PNG / JPEG / any format
Pillow reads) to the end. A fixed binary layout rather than tf.train.Example (it needs
TensorFlow or a protobuf schema to read) or msgpack / pickle (an extra dependency, or code run on
load): decoding is two ``struct`` reads and a slice, and the image bytes are used as they are.
"""
import io
import json
import struct

import numpy as np
from etils import epath
from PIL import Image

from orthohash_jax.data import DataError, listfile

FORMAT = "orthohash-arrayrecord-1"
METADATA = "metadata.json"
SPLITS = ("train", "query", "db")


def encode(image: bytes, classes, path: str) -> bytes:
  """One record: ``classes`` int (N,) class ids, ``path`` the source path."""
  classes = np.asarray(classes, "<i4").reshape(-1)
  name = path.encode("utf-8", "surrogateescape")
  return b"".join((struct.pack("<I", len(classes)), classes.tobytes(),
                   struct.pack("<I", len(name)), name, image))


def decode(record: bytes):
  """(image bytes, int32 class ids, source path) of a record."""
  k = struct.unpack_from("<I", record, 0)[0]
  classes = np.frombuffer(record, "<i4", k, 4).astype(np.int32)
  at = 4 + 4 * k
  m = struct.unpack_from("<I", record, at)[0]
  path = bytes(record[at + 4:at + 4 + m]).decode("utf-8", "surrogateescape")
  return record[at + 4 + m:], classes, path


def png(pixels) -> bytes:
  """uint8 (H, W) or (H, W, C) pixels as PNG bytes (lossless)."""
  buf = io.BytesIO()
  pixels = np.asarray(pixels, np.uint8)
  Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels).save(
      buf, "PNG")
  return buf.getvalue()


def shard_name(split: str, k: int, n: int) -> str:
  return f"{split}-{k:05d}-of-{n:05d}.array_record"


def labels_name(split: str) -> str:
  return f"labels-{split}.npz"


def read_metadata(directory) -> dict:
  """The metadata of ``directory`` (a path or gs:// URL), checked for its format."""
  path = epath.Path(directory) / METADATA
  if not path.exists():
    raise DataError(f"{directory}: no {METADATA} (not an ArrayRecord dataset written by "
                    "python -m orthohash_jax.data.write_arrayrecord, or its conversion is "
                    "unfinished)")
  meta = json.loads(path.read_text())
  if meta.get("format") != FORMAT:
    raise DataError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
  return meta


def read_labels(directory, split: str) -> listfile.Labels:
  with (epath.Path(directory) / labels_name(split)).open("rb") as f:
    z = np.load(f)
    return listfile.Labels(z["indptr"].astype(np.int64), z["indices"].astype(np.int32))
