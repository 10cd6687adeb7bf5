r"""Command line: a search page over a finished run, served by Starlette on uvicorn (ASGI).

  python -m orthohash_jax.serve --workdir=RUN [--port=8000] [--host=127.0.0.1] \
      [--allowed_hosts=a.example,b.example] [--quiet] [limit flags, see ``Limits``]

Binds ``host:port`` first (a taken port fails at once; 127.0.0.1 by default: only this machine
can connect; 0 picks a free port; an address that is not loopback, decided on the address the
host resolves to once (the address bound), needs ``--allowed_hosts``), then loads the run's codes
file ``<workdir>/codes.npz`` (the codes ``python -m orthohash_jax.search`` searches; its rows must
match the run's data), ``results.json`` (mAP, and the step whose model made the codes), its data
(pictures through ``data.eval_rows``, see ``images``) and its latest checkpoint (to encode
uploaded images; when that is not the step of results.json, because newer checkpoints were
quarantined, one warning line says so and uploads are refused with 409), then serves. The page
picks a query of the query set (or uploads an image) and shows its top k database items with
Hamming distance, label, relevance (green / red frame) and the query's AP. One access-log line
per request goes to stderr (not with ``--quiet``; control characters, quotes and backslashes
written as ``\xNN``); a client that goes away mid-request is no error.

HTTP interface (every JSON answer is one object; every error the server decides is a 4xx / 503
status with ``{"error": "<one line>"}``, and the server goes on serving):
  GET  /                          the page
  GET  /healthz                   {"status": "ok", "compiled": [k sizes ready], "compiling": [...],
                                   "answer_bytes": memory reserved by answers being sent}
  GET  /api/info                  {"workdir", "dataset", "num_bits", "num_queries", "num_database",
                                   "mAP", "eval_topk", "labels": bool, "pictures": bool,
                                   "uploads": bool, "codes_step": the step of results.json or
                                   null, "checkpoint_step": the step of the model uploads use}
  GET  /api/search?query=I&k=K    query I of the query set: {"query", "k", "label", "ap",
                                   "precision", "neighbours": [{"index", "distance", "label",
                                   "relevant"}, ...]}; the neighbours are exactly those of
                                   ``python -m orthohash_jax.search --codes=<workdir>/codes.npz
                                   --k=K`` for query I, in its order (distance, then database
                                   index); "ap" is the query's AP@R (R = the run's ``eval_topk``,
                                   the AP averaged into ``results.json``'s mAP)
  POST /api/search                JSON body {"k": K, "queries": [I, ...]} or {"k": K, "codes":
                                  [code, ...]} (at most ``MAX_BATCH`` queries and
                                  ``MAX_BATCH_NEIGHBOURS`` neighbours in all); a code is a list of
                                  the ceil(num_bits / 32) packed uint32 words as hex strings (word
                                  0 first, bit j of word w = dimension 32 w + j, ``retrieval``) or
                                  a list of num_bits values +1 / -1. {"k", "results": [...]}: per
                                  query the object of GET /api/search, per code {"neighbours"}
  POST /api/upload?k=K            body: an image file of at most ``--max_body_bytes``; encoded with
                                  the checkpoint's model (``images.from_image``: resized and
                                  centre-cropped to the input size), searched like a query:
                                  {"k", "neighbours"} (no label, AP or relevance)
  GET  /image/query/I.png, /image/db/I.png   the input of that row as a PNG
Errors: k outside [1, database size] or not an integer, a missing parameter or field, a bad
code, a body that is not valid JSON or nests deeper than ``MAX_JSON_DEPTH`` (checked before
parsing), not exactly one Host header or one off the allow-list: 400; an unknown path or method:
404 / 405; a query index outside the query set, an unknown picture row: 404; an upload that is
no image: 400; an upload while the model is not the codes' (see above): 409; a body larger than
``--max_body_bytes`` (a JSON body: than the largest batch of this run), an image of more than
``--max_pixels`` pixels (decompression bombs included), an answer larger than
``--max_answer_bytes``: 413 (a body is refused from its Content-Length before it is read); a
body whose first bytes take longer than ``--body_timeout`` or whose rest comes slower than
``--min_body_rate``, headers slower than ``--header_timeout``: 408; headers over
``--max_header_bytes``: 431; a malformed request (e.g. a non-numeric Content-Length): 400; a
connection past ``--max_connections``, a body that waited ``--queue_timeout`` for a slot, an
answer that waited as long for its share of ``--answer_memory_bytes``: 503. A client that has
not read an answer (down to the send buffer's low-water mark) within ``--write_timeout`` is
disconnected.
Labels: a class id, or the list of classes of a multi-hot row. Relevance: same class / a shared
label. Runs of instance data (protocol "gldv2") have no labels: "label", "ap" and "relevant" are
null.

Top-k searches run on one thread (``SearchService``), at a few compiled result sizes: the powers
of two from ``MIN_BUCKET`` below the database size N, and N. The smallest and N are compiled
before the server listens, the others on a background thread; a search of k uses the smallest
compiled size >= k and keeps the first k (the same list by (distance, index)), so no request
waits on a compilation. Queries waiting for the same size are searched together in one call of
the compiled query batch.
"""
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import http
import io
import ipaddress
import json
import logging
import os
import queue
import re
import socket
import sys
import threading
import time

import numpy as np
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from orthohash_jax import (cli, codes_file, config_base, evaluation, hamming_kernel, images,
                           metrics, retrieval, run, search)
from orthohash_jax import workdir as workdir_lib

MIN_BUCKET = 16  # the smallest compiled result size (searches of k <= 16 share it)
MAX_BATCH = 1024  # queries of one POST /api/search
MAX_BATCH_NEIGHBOURS = 1 << 18  # queries x k of one POST /api/search
SHOWN = 40  # characters of a request value quoted in an error message
MAX_JSON_DEPTH = 8  # nesting of a JSON body (a batch needs 3: object, list of codes, a code)
ANSWER_COPIES = 4  # an answer's memory in copies of its JSON bytes while built (see answer_bytes)
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve_page.html")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
LOG = logging.getLogger("orthohash_jax.serve")


def _limit(default, help_text):
  return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass(frozen=True)
class Limits:
  """The server's limits; each is the command-line flag ``--<name>`` (its help says what it
  bounds). Total upload memory is bounded by max_uploads x (max_body_bytes + the decoded image of
  max_pixels pixels, ~4 bytes each, and its conversion to the model input); answers by
  answer_memory_bytes (``SearchService.answer_bytes`` of each answer, reserved before it is built
  and held until the client has read it, or write_timeout closed the connection)."""
  header_timeout: float = _limit(10.0, "seconds from a connection (or the end of the previous "
                                 "response) to a request's complete headers; then 408")
  body_timeout: float = _limit(30.0, "seconds to read a request body once the server reads it; "
                               "then 408")
  keep_alive_timeout: float = _limit(5.0, "seconds an idle keep-alive connection stays open")
  max_connections: int = _limit(1000, "open connections; requests on connections past it get 503")
  max_header_bytes: int = _limit(64 << 10, "bytes of a request's header section; then 431")
  max_body_bytes: int = _limit(8 << 20, "bytes of a request body (an upload, a JSON batch); then "
                               "413")
  max_pixels: int = _limit(40_000_000, "pixels of an uploaded image, checked before it is "
                           "decoded; then 413")
  max_uploads: int = _limit(2, "request bodies read and decoded at once (uploads, JSON batches); "
                            "the others wait for a slot")
  queue_timeout: float = _limit(60.0, "seconds a body waits for a slot, or an answer for its share "
                                "of --answer_memory_bytes; then 503")
  min_body_rate: float = _limit(16384.0, "bytes per second a request body must arrive at once its "
                                "first bytes came (after 1 s of grace); then 408 and its slot is "
                                "free")
  max_answer_bytes: int = _limit(128 << 20, "bytes of memory one answer may take while it is built "
                                 "and sent (ANSWER_COPIES x its JSON bytes); then 413")
  answer_memory_bytes: int = _limit(512 << 20, "bytes of memory all answers being built or sent "
                                    "may take together (each until its client has read it)")
  write_timeout: float = _limit(30.0, "seconds an answer may stay in the server's send buffer "
                                "above its high-water mark (the client reads too slowly or not "
                                "at all); then the connection is closed and the memory freed")

  def check(self) -> "Limits":
    """self, when every limit is > 0 (else ValueError)."""
    for field in dataclasses.fields(self):
      if not getattr(self, field.name) > 0:
        raise ValueError(f"--{field.name} must be > 0, got {getattr(self, field.name)}")
    return self


class RequestError(ValueError):
  """A bad request: HTTP ``status`` and a one-line message; ``close``: close the connection
  after the answer (its body was not read)."""

  def __init__(self, status: int, message: str, close: bool = False):
    super().__init__(message)
    self.status, self.close = status, close


_INTEGER = re.compile(r"-?[0-9]{1,18}")
_CONTROL = re.compile(r'[\x00-\x1f\x7f-\x9f"\\]')


def printable(text: str) -> str:
  """``text`` with control characters (C0, DEL, C1), quotes and backslashes as ``\\xNN``: one
  line, no terminal escapes, unambiguous in a quoted log field."""
  return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _integer(value, name: str, status: int = 400, what: str = "") -> int:
  """``value`` (a JSON integer or ASCII decimal text of at most 18 digits) as an int, else a
  RequestError(status): "<name> must be an integer" or, with ``what``, "unknown <what>"."""
  if isinstance(value, int) and not isinstance(value, bool):
    return value
  if isinstance(value, str) and _INTEGER.fullmatch(value):
    return int(value)
  raise RequestError(status, f"unknown {what} {config_base.shown(value, SHOWN)}" if what else
                     f"{name} must be an integer, got {config_base.shown(value, SHOWN)}")


_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_DEPTH_CHUNK = 1 << 20  # brackets per numpy step of the depth scan (bounds its memory)


def json_body(body: bytes, max_bytes: int):
  """The JSON value of a request body, checked before it is parsed: larger than ``max_bytes``:
  413; nested deeper than MAX_JSON_DEPTH: 400 (the parser never recurses that far); not JSON:
  400 "the body is not valid JSON (<the parser's reason>)".

  The depth is that of the brackets outside strings: escaped backslashes (``\\\\``, left to
  right) and then escaped quotes are removed, the rest split at quotes (odd pieces are strings'
  contents). Up to the first syntax error, where the parser stops, this is the parser's own
  reading, so its depth bounds the parser's."""
  if len(body) > max_bytes:
    raise RequestError(413, f"JSON body of {len(body)} bytes is larger than {max_bytes} bytes")
  outside = b"".join(body.replace(b"\\\\", b"").replace(b'\\"', b"").split(b'"')[::2])
  brackets, depth = outside.translate(None, _NOT_BRACKETS), 0
  for start in range(0, len(brackets), _DEPTH_CHUNK):
    chunk = np.frombuffer(brackets[start:start + _DEPTH_CHUNK], np.uint8)
    levels = depth + np.cumsum(((chunk >> 1) & 1).astype(np.int32) * 2 - 1)  # [{: +1, ]}: -1
    if levels.max() > MAX_JSON_DEPTH:
      raise RequestError(400, f"the body is nested deeper than {MAX_JSON_DEPTH} levels")
    depth = int(levels[-1])
  try:
    return json.loads(body)
  except (ValueError, RecursionError) as e:
    raise RequestError(400, f"the body is not valid JSON ({printable(str(e))})") from None


def _label(label):
  label = np.asarray(label)
  return np.flatnonzero(label).tolist() if label.ndim else int(label)


class _Batcher:
  """The one thread that runs top-k searches: ``submit(codes, size)`` queues packed codes for a
  search of ``size`` results; waiting queries of one size go together in calls of exactly
  ``batch(size)`` rows (padded), the shape compiled for that size."""

  def __init__(self, search_fn, batch, lock):
    self._search, self._batch, self._lock = search_fn, batch, lock
    self._queue = queue.SimpleQueue()
    self._thread = threading.Thread(target=self._run, name="topk", daemon=True)
    self._thread.start()

  def submit(self, codes, size: int) -> concurrent.futures.Future:
    """A future of (dist, idx) int32 (len(codes), size) by (distance, index)."""
    future = concurrent.futures.Future()
    self._queue.put((codes, size, future))
    return future

  def close(self):
    self._queue.put(None)
    self._thread.join()

  def _run(self):
    while True:
      waiting = [self._queue.get()]
      while not self._queue.empty():
        waiting.append(self._queue.get())
      jobs = [job for job in waiting if job is not None]
      for size in sorted({job[1] for job in jobs}):
        self._search_size(size, [job for job in jobs if job[1] == size])
      if len(jobs) < len(waiting):
        return

  def _search_size(self, size, jobs):
    try:
      codes = np.concatenate([job[0] for job in jobs])
      batch = self._batch(size)
      parts = []
      for start in range(0, len(codes), batch):
        rows = codes[start:start + batch]
        with self._lock:
          dist, idx = self._search(np.pad(rows, ((0, batch - len(rows)), (0, 0))), size)
        parts.append((dist[:len(rows)], idx[:len(rows)]))
      dist, idx = (np.concatenate([p[i] for p in parts]) for i in range(2))
    except Exception as e:  # pylint: disable=broad-except
      for job in jobs:
        job[2].set_exception(e)
      return
    start = 0
    for codes, _, future in jobs:
      future.set_result((dist[start:start + len(codes)], idx[start:start + len(codes)]))
      start += len(codes)


class SearchService:
  """The run's codes, data and model; answers searches (thread-safe).

  ``warm_up``: compile the remaining result sizes on a background thread (else call
  ``compile_sizes()``; until then searches use the sizes compiled at start: ``MIN_BUCKET`` and
  the database size).
  """

  def __init__(self, workdir: str, warm_up: bool = True):
    self.workdir = workdir
    codes_path = workdir_lib.path(workdir, workdir_lib.CODES)
    self.codes = codes_file.load_codes(codes_path)
    self.num_bits = int(self.codes["num_bits"])
    results = workdir_lib.read_results(workdir) or {}
    self.map, self.codes_step = results.get("mAP"), results.get("steps")
    self.index = search.HammingIndex(self.num_bits)
    self.index.add(self.codes["db_codes"])
    self.trainer, self.data, self.state, self.step = run.restore_run(workdir)
    config = self.trainer.config
    if config.num_bits != self.num_bits:
      raise ValueError(f"{workdir}/codes.npz holds {self.num_bits}-bit codes, the "
                       f"checkpoint's model {config.num_bits}")
    for split, name in (("query", "query"), ("db", "database")):
      rows = len(self.codes[f"{split}_codes"])
      if np.shape(self.codes[f"{split}_labels"])[:1] != (rows,):
        raise ValueError(f"{codes_path}: {split}_labels of shape "
                         f"{np.shape(self.codes[f'{split}_labels'])} for {rows} {split}_codes")
      if rows != self.data.size(split):
        raise ValueError(f"{codes_path} holds {rows} {name} rows, the run's data "
                         f"{self.data.size(split)}: not this run's codes (rerun the run's "
                         "evaluation or export)")
    self.stale = self.codes_step is not None and self.codes_step != self.step
    if self.stale:
      cli.say(f"warning: {codes_path} was made by the model of step {self.codes_step}, but the "
              f"latest usable checkpoint is step {self.step} (the newer ones were quarantined): "
              "uploads are refused, searches of the codes go on", err=True)
    self.labelled = self.data.protocol == "category"
    try:
      images.check_pictures(self.data.input_shape, self.data.input_dtype)
      self.pictures = True
    except ValueError:
      self.pictures = False
    # the largest batch body: MAX_BATCH codes of num_bits values, room for indentation included
    self.max_json_bytes = 4096 + MAX_BATCH * (64 + 16 * self.num_bits)
    num_items = len(self.index)
    self.sizes = [1 << e for e in range(MIN_BUCKET.bit_length() - 1, num_items.bit_length())
                  if 1 << e < num_items] + [num_items]
    self._rows = -(-num_items // hamming_kernel.BLOCK) * hamming_kernel.BLOCK
    self.lock = threading.Lock()  # one device computation at a time
    self._compile_lock = threading.Lock()
    self.compiled = []  # result sizes ready, ascending
    self._db_labels = ([json.dumps(_label(label)) for label in self.codes["db_labels"]]
                       if self.labelled else None)  # each row's label as JSON text
    longest = max(map(len, self._db_labels), default=4) if self.labelled else 4
    query_longest = (max((len(json.dumps(_label(label))) for label in self.codes["query_labels"]),
                         default=4) if self.labelled else 4)
    # upper bounds of the JSON bytes of one neighbour and of one result without its neighbours
    big = max(num_items, len(self.codes["query_codes"]))  # more than any index or k
    self._neighbour_bytes = len(f'{{"index": {big}, "distance": {self.num_bits}, "label": '
                                f'{"x" * longest}, "relevant": false}}, ')
    self._result_bytes = len(f'{{"query": {big}, "k": {big}, "label": '
                             f'{"x" * query_longest}, "ap": {"x" * 24}, "precision": '
                             f'{"x" * 24}, "neighbours": []}}, ')
    self.aps = (metrics.average_precisions(
        self.codes["query_codes"], self.codes["db_codes"], self.codes["query_labels"],
        self.codes["db_labels"], config.eval_topk) if self.labelled else None)
    for size in {self.sizes[0], self.sizes[-1]}:
      self._compile(size)
    if self.pictures:  # compiles the encoder and the picture reads
      self.encode(np.zeros(self.data.input_shape, self.data.input_dtype))
      for split in ("query", "db"):
        self.picture(split, 0)
    self._batcher = _Batcher(self.index.search, self._batch, self.lock)
    self.warming = threading.Thread(target=self.compile_sizes, name="warm-up", daemon=True)
    if warm_up:
      self.warming.start()

  def _batch(self, size: int) -> int:
    """Rows of one compiled search of ``size`` results (the kernel's query chunk)."""
    return hamming_kernel.queries_per_call(self._rows, size, self.index.method or
                                           retrieval.default_method())

  def _compile(self, size: int) -> None:
    self.index.search(np.zeros((self._batch(size), retrieval.num_words(self.num_bits)),
                               np.uint32), size)
    self.compiled = sorted(self.compiled + [size])

  def compile_sizes(self) -> None:
    """Compiles every result size not compiled yet (outside ``lock``: searches go on)."""
    with self._compile_lock:
      for size in self.sizes:
        if size not in self.compiled:
          self._compile(size)

  def close(self):
    self._batcher.close()
    self.data.close()

  def info(self) -> dict:
    return {"workdir": self.workdir, "dataset": self.data.name,
            "num_bits": self.num_bits, "num_queries": len(self.codes["query_codes"]),
            "num_database": len(self.index), "mAP": self.map,
            "eval_topk": self.trainer.config.eval_topk, "labels": self.labelled,
            "pictures": self.pictures, "uploads": self.pictures and not self.stale,
            "codes_step": self.codes_step, "checkpoint_step": self.step}

  def check_uploads(self) -> None:
    """RequestError unless uploads can be encoded: 400 when the inputs are no pictures, 409 when
    the model left is not the one that made codes.npz (its newer checkpoints quarantined)."""
    if not self.pictures:
      raise RequestError(400, "this run's inputs are not pictures: uploads are not possible")
    if self.stale:
      raise RequestError(409, f"uploads are off: codes.npz was made by the model of step "
                         f"{self.codes_step}, the latest usable checkpoint is step {self.step} "
                         "(the newer ones were quarantined)")

  def answer_bytes(self, queries: int, k: int) -> int:
    """The memory an answer of ``queries`` results of k neighbours is given: ANSWER_COPIES x an
    upper bound of its JSON bytes (built a result at a time, see ``batch_answer``)."""
    return ANSWER_COPIES * (256 + queries * (self._result_bytes + k * self._neighbour_bytes))

  def health(self) -> dict:
    compiled = self.compiled
    return {"status": "ok", "compiled": compiled,
            "compiling": [s for s in self.sizes if s not in compiled]}

  def check_k(self, k) -> int:
    k = _integer(k, "k")
    try:
      return retrieval.check_k(k, len(self.index))
    except ValueError as e:
      raise RequestError(400, str(e)) from None

  def check_query(self, query) -> int:
    num_queries = len(self.codes["query_codes"])
    query = _integer(query, "query")
    if not 0 <= query < num_queries:
      raise RequestError(404, f"unknown query {query}: the query set has rows 0 to "
                         f"{num_queries - 1}")
    return query

  def topk(self, codes, k: int) -> concurrent.futures.Future:
    """A future of the first k (dist, idx) int32 (Q, k) of packed codes (Q, W), by (distance,
    index): a search of the smallest compiled size >= k, cut to k."""
    size = next(s for s in self.compiled if s >= k)
    future = concurrent.futures.Future()

    def cut(done):
      try:
        future.set_result(tuple(a[:, :k] for a in done.result()))
      except Exception as e:  # pylint: disable=broad-except
        future.set_exception(e)

    self._batcher.submit(codes, size).add_done_callback(cut)
    return future

  def neighbours(self, dist, idx, relevant=None) -> str:
    """The JSON text of the neighbours of one result row (dist, idx) (k,): a list of objects
    {"index", "distance", "label", "relevant"} (written as ``json.dumps`` writes them)."""
    labels = self._db_labels
    flags = ["null"] * len(idx) if relevant is None else [
        "true" if r else "false" for r in relevant]
    return "[" + ", ".join(
        f'{{"index": {i}, "distance": {d}, "label": {labels[i] if labels else "null"}, '
        f'"relevant": {r}}}' for i, d, r in zip(idx.tolist(), dist.tolist(), flags)) + "]"

  def query_answer(self, query: int, k: int, dist, idx) -> str:
    """The JSON text of GET /api/search's answer for query row ``query`` and its result row
    (dist, idx)."""
    if not self.labelled:
      return (f'{{"query": {query}, "k": {k}, "label": null, "ap": null, "precision": null, '
              f'"neighbours": {self.neighbours(dist, idx)}}}')
    label = self.codes["query_labels"][query]
    relevant = metrics.relevance(label[None], self.codes["db_labels"], idx[None])[0]
    return (f'{{"query": {query}, "k": {k}, "label": {json.dumps(_label(label))}, '
            f'"ap": {json.dumps(float(self.aps[query]))}, '
            f'"precision": {json.dumps(float(np.mean(relevant)))}, '
            f'"neighbours": {self.neighbours(dist, idx, relevant.tolist())}}}')

  def batch_answer(self, k: int, queries, dist, idx) -> bytes:
    """The JSON bytes of POST /api/search's answer of result rows (dist, idx) (Q, k): of query
    rows ``queries``, or of codes (``queries`` None). Built a result at a time (each encoded as
    it is made), so its memory stays within ``answer_bytes(Q, k)``."""
    parts = [b'{"k": %d, "results": [' % k]
    for q, d, i in zip(queries or [None] * len(dist), dist, idx):
      parts += [b", "] if len(parts) > 1 else []
      parts.append((self.query_answer(q, k, d, i) if queries is not None else
                    f'{{"neighbours": {self.neighbours(d, i)}}}').encode())
    return b"".join(parts + [b"]}"])

  def parse_codes(self, codes) -> np.ndarray:
    """Packed codes uint32 (Q, W) of a JSON list of codes (hex words or ±1 values, see the
    module docstring); RequestError 400 for anything else."""
    words = retrieval.num_words(self.num_bits)
    packed = np.zeros((len(codes), words), np.uint32)
    for q, code in enumerate(codes):
      if (isinstance(code, list) and len(code) == words
          and all(isinstance(w, str) and re.fullmatch(r"[0-9a-fA-F]{1,8}", w) for w in code)):
        packed[q] = [int(w, 16) for w in code]
      elif (isinstance(code, list) and len(code) == self.num_bits
            and all(v in (1, -1) and not isinstance(v, bool) for v in code)):
        bits = np.pad(np.array(code) > 0, (0, words * retrieval.WORD_BITS - self.num_bits))
        packed[q] = (bits.reshape(words, -1).astype(np.uint64)
                     << np.arange(retrieval.WORD_BITS, dtype=np.uint64)).sum(1)
      else:
        raise RequestError(400, f"code {q} must be {words} hex words or {self.num_bits} values "
                           f"+1 / -1, got {config_base.shown(code, SHOWN)}")
    try:
      return retrieval.check_codes(packed, self.num_bits, "the codes")
    except ValueError as e:
      raise RequestError(400, str(e)) from None

  def decode(self, body: bytes, max_pixels: int) -> np.ndarray:
    """The model input of an uploaded image: 413 past ``max_pixels`` (checked from the header,
    before decoding), 400 for anything that is no readable image (the route checked
    ``check_uploads`` before reading the body)."""
    try:
      with Image.open(io.BytesIO(body)) as img:
        if img.width * img.height > max_pixels:
          raise RequestError(413, f"image of {img.width} x {img.height} pixels is larger than "
                             f"{max_pixels} pixels")
        return images.from_image(img, self.data.input_shape, self.data.input_dtype)
    except Image.DecompressionBombError as e:
      raise RequestError(413, f"the upload is a decompression bomb ({e})") from None
    except (OSError, ValueError, SyntaxError) as e:
      if isinstance(e, RequestError):
        raise
      raise RequestError(400, f"the upload is not a readable image ({type(e).__name__})") from None

  def encode(self, x) -> np.ndarray:
    """Packed code uint32 (1, W) of one model input."""
    with self.lock:
      return np.asarray(retrieval.pack_codes(evaluation.encode_array(self.trainer, self.state,
                                                                     x[None])))

  def picture(self, split: str, row) -> bytes:
    """PNG of row ``row`` of split "query" or "db"."""
    if not self.pictures:
      raise RequestError(404, "this run's inputs are not pictures")
    size = self.data.size(split)
    row = _integer(row, "row", 404, f"{split} row")
    if not 0 <= row < size:
      raise RequestError(404, f"unknown {split} row {row}: the split has rows 0 to {size - 1}")
    with self.lock:
      x = self.data.eval_rows(split, np.array([row]))
    return images.png(images.to_pictures(x)[0])


BACKLOG = 2048  # pending connections the kernel queues before the server accepts them
_OVER_CAPACITY = "orthohash_over_capacity"  # scope key: the connection is past max_connections
_HEADERS_TOO_LARGE = "orthohash_headers_too_large"  # scope key: headers past max_header_bytes
_DRAINED = "orthohash_drained"  # scope key: waits until the answer left the transport's buffer


def _json(status: int, obj, close: bool = False) -> Response:
  headers = {"Cache-Control": "no-store"}
  if close:
    headers["Connection"] = "close"
  return Response(json.dumps(obj).encode(), status, headers, media_type="application/json")


def _access(client, request_line: str, status, size: int, seconds: float) -> None:
  """The access-log line of one request (logger ``orthohash_jax.serve``, level INFO)."""
  where = f"{client[0]}:{client[1]}" if client else "-"
  request_line = printable(request_line if len(request_line) <= 200
                           else request_line[:197] + "...")
  LOG.info('%s "%s" %s %d %.1fms', where, request_line, status, size, seconds * 1e3)


def _host_name(value: str) -> str:
  """The host of a Host header value, without the port (brackets of IPv6 removed), lowercase."""
  value = value.strip().lower()
  if value.startswith("["):
    return value[1:value.find("]")] if "]" in value else value
  return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def bind_address(host: str, port: int = 0):
  """(family, socket address) a server on ``host`` listens on: the first address ``host``
  resolves to (as ``bind`` would resolve it: "0", "0x0", "::0" are the wildcard too); a
  ValueError when it does not resolve."""
  try:
    family, _, _, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                  flags=socket.AI_PASSIVE)[0]
  except (socket.gaierror, UnicodeError) as e:
    raise ValueError(f"--host={printable(host)!r} does not resolve to an address "
                     f"({getattr(e, 'strerror', None) or e})") from None
  return family, address


def allowed_hosts(host: str, names=(), address=None):
  """The Host header names a server on ``host`` accepts: the loopback names, ``names``, and
  ``host`` and its address unless that is the wildcard; None (any) when names holds "*". Decided
  on the address the server listens on (``address``, a socket address; None: the one ``host``
  resolves to now): one that is not loopback (the wildcard included) without names is a
  ValueError, as other machines can connect and the names they use must be given."""
  names = [n.strip().lower() for n in names if n.strip()]
  if "*" in names:
    return None
  address = ipaddress.ip_address((address or bind_address(host)[1])[0].split("%")[0])
  if not address.is_loopback and not names:
    raise ValueError(f"--host={host!r} listens on {address}, "
                     f"{'every interface' if address.is_unspecified else 'not a loopback address'}"
                     ": give the host names clients use with --allowed_hosts (or '*' for any)")
  return frozenset(LOOPBACK_NAMES) | frozenset(names) | (
      frozenset() if address.is_unspecified else {_host_name(host), str(address)})


def listen(host: str, port: int, resolved=None) -> socket.socket:
  """A socket listening on ``host``:``port`` (``resolved``, its ``bind_address``; None: resolved
  here); OSError "cannot listen on host:port (reason)"."""
  family, address = resolved or bind_address(host, port)
  sock = socket.socket(family)
  try:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(BACKLOG)
  except OSError as e:
    sock.close()
    raise OSError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
  return sock


def listen_allowed(host: str, port: int, names=()):
  """(``listen``'s socket, ``allowed_hosts``' names) with ``host`` resolved once for both, so the
  allow-list is decided on the address the socket is bound to (a DNS name may resolve to another
  address at each lookup). The allow-list is checked first: nothing is bound when it fails."""
  resolved = bind_address(host, port)
  hosts = allowed_hosts(host, names, resolved[1])
  return listen(host, port, resolved), hosts


class _Front:
  """ASGI middleware before the routes: 503 for a connection past max_connections, 431 for headers
  past max_header_bytes, 400 for a request without exactly one Host header (RFC 9112, section
  3.2; required of HTTP/1.0 requests too) or with one off the allow-list, and one access-log line
  per request."""

  def __init__(self, app, hosts, limits: Limits):
    self.app, self.hosts, self.limits = app, hosts, limits

  async def __call__(self, scope, receive, send):
    start, sent = time.perf_counter(), {"status": "-", "size": 0}

    async def counted(message):
      if message["type"] == "http.response.start":
        sent["status"] = message["status"]
      else:
        sent["size"] += len(message.get("body", b""))
      await send(message)

    hosts = [v.decode("latin-1") for k, v in scope["headers"] if k == b"host"]
    app = self.app
    if scope.get(_OVER_CAPACITY):
      app = _json(503, {"error": f"over the limit of {self.limits.max_connections} open "
                                 "connections (--max_connections); retry later"}, close=True)
    elif scope.get(_HEADERS_TOO_LARGE):
      app = _json(431, {"error": f"request headers larger than {self.limits.max_header_bytes} "
                                 "bytes (--max_header_bytes)"}, close=True)
    elif len(hosts) != 1:
      app = _json(400, {"error": f"a request needs exactly one Host header, got {len(hosts)}"})
    elif self.hosts is not None and _host_name(hosts[0]) not in self.hosts:
      app = _json(400, {"error": f"host {config_base.shown(hosts[0], SHOWN)} is not allowed "
                                 "(--allowed_hosts)"})
    try:
      await app(scope, receive, counted)
    finally:
      query = scope["query_string"].decode("latin-1")
      _access(scope.get("client"), f"{scope['method']} {scope['path']}"
              f"{'?' + query if query else ''} HTTP/{scope['http_version']}", sent["status"],
              sent["size"], time.perf_counter() - start)


def _raw_error(status: int, message: str) -> bytes:
  """A whole HTTP response with a JSON error, closing the connection (the protocol's answers)."""
  body = json.dumps({"error": message}).encode()
  return (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\ncontent-type: application/json"
          f"\r\ncontent-length: {len(body)}\r\ncache-control: no-store\r\nconnection: close"
          "\r\n\r\n").encode() + body


class _Protocol(HttpToolsProtocol):
  """uvicorn's httptools HTTP/1.1 protocol plus the limits uvicorn lacks (``limits``, set on a
  subclass): headers must be complete within header_timeout of the connection or of the first
  byte after a response (else 408) and within max_header_bytes (else 431); connections past
  max_connections get a 503 for each request (``_Front``); a malformed request is a JSON 400; a
  client that reads nothing of an answer for write_timeout while the transport's buffer is full
  is disconnected (its buffered bytes freed). ``scope[_DRAINED]()`` waits until the answer's
  bytes left the transport's buffer (or the connection is gone)."""

  limits = Limits()

  def connection_made(self, transport):
    super().connection_made(transport)
    self._header_timer, self._header_bytes, self._header_size = None, 0, 0
    self._write_timer = None
    self._over_capacity = len(self.connections) > self.limits.max_connections
    self._arm_header_timer()

  def connection_lost(self, exc):
    self._disarm_header_timer()
    self.resume_writing()
    super().connection_lost(exc)

  def pause_writing(self):
    super().pause_writing()
    if self._write_timer is None:
      self._write_timer = self.loop.call_later(self.limits.write_timeout, self._write_timeout)

  def resume_writing(self):
    if self._write_timer is not None:
      self._write_timer.cancel()
      self._write_timer = None
    super().resume_writing()

  def _write_timeout(self):
    self._write_timer = None
    _access(self.client, f"- answer not read within {self.limits.write_timeout} s "
            "(--write_timeout): connection closed", "-", 0, self.limits.write_timeout)
    self.transport.abort()

  async def _drained(self):
    await self.flow.drain()

  def _arm_header_timer(self):
    if self._header_timer is None:
      self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timeout)

  def _disarm_header_timer(self):
    if self._header_timer is not None:
      self._header_timer.cancel()
    self._header_timer, self._header_bytes = None, 0  # raw bytes while headers are incomplete

  def _refuse(self, status: int, message: str):
    if not self.transport.is_closing():
      if self.cycle is None or self.cycle.response_complete:
        self.transport.write(_raw_error(status, message))
      _access(self.client, "-", status, 0, 0.0)
      self.transport.close()

  def _header_timeout(self):
    self._header_timer = None
    self._refuse(408, f"request headers not complete within {self.limits.header_timeout} s "
                 "(--header_timeout)")

  def data_received(self, data):
    if self.cycle is None or self.cycle.response_complete:  # bytes of a next request
      self._arm_header_timer()
    super().data_received(data)
    if self._header_timer is not None and not self.transport.is_closing():
      self._header_bytes += len(data)
      if self._header_bytes > self.limits.max_header_bytes:
        self._refuse(431, f"request headers larger than {self.limits.max_header_bytes} bytes "
                     "(--max_header_bytes)")

  def on_message_begin(self):
    super().on_message_begin()
    self._arm_header_timer()
    self._header_size = 0  # bytes of the parsed request target and headers
    self.scope[_DRAINED] = self._drained
    if self._over_capacity:
      self.scope[_OVER_CAPACITY] = True

  def on_url(self, url):
    super().on_url(url)
    self._header_size += len(url)

  def on_header(self, name, value):
    super().on_header(name, value)
    self._header_size += len(name) + len(value) + 4

  def on_headers_complete(self):
    self._disarm_header_timer()
    if self._header_size > self.limits.max_header_bytes:
      self.scope[_HEADERS_TOO_LARGE] = True
    super().on_headers_complete()

  def send_400_response(self, msg):
    self._refuse(400, "malformed HTTP request (request line, header or Content-Length)")


def _has_body(request: Request) -> bool:
  return "content-length" in request.headers or "transfer-encoding" in request.headers


class _Slots:
  """max_uploads slots for reading and decoding a body; one is taken once the body's first bytes
  came (a request that sent only headers holds none), after at most queue_timeout (then 503)."""

  def __init__(self, limits: Limits):
    self.limits, self._free = limits, asyncio.Semaphore(limits.max_uploads)

  @contextlib.asynccontextmanager
  async def body(self, request: Request, max_bytes: int, what: str = "--max_body_bytes"):
    """Holds a slot while the block runs and gives it the request body: 413 past ``max_bytes``
    (from Content-Length before reading), 408 when the first bytes take longer than body_timeout
    or the rest comes slower than min_body_rate (from the first bytes, 1 s of grace) or is not
    complete within body_timeout."""
    limits = self.limits
    length = request.headers.get("content-length")
    digits = length.lstrip("0") if length is not None and length.isascii() and length.isdigit() \
        else None
    if digits is not None and (len(digits) > 18 or int(digits or "0") > max_bytes):
      raise RequestError(413, f"body of {digits[:40]} bytes is larger than {max_bytes} bytes "
                         f"({what})", close=True)
    if length is not None:
      _integer(length, "Content-Length")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.body_timeout
    stream = request.stream()
    chunk = await self._next(stream, deadline, deadline)
    try:
      async with asyncio.timeout(limits.queue_timeout):
        await self._free.acquire()
    except TimeoutError:
      raise RequestError(503, f"no upload slot free within {limits.queue_timeout} s "
                         "(--max_uploads, --queue_timeout); retry later", close=True) from None
    try:
      chunks, size, first = [], 0, loop.time()
      while chunk is not None:
        size += len(chunk)
        if size > max_bytes:
          raise RequestError(413, f"body larger than {max_bytes} bytes ({what})", close=True)
        chunks.append(chunk)
        chunk = await self._next(stream, deadline,
                                 first + 1.0 + size / limits.min_body_rate)
      request.state.body_read = True
      body = b"".join(chunks)
      del chunks
      yield body
    finally:
      self._free.release()

  async def _next(self, stream, deadline: float, due: float):
    """The stream's next chunk (None at its end) by min(deadline, due), else 408."""
    try:
      async with asyncio.timeout_at(min(deadline, due)):
        return await anext(stream, None)
    except TimeoutError:
      if due < deadline:
        raise RequestError(408, f"request body slower than {self.limits.min_body_rate:g} bytes/s "
                           "(--min_body_rate)", close=True) from None
      raise RequestError(408, f"request body not complete within {self.limits.body_timeout} s "
                         "(--body_timeout)", close=True) from None


class _Budget:
  """Memory for answers: ``held`` bytes reserved by the answers being built or sent, at most
  answer_memory_bytes; one answer at most max_answer_bytes (413), and one that does not fit
  waits up to queue_timeout for answers to finish (then 503)."""

  def __init__(self, limits: Limits):
    self.limits, self.held = limits, 0
    self._freed = asyncio.Condition()

  async def reserve(self, size: int) -> None:
    limits = self.limits
    if size > limits.max_answer_bytes:
      raise RequestError(413, f"the answer would take {size} bytes of memory, more than "
                         f"{limits.max_answer_bytes} (--max_answer_bytes); ask for fewer queries "
                         "or a smaller k")
    try:
      async with asyncio.timeout(limits.queue_timeout), self._freed:
        await self._freed.wait_for(lambda: self.held + size <= limits.answer_memory_bytes)
        self.held += size
    except TimeoutError:
      raise RequestError(503, f"answers being sent hold the memory for answers "
                         f"(--answer_memory_bytes {limits.answer_memory_bytes}) for longer than "
                         f"{limits.queue_timeout} s (--queue_timeout); retry later") from None

  async def release(self, size: int) -> None:
    async with self._freed:
      self.held -= size
      self._freed.notify_all()


class _Answer(Response):
  """A 200 JSON answer whose reservation of a ``_Budget`` is released once its bytes left the
  transport's buffer (the client read them, or the connection is gone)."""

  media_type = "application/json"

  def __init__(self, body: bytes, budget: _Budget, size: int):
    super().__init__(body, 200, {"Cache-Control": "no-store"})
    self._budget, self._size = budget, size

  async def __call__(self, scope, receive, send):
    try:
      await super().__call__(scope, receive, send)
      await scope[_DRAINED]()
    finally:
      self.body = b""
      await self._budget.release(self._size)


def _require(params, key):
  if key not in params:
    raise RequestError(400, f"missing parameter {key}")
  return params[key]


def make_app(service: SearchService, limits: Limits) -> Starlette:
  """The routes of the module docstring over ``service`` (an ASGI app)."""
  slots, budget = _Slots(limits), _Budget(limits)
  max_json = min(service.max_json_bytes, limits.max_body_bytes)
  max_json_what = ("--max_body_bytes" if max_json == limits.max_body_bytes
                   else "the largest JSON batch of this run")
  with open(PAGE, "rb") as f:
    page = f.read()

  async def answer(codes, k: int, build) -> _Answer:
    """The search of ``codes`` (Q, W) and ``build(dist, idx)`` (the answer's JSON bytes, on a
    worker thread) within a reservation of ``service.answer_bytes(Q, k)``, made first: an answer
    over the budget is refused before anything is searched."""
    size = service.answer_bytes(len(codes), k)
    await budget.reserve(size)
    try:
      dist, idx = await asyncio.wrap_future(service.topk(codes, k))
      return _Answer(await run_in_threadpool(build, dist, idx), budget, size)
    except BaseException:
      await budget.release(size)
      raise

  async def index(_):
    return Response(page, media_type="text/html; charset=utf-8",
                    headers={"Cache-Control": "no-store"})

  async def healthz(_):
    return _json(200, {**service.health(), "answer_bytes": budget.held})

  async def info(_):
    return _json(200, service.info())

  async def search_get(request):
    params = request.query_params
    k = service.check_k(_require(params, "k"))
    query = service.check_query(_require(params, "query"))
    return await answer(service.codes["query_codes"][query:query + 1], k,
                        lambda dist, idx: service.query_answer(query, k, dist[0], idx[0]).encode())

  def parse_batch(body: bytes):
    obj = json_body(body, max_json)
    if not isinstance(obj, dict):
      raise RequestError(400, "the body must be a JSON object")
    k = service.check_k(_require(obj, "k"))
    if ("queries" in obj) == ("codes" in obj):
      raise RequestError(400, "give either queries (query indices) or codes")
    items = obj.get("queries", obj.get("codes"))
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
      raise RequestError(400, f"queries / codes must be a list of 1 to {MAX_BATCH} items")
    if len(items) * k > MAX_BATCH_NEIGHBOURS:
      raise RequestError(400, f"{len(items)} queries x k = {k} is more than "
                         f"{MAX_BATCH_NEIGHBOURS} neighbours")
    if "codes" in obj:
      return k, None, service.parse_codes(items)
    queries = [service.check_query(q) for q in items]
    return k, queries, service.codes["query_codes"][queries]

  async def search_post(request):
    async with slots.body(request, max_json, max_json_what) as body:
      k, queries, codes = await run_in_threadpool(parse_batch, body)
    return await answer(codes, k, lambda dist, idx: service.batch_answer(k, queries, dist, idx))

  async def upload(request):
    k = service.check_k(_require(request.query_params, "k"))
    service.check_uploads()
    async with slots.body(request, limits.max_body_bytes) as body:
      x = await run_in_threadpool(service.decode, body, limits.max_pixels)
      code = await run_in_threadpool(service.encode, x)
    return await answer(code, k, lambda dist, idx: (f'{{"k": {k}, "neighbours": '
                                                    f'{service.neighbours(dist[0], idx[0])}}}'
                                                    ).encode())

  async def picture(request):
    split, row = request.path_params["split"], request.path_params["row"]
    if split not in ("query", "db"):
      raise HTTPException(404)
    return Response(await run_in_threadpool(service.picture, split, row),
                    media_type="image/png", headers={"Cache-Control": "no-store"})

  def unread_body(request) -> bool:
    return _has_body(request) and not getattr(request.state, "body_read", False)

  async def request_error(request, e):
    return _json(e.status, {"error": str(e)}, close=e.close or unread_body(request))

  async def http_error(request, e):
    path = printable(request.url.path)
    message = {404: f"no such page: {path}" if request.method in ("GET", "HEAD")
                    else f"no such endpoint: {printable(request.method)} {path}",
               405: f"method {printable(request.method)} not allowed on {path}"}.get(
                   e.status_code, e.detail)
    return _json(e.status_code, {"error": message}, close=unread_body(request))

  async def client_gone(_, __):
    return Response(status_code=499)  # never sent: the client is gone

  async def server_error(_, e):
    first = str(e).splitlines()[0] if str(e) else ""
    return _json(500, {"error": f"{type(e).__name__}: {printable(first)}"}, close=True)

  return Starlette(routes=[
      Route("/", index), Route("/healthz", healthz), Route("/api/info", info),
      Route("/api/search", search_get, methods=["GET"]),
      Route("/api/search", search_post, methods=["POST"]),
      Route("/api/upload", upload, methods=["POST"]),
      Route("/image/{split}/{row}.png", picture),
  ], exception_handlers={RequestError: request_error, HTTPException: http_error,
                         ClientDisconnect: client_gone, Exception: server_error})


class Server:
  """A ``SearchService`` served over HTTP on host:port (uvicorn: one event loop, the listening
  socket ``sock``, else bound here with ``listen``) with ``limits`` and the Host allow-list
  ``hosts`` (``allowed_hosts``; None: any). ``serve_forever()`` runs until ``shutdown()``."""

  def __init__(self, service: SearchService, host: str = "127.0.0.1", port: int = 8000,
               limits: Limits = Limits(), hosts=None, sock: socket.socket = None):
    self.service = service
    self.socket = listen(host, port) if sock is None else sock
    protocol = type("Protocol", (_Protocol,), {"limits": limits.check()})
    hosts = allowed_hosts(host, (), self.socket.getsockname()) if hosts is None else hosts
    config = uvicorn.Config(
        _Front(make_app(service, limits), hosts, limits), http=protocol,
        ws="none", lifespan="off", log_config=None, log_level="error", access_log=False,
        proxy_headers=False, server_header=False, timeout_keep_alive=limits.keep_alive_timeout,
        backlog=BACKLOG, timeout_graceful_shutdown=5)
    self._uvicorn = uvicorn.Server(config)
    self._stopped = threading.Event()

  @property
  def server_address(self):
    return self.socket.getsockname()

  @property
  def url(self) -> str:
    host, port = self.server_address[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

  def serve_forever(self) -> None:
    try:
      self._uvicorn.run(sockets=[self.socket])
    finally:
      self._stopped.set()

  def shutdown(self) -> None:
    """Stops ``serve_forever`` (running on another thread) and waits until it has returned."""
    self._uvicorn.should_exit = True
    self._stopped.wait()

  def server_close(self) -> None:
    self.socket.close()


def main(argv=None) -> int:
  parser = cli.ArgumentParser(prog="python -m orthohash_jax.serve",
                              description="Search page over a finished run.")
  parser.add_argument("--workdir", required=True, help="a finished run (codes.npz, checkpoints)")
  parser.add_argument("--port", type=int, default=8000, help="0: a free port")
  parser.add_argument("--host", default="127.0.0.1",
                      help="interface to listen on (127.0.0.1: this machine only)")
  parser.add_argument("--allowed_hosts", default="",
                      help="comma-separated Host header names accepted besides the loopback "
                           "names and --host ('*': any); needed with a wildcard --host")
  parser.add_argument("--quiet", action="store_true", help="no access log on stderr")
  for field in dataclasses.fields(Limits):
    parser.add_argument(f"--{field.name}", type=field.type, default=field.default,
                        help=f"{field.metadata['help']} (default {field.default})")
  args = parser.parse_args(argv)

  def body():
    if not 0 <= args.port < 65536:
      raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    limits = Limits(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Limits)}).check()
    # before loading: a taken port fails at once
    sock, hosts = listen_allowed(args.host, args.port, args.allowed_hosts.split(","))
    try:
      service = SearchService(args.workdir)
    except BaseException:
      sock.close()
      raise
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = LOG.propagate, LOG.level
    LOG.addHandler(handler)
    LOG.propagate = False
    LOG.setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
      server = Server(service, args.host, args.port, limits, hosts, sock)
      cli.say(f"serving {args.workdir} on {server.url} (Ctrl-C stops)")
      try:
        server.serve_forever()
      except KeyboardInterrupt:
        pass
      finally:
        server.server_close()
    finally:
      LOG.removeHandler(handler)
      LOG.propagate = saved[0]
      LOG.setLevel(saved[1])
      service.close()
  return cli.run_tool(body)


if __name__ == "__main__":
  sys.exit(main())
