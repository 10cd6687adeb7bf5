"""Exact Hamming-distance search over packed codes: ``HammingIndex`` and a command line tool.

File format (``.npz``, shared with export): ``db_codes`` uint32 (N, W) packed as in ``retrieval``
(bit j of word w = dimension 32 w + j, unused high bits 0), ``num_bits`` int scalar K with
W = ceil(K / 32), optional ``db_labels`` (N,) or (N, C). Export files also hold ``query_codes``
uint32 (Q, W), ``query_labels`` and ``config`` (JSON string); ``HammingIndex.load`` ignores those.

Results: (distances int32 (Q, k), indices int32 (Q, k)) ordered by (Hamming distance, database
index), identical for every backend ("jax": ``retrieval.hamming_topk``; "faiss": faiss
IndexBinaryFlat when installed, ties re-chosen in index order).

  python -m orthohash_jax.search --codes=codes.npz --k=100 [--queries=q.npz] \
      [--output=neighbours.npz] [--backend=jax|faiss]

searches ``query_codes`` (of ``--queries`` if given, else of ``--codes``) against ``db_codes`` and
prints one line per query ("query: index:distance ...") or saves ``indices``, ``distances`` and
``k`` to ``--output``. Bad input: one line on stderr, exit status 2.
"""
import os
import sys
import zipfile

import numpy as np

from orthohash_jax import cli, retrieval

BACKENDS = ("jax", "faiss")


class HammingIndex:
  """Packed binary codes (and optional labels) with exact top-k search."""

  def __init__(self, num_bits: int, backend: str = "jax", method=None):
    if int(num_bits) < 1:
      raise ValueError(f"num_bits must be >= 1, got {num_bits}")
    if backend not in BACKENDS:
      raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    self.num_bits, self.backend, self.method = int(num_bits), backend, method
    self._codes = np.zeros((0, retrieval.num_words(num_bits)), np.uint32)
    self._labels = None
    self._faiss = None

  def __len__(self):
    return len(self._codes)

  @property
  def codes(self):
    return self._codes

  @property
  def labels(self):
    return self._labels

  def add(self, codes, labels=None):
    """Appends codes: packed uint32 (n, W) or real / ±1 / bool (n, K) (bit = value > 0)."""
    codes = np.asarray(codes)
    if codes.dtype != np.uint32:
      if codes.ndim != 2 or codes.shape[1] != self.num_bits:
        raise ValueError(f"unpacked codes must be (n, {self.num_bits}), got shape {codes.shape}")
      codes = np.asarray(retrieval.pack_codes(codes))
    codes = retrieval.check_codes(codes, self.num_bits, "codes")
    if labels is not None:
      labels = np.asarray(labels)
      if len(labels) != len(codes):
        raise ValueError(f"{len(labels)} labels for {len(codes)} codes")
      if len(self) and self._labels is None:
        raise ValueError("labels given but the index already holds unlabelled codes")
      self._labels = labels if self._labels is None else np.concatenate([self._labels, labels])
    elif self._labels is not None:
      raise ValueError("the index holds labels; add labels with the codes")
    self._codes = np.concatenate([self._codes, codes])
    self._faiss = None

  def search(self, queries, k: int):
    """Exact k nearest: (distances int32 (Q, k), indices int32 (Q, k)), by (distance, index)."""
    queries = np.asarray(queries)
    if queries.dtype != np.uint32:
      queries = np.asarray(retrieval.pack_codes(queries))
    retrieval.check_codes(queries, self.num_bits, "query codes")
    if not 1 <= int(k) <= len(self):
      raise ValueError(f"k must be in [1, index size {len(self)}], got {k}")
    if self.backend == "faiss":
      if self._faiss is None:
        import faiss  # pylint: disable=import-outside-toplevel
        self._faiss = faiss.IndexBinaryFlat(retrieval.WORD_BITS * self._codes.shape[1])
        self._faiss.add(self._codes.view(np.uint8))
      return retrieval.faiss_topk(queries, self._codes, int(k), self._faiss)
    dist, idx = retrieval.hamming_topk(queries, self._codes, int(k), self.method)
    return np.asarray(dist), np.asarray(idx)

  def save(self, path):
    """Writes ``db_codes``, ``num_bits`` and (if any) ``db_labels`` to an .npz file."""
    arrays = {"db_codes": self._codes, "num_bits": np.int64(self.num_bits)}
    if self._labels is not None:
      arrays["db_labels"] = self._labels
    np.savez(path, **arrays)

  @classmethod
  def load(cls, path, backend: str = "jax", method=None):
    """Reads an index or export .npz file (other keys are ignored)."""
    with _open_npz(path) as data:
      for key in ("db_codes", "num_bits"):
        if key not in data.files:
          raise ValueError(f"{path}: missing key {key!r} (has {sorted(data.files)})")
      num_bits = data["num_bits"]
      if num_bits.shape != () or num_bits.dtype.kind not in "iu":
        raise ValueError(f"{path}: num_bits must be an integer scalar, got {num_bits.dtype} "
                         f"{num_bits.shape}")
      index = cls(int(num_bits), backend, method)
      codes = retrieval.check_codes(data["db_codes"], index.num_bits, f"{path}: db_codes")
      index.add(codes, data["db_labels"] if "db_labels" in data.files else None)
    return index


def _open_npz(path):
  try:
    data = np.load(path, allow_pickle=False)
  except (zipfile.BadZipFile, EOFError) as e:
    raise ValueError(f"{path}: not a readable .npz file ({e})") from e
  if not isinstance(data, np.lib.npyio.NpzFile):
    raise ValueError(f"{path}: expected an .npz archive, got a single array")
  return data


def load_queries(path, num_bits):
  """uint32 (Q, W) ``query_codes`` of an .npz file, checked against ``num_bits``."""
  with _open_npz(path) as data:
    if "query_codes" not in data.files:
      raise ValueError(f"{path}: missing key 'query_codes' (has {sorted(data.files)})")
    return retrieval.check_codes(data["query_codes"], num_bits, f"{path}: query_codes")


def main(argv=None):
  parser = cli.ArgumentParser(prog="python -m orthohash_jax.search",
                              description="Exact Hamming k-NN over packed codes.")
  parser.add_argument("--codes", required=True, help=".npz with db_codes and num_bits")
  parser.add_argument("--k", type=int, default=100, help="neighbours per query")
  parser.add_argument("--queries", help=".npz with query_codes (default: the --codes file)")
  parser.add_argument("--output", help="save indices/distances to this .npz instead of printing")
  parser.add_argument("--backend", choices=BACKENDS, default="jax")
  args = parser.parse_args(argv)
  try:
    index = HammingIndex.load(args.codes, args.backend)
    queries = load_queries(args.queries or args.codes, index.num_bits)
    dist, idx = index.search(queries, args.k)
    if args.output:
      np.savez(args.output, indices=idx, distances=dist, k=np.int64(args.k))
  except (OSError, ValueError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.output:
    print(f"saved {idx.shape[0]} x {idx.shape[1]} neighbours to {args.output}")
    return 0
  try:
    for qi, (row_i, row_d) in enumerate(zip(idx, dist)):
      print(f"{qi}: " + " ".join(f"{i}:{d}" for i, d in zip(row_i, row_d)))
    sys.stdout.flush()
  except BrokenPipeError:  # e.g. piped into head: stop quietly
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
  return 0


if __name__ == "__main__":
  sys.exit(main())
