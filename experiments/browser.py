r"""Headless Chromium driven over the W3C WebDriver protocol (standard library only), and a
screenshot of the search page of a run.

  python -m experiments.browser --workdir=runs/fmnist64 --out=docs/serve.png [--query=7 --k=10]

needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get update && apt-get install -y
chromium chromium-driver``, as root). ``Browser`` starts ``chromedriver`` on a free local port
and one headless session; ``tests/test_serve.py`` uses it to load the page, run searches and read
the rendered neighbours. Element lookups wait (the session's implicit wait, ``WAIT_MS``) until
the element exists, so a test waits for a marker the page sets when it has rendered (e.g.
``#results[data-done=true]``) rather than for a time.
"""
import argparse
import base64
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from orthohash_jax import serve

CHROMIUM, DRIVER = "chromium", "chromedriver"
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference
WAIT_MS = 20_000
START_SECONDS = 30


def available() -> str:
  """"" when chromium and chromedriver are installed, else what is missing."""
  missing = [name for name in (CHROMIUM, DRIVER) if not shutil.which(name)]
  return (f"{' and '.join(missing)} not installed (apt-get install chromium chromium-driver)"
          if missing else "")


def free_port() -> int:
  """A TCP port on 127.0.0.1 that was free a moment ago (servers, jax.distributed coordinators)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Browser:
  """One headless Chromium session (``close()`` ends it and the driver)."""

  def __init__(self, width: int = 1280, height: int = 900):
    port = free_port()
    self._driver = subprocess.Popen([shutil.which(DRIVER), f"--port={port}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    self._base = f"http://127.0.0.1:{port}"
    self._wait_ready()
    caps = {"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {"binary": shutil.which(CHROMIUM), "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--window-size={width},{height}"]}}}}
    try:
      self._session = self._call("POST", "/session", caps)["sessionId"]
    except Exception:
      self._driver.kill()
      self._driver.wait()
      raise
    self._call("POST", f"/session/{self._session}/timeouts", {"implicit": WAIT_MS})

  def _wait_ready(self):
    deadline = time.monotonic() + START_SECONDS
    while True:
      try:
        if self._call("GET", "/status").get("ready"):
          return
      except (urllib.error.URLError, ConnectionError):
        pass
      if time.monotonic() > deadline or self._driver.poll() is not None:
        self._driver.kill()
        raise RuntimeError("chromedriver did not start")
      time.sleep(0.05)

  def _call(self, method: str, path: str, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(self._base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
      with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)["value"]
    except urllib.error.HTTPError as e:
      value = json.load(e).get("value", {})
      raise RuntimeError(f"webdriver {method} {path}: {value.get('error')}: "
                         f"{str(value.get('message', '')).splitlines()[0]}") from None

  def _session_call(self, method: str, path: str, body=None):
    return self._call(method, f"/session/{self._session}{path}", body)

  def get(self, url: str) -> None:
    self._session_call("POST", "/url", {"url": url})

  def find(self, css: str) -> str:
    """The first element matching ``css`` (waits until there is one)."""
    return self._session_call("POST", "/element", {"using": "css selector",
                                                   "value": css})[ELEMENT]

  def find_all(self, css: str) -> list:
    return [e[ELEMENT] for e in self._session_call(
        "POST", "/elements", {"using": "css selector", "value": css})]

  def count(self, css: str) -> int:
    """How many elements match ``css`` now (no wait, unlike ``find_all``)."""
    return self._session_call("POST", "/execute/sync", {
        "script": "return document.querySelectorAll(arguments[0]).length", "args": [css]})

  def click(self, element: str) -> None:
    self._session_call("POST", f"/element/{element}/click", {})

  def type(self, element: str, text: str) -> None:
    """Replaces the value of an input (a file input: the path of a local file)."""
    if self.attribute(element, "type") != "file":
      self._session_call("POST", f"/element/{element}/clear", {})
    self._session_call("POST", f"/element/{element}/value", {"text": text})

  def text(self, element: str) -> str:
    return self._session_call("GET", f"/element/{element}/text")

  def attribute(self, element: str, name: str):
    return self._session_call("GET", f"/element/{element}/attribute/{name}")

  def screenshot(self) -> bytes:
    return base64.b64decode(self._session_call("GET", "/screenshot"))

  def close(self) -> None:
    try:
      self._call("DELETE", f"/session/{self._session}")
    finally:
      self._driver.terminate()
      self._driver.wait(timeout=30)


def search_in_page(browser: Browser, url: str, query: int, k: int) -> list:
  """Loads the page, searches query ``query`` with ``k`` neighbours; returns the rendered cards
  as (index, distance, relevant) tuples."""
  browser.get(url)
  browser.find("body[data-ready=true]")
  browser.type(browser.find("#query-index"), str(query))
  browser.type(browser.find("#k"), str(k))
  browser.click(browser.find("#search"))
  browser.find(f"#results[data-done=true][data-query='{query}']")
  return [(int(browser.attribute(c, "data-index")), int(browser.attribute(c, "data-distance")),
           browser.attribute(c, "data-relevant")) for c in browser.find_all(".neighbour")]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--query", type=int, default=0)
  parser.add_argument("--k", type=int, default=10)
  args = parser.parse_args(argv)
  if available():
    print(f"error: {available()}", file=sys.stderr)
    return 2
  service = serve.SearchService(args.workdir)
  server = serve.Server(service, port=0)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  browser = Browser(width=1200, height=560)
  try:
    search_in_page(browser, server.url, args.query, args.k)
    with open(args.out, "wb") as f:
      f.write(browser.screenshot())
  finally:
    browser.close()
    server.shutdown()
    server.server_close()
    service.close()
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
