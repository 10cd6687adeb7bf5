"""What TensorBoard shows of a run: event files, written with the ``tensorboard`` package's
writer (no TensorFlow), and ``jax.profiler`` traces.

``EventWriter(logdir)`` opens a new ``events.out.tfevents.<time>.<host>...`` file in ``logdir``
on process 0 (a resumed run adds a file; TensorBoard reads them as one run and drops the events
of steps that were redone); on every other process each call does nothing. Events reach the
file at each ``flush`` (``run``: once per chunk of steps) and at ``close``. On an object store
(gs://) the writer writes local files only: the file is written in a local temporary directory
and, at each ``flush`` or ``close`` that follows new events, uploaded whole (one upload; a
reader sees the events up to the last upload).

* ``scalars(step, {tag: value})``: one float32 scalar per tag at global step ``step``.
* ``image(tag, step, png)``: a PNG (bytes) shown in TensorBoard's Images tab; height, width
  and channels are read from the PNG.
* ``flush()``: writes the events so far to the file (on gs://: uploads it if it changed).
* ``close()``: flushes, then closes the file.

Tags written by ``run``: ``train/loss`` (mean loss of the chunk ending at the step),
``train/lr``, ``train/steps_per_second`` (as ``metrics.jsonl``), ``eval/mAP``,
``eval/quantization_angle`` (degrees, database codes) and, at the end, the image
``analysis/hamming_histogram`` (paper Figure 3). Open them with
``tensorboard --logdir=WORKDIR`` (or the parent directory of several runs).

``Profiler(steps, logdir)`` (``steps``: config ``profile_steps`` "A:B", or None) traces global
steps [A, B) of the invocation that trains step A with ``jax.profiler`` into
``logdir/plugins/profile/<time>/<host>.xplane.pb`` (every process its own file; TensorBoard's
profile plugin: ``tensorboard --logdir=WORKDIR/profile``) and ``perfetto_trace.json.gz`` beside
it (open it in https://ui.perfetto.dev). The loop
asks ``cut(step, stop)`` where a chunk must end (so steps A..B run as chunks of their own),
``begin(step)`` before dispatching a chunk and ``end(stop, losses)`` after it (waits for the
chunk, then ends the trace at B or at the last step). On gs:// the profiler writes a local
temporary directory, uploaded when the trace ends. A chunk of a length not compiled before
(a cut one) is compiled inside the trace: for steady-state steps pick A and B on the chunk grid
after the first chunk (e.g. ``steps_per_chunk=10``, ``profile_steps=20:30``). A run stopped
(SIGTERM) inside the window writes no trace.
"""
import io
import os
import shutil
import tempfile
import time

import jax
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from orthohash_jax import config_base, files, parallel


class EventWriter:
  """Scalars and images for TensorBoard in ``logdir`` (process 0 only)."""

  def __init__(self, logdir: str):
    self._writer, self._upload_to = None, None
    self._uploaded = {}  # {name: size} of each local file as last uploaded (gs://)
    if not parallel.is_main_process():
      return
    if files.is_remote(logdir):  # the writer only writes local files: written here, uploaded
      self._upload_to = logdir
      logdir = tempfile.mkdtemp(prefix="events-")
    self._writer = EventFileWriter(logdir)

  def _add(self, step: int, values) -> None:
    if self._writer is not None:
      self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                             summary=summary_pb2.Summary(value=values)))

  def _upload_changed(self) -> None:
    """Uploads each local file whose size changed since its last upload (gs://)."""
    local = self._writer.get_logdir()
    for name in sorted(os.listdir(local)):
      size = os.path.getsize(os.path.join(local, name))
      if self._uploaded.get(name) != size:
        files.upload(os.path.join(local, name), os.path.join(self._upload_to, name))
        self._uploaded[name] = size

  def scalars(self, step: int, values: dict) -> None:
    self._add(step, [summary_pb2.Summary.Value(tag=tag, simple_value=float(v))
                     for tag, v in values.items()])

  def image(self, tag: str, step: int, png: bytes) -> None:
    with Image.open(io.BytesIO(png)) as img:
      width, height = img.size
      channels = len(img.getbands())
    encoded = summary_pb2.Summary.Image(height=height, width=width, colorspace=channels,
                                        encoded_image_string=png)
    self._add(step, [summary_pb2.Summary.Value(tag=tag, image=encoded)])

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()
      if self._upload_to:
        self._upload_changed()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      if self._upload_to:
        self._upload_changed()
        shutil.rmtree(self._writer.get_logdir(), ignore_errors=True)
      self._writer = None



class Profiler:
  """A ``jax.profiler`` trace of the steps [A, B) of ``profile_steps`` (see the module docstring)."""

  def __init__(self, steps, logdir: str):
    self.range = config_base.step_range(steps) if steps else None
    self.logdir, self.local = logdir, None  # local: the directory being traced into

  def cut(self, step: int, stop: int) -> int:
    """``stop``, or the profile boundary between ``step`` and it."""
    bounds = [b for b in self.range or () if step < b < stop]
    return min(bounds, default=stop)

  def begin(self, step: int) -> None:
    if self.range and step == self.range[0]:
      self.local = (tempfile.mkdtemp(prefix="profile-") if files.is_remote(self.logdir)
                    else self.logdir)
      jax.profiler.start_trace(self.local, create_perfetto_trace=True)

  def end(self, stop: int, losses, last: bool) -> None:
    """After the chunk ending at ``stop`` (``last``: the run's last step) was dispatched."""
    if self.local is None or not (stop >= self.range[1] or last):
      return
    jax.block_until_ready(losses)
    jax.profiler.stop_trace()
    if self.local != self.logdir:
      files.upload_tree(self.local, self.logdir)
      shutil.rmtree(self.local, ignore_errors=True)
    self.local = None
