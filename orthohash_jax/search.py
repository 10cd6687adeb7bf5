"""Exact Hamming-distance search over packed codes: ``HammingIndex`` (in memory), ``FileIndex``
(a streamed code file) and a command line tool.

File formats. Index / export ``.npz``: read and written by ``codes_file`` (``db_codes`` uint32
(N, W) packed as in ``retrieval``, ``num_bits`` K, optional ``db_labels`` (N,) or (N, C); a run's
codes file also holds ``query_codes``, ``query_labels`` and ``config``, which
``HammingIndex.load`` does not use). Code file ``.npy``: a bare little-endian uint32 (N, W)
C-order array, never loaded whole (``CodeFile`` reads row chunks with ``os.pread``: unlike
``np.memmap``, the pages read do not stay mapped, so resident memory stays bounded by the chunk,
whatever N). Both index classes offer ``search``, ``shard_search``, ``len``, ``num_bits`` and
``labels``; queries are packed uint32 (Q, W) or real / ±1 / bool (Q, K) (``retrieval.as_packed``).

Results: (distances int32 (Q, k), indices int32 (Q, k)) ordered by (Hamming distance, database
index), identical for every path:
* in memory, backend "jax" (``retrieval.hamming_topk``) or "faiss" (IndexBinaryFlat, ties
  re-chosen in index order);
* a code file (``FileIndex``): top-k of each chunk of ``chunk_rows`` rows, merged;
* a mesh (``search(..., mesh=)``): rows split over all mesh devices, local top-k per device in one
  ``shard_map`` call, merged on the host;
* several processes (``search_process_shard``): process p holds rows [offset_p, offset_p + n_p),
  searches them, and process 0 merges all lists (``multihost_utils.process_allgather``).
Every merge keeps the first k candidates by (distance, global index) (``merge_topk``); a shard's
list holds its own first k, so the merged list is the global first k, ties included.

  python -m orthohash_jax.search --codes=codes.npz|codes.npy --k=100 [--queries=q.npz|q.npy] \
      [--num_bits=K] [--output=neighbours.npz] [--backend=jax|faiss] [--chunk_rows=N] \
      [--mesh] [--coordinator=host:port --num_processes=P --process_id=p]

searches ``query_codes`` (of ``--queries`` if given, else of ``--codes``; a ``.npy`` holds packed
query codes) against the database and prints one line per query, or saves ``indices``,
``distances`` and ``k`` to the .npz file ``--output`` (exactly that name; a directory is refused:
``codes_file.write_npz``). Printed lines (Q = query row, I = database row, D = Hamming
distance, L = label: a class id, or the classes of a multi-hot row joined by commas):
  no labels:                          ``Q: I:D I:D ...``
  database labels (``db_labels``):    ``Q: I:D:L I:D:L ...``
  and query labels (``query_labels``): ``Q label=L P@k=0.9000: I:D:L ...`` (P@k: the share of the
  k neighbours relevant to the query, i.e. of its class / sharing a label with it:
  ``metrics.relevance``), then a last line ``mean P@k=0.9123 over Q queries``. A ``.npy``
  database needs ``--num_bits`` and is streamed.
With ``--num_processes`` each process streams its own contiguous share of the rows and process 0
prints or saves the merged result. Bad input (unreadable file, wrong dtype or shape, file size
not a whole number of rows, bits mismatch, k outside [1, N], an output directory): one
``error:`` line on stderr, exit status 2.
"""
import concurrent.futures
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from orthohash_jax import cli, codes_file, hamming_kernel, metrics, parallel, retrieval
from orthohash_jax import workdir as workdir_lib

BACKENDS = ("jax", "faiss")
CHUNK_ROWS = 1 << 22  # rows per streamed chunk of a code file (16 MiB at 64 bits)


def merge_topk(dist, idx, k: int):
  """First k of candidate lists (Q, M) by (distance, index): int32 (Q, k) each."""
  order = np.lexsort((idx, dist), axis=1)[:, :k]
  return (np.take_along_axis(dist, order, 1).astype(np.int32),
          np.take_along_axis(idx, order, 1).astype(np.int32))


class CodeFile:
  """A ``.npy`` file of packed codes uint32 (N, W), read in row chunks, never loaded whole."""

  def __init__(self, path, num_bits: int):
    self.path, self.num_bits = str(path), int(num_bits)
    try:
      with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        self.offset = f.tell()
        size = os.fstat(f.fileno()).st_size
    except OSError as e:
      raise ValueError(f"{path}: cannot read ({e.strerror})") from None
    except ValueError as e:
      raise ValueError(f"{path}: not a .npy file ({e})") from None
    words = retrieval.num_words(num_bits)
    if dtype != np.dtype("<u4") or len(shape) != 2 or fortran:
      raise ValueError(f"{path}: codes must be a C-order uint32 (N, W) array, got {dtype} "
                       f"{shape}{' Fortran-order' if fortran else ''}")
    if shape[1] != words:
      raise ValueError(f"{path}: {shape[1]} words per code, {num_bits} bits need {words}")
    row_bytes, data_bytes = 4 * words, size - self.offset
    if data_bytes % row_bytes:
      raise ValueError(f"{path}: {data_bytes} data bytes is not a multiple of the row size "
                       f"{row_bytes}")
    if data_bytes // row_bytes != shape[0]:
      raise ValueError(f"{path}: header says {shape[0]} rows, the file holds "
                       f"{data_bytes // row_bytes}")
    self.shape, self.row_bytes = (int(shape[0]), words), row_bytes

  def __len__(self):
    return self.shape[0]

  def read(self, start: int, stop: int):
    """Rows [start, stop) as uint32 (stop - start, W), checked (zero padding bits)."""
    with open(self.path, "rb") as f:
      buf = os.pread(f.fileno(), (stop - start) * self.row_bytes,
                     self.offset + start * self.row_bytes)
    rows = np.frombuffer(buf, "<u4").reshape(-1, self.shape[1])
    return retrieval.check_codes(rows, self.num_bits, f"{self.path}: rows {start}:{stop}")


def pad_topk(result, num_queries, k, num_bits):
  """Pads a (dist, idx) list (or None) to k columns with distance K + 1 and index -1."""
  dist, idx = result if result is not None else (np.zeros((num_queries, 0), np.int32),) * 2
  fill = k - dist.shape[1]
  return (np.pad(dist, ((0, 0), (0, fill)), constant_values=num_bits + 1),
          np.pad(idx, ((0, 0), (0, fill)), constant_values=-1))


def sharded_topk(queries, codes, k: int, mesh, method=None):
  """Exact top-k with the database rows split over every device of ``mesh``.

  Each device holds n_loc = ceil(N / devices) rows (rounded up to 32; the tail is padding) and
  returns its first k_loc = min(k + padding, n_loc) by (distance, local index) in one
  ``shard_map`` call per query chunk; padding rows get distance K + 1, so at least min(k, real
  rows) real items of every shard survive. The host merges by (distance, global index).
  """
  queries, codes = np.asarray(queries), np.asarray(codes)
  num_items, num_bits_max = len(codes), retrieval.WORD_BITS * codes.shape[1]
  k = retrieval.check_k(k, num_items)
  method = method or retrieval.default_method()
  axes = tuple(mesh.axis_names)
  devices = mesh.devices.size
  n_loc = -(-num_items // devices)
  n_loc += -n_loc % hamming_kernel.BLOCK
  pad = devices * n_loc - num_items
  k_loc = min(k + pad, n_loc)
  # Blocked word planes (W, 32, N / 32): device d holds blocks [d n_loc / 32, (d + 1) n_loc / 32).
  padded = np.pad(codes, ((0, pad), (0, 0)))
  planes = padded.reshape(-1, hamming_kernel.BLOCK, codes.shape[1]).transpose(2, 1, 0)
  db = jax.device_put(np.ascontiguousarray(planes), NamedSharding(mesh, P(None, None, axes)))

  def local(q, rows):
    dist, idx = hamming_kernel.topk_chunk(q, rows, k_loc, n_loc, method)
    idx = idx + jax.lax.axis_index(axes) * n_loc
    return jnp.where(idx < num_items, dist, num_bits_max + 1), idx

  fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P(None, None, axes)),
                             out_specs=(P(None, axes), P(None, axes))))
  chunk = hamming_kernel.queries_per_call(n_loc, k_loc, method)
  parts = []
  for s in range(0, len(queries), chunk):
    q = queries[s:s + chunk]
    dist, idx = fn(jnp.asarray(np.pad(q, ((0, chunk - len(q)), (0, 0)))), db)
    parts.append(merge_topk(np.asarray(dist)[:len(q)], np.asarray(idx)[:len(q)], k))
  return tuple(np.concatenate([p[i] for p in parts]) for i in range(2))


def search_process_shard(search_shard, k: int):
  """Merges on process 0 the top-k lists of every process's shard (call on every process).

  ``search_shard(k)`` returns this process's (dist, idx) (Q, k) with global indices (padded with
  distance K + 1, index -1 where its shard is smaller than k). Returns the merged (dist, idx) on
  process 0 and None elsewhere; with k <= the global size no padding survives the merge.
  """
  dist, idx = search_shard(k)
  if jax.process_count() > 1:
    dist, idx = (np.asarray(multihost_utils.process_allgather(a)) for a in (dist, idx))
    dist, idx = (np.concatenate(list(a), 1) for a in (dist, idx))
  idx = np.where(idx < 0, np.iinfo(np.int32).max, idx)  # padding sorts last among distance K + 1
  return merge_topk(dist, idx, k) if jax.process_index() == 0 else None


class FileIndex:
  """An index over a ``.npy`` code file (``CodeFile``), streamed in chunks of ``chunk_rows`` rows
  (jax top-k only, no labels): the interface of ``HammingIndex`` without ``add``."""

  labels = None

  def __init__(self, path, num_bits: int, chunk_rows: int = CHUNK_ROWS, method=None):
    if int(chunk_rows) < 1:
      raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    self.file = CodeFile(path, num_bits)
    self.num_bits, self.chunk_rows, self.method = self.file.num_bits, int(chunk_rows), method

  def __len__(self):
    return len(self.file)

  def search(self, queries, k: int, mesh=None):
    """Exact k nearest: (distances int32 (Q, k), indices int32 (Q, k)), by (distance, index)."""
    queries = retrieval.as_packed(queries, self.num_bits, "query codes")
    k = retrieval.check_k(k, len(self))
    if mesh is not None:
      raise ValueError("a file-backed index is streamed on one device; mesh is not supported")
    return self._stream(queries, k, 0, len(self))

  def shard_search(self, queries, k: int, start: int, stop: int):
    """This process's share: top-k of rows [start, stop) (file row numbers), padded to k."""
    return self._stream(retrieval.as_packed(queries, self.num_bits, "query codes"), k, start,
                        stop)

  def _stream(self, queries, k: int, start: int, stop: int):
    """Exact top-k of rows [start, stop) streamed in chunks; indices are file row numbers.

    The next chunk is read (pread releases the GIL) while the current one is searched; memory is
    O(chunk_rows + Q k). Where the rows are fewer than k (a process's shard), the list is padded
    with distance K + 1 and index -1.
    """
    bounds = [(s, min(s + self.chunk_rows, stop)) for s in range(start, stop, self.chunk_rows)]
    best = None
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      pending = pool.submit(self.file.read, *bounds[0]) if bounds else None
      for i, (s, _) in enumerate(bounds):
        rows = pending.result()
        if i + 1 < len(bounds):
          pending = pool.submit(self.file.read, *bounds[i + 1])
        # The last, shorter chunk is padded to the common shape: no second compilation.
        fill = bounds[0][1] - bounds[0][0] - len(rows)
        padded = np.pad(rows, ((0, fill), (0, 0))) if fill else rows
        dist, idx = retrieval.hamming_topk(queries, padded, min(k, len(rows)), self.method,
                                           num_items=len(rows))
        dist, idx = np.asarray(dist), np.asarray(idx) + np.int32(s)
        if best is not None:
          dist, idx = merge_topk(np.concatenate([best[0], dist], 1),
                                 np.concatenate([best[1], idx], 1), k)
        best = dist, idx
    return pad_topk(best, len(queries), k, self.num_bits)


class HammingIndex:
  """Packed binary codes (and optional labels) in memory with exact top-k search."""

  def __init__(self, num_bits: int, backend: str = "jax", method=None):
    if int(num_bits) < 1:
      raise ValueError(f"num_bits must be >= 1, got {num_bits}")
    if backend not in BACKENDS:
      raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    self.num_bits, self.backend, self.method = int(num_bits), backend, method
    self._codes = np.zeros((0, retrieval.num_words(num_bits)), np.uint32)
    self._labels = None
    self._faiss = self._blocked = None  # built on the first search, dropped by ``add``

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
    codes = retrieval.as_packed(codes, self.num_bits)
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
    self._faiss = self._blocked = None

  def search(self, queries, k: int, mesh=None):
    """Exact k nearest: (distances int32 (Q, k), indices int32 (Q, k)), by (distance, index).

    ``mesh``: split the database over its devices.
    """
    queries = retrieval.as_packed(queries, self.num_bits, "query codes")
    k = retrieval.check_k(k, len(self))
    if mesh is not None:
      return sharded_topk(queries, self._codes, k, mesh, self.method)
    if self.backend == "faiss":
      if self._faiss is None:
        self._faiss = retrieval.import_faiss().IndexBinaryFlat(retrieval.WORD_BITS * self._codes.shape[1])
        self._faiss.add(self._codes.view(np.uint8))
      return retrieval.faiss_topk(queries, self._codes, k, self._faiss)
    if self._blocked is None:
      self._blocked = retrieval.blocked_codes(self._codes)
    dist, idx = retrieval.hamming_topk(queries, self._blocked, k, self.method)
    return np.asarray(dist), np.asarray(idx)

  def shard_search(self, queries, k: int, start: int, stop: int):
    """This process's share: top-k of rows [start, stop) (global indices), padded to k."""
    queries = retrieval.as_packed(queries, self.num_bits, "query codes")
    rows = self._codes[start:stop]
    if not len(rows):
      return pad_topk(None, len(queries), k, self.num_bits)
    dist, idx = retrieval.hamming_topk(queries, rows, min(k, len(rows)), self.method)
    return pad_topk((np.asarray(dist), np.asarray(idx) + np.int32(start)), len(queries), k,
                    self.num_bits)

  def save(self, path):
    """Writes the index to the .npz file ``path`` (``codes_file.save_index``)."""
    codes_file.save_index(path, self._codes, self.num_bits, self._labels)

  @classmethod
  def load(cls, path, backend: str = "jax", method=None):
    """Reads an index or a run's codes file (``codes_file``; the query arrays are not used)."""
    data = codes_file.read_npz(path, codes_file.INDEX_KEYS, optional=("db_labels",))
    index = cls(data["num_bits"], backend, method)
    index.add(data["db_codes"], data.get("db_labels"))
    return index


def load_queries(path, num_bits):
  """(uint32 (Q, W) query codes, their labels or None): ``query_codes`` (and ``query_labels``, if
  any) of an .npz file (whose ``num_bits``, if any, must equal ``num_bits``) or a bare .npy array
  (no labels), checked against ``num_bits``."""
  if str(path).endswith(".npy"):
    codes_file.check_format(path, ".npy")
    try:
      codes = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
      raise ValueError(f"{path}: not a readable .npy file ({e})") from None
    return retrieval.check_codes(codes, num_bits, f"{path}: query codes"), None
  data = codes_file.read_npz(path, ("query_codes",), num_bits, optional=("query_labels",))
  return data["query_codes"], data.get("query_labels")  # rows checked by read_npz


def format_results(dist, idx, db_labels=None, query_labels=None):
  """The printed lines of a search (see the module docstring)."""
  if db_labels is None:
    return [f"{qi}: " + " ".join(f"{i}:{d}" for i, d in zip(row_i, row_d))
            for qi, (row_i, row_d) in enumerate(zip(idx, dist))]
  rows = [" ".join(f"{i}:{d}:{cli.label_text(db_labels[i])}" for i, d in zip(row_i, row_d))
          for row_i, row_d in zip(idx, dist)]
  if query_labels is None:
    return [f"{qi}: {row}" for qi, row in enumerate(rows)]
  precision = metrics.relevance(query_labels, db_labels, idx).mean(1)
  k = idx.shape[1]
  return [f"{qi} label={cli.label_text(label)} P@{k}={p:.4f}: {row}"
          for qi, (label, p, row) in enumerate(zip(query_labels, precision, rows))] + [
              f"mean P@{k}={precision.mean():.4f} over {len(rows)} queries"]


def _open_index(args):
  if args.codes.endswith(".npy"):
    if args.num_bits is None:
      raise ValueError("a .npy code file needs --num_bits")
    if args.backend != "jax":
      raise ValueError("a .npy code file is streamed with --backend=jax")
    return FileIndex(args.codes, args.num_bits, args.chunk_rows)
  index = HammingIndex.load(args.codes, args.backend)
  if args.num_bits is not None and args.num_bits != index.num_bits:
    raise ValueError(f"--num_bits={args.num_bits} but {args.codes} holds {index.num_bits}-bit "
                     "codes")
  return index


def _search(args):
  """(dist, idx, db labels, query labels) on the process that reports (None elsewhere)."""
  index = _open_index(args)
  if args.queries is None and args.codes.endswith(".npy"):
    raise ValueError("a .npy code file needs --queries")
  queries, query_labels = load_queries(args.queries or args.codes, index.num_bits)
  k = retrieval.check_k(args.k, len(index))
  if args.num_processes > 1:
    n, p, count = len(index), args.process_id, args.num_processes
    start, stop = n * p // count, n * (p + 1) // count
    result = search_process_shard(lambda kk: index.shard_search(queries, kk, start, stop), k)
  else:
    result = index.search(queries, k, parallel.make_mesh() if args.mesh else None)
  if result is None:
    return None
  dist, idx = result
  db_labels = index.labels
  return dist, idx, db_labels, query_labels if db_labels is not None else None


def main(argv=None):
  parser = cli.ArgumentParser(prog="python -m orthohash_jax.search",
                              description="Exact Hamming k-NN over packed codes.")
  parser.add_argument("--codes", required=True,
                      help=".npz with db_codes and num_bits, or .npy uint32 (N, W) (streamed)")
  parser.add_argument("--k", type=int, default=100, help="neighbours per query")
  parser.add_argument("--queries", help=".npz with query_codes or .npy (default: --codes)")
  parser.add_argument("--num_bits", type=int, help="code length K (required for a .npy database)")
  parser.add_argument("--output", help="save indices/distances to this .npz file (exactly this "
                      "name) instead of printing")
  parser.add_argument("--backend", choices=BACKENDS, default="jax")
  parser.add_argument("--chunk_rows", type=int, default=CHUNK_ROWS,
                      help="rows per streamed chunk of a .npy database")
  parser.add_argument("--mesh", action="store_true", help="split the database over all devices")
  parser.add_argument("--coordinator", help="host:port of process 0 (multi-process search)")
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--process_id", type=int, default=0)
  args = parser.parse_args(argv)

  def body():
    if args.output:
      workdir_lib.refuse_run_file(args.output)
    if args.num_processes > 1:
      if not args.coordinator or not 0 <= args.process_id < args.num_processes:
        raise ValueError("multi-process search needs --coordinator and 0 <= --process_id < "
                         "--num_processes")
      parallel.initialize(args.coordinator, args.num_processes, args.process_id)
    result = _search(args)
    if result is None:  # another process reports
      return
    dist, idx, db_labels, query_labels = result
    if args.output:
      codes_file.write_npz(args.output, {"indices": idx, "distances": dist,
                                         "k": np.int64(args.k)})
      cli.say(f"saved {idx.shape[0]} x {idx.shape[1]} neighbours to {args.output}")
      return
    for line in format_results(dist, idx, db_labels, query_labels):
      print(line)
  return cli.run_tool(body)


if __name__ == "__main__":
  sys.exit(main())
