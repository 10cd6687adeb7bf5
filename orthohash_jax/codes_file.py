"""The codes file: packed binary codes and labels of a run in one ``.npz`` (and a FAISS index).

File format (written by ``save_codes``, read by ``load_codes`` and ``search.HammingIndex.load``):
  query_codes  uint32 (Q, ceil(K/32))  packed as in ``retrieval`` (bit j of word w = dim 32w+j)
  db_codes     uint32 (N, ceil(K/32))
  query_labels int32 (Q,) or uint8 (Q, C);  db_labels likewise
  num_bits     int64 scalar K
  config       str, the run's config as JSON
The file is written to ``<path>.tmp.npz`` and renamed, so a reader never sees half a file.
``write_faiss_index`` writes the database as a FAISS ``IndexBinaryFlat`` (K divisible by 8).
"""
import json
import os

import numpy as np

from orthohash_jax import retrieval

REQUIRED_KEYS = ("query_codes", "db_codes", "query_labels", "db_labels", "num_bits")


def save_codes(path: str, result: dict, num_bits: int, config: dict, faiss_index=False) -> None:
  """Writes packed codes and labels (``result`` keys as in REQUIRED_KEYS) to ``path``."""
  if os.path.isdir(path):
    raise ValueError(f"{path} is a directory; give the codes file's path (e.g. {path}/codes.npz)")
  tmp = path + ".tmp.npz"
  try:
    np.savez(tmp, query_codes=np.asarray(result["query_codes"], np.uint32),
             db_codes=np.asarray(result["db_codes"], np.uint32),
             query_labels=np.asarray(result["query_labels"]),
             db_labels=np.asarray(result["db_labels"]), num_bits=np.int64(num_bits),
             config=json.dumps(config))
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  if faiss_index:
    write_faiss_index(os.path.splitext(path)[0] + ".faissbin", result["db_codes"], num_bits)


def load_codes(path: str) -> dict:
  """Reads an export file; raises ValueError (one line) when it is missing or malformed."""
  if not os.path.exists(path):
    raise ValueError(f"codes file {path} does not exist")
  try:
    with np.load(path, allow_pickle=False) as f:
      out = {k: f[k] for k in f.files}
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"cannot read codes file {path}: {type(e).__name__}: {e}") from None
  missing = [k for k in REQUIRED_KEYS if k not in out]
  if missing:
    raise ValueError(f"codes file {path} lacks {missing}")
  out["num_bits"] = int(out["num_bits"])
  for key in ("query_codes", "db_codes"):
    retrieval.check_codes(out[key], out["num_bits"], f"{path}: {key}")
  return out


def write_faiss_index(path: str, db_codes, num_bits: int) -> None:
  """Writes a faiss IndexBinaryFlat of the database (bits must be a multiple of 8)."""
  try:
    import faiss  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError("--faiss needs faiss-cpu (pip install faiss-cpu)") from None
  if num_bits % 8:
    raise ValueError(f"a FAISS binary index needs num_bits divisible by 8, got {num_bits}")
  # Our words are little-endian uint32 with dimension 32w+j at bit j, so viewing them as bytes
  # gives dimension 8i+j at bit j of byte i: FAISS's own bit order.
  codes = np.ascontiguousarray(np.asarray(db_codes, "<u4")).view(np.uint8)[:, :num_bits // 8]
  index = faiss.IndexBinaryFlat(num_bits)
  index.add(np.ascontiguousarray(codes))
  faiss.write_index_binary(index, path)
