r"""Command line: a search page over a finished run, served by the standard library's http.server.

  python -m orthohash_jax.serve --workdir=RUN [--port=8000] [--host=127.0.0.1]

Loads the run's codes file ``<workdir>/codes.npz`` (the codes ``python -m orthohash_jax.search``
searches), its data (pictures through ``data.eval_rows``, see ``images``) and its latest
checkpoint (to encode uploaded images), then serves on ``host:port`` (127.0.0.1 by default: only
this machine can connect; 0 picks a free port). The page picks a query of the query set (or
uploads an image) and shows its top k database items with Hamming distance, label, relevance
(green / red frame) and the query's AP.

HTTP interface (every JSON answer is one object; every error is a 4xx / 500 status with
``{"error": "<one line>"}``, and the server goes on serving):
  GET  /                          the page
  GET  /api/info                  {"workdir", "dataset", "num_bits", "num_queries", "num_database",
                                   "mAP", "eval_topk", "labels": bool, "pictures": bool}
  GET  /api/search?query=I&k=K    query I of the query set: {"query", "k", "label", "ap",
                                   "precision", "neighbours": [{"index", "distance", "label",
                                   "relevant"}, ...]}; the neighbours are exactly those of
                                   ``python -m orthohash_jax.search --codes=<workdir>/codes.npz
                                   --k=K`` for query I, in its order (distance, then database
                                   index); "ap" is the query's AP@R (R = the run's ``eval_topk``,
                                   the AP averaged into ``results.json``'s mAP)
  POST /api/upload?k=K            body: an image file of at most ``MAX_UPLOAD_BYTES``; encoded with
                                  the checkpoint's model (``images.from_image``: resized and
                                  centre-cropped to the input size), searched like a query:
                                  {"k", "neighbours"} (no label, AP or relevance)
  GET  /image/query/I.png, /image/db/I.png   the input of that row as a PNG
Errors: k outside [1, database size] or not an integer, a missing parameter, an unknown path: 400
or 404; a query index outside the query set: 404; an upload that is no image: 400; a larger
upload: 413 (its body is not read); pictures of inputs that are not pictures: 404.
Labels: a class id, or the list of classes of a multi-hot row. Relevance: same class / a shared
label. Runs of instance data (protocol "gldv2") have no labels: "label", "ap" and "relevant" are
null.
"""
import http.server
import io
import json
import os
import re
import sys
import threading
import urllib.parse

import numpy as np
from PIL import Image

from orthohash_jax import cli, codes_file, evaluation, images, metrics, retrieval, run, search

MAX_UPLOAD_BYTES = 8 << 20  # 8 MiB
MAX_UPLOAD_PIXELS = 40_000_000  # larger images are refused before they are decoded
MIN_BUCKET = 16  # searches with k <= 16 share one compiled top-k (see SearchService._neighbours)
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve_page.html")


class RequestError(ValueError):
  """A bad request: HTTP ``status`` and a one-line message."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


def _label(label):
  label = np.asarray(label)
  return np.flatnonzero(label).tolist() if label.ndim else int(label)


class SearchService:
  """The run's codes, data and model; answers searches (thread-safe)."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.codes = codes_file.load_codes(os.path.join(workdir, "codes.npz"))
    self.index = search.HammingIndex(self.codes["num_bits"])
    self.index.add(self.codes["db_codes"])
    self.trainer, self.data, self.state, self.step = run.restore_run(workdir)
    config = self.trainer.config
    if config.num_bits != self.codes["num_bits"]:
      raise ValueError(f"{workdir}/codes.npz holds {self.codes['num_bits']}-bit codes, the "
                       f"checkpoint's model {config.num_bits}")
    self.labelled = self.data.protocol == "category"
    try:
      images.check_pictures(self.data.input_shape, self.data.input_dtype)
      self.pictures = True
    except ValueError:
      self.pictures = False
    results_path = os.path.join(workdir, "results.json")
    self.map = None
    if os.path.exists(results_path):
      with open(results_path) as f:
        self.map = json.load(f).get("mAP")
    self._lock = threading.Lock()  # one device computation at a time
    self._neighbours(self.codes["query_codes"][:1], 1)  # compiles the top-k of k <= MIN_BUCKET

  def close(self):
    self.data.close()

  def info(self) -> dict:
    return {"workdir": self.workdir, "dataset": self.data.name,
            "num_bits": self.codes["num_bits"], "num_queries": len(self.codes["query_codes"]),
            "num_database": len(self.index), "mAP": self.map,
            "eval_topk": self.trainer.config.eval_topk, "labels": self.labelled,
            "pictures": self.pictures}

  def check_k(self, k) -> int:
    try:
      k = int(k)
    except (TypeError, ValueError):
      raise RequestError(400, f"k must be an integer, got {k!r}") from None
    try:
      return retrieval.check_k(k, len(self.index))
    except ValueError as e:
      raise RequestError(400, str(e)) from None

  def _neighbours(self, query_code, k: int, query_label=None):
    # The top-k kernel compiles once per k: search a bucket of k (at least MIN_BUCKET, else the
    # next power of two) and keep its first k, the same list by (distance, index).
    bucket = min(len(self.index), max(MIN_BUCKET, 1 << (k - 1).bit_length()))
    with self._lock:
      dist, idx = (a[:, :k] for a in self.index.search(query_code, bucket))
    relevant = (metrics.relevance(query_label[None], self.codes["db_labels"], idx)[0]
                if query_label is not None else [None] * k)
    return [{"index": int(i), "distance": int(d),
             "label": _label(self.codes["db_labels"][i]) if self.labelled else None,
             "relevant": None if r is None else bool(r)}
            for i, d, r in zip(idx[0], dist[0], relevant)]

  def search(self, query, k) -> dict:
    """The top k of query row ``query`` (see the module docstring)."""
    k = self.check_k(k)
    num_queries = len(self.codes["query_codes"])
    try:
      query = int(query)
    except (TypeError, ValueError):
      raise RequestError(400, f"query must be an integer, got {query!r}") from None
    if not 0 <= query < num_queries:
      raise RequestError(404, f"unknown query {query}: the query set has rows 0 to "
                         f"{num_queries - 1}")
    code = self.codes["query_codes"][query:query + 1]
    label = self.codes["query_labels"][query] if self.labelled else None
    neighbours = self._neighbours(code, k, label)
    answer = {"query": query, "k": k, "label": None, "ap": None, "precision": None,
              "neighbours": neighbours}
    if self.labelled:
      with self._lock:
        ap = metrics.average_precisions(code, self.codes["db_codes"], label[None],
                                        self.codes["db_labels"], self.trainer.config.eval_topk)
      answer.update(label=_label(label), ap=float(ap[0]),
                    precision=float(np.mean([n["relevant"] for n in neighbours])))
    return answer

  def search_image(self, body: bytes, k) -> dict:
    """The top k of an uploaded image (encoded with the checkpoint's model)."""
    k = self.check_k(k)
    if not self.pictures:
      raise RequestError(400, "this run's inputs are not pictures: uploads are not possible")
    try:
      with Image.open(io.BytesIO(body)) as img:
        if img.width * img.height > MAX_UPLOAD_PIXELS:
          raise RequestError(413, f"image of {img.width} x {img.height} pixels is larger than "
                             f"{MAX_UPLOAD_PIXELS} pixels")
        x = images.from_image(img, self.data.input_shape, self.data.input_dtype)
    except RequestError:
      raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
      raise RequestError(400, f"the upload is not a readable image ({type(e).__name__})") from None
    with self._lock:
      code = retrieval.pack_codes(evaluation.encode_array(self.trainer, self.state, x[None]))
    return {"k": k, "neighbours": self._neighbours(np.asarray(code), k)}

  def picture(self, split: str, row) -> bytes:
    """PNG of row ``row`` of split "query" or "db"."""
    if not self.pictures:
      raise RequestError(404, "this run's inputs are not pictures")
    size = self.data.size(split)
    if not 0 <= row < size:
      raise RequestError(404, f"unknown {split} row {row}: the split has rows 0 to {size - 1}")
    with self._lock:
      x = self.data.eval_rows(split, np.array([row]))
    return images.png(images.to_pictures(x)[0])


_PICTURE = re.compile(r"^/image/(query|db)/(\d+)\.png$")


class Handler(http.server.BaseHTTPRequestHandler):
  """Routes requests to ``self.server.service``; every failure is a one-line JSON error."""

  server_version = "orthohash-serve"
  protocol_version = "HTTP/1.1"

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    if self.server.verbose:
      super().log_message(format, *args)

  def _send(self, status: int, body: bytes, content_type: str) -> None:
    self.send_response(status)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(body)))
    self.send_header("Cache-Control", "no-store")
    if self.close_connection:
      self.send_header("Connection", "close")
    self.end_headers()
    self.wfile.write(body)

  def _json(self, status: int, obj) -> None:
    self._send(status, json.dumps(obj).encode(), "application/json")

  def _handle(self, route):
    try:
      route()
    except RequestError as e:
      self._json(e.status, {"error": str(e)})
    except Exception as e:  # pylint: disable=broad-except
      first = str(e).splitlines()[0] if str(e) else ""
      self._json(500, {"error": f"{type(e).__name__}: {first}"})

  def do_GET(self):  # pylint: disable=invalid-name
    self._handle(self._get)

  def do_POST(self):  # pylint: disable=invalid-name
    self._handle(self._post)

  def _params(self):
    url = urllib.parse.urlsplit(self.path)
    params = urllib.parse.parse_qs(url.query, keep_blank_values=True)
    return url.path, {key: values[-1] for key, values in params.items()}

  @staticmethod
  def _require(params, key):
    if key not in params:
      raise RequestError(400, f"missing parameter {key}")
    return params[key]

  def _get(self):
    path, params = self._params()
    service = self.server.service
    if path == "/":
      with open(PAGE, "rb") as f:
        self._send(200, f.read(), "text/html; charset=utf-8")
    elif path == "/api/info":
      self._json(200, service.info())
    elif path == "/api/search":
      self._json(200, service.search(self._require(params, "query"),
                                     self._require(params, "k")))
    elif _PICTURE.match(path):
      split, row = _PICTURE.match(path).groups()
      self._send(200, service.picture(split, int(row)), "image/png")
    else:
      raise RequestError(404, f"no such page: {path}")

  def _post(self):
    path, params = self._params()
    if path != "/api/upload":
      self.close_connection = True  # the body is not read
      raise RequestError(404, f"no such endpoint: POST {path}")
    length = self.headers.get("Content-Length")
    if length is None or not length.isdigit():
      self.close_connection = True
      raise RequestError(411, "an upload needs a Content-Length header")
    if int(length) > MAX_UPLOAD_BYTES:
      self.close_connection = True
      raise RequestError(413, f"upload of {int(length)} bytes is larger than "
                         f"{MAX_UPLOAD_BYTES} bytes")
    body = self.rfile.read(int(length))
    self._json(200, self.server.service.search_image(body, self._require(params, "k")))


class Server(http.server.ThreadingHTTPServer):
  """A threading HTTP server holding a ``SearchService``."""

  daemon_threads = True

  def __init__(self, service: SearchService, host: str = "127.0.0.1", port: int = 8000,
               verbose: bool = False):
    self.service, self.verbose = service, verbose
    super().__init__((host, port), Handler)

  @property
  def url(self) -> str:
    host, port = self.server_address[:2]
    return f"http://{host}:{port}/"


def main(argv=None) -> int:
  parser = cli.ArgumentParser(prog="python -m orthohash_jax.serve",
                              description="Search page over a finished run.")
  parser.add_argument("--workdir", required=True, help="a finished run (codes.npz, checkpoints)")
  parser.add_argument("--port", type=int, default=8000, help="0: a free port")
  parser.add_argument("--host", default="127.0.0.1",
                      help="interface to listen on (127.0.0.1: this machine only)")
  parser.add_argument("--verbose", action="store_true", help="log every request on stderr")
  args = parser.parse_args(argv)

  def body():
    if not 0 <= args.port < 65536:
      raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    service = SearchService(args.workdir)
    try:
      try:
        server = Server(service, args.host, args.port, args.verbose)
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
