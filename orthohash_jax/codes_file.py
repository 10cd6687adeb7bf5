"""Code files: the one reader and writer of ``.npz`` files of packed binary codes (and a FAISS
index of a run's database).

Formats (codes packed as in ``retrieval``: uint32 (N, ceil(K/32)), bit j of word w = dim 32w+j):
* A run's codes file (``save_codes`` / ``load_codes``, read by ``search`` too):
    query_codes  uint32 (Q, ceil(K/32))
    db_codes     uint32 (N, ceil(K/32))
    query_labels int32 (Q,) or uint8 (Q, C);  db_labels likewise
    num_bits     int64 scalar K
    config       str, the run's config as JSON
* A search index (``save_index``, read by ``search.HammingIndex.load``): ``db_codes``,
  ``num_bits`` and, if the index has labels, ``db_labels``.
``read_npz`` reads the arrays a command uses (its ``required`` and ``optional`` keys and
``num_bits``; other members are never decompressed), each after its npy header's size was
checked against ``MAX_ARRAY_BYTES``, and checks ``num_bits`` (an integer scalar), every
``*_codes`` array against it and the labels' rows against their codes'; a missing or unreadable
file (not an archive, a damaged member), a missing key, an array over the bound, bad codes, a
database without rows or labels that do not match their codes are one ValueError naming the
file. ``write_npz``
writes a file of exactly the given name (no suffix added) through a temporary file renamed over
it, so a reader never sees half a file; a directory is refused.
``write_faiss_index`` writes the database as a FAISS ``IndexBinaryFlat`` (K divisible by 8).
"""
import json
import os
import zipfile

import numpy as np

from orthohash_jax import files, retrieval

REQUIRED_KEYS = ("query_codes", "db_codes", "query_labels", "db_labels", "num_bits")
INDEX_KEYS = ("db_codes", "num_bits")


def write_npz(path, arrays: dict) -> None:
  """Writes ``arrays`` to the .npz file ``path`` (exactly that name), atomically."""
  path = str(path)
  if files.path(path).is_dir():
    raise ValueError(f"{path} is a directory; give the path of the .npz file to write")

  def write(tmp):
    with open(tmp, "wb") as f:  # a file object: np.savez adds no suffix
      np.savez(f, **arrays)
  files.atomic_write(path, write)


MAGIC = {".npz": (b"PK\x03\x04", b"PK\x05\x06"), ".npy": (b"\x93NUMPY",)}  # how files start


def check_format(path, kind: str) -> None:
  """Raises ValueError (one line) unless ``path`` starts as a ``kind`` (".npz" / ".npy") file
  does, so that a text file or another format is named as such, not by numpy's pickle hint."""
  try:
    with files.path(path).open("rb") as f:
      head = f.read(6)
  except OSError as e:
    raise ValueError(f"{path}: not a readable {kind} file ({e.strerror or e})") from None
  if not any(head.startswith(m) for m in MAGIC[kind]):
    raise ValueError(f"{path}: not a {kind} file (it starts with {head!r})")


def _memory_bytes() -> int:
  return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


MAX_ARRAY_BYTES = _memory_bytes() // 2  # an array claiming more is refused before it is read


def _read_members(path, names) -> dict:
  """The arrays ``names`` (those present) of the .npz ``path``; each npy header is read first
  and an array over ``MAX_ARRAY_BYTES`` (or of Python objects) refused before decompressing it."""
  out = {}
  with files.path(path).open("rb") as raw, zipfile.ZipFile(raw) as archive:
    members = {name[:-4]: name for name in archive.namelist() if name.endswith(".npy")}
    for key in names:
      if key not in members:
        continue
      with archive.open(members[key]) as f:
        version = np.lib.format.read_magic(f)
        header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        shape, _, dtype = header(f)
        size = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if dtype.hasobject or size > MAX_ARRAY_BYTES:
          raise ValueError(f"{key} is {dtype} {shape}: "
                           + ("Python objects, not numbers" if dtype.hasobject else
                              f"{size / 2 ** 30:.1f} GiB, over the {MAX_ARRAY_BYTES / 2 ** 30:.1f} "
                              "GiB bound (half of this machine's memory)"))
      with archive.open(members[key]) as f:
        out[key] = np.lib.format.read_array(f, allow_pickle=False)
    out["files"] = sorted(members)
  return out


def _check_rows(path, out) -> None:
  """Labels (N,) or (N, C) with the rows of their codes; a database with at least one row."""
  if "db_codes" in out and not len(out["db_codes"]):
    raise ValueError(f"{path}: db_codes has no rows")
  for prefix in ("query", "db"):
    codes, labels = out.get(f"{prefix}_codes"), out.get(f"{prefix}_labels")
    if labels is not None and (labels.ndim not in (1, 2) or codes is not None
                               and len(labels) != len(codes)):
      raise ValueError(f"{path}: {prefix}_labels must be (N,) class ids or (N, C) multi-hot rows"
                       + (f" for the N = {len(codes)} {prefix}_codes" if codes is not None else "")
                       + f", got shape {labels.shape}")


def read_npz(path, required=(), num_bits=None, optional=()) -> dict:
  """The arrays ``required`` (which it must hold) and ``optional`` (if present) and
  ``num_bits`` of the .npz file ``path``, read now; nothing else is read. Its ``num_bits``, if
  any, is returned as an int and must equal ``num_bits`` if that is given; every ``*_codes``
  array is checked against the number of bits (given or the file's)."""
  check_format(path, ".npz")
  try:
    out = _read_members(path, (*required, *optional, "num_bits"))
  except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
    raise ValueError(f"{path}: not a readable .npz file ({type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else ''})") from None
  present = out.pop("files")
  missing = [k for k in required if k not in out]
  if missing:
    raise ValueError(f"{path}: missing keys {missing} (has {present})")
  if "num_bits" in out:
    stored = out["num_bits"]
    if stored.shape != () or stored.dtype.kind not in "iu":
      raise ValueError(f"{path}: num_bits must be an integer scalar, got {stored.dtype} "
                       f"{stored.shape}")
    if stored < 1:
      raise ValueError(f"{path}: num_bits must be >= 1, got {stored}")
    if num_bits is not None and stored != num_bits:
      raise ValueError(f"{path}: codes of {stored} bits, {num_bits} bits expected")
    num_bits = out["num_bits"] = int(stored)
  for key in out:
    if key.endswith("_codes") and num_bits is not None:
      retrieval.check_codes(out[key], num_bits, f"{path}: {key}")
  _check_rows(path, out)
  return out


def save_codes(path: str, result: dict, num_bits: int, config: dict, faiss_index=False) -> list:
  """Writes packed codes and labels (``result`` keys as in REQUIRED_KEYS) to ``path`` and, with
  ``faiss_index``, the database to ``faiss_path(path)``; returns the paths written."""
  write_npz(path, {"query_codes": np.asarray(result["query_codes"], np.uint32),
                   "db_codes": np.asarray(result["db_codes"], np.uint32),
                   "query_labels": np.asarray(result["query_labels"]),
                   "db_labels": np.asarray(result["db_labels"]), "num_bits": np.int64(num_bits),
                   "config": json.dumps(config)})
  if faiss_index:
    files.atomic_write(faiss_path(path),
                       lambda tmp: write_faiss_index(tmp, result["db_codes"], num_bits))
    return [path, faiss_path(path)]
  return [path]


def faiss_path(path: str) -> str:
  """The FAISS index written beside the codes file ``path``: its name with ``.faissbin``."""
  return os.path.splitext(path)[0] + ".faissbin"


def load_codes(path: str) -> dict:
  """Reads a run's codes file (``num_bits`` as an int); raises ValueError (one line, "cannot read
  codes file ...") when it is missing or malformed."""
  try:
    return read_npz(path, REQUIRED_KEYS)
  except ValueError as e:
    raise ValueError(f"cannot read codes file {e}") from None


def save_index(path, db_codes, num_bits: int, db_labels=None) -> None:
  """Writes a search index: packed ``db_codes``, ``num_bits`` and (if given) ``db_labels``."""
  arrays = {"db_codes": db_codes, "num_bits": np.int64(num_bits)}
  if db_labels is not None:
    arrays["db_labels"] = db_labels
  write_npz(path, arrays)


def write_faiss_index(path: str, db_codes, num_bits: int) -> None:
  """Writes a faiss IndexBinaryFlat of the database (bits must be a multiple of 8)."""
  faiss = retrieval.import_faiss()
  if num_bits % 8:
    raise ValueError(f"a FAISS binary index needs num_bits divisible by 8, got {num_bits}")
  # Our words are little-endian uint32 with dimension 32w+j at bit j, so viewing them as bytes
  # gives dimension 8i+j at bit j of byte i: FAISS's own bit order.
  codes = np.ascontiguousarray(np.asarray(db_codes, "<u4")).view(np.uint8)[:, :num_bits // 8]
  index = faiss.IndexBinaryFlat(num_bits)
  index.add(np.ascontiguousarray(codes))
  faiss.write_index_binary(index, path)
