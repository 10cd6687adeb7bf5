"""TensorBoard event files, written with the ``tensorboard`` package's writer (no TensorFlow).

``EventWriter(logdir)`` opens a new ``events.out.tfevents.<time>.<host>...`` file in ``logdir``
on process 0 (an object store, gs://: the writer writes local files only, so the file is written
in a local temporary directory and uploaded whole after every event: a reader sees the events up
to the last upload) (a resumed run adds a file; TensorBoard reads them as one run and drops the
events of steps that were redone); on every other process each call does nothing.

* ``scalars(step, {tag: value})``: one float32 scalar per tag at global step ``step``.
* ``image(tag, step, png)``: a PNG (bytes) shown in TensorBoard's Images tab; height, width
  and channels are read from the PNG.
* ``close()``: flushes the file.

Tags written by ``run``: ``train/loss`` (mean loss of the chunk ending at the step),
``train/lr``, ``train/steps_per_second`` (as ``metrics.jsonl``), ``eval/mAP``,
``eval/quantization_angle`` (degrees, database codes) and, at the end, the image
``analysis/hamming_histogram`` (paper Figure 3). Open them with
``tensorboard --logdir=WORKDIR`` (or the parent directory of several runs).
"""
import io
import shutil
import tempfile
import time

from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from orthohash_jax import files, parallel


class EventWriter:
  """Scalars and images for TensorBoard in ``logdir`` (process 0 only)."""

  def __init__(self, logdir: str):
    self._writer, self._upload_to = None, None
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
      if self._upload_to:
        self._writer.flush()
        files.upload_tree(self._writer.get_logdir(), self._upload_to)

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

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      if self._upload_to:
        files.upload_tree(self._writer.get_logdir(), self._upload_to)
        shutil.rmtree(self._writer.get_logdir(), ignore_errors=True)
      self._writer = None

