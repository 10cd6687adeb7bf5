"""The search page (``serve``): its JSON API against a real server on a free local port (equal to
the search CLI, errors as one-line JSON), batch and code queries, uploads, pictures, each limit
(timeouts, connection cap, body and header size, upload slots, decompression bombs), no
compilation after start-up, the Host allow-list, and the page in headless Chromium."""
import concurrent.futures
import contextlib
import http.client
import io
import json
import logging
import os
import re
import shutil
import socket
import struct
import threading
import tracemalloc
import urllib.error
import urllib.request
import zlib

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, write_idx
from orthohash_jax import codes_file, config_base, images, metrics, retrieval, run, search, serve

from experiments import browser as browser_lib

NUM_DB = 370  # 10 classes x (40 - 3 queries)


def fashion_like(path, seed=0):
  """IDX files in the Fashion-MNIST layout, 40 images per class: class c is a bright bar at
  rows 2c..2c+7 on noise (30 per class in the train file, 10 in the test file)."""
  rng = np.random.default_rng(seed)
  for split, per_class in (("train", 30), ("t10k", 10)):
    labels = np.tile(np.arange(10), per_class)
    x = rng.integers(0, 90, (len(labels), 28, 28))
    for i, c in enumerate(labels):
      x[i, 2 * c:2 * c + 8] += 160
    write_idx(path / f"{split}-images-idx3-ubyte.gz", x)
    write_idx(path / f"{split}-labels-idx1-ubyte.gz", labels)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  """A finished small run on Fashion-MNIST-like IDX files, served on a free port in a thread."""
  data_dir, workdir = tmp_path_factory.mktemp("idx"), tmp_path_factory.mktemp("run")
  fashion_like(data_dir)
  config = config_base.load_config_file(os.path.join(ROOT, "configs/fashion_mnist.py"))
  config.update(data_dir=str(data_dir), num_query_per_class=3, num_train_per_class=20,
                hidden=(32,), num_bits=16, num_epochs=3, batch_size=32, eval_batch_size=128,
                num_devices=1, checkpoint_every_steps=10)  # checkpoints at steps 10, 20, 21
  run.train_and_evaluate(config, str(workdir))
  # no background warm-up: test_no_compilation_after_start_up compiles the other sizes itself
  service = serve.SearchService(str(workdir), warm_up=False)
  with serving(service) as httpd:
    yield httpd, workdir
  service.close()


@contextlib.contextmanager
def serving(service, **kwargs):
  """A ``serve.Server`` of ``service`` on a free port, serving on a thread while in the block."""
  httpd = serve.Server(service, port=0, **kwargs)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  try:
    yield httpd
  finally:
    httpd.shutdown()
    httpd.server_close()


def get(httpd, path):
  """(status, parsed JSON or bytes) of a GET."""
  try:
    with urllib.request.urlopen(httpd.url.rstrip("/") + path, timeout=60) as response:
      body, status, kind = response.read(), response.status, response.headers["Content-Type"]
  except urllib.error.HTTPError as e:
    body, status, kind = e.read(), e.code, e.headers["Content-Type"]
  return status, json.loads(body) if kind == "application/json" else body


def post(httpd, path, body: bytes, headers=None):
  host, port = httpd.server_address[:2]
  conn = http.client.HTTPConnection(host, port, timeout=60)
  try:
    conn.request("POST", path, body=body, headers=headers or {})
    response = conn.getresponse()
    return response.status, json.loads(response.read())
  finally:
    conn.close()


def raw(httpd, data: bytes) -> bytes:
  """Everything the server sends on one connection for ``data`` until it closes the connection
  (each read waits 30 s at most)."""
  answer = b""
  with socket.create_connection(httpd.server_address[:2], timeout=30) as s:
    s.sendall(data)
    while chunk := s.recv(65536):
      answer += chunk
  return answer


def status_and_error(answer: bytes):
  """(status, the "error" of the JSON body) of a raw HTTP answer."""
  head, _, body = answer.partition(b"\r\n\r\n")
  assert b"content-type: application/json" in head.lower(), head
  error = json.loads(body)["error"]
  assert "\n" not in error
  return int(head.split()[1]), error


def cli_neighbours(workdir, tmp_path, k):
  out = tmp_path / f"nn{k}.npz"
  assert search.main([f"--codes={workdir / 'codes.npz'}", f"--k={k}", f"--output={out}"]) == 0
  with np.load(out) as f:
    return f["indices"], f["distances"]


@pytest.mark.slow
def test_api_equals_the_search_cli(server, tmp_path):
  httpd, workdir = server
  with np.load(workdir / "codes.npz") as f:
    q_labels, db_labels = f["query_labels"], f["db_labels"]
    q_codes, db_codes = f["query_codes"], f["db_codes"]
  aps = metrics.average_precisions(q_codes, db_codes, q_labels, db_labels)
  for k, queries in ((10, range(len(q_labels))), (NUM_DB, (0, 29))):
    idx, dist = cli_neighbours(workdir, tmp_path, k)
    for qi in queries:
      status, answer = get(httpd, f"/api/search?query={qi}&k={k}")
      assert status == 200 and answer["query"] == qi and answer["k"] == k
      got = answer["neighbours"]
      assert [n["index"] for n in got] == idx[qi].tolist()
      assert [n["distance"] for n in got] == dist[qi].tolist()
      assert [n["label"] for n in got] == db_labels[idx[qi]].tolist()
      relevant = db_labels[idx[qi]] == q_labels[qi]
      assert [n["relevant"] for n in got] == relevant.tolist()
      assert answer["label"] == q_labels[qi] and answer["precision"] == relevant.mean()
      assert answer["ap"] == aps[qi]
  results = json.loads((workdir / "results.json").read_text())
  assert np.mean(aps) == pytest.approx(results["mAP"], abs=1e-12)
  status, info = get(httpd, "/api/info")
  assert status == 200 and info["num_database"] == NUM_DB and info["num_queries"] == 30
  assert info["mAP"] == results["mAP"] and info["pictures"] and info["labels"]


@pytest.mark.slow
def test_bad_requests_get_one_line_json_errors(server):
  httpd, _ = server
  for path, status, pattern in (
      ("/api/search?query=0&k=0", 400, "k must be in [1, database size 370], got 0"),
      (f"/api/search?query=0&k={NUM_DB + 1}", 400, "got 371"),
      ("/api/search?query=0&k=ten", 400, "k must be an integer"),
      ("/api/search?query=0", 400, "missing parameter k"),
      ("/api/search?query=30&k=5", 404, "unknown query 30"),
      ("/api/search?query=-1&k=5", 404, "unknown query -1"),
      ("/api/search?query=one&k=5", 400, "query must be an integer"),
      ("/image/db/370.png", 404, "unknown db row 370"),
      ("/nothing", 404, "no such page")):
    got_status, body = get(httpd, path)
    assert got_status == status and set(body) == {"error"}, (path, body)
    assert pattern in body["error"] and "\n" not in body["error"]
  status, body = post(httpd, "/api/upload?k=5", b"not an image at all")
  assert status == 400 and "not a readable image" in body["error"]
  # an oversized upload is refused from its Content-Length, before its body is read
  status, body = post(httpd, "/api/upload?k=5", b"",
                      {"Content-Length": str(serve.Limits().max_body_bytes + 1)})
  assert status == 413 and "larger than" in body["error"]
  status, body = post(httpd, "/api/upload?k=0", b"x")
  assert status == 400 and "k must be" in body["error"]
  status, answer = get(httpd, "/api/search?query=1&k=3")  # still serving
  assert status == 200 and len(answer["neighbours"]) == 3


@pytest.mark.slow
def test_upload_of_a_query_picture_finds_its_neighbours(server):
  httpd, workdir = server
  status, png = get(httpd, "/image/query/4.png")
  assert status == 200
  with Image.open(io.BytesIO(png)) as img:
    assert img.size == (28, 28)
  status, uploaded = post(httpd, "/api/upload?k=12", png, {"Content-Type": "image/png"})
  assert status == 200, uploaded
  _, answer = get(httpd, "/api/search?query=4&k=12")
  assert [(n["index"], n["distance"]) for n in uploaded["neighbours"]] == [
      (n["index"], n["distance"]) for n in answer["neighbours"]]
  assert all(n["relevant"] is None for n in uploaded["neighbours"])
  status, db_png = get(httpd, "/image/db/17.png")
  service = httpd.service
  expected = images.png(images.to_pictures(service.data.eval_rows("db", np.array([17])))[0])
  assert status == 200 and db_png == expected


@pytest.mark.slow
def test_page_in_headless_chromium(server, tmp_path):
  missing = browser_lib.available()
  if missing and os.environ.get("CI"):
    pytest.fail(f"CI must run the browser test, but {missing} (see .ci/run)")
  if missing:
    pytest.skip(f"no headless browser here: {missing} (CI installs them)")
  httpd, workdir = server
  idx, dist = cli_neighbours(workdir, tmp_path, 7)
  with np.load(workdir / "codes.npz") as f:
    relevant = f["db_labels"][idx] == f["query_labels"][:, None]
  browser = browser_lib.Browser()
  try:
    cards = browser_lib.search_in_page(browser, httpd.url, 12, 7)
    assert cards == [(int(i), int(d), str(bool(r)).lower())
                     for i, d, r in zip(idx[12], dist[12], relevant[12])]
    assert "query 12" in browser.text(browser.find("#query-text"))
    assert browser.count("link[rel=icon]") == 1
    # an error is shown in the page, the previous results are gone, and the next search works
    browser.type(browser.find("#k"), "0")
    browser.click(browser.find("#search"))
    browser.find("#results[data-done=error]")
    assert "k must be in" in browser.text(browser.find("#error"))
    assert browser.count(".neighbour") == 0 and browser.count("#query *") == 0
    # while a search runs (held here by the service's lock) the page says so, without old results
    browser.type(browser.find("#k"), "7")
    browser.click(browser.find("#search"))
    browser.find("#results[data-done=true]")
    with httpd.service.lock:
      browser.type(browser.find("#query-index"), "5")
      browser.click(browser.find("#search"))
      browser.find("#results[data-done=false]")
      assert "searching" in browser.text(browser.find("#status"))
      assert browser.count(".neighbour") == 0 and browser.text(browser.find("#error")) == ""
    browser.find("#results[data-done=true][data-query='5']")
    assert browser.text(browser.find("#status")) == ""
    cards = browser_lib.search_in_page(browser, httpd.url, 3, 7)
    assert [c[0] for c in cards] == idx[3].tolist()
    # upload the picture of query 3: same neighbours
    status, png = get(httpd, "/image/query/3.png")
    assert status == 200
    (tmp_path / "q3.png").write_bytes(png)
    browser.type(browser.find("#upload"), str(tmp_path / "q3.png"))
    browser.click(browser.find("#search-upload"))
    browser.find("#results[data-done=true][data-source=upload]")
    uploaded = [int(browser.attribute(c, "data-index")) for c in browser.find_all(".neighbour")]
    assert uploaded == idx[3].tolist()
    with Image.open(io.BytesIO(browser.screenshot())) as img:
      assert img.format == "PNG" and img.size[0] > 500
  finally:
    browser.close()


def png_header(width: int, height: int) -> bytes:
  """A PNG that declares width x height 8-bit grey pixels and holds one empty row (a bomb)."""
  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data))
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0,
                                                            0, 0))
          + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))


@pytest.mark.slow
def test_batch_and_code_queries_equal_the_search_cli(server, tmp_path):
  httpd, workdir = server
  idx, dist = cli_neighbours(workdir, tmp_path, 20)
  with np.load(workdir / "codes.npz") as f:
    q_codes, num_bits = f["query_codes"], int(f["num_bits"])
  queries = [5, 0, 29, 5]
  status, answer = post(httpd, "/api/search", json.dumps({"k": 20, "queries": queries}).encode())
  assert status == 200 and answer["k"] == 20
  for q, result in zip(queries, answer["results"]):
    assert result == get(httpd, f"/api/search?query={q}&k=20")[1]
    assert [n["index"] for n in result["neighbours"]] == idx[q].tolist()
  signs = np.where(np.asarray(retrieval.unpack_codes(q_codes, num_bits)) > 0, 1, -1)
  for codes in ([[f"{w:x}" for w in q_codes[q]] for q in queries],
                [signs[q].tolist() for q in queries]):
    status, answer = post(httpd, "/api/search", json.dumps({"k": 20, "codes": codes}).encode())
    assert status == 200, answer
    for q, result in zip(queries, answer["results"]):
      assert [n["index"] for n in result["neighbours"]] == idx[q].tolist()
      assert [n["distance"] for n in result["neighbours"]] == dist[q].tolist()
  for body, pattern in ((b"[1]", "JSON object"), (b"{not json", "not valid JSON"),
                        (b'{"k":3', "not valid JSON"), (b"[" * 2000 + b"]" * 2000, "deeper than"),
                        (b'{"queries": [1]}', "missing parameter k"),
                        (b'{"k": 3}', "either queries"),
                        (b'{"k": 3, "queries": [30]}', "unknown query 30"),
                        (b'{"k": 3, "queries": []}', "list of 1 to"),
                        (b'{"k": 3, "codes": [["zz"]]}', "code 0 must be"),
                        (b'{"k": 3, "codes": [["ffffffffff"]]}', "code 0 must be"),
                        (json.dumps({"k": 3, "codes": [[0] * num_bits]}).encode(), "+1 / -1")):
    status, error = post(httpd, "/api/search", body)
    assert status in (400, 404) and pattern in error["error"], (body, error)
  status, health = get(httpd, "/healthz")
  assert status == 200 and health["status"] == "ok" and NUM_DB in health["compiled"]


@pytest.mark.slow
def test_no_compilation_after_start_up(server):
  """Every search, upload and picture after start-up runs compiled code; before the background
  warm-up a k of an uncompiled size is answered by the database-size search, cut to k."""
  httpd, _ = server
  service = httpd.service
  compiles = []

  def listener(event, seconds, **_):
    if "backend_compile" in event:
      compiles.append(threading.current_thread().name)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    before = list(service.compiled)
    for k in (1, 16, 100, NUM_DB):
      assert get(httpd, f"/api/search?query=3&k={k}")[0] == 200
    assert compiles == [] and service.compiled == before
    service.compile_sizes()  # the background warm-up, here on this thread
    assert service.compiled == [16, 32, 64, 128, 256, NUM_DB] and len(compiles) > 0
    compiles.clear()
    _, png = get(httpd, "/image/query/2.png")
    for k in (1, 17, 33, 64, 65, 200, 300, NUM_DB):
      assert get(httpd, f"/api/search?query=2&k={k}")[0] == 200
      assert post(httpd, f"/api/upload?k={k}", png)[0] == 200
      assert post(httpd, "/api/search",
                  json.dumps({"k": k, "queries": list(range(k % 7 + 1))}).encode())[0] == 200
    assert get(httpd, "/image/db/100.png")[0] == 200
    assert compiles == []
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


@pytest.mark.slow
def test_malformed_requests_are_json_4xx(server):
  httpd, _ = server
  huge = "9" * 5000
  assert get(httpd, f"/image/db/{huge}.png") == (
      404, {"error": f"unknown db row '{huge[:24]}... (5002 characters)"})
  assert get(httpd, f"/api/search?query=1&k={huge}")[0] == 400
  assert get(httpd, "/api/search?query=%D9%A3&k=3")[0] == 400  # an Arabic-Indic digit
  assert get(httpd, "/image/other/1.png") == (404, {"error": "no such page: /image/other/1.png"})
  for length in ("9" * 5001, "１２", "12x"):
    answer = raw(httpd, f"POST /api/upload?k=3 HTTP/1.1\r\nHost: localhost\r\nContent-Length: {length}"
                 "\r\n\r\n".encode())
    assert status_and_error(answer)[0] == 400, (length, answer)
  assert status_and_error(raw(httpd, b"NOT HTTP\r\n\r\n"))[0] == 400
  # item 20 of issue 36: a 19-digit Content-Length is a body too large, not a malformed request
  status, error = status_and_error(raw(httpd, b"POST /api/upload?k=3 HTTP/1.1\r\nHost: localhost"
                                       b"\r\nContent-Length: 9999999999999999999\r\n\r\n"))
  assert status == 413 and "--max_body_bytes" in error, error
  # HTTP/1.0 with keep-alive: a whole answer and a closed connection (raw reads to the close)
  answer = raw(httpd, b"GET /api/search?query=1&k=2 HTTP/1.0\r\nHost: localhost\r\n"
               b"Connection: keep-alive\r\n\r\n")
  head, _, body = answer.partition(b"\r\n\r\n")
  assert b" 200 " in head.split(b"\r\n")[0] and len(json.loads(body)["neighbours"]) == 2
  status, error = post(httpd, "/api/upload?k=3", png_header(20000, 20000))
  assert status == 413 and "decompression bomb" in error["error"]
  status, error = post(httpd, "/api/upload?k=3", png_header(7000, 7000))
  assert status == 413 and "larger than 40000000 pixels" in error["error"]
  status, error = post(httpd, "/api/search?k=3", b"x", {"Content-Type": "text/plain"})
  assert status == 400 and "not valid JSON" in error["error"]
  assert post(httpd, "/nothing", b"x")[1] == {"error": "no such endpoint: POST /nothing"}
  assert post(httpd, "/api/info", b"x")[0] == 405


def test_allowed_hosts():
  assert serve.allowed_hosts("127.0.0.1") == {"localhost", "127.0.0.1", "::1"}
  assert serve.allowed_hosts("10.1.2.3", ["Search.Example"]) >= {"10.1.2.3", "search.example"}
  assert serve.allowed_hosts("0.0.0.0", ["*"]) is None
  with pytest.raises(ValueError, match="--allowed_hosts"):
    serve.allowed_hosts("0.0.0.0")
  assert serve.main(["--workdir=/nonexistent", "--host=::"]) == 2
  with pytest.raises(ValueError, match="--max_uploads must be > 0"):
    serve.Limits(max_uploads=0).check()


@pytest.mark.slow
def test_host_header_allow_list(server):
  httpd, _ = server
  with serving(httpd.service, hosts=serve.allowed_hosts("0.0.0.0", ["search.example"])) as other:
    for host, status in (("search.example:8000", 200), ("localhost", 200), ("[::1]:80", 200),
                         ("evil.example", 400), ("search.example.evil", 400)):
      answer = raw(other, f"GET /api/info HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                   .encode())
      assert int(answer.split()[1]) == status, (host, answer)
    assert "not allowed" in status_and_error(raw(
        other, b"GET / HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"))[1]


@pytest.mark.slow
def test_timeouts_and_size_limits(server):
  """Slow headers, slow bodies, idle keep-alive connections and oversized headers or bodies are
  answered (JSON 408 / 413 / 431) and closed by the server (``raw`` returns at the close)."""
  httpd, _ = server
  limits = serve.Limits(header_timeout=0.3, body_timeout=0.3, keep_alive_timeout=0.3,
                        max_header_bytes=4096, max_body_bytes=1000)
  with serving(httpd.service, limits=limits) as small:
    assert status_and_error(raw(small, b""))[0] == 408  # a connection that sends nothing
    status, error = status_and_error(raw(small, b"GET /api/info HTTP/1.1\r\nHost: localhost\r\n"))
    assert status == 408 and "--header_timeout" in error
    status, error = status_and_error(raw(small, b"POST /api/upload?k=1 HTTP/1.1\r\nHost: localhost\r\n"
                                          b"Content-Length: 100\r\n\r\n0123456789"))
    assert status == 408 and "--body_timeout" in error, error
    # an idle keep-alive connection: one whole answer, then the server closes
    answer = raw(small, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"}")
    # a second request after a first one must complete its headers in time too
    answer = raw(small, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\nGET /healthz HTTP/1.1\r\n")
    assert answer.startswith(b"HTTP/1.1 200") and b"--header_timeout" in answer
    status, error = status_and_error(raw(small, b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: "
                                          + b"a" * 5000 + b"\r\n\r\n"))
    assert status == 431 and "--max_header_bytes" in error
    status, error = post(small, "/api/upload?k=1", b"x" * 1001)
    assert status == 413 and "--max_body_bytes" in error["error"]
    chunked = b"".join(b"%x\r\n%s\r\n" % (300, b"x" * 300) for _ in range(4)) + b"0\r\n\r\n"
    status, error = status_and_error(raw(small, b"POST /api/search HTTP/1.1\r\nHost: localhost\r\n"
                                          b"Transfer-Encoding: chunked\r\n\r\n" + chunked))
    assert status == 413
    assert get(small, "/api/search?query=1&k=2")[0] == 200  # still serving


@pytest.mark.slow
def test_connection_cap(server):
  httpd, _ = server
  with serving(httpd.service, limits=serve.Limits(max_connections=3)) as capped:
    held = [http.client.HTTPConnection(*capped.server_address[:2], timeout=30) for _ in range(3)]
    try:
      for conn in held:  # answered, so accepted and counted
        conn.request("GET", "/healthz")
        assert conn.getresponse().read()
      status, error = get(capped, "/api/info")
      assert status == 503 and "--max_connections" in error["error"]
      held.pop().close()
      for _ in range(1000):  # until the server has seen the close
        status, _ = get(capped, "/api/info")
        if status == 200:
          break
      assert status == 200
    finally:
      for conn in held:
        conn.close()


@pytest.mark.slow
def test_upload_slots_bound_concurrent_decodes(server):
  """With one upload slot, an upload waits for it while another holds it (blocked here in the
  encoder by the service's lock) and gets a 503 after --queue_timeout; pixels past --max_pixels
  are refused from the image header."""
  httpd, _ = server
  _, png = get(httpd, "/image/query/1.png")
  limits = serve.Limits(max_uploads=1, queue_timeout=0.3, max_pixels=28 * 28)
  with serving(httpd.service, limits=limits) as one, \
      concurrent.futures.ThreadPoolExecutor(2) as pool:
    with httpd.service.lock:
      uploads = [pool.submit(post, one, "/api/upload?k=4", png) for _ in range(2)]
      done, _ = concurrent.futures.wait(uploads, timeout=60,
                                        return_when=concurrent.futures.FIRST_COMPLETED)
      status, error = done.pop().result()
      assert status == 503 and "--queue_timeout" in error["error"]
    assert sorted(u.result()[0] for u in uploads) == [200, 503]
    status, error = post(one, "/api/upload?k=4", png_header(29, 28))
    assert status == 413 and "larger than 784 pixels" in error["error"]


class Seen(logging.Handler):
  """Keeps every log record; ``seen`` is set once a message contains ``text``."""

  def __init__(self, text):
    super().__init__()
    self.text, self.records, self.seen = text, [], threading.Event()

  def emit(self, record):
    self.records.append(record)
    if self.text in record.getMessage():
      self.seen.set()


@pytest.mark.slow
def test_access_log_and_clients_that_go_away(server, caplog):
  """One access-log line per request, and none of warning level or with a traceback for a client
  that left before its answer."""
  httpd, _ = server
  caplog.set_level(logging.INFO, logger="orthohash_jax.serve")
  seen, info = Seen("/api/search?query=1&k=3 "), Seen('"GET /api/info HTTP/1.1" 200')
  logging.getLogger().addHandler(seen)
  logging.getLogger().addHandler(info)
  try:
    with httpd.service.lock:  # the search waits, so the client is gone before the answer
      with socket.create_connection(httpd.server_address[:2], timeout=30) as s:
        s.sendall(b"GET /api/search?query=1&k=3 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert seen.seen.wait(60)
    get(httpd, "/api/info")
    assert info.seen.wait(60)  # the access line is logged after the answer was sent
  finally:
    logging.getLogger().removeHandler(seen)
    logging.getLogger().removeHandler(info)
  lines = [r.getMessage() for r in seen.records if r.name == "orthohash_jax.serve"]
  assert sum("/api/search?query=1&k=3 HTTP/1.1" in line for line in lines) == 1
  assert sum('"GET /api/info HTTP/1.1" 200' in line for line in lines) == 1
  assert not [r for r in seen.records if r.levelno >= logging.WARNING or r.exc_info]


# ---- issue 36: the service's defects found by an attacker and a new user ----
def test_a_port_in_use_is_refused_before_the_run_is_loaded(tmp_path, capsys):
  """The port is bound first: a taken port fails at once (the workdir here does not even exist,
  and the one error line names the port, not the run)."""
  with socket.socket() as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    assert serve.main([f"--workdir={tmp_path / 'none'}", f"--port={port}"]) == 2
  assert capsys.readouterr().err.splitlines() == [
      f"error: cannot listen on 127.0.0.1:{port} (Address already in use)"]


@pytest.mark.parametrize("host", ["", "0", "0x0", "0.0.0.0", "000.0.0.0", "::", "::0",
                                  "0:0::0", "10.1.2.3"])
def test_every_address_that_is_not_loopback_needs_allowed_hosts(host, capsys):
  """Decided on the address the host resolves to, not on its spelling."""
  with pytest.raises(ValueError, match="--allowed_hosts"):
    serve.allowed_hosts(host)
  assert serve.allowed_hosts(host, ["search.example"]) >= {"search.example", "localhost"}
  assert serve.main(["--workdir=/nonexistent", f"--host={host}", "--port=0"]) == 2
  (line,) = capsys.readouterr().err.splitlines()
  assert line.startswith("error: ") and "--allowed_hosts" in line


def test_host_is_resolved_once_for_the_allow_list_and_the_bind(monkeypatch):
  """--host=localhost: the allow-list names the address the socket is bound to, also when each
  lookup of the name gives another loopback address (as DNS round robin may)."""
  sock, hosts = serve.listen_allowed("localhost", 0)
  with sock:
    assert sock.getsockname()[0] in hosts and "localhost" in hosts
  real, answers = socket.getaddrinfo, iter(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
  monkeypatch.setattr(socket, "getaddrinfo", lambda host, *args, **kwargs: real(
      next(answers) if host == "localhost" else host, *args, **kwargs))
  sock, hosts = serve.listen_allowed("localhost", 0)
  with sock:
    assert sock.getsockname()[0] == "127.0.0.2" and "127.0.0.2" in hosts
    assert "127.0.0.3" not in hosts


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1", "0x7f.1", "127.0.0.2", "localhost", "::1",
                                  "0:0::1"])
def test_loopback_addresses_need_no_allowed_hosts(host):
  assert serve.allowed_hosts(host) >= {"localhost", "127.0.0.1", "::1"}


def test_json_bodies_are_bounded_before_parsing():
  """Not JSON: said so (400); nested deeper than MAX_JSON_DEPTH, whatever brackets its strings
  hold: 400 before parsing (no RecursionError); larger than the bound: 413."""
  body = b'{"k": 3, "codes": [["ff", "0"]], "note": "]]]] [[[[ \\"]] {{{{{{{{{{{{"}'
  assert serve.json_body(body, len(body)) == json.loads(body)
  deep = b"[" * 2000 + b"]" * 2000
  for body, status, pattern in (
      (b'{"k":3', 400, "the body is not valid JSON (Expecting ',' delimiter: line 1 column 7"),
      (b"{not json", 400, "not valid JSON"), (b"\xff\xfe{}", 400, "not valid JSON"),
      (deep, 400, f"nested deeper than {serve.MAX_JSON_DEPTH} levels"),
      (b'{"a": "' + b"]" * 3000 + b'", "b": ' + deep + b"}", 400, "nested deeper than"),
      (b'{"a": "x\\"' + b"]" * 3000 + b'", "b": ' + deep + b"}", 400, "nested deeper than"),
      (b'{"k": 3}' + b" " * 100, 413, "JSON body of 108 bytes is larger than 100 bytes")):
    with pytest.raises(serve.RequestError, match=re.escape(pattern)) as e:
      serve.json_body(body, 100 if status == 413 else len(body))
    assert e.value.status == status


def test_access_log_escapes_control_characters(caplog):
  """No forged lines (%0a) and no raw terminal escapes (%1b) in the log: control characters,
  quotes and backslashes are written as \\xNN."""
  caplog.set_level(logging.INFO, logger="orthohash_jax.serve")
  serve._access(("127.0.0.1", 5), 'GET /a\n127.0.0.1:1 "GET /forged HTTP/1.1" 200\x1b[2J\x9b\\ '
                "HTTP/1.1", 404, 0, 0.0)
  (line,) = [r.getMessage() for r in caplog.records]
  assert not re.search("[\x00-\x1f\x7f-\x9f]", line)
  assert "/a\\x0a127.0.0.1:1 \\x22GET /forged HTTP/1.1\\x22 200\\x1b[2J\\x9b\\x5c HTTP" in line


def tiny_codes(workdir):
  codes_file.save_codes(str(workdir / "codes.npz"), {
      "query_codes": np.zeros((2, 1), np.uint32), "db_codes": np.zeros((3, 1), np.uint32),
      "query_labels": np.zeros(2, np.int32), "db_labels": np.zeros(3, np.int32)}, 16, {})


@pytest.mark.parametrize("text, message", [
    ('{"mAP": 0.5', "is not readable JSON"), ("[1]", "must hold a JSON object, got list"),
    ('{"mAP": "high"}', "mAP must be a number or null, got 'high'"),
    ('{"mAP": 0.5, "steps": 1.5}', "steps must be an integer, got 1.5")])
def test_a_damaged_results_json_is_one_line_naming_it(tmp_path, capsys, text, message):
  tiny_codes(tmp_path)
  (tmp_path / "results.json").write_text(text)
  assert serve.main([f"--workdir={tmp_path}", "--port=0"]) == 2
  (line,) = capsys.readouterr().err.splitlines()
  assert line.startswith(f"error: {tmp_path / 'results.json'}") and message in line, line


@pytest.mark.slow
def test_host_header_is_required_and_single(server):
  httpd, _ = server
  for headers in (b"", b"Host: localhost\r\nHost: evil.example\r\n",
                  b"Host: localhost\r\nHost: localhost\r\n"):
    for version in (b"1.1", b"1.0"):
      status, error = status_and_error(raw(httpd, b"GET /api/info HTTP/" + version + b"\r\n"
                                           + headers + b"Connection: close\r\n\r\n"))
      assert status == 400 and "exactly one Host header" in error, (headers, error)


def search_request(k: int, queries: int) -> bytes:
  body = json.dumps({"k": k, "queries": [i % 30 for i in range(queries)]}).encode()
  return (b"POST /api/search HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
          b"Content-Length: %d\r\n\r\n" % len(body)) + body


def small_send_buffers():
  """A listening socket whose connections get 64 KiB send buffers (inherited on accept), so an
  answer of megabytes stays in the server's transport whatever the host's TCP buffer tuning."""
  sock = serve.listen("127.0.0.1", 0)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
  return sock


def slow_reader(httpd):
  """A connection with a 4 KiB receive buffer (set before connecting), so an answer it does not
  read stays in the server's buffers."""
  s = socket.socket()
  s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
  s.settimeout(30)
  s.connect(httpd.server_address[:2])
  return s


def read_all(s) -> bytes:
  data = b""
  try:
    while chunk := s.recv(1 << 20):
      data += chunk
  except ConnectionResetError:
    pass
  return data


def until(condition):
  for _ in range(2000):
    if condition():
      return
  raise AssertionError("condition not met after 2000 tries")


@pytest.mark.slow
def test_answers_count_against_the_memory_budget(server):
  """Item 10: an answer's bytes are reserved before it is built, held until the client has read
  it, and refused past --max_answer_bytes (413) or, while others hold the total
  --answer_memory_bytes, after --queue_timeout (503)."""
  httpd, _ = server
  service = httpd.service
  need = service.answer_bytes(1024, 256)
  searched = []
  topk = service.topk
  service.topk = lambda codes, k: searched.append(len(codes)) or topk(codes, k)
  try:
    with serving(service, limits=serve.Limits(max_answer_bytes=need - 1)) as small:
      status, error = post(small, "/api/search",
                           search_request(256, 1024).split(b"\r\n\r\n")[1])
      assert status == 413 and "--max_answer_bytes" in error["error"], error
      assert not searched  # refused before the search, as docs/serving.md says
      assert get(small, "/api/search?query=1&k=3")[0] == 200 and searched == [1]
  finally:
    service.topk = topk
  limits = serve.Limits(answer_memory_bytes=need + need // 2, queue_timeout=0.5, write_timeout=600)
  with serving(service, limits=limits, sock=small_send_buffers()) as budget:
    held = slow_reader(budget)
    try:
      held.sendall(search_request(256, 1024))
      until(lambda: get(budget, "/healthz")[1]["answer_bytes"] == need)
      status, error = post(budget, "/api/search", search_request(256, 1024).split(b"\r\n\r\n")[1])
      assert status == 503 and "--answer_memory_bytes" in error["error"], error
      assert get(budget, "/api/search?query=1&k=3")[0] == 200  # a small answer still fits
    finally:
      held.close()
    until(lambda: get(budget, "/healthz")[1]["answer_bytes"] == 0)
    status, answer = post(budget, "/api/search", search_request(256, 1024).split(b"\r\n\r\n")[1])
    assert status == 200 and len(answer["results"]) == 1024


@pytest.mark.slow
def test_an_answer_nobody_reads_is_closed_after_the_write_timeout(server):
  """Item 10: the server gives up on an answer its client does not read within --write_timeout
  (the access line comes then), closing the connection before the whole answer was sent."""
  httpd, _ = server
  seen = Seen('"POST /api/search HTTP/1.1" 200')
  logging.getLogger().addHandler(seen)
  logger = logging.getLogger("orthohash_jax.serve")
  level = logger.level
  logger.setLevel(logging.INFO)
  try:
    with serving(httpd.service, limits=serve.Limits(write_timeout=0.5),
                 sock=small_send_buffers()) as timed, \
        slow_reader(timed) as s:
      s.sendall(search_request(256, 1024))
      assert seen.seen.wait(60)
      head, _, rest = read_all(s).partition(b"\r\n\r\n")
      length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))
      assert head.startswith(b"HTTP/1.1 200") and len(rest) < length > 10 << 20
      assert get(timed, "/healthz")[1]["answer_bytes"] == 0
  finally:
    logger.setLevel(level)
    logging.getLogger().removeHandler(seen)


@pytest.mark.slow
def test_a_body_slot_is_held_only_while_bytes_arrive(server):
  """Item 11: a request that sent its headers but no body holds no slot; a body whose bytes
  stop coming (below --min_body_rate) gets a 408 long before --body_timeout."""
  httpd, _ = server
  limits = serve.Limits(max_uploads=1, queue_timeout=2, body_timeout=600, min_body_rate=1000)
  with serving(httpd.service, limits=limits) as one:
    idle = [socket.create_connection(one.server_address[:2], timeout=30) for _ in range(2)]
    try:
      for s in idle:
        s.sendall(b"POST /api/search HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n")
      assert get(one, "/healthz")[0] == 200  # the loop has read those headers by now
      status, answer = post(one, "/api/search", json.dumps({"k": 3, "queries": [1]}).encode())
      assert status == 200, answer
    finally:
      for s in idle:
        s.close()
    status, error = status_and_error(raw(one, b"POST /api/search HTTP/1.1\r\nHost: localhost\r\n"
                                         b"Content-Length: 100\r\n\r\n{"))
    assert status == 408 and "--min_body_rate" in error, error


@pytest.mark.slow
def test_codes_rows_and_the_checkpoint_behind_uploads_are_checked(server, tmp_path, capsys):
  """Item 20: codes.npz's rows must match the run's data; when the latest checkpoint was
  quarantined, the model left is not the one that made codes.npz: one warning line, /api/info
  says so and uploads are refused (409)."""
  httpd, workdir = server
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns(".lock"))
  with np.load(copy / "codes.npz") as f:
    codes = dict(f)
  codes_file.write_npz(copy / "codes.npz", dict(codes, db_codes=codes["db_codes"][:-1],
                                                db_labels=codes["db_labels"][:-1]))
  with pytest.raises(ValueError, match=f"codes.npz holds {NUM_DB - 1} database rows, the run's "
                     f"data {NUM_DB}"):
    serve.SearchService(str(copy), warm_up=False)
  codes_file.write_npz(copy / "codes.npz", codes)
  steps = sorted(int(p.name) for p in (copy / "checkpoints").iterdir() if p.name.isdigit())
  (copy / "checkpoints_corrupt").mkdir()
  shutil.move(copy / "checkpoints" / str(steps[-1]), copy / "checkpoints_corrupt")
  capsys.readouterr()
  service = serve.SearchService(str(copy), warm_up=False)
  try:
    (warning,) = [l for l in capsys.readouterr().err.splitlines() if "warning" in l]
    assert (f"codes.npz was made by the model of step {steps[-1]}" in warning
            and f"latest usable checkpoint is step {steps[-2]}" in warning), warning
    info = service.info()
    assert (info["codes_step"], info["checkpoint_step"], info["uploads"]) == (
        steps[-1], steps[-2], False)
    _, png = get(httpd, "/image/query/1.png")
    with serving(service) as stale:
      status, error = post(stale, "/api/upload?k=3", png)
      assert status == 409 and f"step {steps[-2]}" in error["error"], error
      assert get(stale, "/api/search?query=1&k=3")[0] == 200
  finally:
    service.close()
  assert httpd.service.info()["uploads"] is True


@pytest.mark.slow
def test_the_memory_given_to_an_answer_bounds_what_building_it_takes(server):
  """``answer_bytes`` (what the budget reserves) is at least the peak Python memory of building
  the answer, for one long result and for the largest batch, and at least its JSON bytes."""
  service = server[0].service
  rng = np.random.default_rng(0)
  for queries, k in ((1, NUM_DB), (1024, 256), (30, 1)):
    dist = rng.integers(0, 17, (queries, k)).astype(np.int32)
    idx = rng.integers(0, NUM_DB, (queries, k)).astype(np.int32)
    rows = [q % 30 for q in range(queries)]
    for batch in (rows, None):
      tracemalloc.start()
      try:
        body = service.batch_answer(k, batch, dist, idx)
        peak = tracemalloc.get_traced_memory()[1]
      finally:
        tracemalloc.stop()
      answer = json.loads(body)
      assert len(answer["results"]) == queries and answer["results"][-1]["neighbours"][-1] == {
          "index": int(idx[-1, -1]), "distance": int(dist[-1, -1]),
          "label": service.codes["db_labels"][idx[-1, -1]].item(),
          "relevant": None if batch is None else bool(
              service.codes["db_labels"][idx[-1, -1]] == service.codes["query_labels"][rows[-1]])}
      assert len(body) <= peak <= service.answer_bytes(queries, k), (queries, k, peak)
