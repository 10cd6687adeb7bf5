"""Load test of the search page server: the old standard-library server against the current one,
in one run, on the same finished run and machine.

  flock /tmp/bench.lock python -m experiments.bench_serve --workdir=/tmp/serve_digits [--requests=3000 --seconds=15] \
      [--held=500 --hold_seconds=30 --uploads=16] [--output=bench_serve.json]

The old server is ``orthohash_jax/serve.py`` of ``--old_rev`` (default: the parent of the last
commit that changed how many times ``http.server`` occurs in that file, i.e. the commit before
the server moved to uvicorn), written by ``git show`` into a temporary directory and run from
there against the current package; it is not part of the package. Each server runs as a child
process on a free 127.0.0.1 port (the current one with ``--quiet``: no access log) and is timed
once it answers (the current one also once its background compilation is over, /healthz).
Measured, per server (a small asyncio HTTP/1.1 client, keep-alive connections, nothing but
127.0.0.1):
* load: GET /api/search with random queries, k = 10 and 100 at 16 and 64 concurrent clients,
  each cell until ``--requests`` answers or ``--seconds``: req/s, p50 / p99 / max latency,
  non-200 answers, the server's RSS before and after;
* new k: the first request of each of k = 33, 65, 129, 257 (sizes not searched before);
* held: ``--held`` connections that send a partial header and one more header byte every second
  (reopened when the server closes them), then as many idle ones that send nothing, each for
  ``--hold_seconds``, while a probe (a new connection, GET /api/info) runs every 0.25 s:
  probe p50 / max and failures (no answer within 10 s);
* uploads: ``--uploads`` concurrent uploads of a 6,300 x 6,300 16-bit RGBA PNG (~300 KB): status
  codes, seconds, and the server's peak RSS (sampled every 20 ms);
* big answers (issue 36, item 10): ``--unread`` connections (4 KiB receive buffers) each POST
  {"k": 256, "queries": [1,024 rows]} and read nothing for ``--hold_seconds``: the server's RSS
  before, its peak, and after they closed; then ``--readers`` clients that POST the same batch
  and read the answers, for ``--seconds``: answers, non-200 answers, peak RSS.
``--only=big_answers`` runs only that last cell (e.g. with ``--old_rev`` of the server before a
change).
Prints a markdown table (and writes the rows as JSON to ``--output``).
"""
import argparse
import asyncio
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib

import numpy as np

from experiments.browser import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEW_KS = (33, 65, 129, 257)


def old_server_source(rev: str, name: str = "serve.py") -> str:
  """The text of orthohash_jax/<name> at ``rev`` (default: before the move to uvicorn); "" when
  that revision has no such file."""
  if not rev:
    changed = subprocess.run(["git", "log", "-1", "--format=%H", "-Shttp.server", "--",
                              "orthohash_jax/serve.py"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.strip()
    rev = changed + "^"
  return subprocess.run(["git", "show", f"{rev}:orthohash_jax/{name}"], cwd=ROOT,
                        capture_output=True, text=True).stdout


def rss_mb(pid: int) -> float:
  with open(f"/proc/{pid}/status") as f:
    return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def get_json(port: int, path: str, timeout: float = 10):
  with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
    return json.load(response)


class Child:
  """A server child process on a free port; ``wait_ready`` polls until it answers."""

  def __init__(self, name, argv):
    self.name, self.port = name, free_port()
    self.proc = subprocess.Popen(argv + [f"--port={self.port}"], cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

  def wait_ready(self, health: bool, limit: float = 600) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit:
      if self.proc.poll() is not None:
        raise RuntimeError(f"the {self.name} server exited ({self.proc.returncode})")
      try:
        if not health or not get_json(self.port, "/healthz")["compiling"]:
          get_json(self.port, "/api/info")
          return time.monotonic() - start
      except OSError:
        pass
      time.sleep(0.2)
    raise RuntimeError(f"the {self.name} server did not start within {limit} s")

  def rss(self) -> float:
    return rss_mb(self.proc.pid)

  def stop(self):
    self.proc.terminate()
    try:
      self.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()


async def request(reader, writer, target: bytes, method=b"GET", body=b""):
  """(status, body) of one request on a keep-alive connection."""
  writer.write(b"%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s"
               % (method, target, len(body), body))
  head = await reader.readuntil(b"\r\n\r\n")
  length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:"))
  return int(head.split()[1]), await reader.readexactly(length)


def percentiles(latencies):
  ms = np.asarray(latencies) * 1e3
  return (float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), float(ms.max())) \
      if len(ms) else (float("nan"),) * 3


async def load(port, k, clients, num_queries, count, seconds):
  """GET /api/search load: (answers, non-200, seconds, latencies)."""
  latencies, bad, deadline = [], [0], time.monotonic() + seconds
  rng = random.Random(0)

  async def client():
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
      while len(latencies) < count and time.monotonic() < deadline:
        target = f"/api/search?query={rng.randrange(num_queries)}&k={k}".encode()
        start = time.perf_counter()
        status, _ = await request(reader, writer, target)
        latencies.append(time.perf_counter() - start)
        bad[0] += status != 200
    finally:
      writer.close()

  start = time.monotonic()
  await asyncio.gather(*(client() for _ in range(clients)))
  return len(latencies), bad[0], time.monotonic() - start, latencies


async def held(port, num, seconds, slow: bool):
  """Holds ``num`` slow-header (or idle) connections for ``seconds``, reopening closed ones."""
  stop = time.monotonic() + seconds

  async def holder():
    while time.monotonic() < stop:
      try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
      except OSError:
        await asyncio.sleep(0.5)
        continue
      try:
        if slow:
          writer.write(b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        while time.monotonic() < stop:
          if slow:
            writer.write(b"X")
            await writer.drain()
          try:  # the server closing the connection (or answering) ends this hold
            if await asyncio.wait_for(reader.read(1024), 1.0) == b"":
              break
          except asyncio.TimeoutError:
            pass
      except OSError:
        pass
      finally:
        writer.close()

  await asyncio.gather(*(holder() for _ in range(num)))


def probe_while(port, hold):
  """(latencies, failures) of probes (a new connection, GET /api/info, every 0.25 s) on a thread
  of their own (so that the holders' event loop does not delay them) while ``hold()`` runs."""
  latencies, failed, done = [], [0], threading.Event()

  def probes():
    done.wait(1.0)  # the holders connect first
    while not done.is_set():
      start = time.perf_counter()
      try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
          conn.request("GET", "/api/info")
          status = conn.getresponse().status
          latencies.append(time.perf_counter() - start)
          failed[0] += status != 200
        finally:
          conn.close()
      except OSError:
        failed[0] += 1
      done.wait(0.25)

  thread = threading.Thread(target=probes)
  thread.start()
  try:
    hold()
  finally:
    done.set()
    thread.join()
  return latencies, failed[0]


def big_png(side=6300) -> bytes:
  """A side x side 16-bit RGBA PNG of zeros (~300 KB, ~320 MB of pixels)."""
  def chunk(kind, data):
    return (len(data).to_bytes(4, "big") + kind + data
            + zlib.crc32(kind + data).to_bytes(4, "big"))
  z, row = zlib.compressobj(9), b"\0" * (1 + 8 * side)
  data = b"".join(z.compress(row) for _ in range(side)) + z.flush()
  ihdr = side.to_bytes(4, "big") * 2 + bytes([16, 6, 0, 0, 0])
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


async def uploads(port, png, num):
  """Status codes of ``num`` concurrent uploads of ``png`` (0: the connection failed)."""
  async def one():
    try:
      reader, writer = await asyncio.open_connection("127.0.0.1", port)
      try:
        return (await asyncio.wait_for(request(reader, writer, b"/api/upload?k=10", b"POST",
                                               png), 300))[0]
      finally:
        writer.close()
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
      return 0
  return await asyncio.gather(*(one() for _ in range(num)))


def peak_rss_during(child, fn):
  """(fn(), the child's peak RSS in MB while fn ran, sampled every 20 ms)."""
  peak, done = [child.rss()], threading.Event()

  def sample():
    while not done.wait(0.02):
      peak[0] = max(peak[0], child.rss())

  thread = threading.Thread(target=sample)
  thread.start()
  try:
    return fn(), peak[0]
  finally:
    done.set()
    thread.join()


def batch_request(num_queries: int) -> bytes:
  """POST /api/search of 1,024 query rows (cycling through the query set), k = 256."""
  body = json.dumps({"k": 256, "queries": [q % num_queries for q in range(1024)]}).encode()
  return (b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n"
          % len(body)) + body


def unread_answers(port, num, seconds, data: bytes):
  """Opens ``num`` connections with 4 KiB receive buffers, sends ``data`` on each, reads nothing
  for ``seconds``, then closes them."""
  conns = []
  try:
    for _ in range(num):
      s = socket.socket()
      s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
      s.connect(("127.0.0.1", port))
      s.sendall(data)
      conns.append(s)
    time.sleep(seconds)
  finally:
    for s in conns:
      s.close()


async def reading_clients(port, clients, seconds, data: bytes):
  """(answers, non-200) of ``clients`` connections sending ``data`` and reading each answer."""
  counts, deadline = [0, 0], time.monotonic() + seconds

  async def client():
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
      while time.monotonic() < deadline:
        writer.write(data)
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await reader.readexactly(length)
        counts[0] += 1
        counts[1] += int(head.split()[1]) != 200
    finally:
      writer.close()

  await asyncio.gather(*(client() for _ in range(clients)))
  return counts


def big_answers(child, args, num_queries):
  """The rows of the big-answer cell (module docstring)."""
  data = batch_request(num_queries)
  before = child.rss()
  _, peak = peak_rss_during(child, lambda: unread_answers(child.port, args.unread,
                                                          args.hold_seconds, data))
  time.sleep(1.0)  # the server sees the closes
  yield {"server": child.name, "test": f"{args.unread} unread 1024 x k=256 answers "
         f"{args.hold_seconds:g} s", "RSS MB": f"{before:.0f} -> peak {peak:.0f} -> "
         f"{child.rss():.0f} after"}
  before, start = child.rss(), time.perf_counter()
  (answers, bad), peak = peak_rss_during(child, lambda: asyncio.run(reading_clients(
      child.port, args.readers, args.seconds, data)))
  seconds = time.perf_counter() - start
  yield {"server": child.name, "test": f"{args.readers} reading clients, 1024 x k=256 answers",
         "req/s": answers / seconds, "errors": bad, "seconds": seconds,
         "RSS MB": f"{before:.0f} -> peak {peak:.0f}"}


def bench(child, args, num_queries, png):
  """The rows of one server (a generator: each as soon as it is measured)."""
  if args.only == "big_answers":
    yield from big_answers(child, args, num_queries)
    return
  for k in (10, 100):
    for clients in (16, 64):
      before = child.rss()
      n, bad, seconds, lat = asyncio.run(load(child.port, k, clients, num_queries,
                                              args.requests, args.seconds))
      p50, p99, worst = percentiles(lat)
      yield {"server": child.name, "test": f"load k={k} c={clients}", "req/s": n / seconds,
             "p50 ms": p50, "p99 ms": p99, "max ms": worst, "errors": bad,
             "RSS MB": f"{before:.0f} -> {child.rss():.0f}"}
  lat = []
  for k in NEW_KS:
    start = time.perf_counter()
    get_json(child.port, f"/api/search?query=0&k={k}", timeout=120)
    lat.append(time.perf_counter() - start)
  yield {"server": child.name, "test": f"first request of k={','.join(map(str, NEW_KS))}",
         "p50 ms": percentiles(lat)[0], "max ms": percentiles(lat)[2]}
  for slow in (True, False):
    before = child.rss()
    lat, failed = probe_while(child.port, lambda: asyncio.run(
        held(child.port, args.held, args.hold_seconds, slow)))
    p50, _, worst = percentiles(lat)
    yield {"server": child.name, "test": f"probe, {args.held} held "
           f"{'slow-header' if slow else 'idle'} connections {args.hold_seconds:g} s",
           "p50 ms": p50, "max ms": worst, "errors": failed,
           "RSS MB": f"{before:.0f} -> {child.rss():.0f}"}
  before = child.rss()
  start = time.perf_counter()
  statuses, peak = peak_rss_during(child, lambda: asyncio.run(uploads(child.port, png,
                                                                      args.uploads)))
  yield {"server": child.name, "test": f"{args.uploads} concurrent 6300x6300 uploads",
         "seconds": time.perf_counter() - start, "errors": sum(s != 200 for s in statuses),
         "RSS MB": f"{before:.0f} -> peak {peak:.0f}"}
  yield from big_answers(child, args, num_queries)


def table(rows) -> str:
  columns = ["server", "test", "req/s", "p50 ms", "p99 ms", "max ms", "errors", "seconds",
             "RSS MB"]
  lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
  for row in rows:
    cells = [row.get(c, "") for c in columns]
    lines.append("| " + " | ".join(f"{c:.1f}" if isinstance(c, float) else str(c)
                                   for c in cells) + " |")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a finished run")
  parser.add_argument("--requests", type=int, default=3000, help="answers per load cell (cap)")
  parser.add_argument("--seconds", type=float, default=15, help="seconds per load cell (cap)")
  parser.add_argument("--held", type=int, default=500)
  parser.add_argument("--hold_seconds", type=float, default=30)
  parser.add_argument("--uploads", type=int, default=16)
  parser.add_argument("--unread", type=int, default=100, help="connections not reading answers")
  parser.add_argument("--readers", type=int, default=64, help="clients reading big answers")
  parser.add_argument("--only", choices=["all", "big_answers"], default="all")
  parser.add_argument("--old_rev", default="", help="git revision of the old serve.py")
  parser.add_argument("--output", default="")
  args = parser.parse_args(argv)
  with open(os.path.join(args.workdir, "results.json")) as f:
    num_queries = json.load(f)["num_queries"]
  png = big_png()
  rows, load_start = [], os.getloadavg()[0]
  with tempfile.TemporaryDirectory() as tmp:
    with open(os.path.join(tmp, "old_serve.py"), "w") as f:
      f.write(old_server_source(args.old_rev))
    with open(os.path.join(tmp, "serve_page.html"), "w") as f:  # the page it serves, if any
      f.write(old_server_source(args.old_rev, "serve_page.html"))
    old = [sys.executable, "-c", f"import sys; sys.path[:0] = [{tmp!r}, {ROOT!r}]; "
           "import old_serve; sys.exit(old_serve.main())", f"--workdir={args.workdir}"]
    new = [sys.executable, "-m", "orthohash_jax.serve", f"--workdir={args.workdir}", "--quiet"]
    for name, argv_, health in (("old", old, False), ("new", new, True)):
      child = Child(name, argv_)
      try:
        ready = child.wait_ready(health)
        rows.append({"server": name, "test": "start-up (until every size is compiled)"
                     if health else "start-up", "seconds": ready, "RSS MB": f"{child.rss():.0f}"})
        for row in bench(child, args, num_queries, png):
          rows.append(row)
          print(json.dumps(row), flush=True)
      finally:
        child.stop()
  print(f"load average (1 min) {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the "
        f"end; {os.cpu_count()} CPUs; PNG of {len(png)} bytes")
  print(table(rows))
  if args.output:
    with open(args.output, "w") as f:
      json.dump(rows, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
