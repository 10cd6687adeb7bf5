"""The search page (``serve``): its JSON API against a real server on a free local port (equal to
the search CLI, errors as one-line JSON), uploads, pictures, and the page in headless Chromium."""
import http.client
import io
import json
import os
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, write_idx
from orthohash_jax import config_base, images, metrics, run, search, serve

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
                num_devices=1)
  run.train_and_evaluate(config, str(workdir))
  service = serve.SearchService(str(workdir))
  httpd = serve.Server(service, port=0)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield httpd, workdir
  httpd.shutdown()
  httpd.server_close()
  service.close()


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
                      {"Content-Length": str(serve.MAX_UPLOAD_BYTES + 1)})
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
    # an error is shown in the page, and the next search works
    browser.type(browser.find("#k"), "0")
    browser.click(browser.find("#search"))
    browser.find("#results[data-done=error]")
    assert "k must be in" in browser.text(browser.find("#error"))
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
