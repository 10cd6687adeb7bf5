r"""Command line: a search page over a finished run, served by Starlette on uvicorn (ASGI).

  python -m orthohash_jax.serve --workdir=RUN [--port=8000] [--host=127.0.0.1] \
      [--allowed_hosts=a.example,b.example] [--quiet] [limit flags, see ``Limits``]

Loads the run's codes file ``<workdir>/codes.npz`` (the codes ``python -m orthohash_jax.search``
searches), its data (pictures through ``data.eval_rows``, see ``images``) and its latest
checkpoint (to encode uploaded images), then serves on ``host:port`` (127.0.0.1 by default: only
this machine can connect; 0 picks a free port). The page picks a query of the query set (or
uploads an image) and shows its top k database items with Hamming distance, label, relevance
(green / red frame) and the query's AP. One access-log line per request goes to stderr (not with
``--quiet``); a client that goes away mid-request is no error.

HTTP interface (every JSON answer is one object; every error the server decides is a 4xx / 503
status with ``{"error": "<one line>"}``, and the server goes on serving):
  GET  /                          the page
  GET  /healthz                   {"status": "ok", "compiled": [k sizes ready], "compiling": [...]}
  GET  /api/info                  {"workdir", "dataset", "num_bits", "num_queries", "num_database",
                                   "mAP", "eval_topk", "labels": bool, "pictures": bool}
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
code, a bad Host header: 400; an unknown path or method: 404 / 405; a query index outside the
query set, an unknown picture row: 404; an upload that is no image: 400; a body larger than
``--max_body_bytes`` or an image of more than ``--max_pixels`` pixels (decompression bombs
included): 413 (a body is refused from its Content-Length before it is read); a body slower than
``--body_timeout``, headers slower than ``--header_timeout``: 408; headers over
``--max_header_bytes``: 431; a malformed request (e.g. a non-numeric Content-Length): 400; a
connection past ``--max_connections``, an upload that waited ``--queue_timeout`` for a slot: 503.
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
import dataclasses
import http
import io
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

from orthohash_jax import (cli, codes_file, evaluation, files, hamming_kernel, images, metrics,
                           retrieval, run, search)
from orthohash_jax import workdir as workdir_lib

MIN_BUCKET = 16  # the smallest compiled result size (searches of k <= 16 share it)
MAX_BATCH = 1024  # queries of one POST /api/search
MAX_BATCH_NEIGHBOURS = 1 << 18  # queries x k of one POST /api/search
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve_page.html")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
LOG = logging.getLogger("orthohash_jax.serve")


def _limit(default, help_text):
  return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass(frozen=True)
class Limits:
  """The server's limits; each is the command-line flag ``--<name>`` (its help says what it
  bounds). Total upload memory is bounded by max_uploads x (max_body_bytes + the decoded image of
  max_pixels pixels, ~4 bytes each, and its conversion to the model input)."""
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
  queue_timeout: float = _limit(60.0, "seconds a body waits for a slot; then 503")

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


def _short(value) -> str:
  """repr of a request value, cut to 40 characters for an error message."""
  text = repr(value)
  return text if len(text) <= 40 else text[:37] + "..."


_INTEGER = re.compile(r"-?[0-9]{1,18}")


def _integer(value, name: str, status: int = 400, what: str = "") -> int:
  """``value`` (a JSON integer or ASCII decimal text of at most 18 digits) as an int, else a
  RequestError(status): "<name> must be an integer" or, with ``what``, "unknown <what>"."""
  if isinstance(value, int) and not isinstance(value, bool):
    return value
  if isinstance(value, str) and _INTEGER.fullmatch(value):
    return int(value)
  raise RequestError(status, f"unknown {what} {_short(value)}" if what else
                     f"{name} must be an integer, got {_short(value)}")


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
    self.codes = codes_file.load_codes(workdir_lib.path(workdir, workdir_lib.CODES))
    self.num_bits = int(self.codes["num_bits"])
    self.index = search.HammingIndex(self.num_bits)
    self.index.add(self.codes["db_codes"])
    self.trainer, self.data, self.state, self.step = run.restore_run(workdir)
    config = self.trainer.config
    if config.num_bits != self.num_bits:
      raise ValueError(f"{workdir}/codes.npz holds {self.num_bits}-bit codes, the "
                       f"checkpoint's model {config.num_bits}")
    self.labelled = self.data.protocol == "category"
    try:
      images.check_pictures(self.data.input_shape, self.data.input_dtype)
      self.pictures = True
    except ValueError:
      self.pictures = False
    results_path = workdir_lib.path(workdir, workdir_lib.RESULTS)
    self.map = None
    if files.path(results_path).exists():
      self.map = files.read_json(results_path).get("mAP")
    num_items = len(self.index)
    self.sizes = [1 << e for e in range(MIN_BUCKET.bit_length() - 1, num_items.bit_length())
                  if 1 << e < num_items] + [num_items]
    self._rows = -(-num_items // hamming_kernel.BLOCK) * hamming_kernel.BLOCK
    self.lock = threading.Lock()  # one device computation at a time
    self._compile_lock = threading.Lock()
    self.compiled = []  # result sizes ready, ascending
    self._db_labels = ([_label(label) for label in self.codes["db_labels"]] if self.labelled
                       else None)
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
            "pictures": self.pictures}

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

  def neighbours(self, dist, idx, relevant=None) -> list:
    """The JSON neighbours of one result row (dist, idx) (k,)."""
    relevant = [None] * len(idx) if relevant is None else relevant
    return [{"index": int(i), "distance": int(d),
             "label": self._db_labels[i] if self.labelled else None,
             "relevant": None if r is None else bool(r)}
            for i, d, r in zip(idx.tolist(), dist.tolist(), relevant)]

  def query_answer(self, query: int, k: int, dist, idx) -> dict:
    """The answer of GET /api/search for query row ``query`` and its result row (dist, idx)."""
    if not self.labelled:
      return {"query": query, "k": k, "label": None, "ap": None, "precision": None,
              "neighbours": self.neighbours(dist, idx)}
    label = self.codes["query_labels"][query]
    relevant = metrics.relevance(label[None], self.codes["db_labels"], idx[None])[0]
    return {"query": query, "k": k, "label": _label(label), "ap": float(self.aps[query]),
            "precision": float(np.mean(relevant)),
            "neighbours": self.neighbours(dist, idx, relevant.tolist())}

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
                           f"+1 / -1, got {_short(code)}")
    try:
      return retrieval.check_codes(packed, self.num_bits, "the codes")
    except ValueError as e:
      raise RequestError(400, str(e)) from None

  def decode(self, body: bytes, max_pixels: int) -> np.ndarray:
    """The model input of an uploaded image: 413 past ``max_pixels`` (checked from the header,
    before decoding), 400 for anything that is no readable image."""
    if not self.pictures:
      raise RequestError(400, "this run's inputs are not pictures: uploads are not possible")
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


def _json(status: int, obj, close: bool = False) -> Response:
  headers = {"Cache-Control": "no-store"}
  if close:
    headers["Connection"] = "close"
  return Response(json.dumps(obj).encode(), status, headers, media_type="application/json")


def _access(client, request_line: str, status, size: int, seconds: float) -> None:
  """The access-log line of one request (logger ``orthohash_jax.serve``, level INFO)."""
  where = f"{client[0]}:{client[1]}" if client else "-"
  request_line = request_line if len(request_line) <= 200 else request_line[:197] + "..."
  LOG.info('%s "%s" %s %d %.1fms', where, request_line, status, size, seconds * 1e3)


def _host_name(value: str) -> str:
  """The host of a Host header value, without the port (brackets of IPv6 removed), lowercase."""
  value = value.strip().lower()
  if value.startswith("["):
    return value[1:value.find("]")] if "]" in value else value
  return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def allowed_hosts(host: str, names=()):
  """The Host header names a server on ``host`` accepts: the loopback names, ``host`` unless it
  is a wildcard, and ``names``; None (any) when names holds "*". A wildcard host without names is
  a ValueError: on every interface, the names clients use must be given."""
  names = [n.strip().lower() for n in names if n.strip()]
  if "*" in names:
    return None
  wildcard = host in ("", "0.0.0.0", "::")
  if wildcard and not names:
    raise ValueError(f"--host={host!r} listens on every interface: give the host names "
                     "clients use with --allowed_hosts (or '*' for any)")
  return frozenset(LOOPBACK_NAMES) | frozenset(names) | (
      frozenset() if wildcard else {_host_name(host)})


class _Front:
  """ASGI middleware before the routes: 503 for a connection past max_connections, 431 for headers
  past max_header_bytes, 400 for a Host header off the allow-list (a request without Host passes), and one access-log line per
  request."""

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

    host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
    app = self.app
    if scope.get(_OVER_CAPACITY):
      app = _json(503, {"error": f"over the limit of {self.limits.max_connections} open "
                                 "connections (--max_connections); retry later"}, close=True)
    elif scope.get(_HEADERS_TOO_LARGE):
      app = _json(431, {"error": f"request headers larger than {self.limits.max_header_bytes} "
                                 "bytes (--max_header_bytes)"}, close=True)
    elif host is not None and self.hosts is not None and _host_name(host) not in self.hosts:
      app = _json(400, {"error": f"host {_short(host)} is not allowed (--allowed_hosts)"})
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
  max_connections get a 503 for each request (``_Front``); a malformed request is a JSON 400."""

  limits = Limits()

  def connection_made(self, transport):
    super().connection_made(transport)
    self._header_timer, self._header_bytes, self._header_size = None, 0, 0
    self._over_capacity = len(self.connections) > self.limits.max_connections
    self._arm_header_timer()

  def connection_lost(self, exc):
    self._disarm_header_timer()
    super().connection_lost(exc)

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


async def _read_body(request: Request, limits: Limits) -> bytes:
  """The request body: 413 past max_body_bytes (from Content-Length before reading), 408 when it
  takes longer than body_timeout."""
  length = request.headers.get("content-length")
  if length is not None and _integer(length, "Content-Length") > limits.max_body_bytes:
    raise RequestError(413, f"body of {length} bytes is larger than {limits.max_body_bytes} "
                       "bytes (--max_body_bytes)", close=True)
  chunks, size = [], 0
  try:
    async with asyncio.timeout(limits.body_timeout):
      async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_body_bytes:
          raise RequestError(413, f"body larger than {limits.max_body_bytes} bytes "
                             "(--max_body_bytes)", close=True)
        chunks.append(chunk)
  except TimeoutError:
    raise RequestError(408, f"request body not complete within {limits.body_timeout} s "
                       "(--body_timeout)", close=True) from None
  request.state.body_read = True
  return b"".join(chunks)


def _require(params, key):
  if key not in params:
    raise RequestError(400, f"missing parameter {key}")
  return params[key]


def make_app(service: SearchService, limits: Limits) -> Starlette:
  """The routes of the module docstring over ``service`` (an ASGI app)."""
  slots = asyncio.Semaphore(limits.max_uploads)
  with open(PAGE, "rb") as f:
    page = f.read()

  class Slot:
    """One of max_uploads slots for reading and decoding a body (503 after queue_timeout)."""

    async def __aenter__(self):
      try:
        async with asyncio.timeout(limits.queue_timeout):
          await slots.acquire()
      except TimeoutError:
        raise RequestError(503, f"no upload slot free within {limits.queue_timeout} s "
                           "(--max_uploads, --queue_timeout); retry later", close=True) from None

    async def __aexit__(self, *exc):
      slots.release()

  async def topk(codes, k):
    return await asyncio.wrap_future(service.topk(codes, k))

  async def index(_):
    return Response(page, media_type="text/html; charset=utf-8",
                    headers={"Cache-Control": "no-store"})

  async def healthz(_):
    return _json(200, service.health())

  async def info(_):
    return _json(200, service.info())

  async def search_get(request):
    params = request.query_params
    k = service.check_k(_require(params, "k"))
    query = service.check_query(_require(params, "query"))
    dist, idx = await topk(service.codes["query_codes"][query:query + 1], k)
    return _json(200, service.query_answer(query, k, dist[0], idx[0]))

  def parse_batch(body: bytes):
    try:
      obj = json.loads(body)
    except ValueError:
      raise RequestError(400, "the body must be a JSON object") from None
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
    async with Slot():
      k, queries, codes = await run_in_threadpool(parse_batch, await _read_body(request, limits))
    dist, idx = await topk(codes, k)

    def answers():
      if queries is None:
        return [{"neighbours": service.neighbours(d, i)} for d, i in zip(dist, idx)]
      return [service.query_answer(q, k, d, i) for q, d, i in zip(queries, dist, idx)]

    return _json(200, {"k": k, "results": await run_in_threadpool(answers)})

  async def upload(request):
    k = service.check_k(_require(request.query_params, "k"))
    if not service.pictures:
      raise RequestError(400, "this run's inputs are not pictures: uploads are not possible")
    async with Slot():
      body = await _read_body(request, limits)
      x = await run_in_threadpool(service.decode, body, limits.max_pixels)
      code = await run_in_threadpool(service.encode, x)
    dist, idx = await topk(code, k)
    return _json(200, {"k": k, "neighbours": service.neighbours(dist[0], idx[0])})

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
    path = request.url.path
    message = {404: f"no such page: {path}" if request.method in ("GET", "HEAD")
                    else f"no such endpoint: {request.method} {path}",
               405: f"method {request.method} not allowed on {path}"}.get(e.status_code,
                                                                          e.detail)
    return _json(e.status_code, {"error": message}, close=unread_body(request))

  async def client_gone(_, __):
    return Response(status_code=499)  # never sent: the client is gone

  async def server_error(_, e):
    first = str(e).splitlines()[0] if str(e) else ""
    return _json(500, {"error": f"{type(e).__name__}: {first}"}, close=True)

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
  socket bound at construction) with ``limits`` and the Host allow-list ``hosts``
  (``allowed_hosts``; None: any). ``serve_forever()`` runs until ``shutdown()``."""

  def __init__(self, service: SearchService, host: str = "127.0.0.1", port: int = 8000,
               limits: Limits = Limits(), hosts=None):
    self.service = service
    self.socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
      self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
      self.socket.bind((host, port))
      self.socket.listen(BACKLOG)
    except OSError:
      self.socket.close()
      raise
    protocol = type("Protocol", (_Protocol,), {"limits": limits.check()})
    hosts = allowed_hosts(host) if hosts is None else hosts
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
    hosts = allowed_hosts(args.host, args.allowed_hosts.split(","))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    LOG.addHandler(handler)
    LOG.propagate = False
    LOG.setLevel(logging.WARNING if args.quiet else logging.INFO)
    service = SearchService(args.workdir)
    try:
      try:
        server = Server(service, args.host, args.port, limits, hosts)
      except OSError as e:
        raise OSError(f"cannot listen on {args.host}:{args.port} ({e.strerror})") from None
      cli.say(f"serving {args.workdir} on {server.url} (Ctrl-C stops)")
      try:
        server.serve_forever()
      except KeyboardInterrupt:
        pass
      finally:
        server.server_close()
    finally:
      service.close()
  return cli.run_tool(body)


if __name__ == "__main__":
  sys.exit(main())
