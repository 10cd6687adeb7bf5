"""Export of binary codes to ``.npz`` (and optionally a FAISS binary index).

File format (read by ``load_codes`` and ``search.HammingIndex.load``):
  query_codes  uint32 (Q, ceil(K/32))  packed as in ``retrieval`` (bit j of word w = dim 32w+j)
  db_codes     uint32 (N, ceil(K/32))
  query_labels int32 (Q,) or uint8 (Q, C);  db_labels likewise
  num_bits     int64 scalar K
  config       str, the run's config as JSON

``python -m orthohash_jax.export --workdir=DIR --output=codes.npz [--faiss]`` re-encodes the
queries and the database with the latest checkpoint of a run.
"""
import json
import os
import sys

import numpy as np

from orthohash_jax import cli, retrieval

REQUIRED_KEYS = ("query_codes", "db_codes", "query_labels", "db_labels", "num_bits")


def save_codes(path: str, result: dict, num_bits: int, config: dict, faiss_index=False) -> None:
  """Writes packed codes and labels (``result`` keys as in REQUIRED_KEYS) to ``path``."""
  tmp = path + ".tmp.npz"
  np.savez(tmp, query_codes=np.asarray(result["query_codes"], np.uint32),
           db_codes=np.asarray(result["db_codes"], np.uint32),
           query_labels=np.asarray(result["query_labels"]),
           db_labels=np.asarray(result["db_labels"]), num_bits=np.int64(num_bits),
           config=json.dumps(config))
  os.replace(tmp, path)
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


def export_run(workdir: str, output: str, faiss_index: bool = False) -> dict:
  """Restores the latest checkpoint of ``workdir`` and writes its codes to ``output``."""
  from orthohash_jax import train  # pylint: disable=g-import-not-at-top
  trainer, state, step = train.restore_run(workdir)
  result = trainer.evaluate(state)
  save_codes(output, result, trainer.config.num_bits, trainer.config.to_dict(), faiss_index)
  return {"mAP": result["mAP"], "step": step}


def main(argv=None) -> int:
  parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--output", required=True)
  parser.add_argument("--faiss", action="store_true", help="also write <output>.faissbin")
  args = parser.parse_args(argv)
  try:
    info = export_run(args.workdir, args.output, args.faiss)
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {args.output} (checkpoint step {info['step']}, mAP {info['mAP']:.4f})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
