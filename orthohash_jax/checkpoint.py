"""Orbax checkpoints of the train state in ``<workdir>/checkpoints``, resumed automatically.

Checkpoints are written by background threads with ``background=True`` (training; orbax's
``enable_async_checkpointing``: ``save`` returns once the state is off the devices, ``wait``
waits for the files), else before ``save`` returns. Orbax writes to a temporary directory and
renames it once complete (on an object store, gs:// through tensorstore, it marks a complete
save with a commit file instead; every process writes its own shards there, so the bucket holds
whole checkpoints), so a process killed mid-save leaves the previous checkpoints intact,
and deletes old checkpoints only after a newer one is complete. A checkpoint that fails to
restore is reported in one line and moved, by process 0 while the others wait, to
``<workdir>/checkpoints_corrupt/<step>`` (``<step>.1``, ``<step>.2``, ... when that name is taken;
kept for inspection, never deleted; on gs:// a copy, then a delete: ``files.move_tree``); the
next older one is tried. The libraries' own error output of a failed restore (TensorStore
dumps, asyncio noise) is kept out of the terminal. When no checkpoint restores, one line says
that training starts from step 0.

Every checkpoint is verified on restore: process 0 writes ``<step>/DIGEST`` (the SHA-256 of
each of its files) once the save is complete; a checkpoint whose files differ from it (flipped,
zeroed or missing bytes) is quarantined as one that fails to restore, before orbax reads it. A
checkpoint that restores with a non-finite value in its state (which would give a non-finite
loss at its own step) is quarantined too. Checkpoints saved without a digest (by an older
version, or killed between the save and the digest) restore unverified (``verified``: whether
the checkpoint ``restore_latest`` returned passed a digest check); ``run`` quarantines such a
one whose first step, once resumed, gives a non-finite loss where the run logged a finite one
(the rerun resumes from the previous one), but never a verified one: its files are those saved,
so the data, code or config differ from the run that saved it.

Hashing reads every file of the checkpoint back (on gs://, a download of it), so a background
save's digest is written by a worker thread of process 0, started by the first ``check`` that
finds the save complete (or by ``wait``), never inside the training loop; the next ``save``,
``wait`` or ``close`` waits for it, and an error it met (a full disk writing the digest) is
raised there or by the next ``check``, as a failed save is.

A save that fails (a full disk) raises ``SaveError``, one line, after deleting its partial
files: at ``save`` itself, or for a background write at the next ``check``, ``save``, ``wait``
or ``close``; partial saves left by a killed process are deleted when the checkpoints are next
opened.

``has_checkpoints(workdir)``: whether ``<workdir>/checkpoints`` holds a saved step (an empty or
missing directory does not count).

``StopSignals`` (a context manager) turns SIGTERM and SIGINT (Ctrl-C) into a request instead of
an exit; ``Checkpointer.stop_requested(step, signals)`` is true on every process as soon as one
process received one, or orbax's preemption notice fired: the loop then saves and stops. A
second Ctrl-C stops at once (KeyboardInterrupt).
"""
import concurrent.futures
import contextlib
import hashlib
import logging
import os
import signal
import sys
import tempfile
import traceback

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from orthohash_jax import cli, files, parallel

DIRECTORY = "checkpoints"
TMP_MARK = ".orbax-checkpoint-tmp"  # in the name of a save in progress
CORRUPT_DIRECTORY = "checkpoints_corrupt"
DIGEST = "orthohash_sha256.json"  # in a step's directory: {relative path: SHA-256 of the file}


class SaveError(cli.CommandError):
  """A checkpoint could not be written (a full disk): training stops, exit status 1."""
  status = 1


class _OrbaxErrorLogs(logging.Filter):
  """Drops orbax's error logs (tracebacks, also from its background save threads, which
  ``quiet_stderr`` cannot reach) and asyncio's of errors raised in orbax's code (once a save
  failed, its pending writes' futures are freed unawaited, and the garbage collector has asyncio
  log "... exception was never retrieved" with a traceback for each, 144 lines for a digits
  state): ``Checkpointer`` reports every failure in one line."""

  def filter(self, record):
    if record.levelno < logging.ERROR:
      return True
    tb = record.exc_info[2] if record.exc_info else None
    return not ("orbax" in record.pathname
                or any("orbax" in frame.filename for frame in traceback.extract_tb(tb)))


_QUIET_ORBAX = _OrbaxErrorLogs()


class _ClosedLoopCallbacks:
  """``sys.unraisablehook`` that drops ``RuntimeError('Event loop is closed')``: once a background
  save failed, orbax closes its event loop while TensorStore still completes the pending writes,
  and each completion's callback into that loop is reported as an unraisable exception (a bare
  traceback per write, 42 for a digits state). Every other unraisable exception goes to the
  hook that was installed before."""

  def __init__(self, previous):
    self.previous = previous

  def __call__(self, unraisable):
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
      self.previous(unraisable)


def has_checkpoints(workdir: str) -> bool:
  directory = files.path(os.path.join(workdir, DIRECTORY))
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


class StopSignals:
  """Remembers SIGTERM / SIGINT while the block runs (``raised``: the first signal, or None)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __enter__(self):
    self.raised = None
    self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def _handle(self, signum, frame):
    del frame
    if self.raised == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.raised = signum
    if signum == signal.SIGINT:
      cli.say("interrupt: saving a checkpoint at the end of this chunk (Ctrl-C again to abort)",
              err=True)

  def __exit__(self, *exc):
    for s, previous in self._previous.items():
      signal.signal(s, previous)


@contextlib.contextmanager
def quiet_stderr():
  """Sends file descriptor 2 (where C++ libraries log) to a scratch file while the block runs."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as sink:
    os.dup2(sink.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)


def file_digests(directory: str) -> dict:
  """{path relative to ``directory``: SHA-256 hex digest} of every file under it but DIGEST."""
  digests = {}
  for relative in files.relative_files(directory):
    if relative != DIGEST:
      with files.path(os.path.join(directory, relative)).open("rb") as f:
        digests[relative] = hashlib.file_digest(f, "sha256").hexdigest()
  return dict(sorted(digests.items()))


def has_digest(directory: str) -> bool:
  return files.path(os.path.join(directory, DIGEST)).exists()


def verify(directory: str):
  """Why the checkpoint in ``directory`` differs from the digest written at its save (one
  phrase), or None when it matches or has no digest."""
  if not has_digest(directory):
    return None
  try:
    saved = files.read_json(os.path.join(directory, DIGEST))
  except ValueError as e:
    return f"its digest {DIGEST} is unreadable ({e})"
  if not isinstance(saved, dict):
    return f"its digest {DIGEST} is not a JSON object"
  try:
    current = file_digests(directory)
  except OSError as e:  # a file that cannot be read (an I/O error, a dangling link)
    return f"its file {os.path.relpath(e.filename or directory, directory)} is unreadable " \
        f"({e.strerror or e})"
  for relative in sorted(saved.keys() | current.keys()):
    if saved.get(relative) != current.get(relative):
      what = ("is missing" if relative not in current else "was not saved" if relative not in
              saved else "differs from the digest written at save")
      return f"its file {relative} {what}"
  return None


def non_finite(state):
  """The path of the first array of ``state`` holding NaN or Inf, or None; every array's check
  is dispatched first and fetched in one transfer (not one device sync per array)."""
  leaves = [(path, leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
            if jnp.issubdtype(leaf.dtype, jnp.inexact)]
  finite = jax.device_get([jnp.all(jnp.isfinite(leaf)) for _, leaf in leaves])
  return next((jax.tree_util.keystr(path) for (path, _), ok in zip(leaves, finite) if not ok),
              None)


def _first_line(e: Exception) -> str:
  text = str(e).strip()
  return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


class Checkpointer:
  """Saves and restores a pytree train state keyed by training step."""

  def __init__(self, workdir: str, keep: int = 3, background: bool = False):
    self.directory = files.absolute(os.path.join(workdir, DIRECTORY))
    self.corrupt_dir = files.absolute(os.path.join(workdir, CORRUPT_DIRECTORY))
    self.keep, self.background = keep, background
    self.saving = None  # the step of the latest save started
    self.verified = False  # whether the checkpoint restore_latest returned passed a digest
    self._digests = concurrent.futures.ThreadPoolExecutor(1, "checkpoint-digest")
    self._digest = None  # the Future of the digest being written (process 0)
    logging.getLogger("absl").addFilter(_QUIET_ORBAX)  # orbax logs through absl
    logging.getLogger("asyncio").addFilter(_QUIET_ORBAX)
    if not isinstance(sys.unraisablehook, _ClosedLoopCallbacks):
      sys.unraisablehook = _ClosedLoopCallbacks(sys.unraisablehook)
    self.manager = self._open()

  def _open(self):
    if parallel.is_main_process():
      self._remove_partial_saves()
    options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=False,
                                           enable_async_checkpointing=self.background)
    return ocp.CheckpointManager(self.directory, options=options)

  def _remove_partial_saves(self) -> None:
    """Deletes the temporary directories of saves that never finished (a kill, a full disk)."""
    directory = files.path(self.directory)
    if directory.is_dir():
      for p in directory.iterdir():
        if TMP_MARK in p.name:
          with contextlib.suppress(OSError):
            p.rmtree()

  @contextlib.contextmanager
  def _save_errors(self):
    """Turns a failed save into ``SaveError`` (one line) without its partial files."""
    try:
      with quiet_stderr():  # orbax logs a failed save's tracebacks itself
        yield
    except Exception as e:  # pylint: disable=broad-except
      step, self.saving = self.saving, None
      if parallel.is_main_process():
        self._remove_partial_saves()
      self.manager.reload()  # orbax already dropped the steps the failed save was to replace
      last = self.latest_step()
      raise SaveError(f"cannot save the checkpoint of step {step} in {self.directory} "
                      f"({_first_line(e)}); "
                      + (f"the last checkpoint is step {last}" if last is not None
                         else "no checkpoint was saved")) from None

  def _write_digest(self, step: int) -> None:
    """Writes ``<step>/DIGEST`` of a finished save (``verify`` reads it): in the digest thread."""
    step_dir = os.path.join(self.directory, str(step))
    files.write_json(os.path.join(step_dir, DIGEST), file_digests(step_dir))

  def _complete(self, wait_digest: bool) -> None:
    """Waits for orbax's save (``SaveError`` if it failed), then process 0 starts writing its
    digest in the digest thread; ``wait_digest``: also waits for that digest."""
    with self._save_errors():
      self.manager.wait_until_finished()
    if self.saving is not None:
      if parallel.is_main_process():
        self._digest = self._digests.submit(self._write_digest, self.saving)
      self.saving = None
    self._digest_written(wait=wait_digest)

  def _digest_written(self, wait: bool) -> None:
    """Raises the error of the digest being written once it ended (``wait``: waits for it)."""
    if self._digest is not None and (wait or self._digest.done()):
      digest, self._digest = self._digest, None
      digest.result()

  def save(self, step: int, state) -> None:
    """Starts saving ``state`` as ``step`` (``background``: returns once the state is off the
    devices; else once it is written); a failed save (a full disk), this one or the previous
    background one, raises ``SaveError`` (one line) and leaves the checkpoints as they were,
    without its partial files."""
    self.wait()  # one save at a time; an earlier failure is reported as such
    self.saving = int(step)
    with self._save_errors():
      # only now: a run failing its checks makes none
      files.path(self.directory).mkdir(parents=True, exist_ok=True)
      self.manager.save(int(step), args=ocp.args.StandardSave(state), force=True)
    if not self.background:
      self.wait()

  def check(self) -> None:
    """Raises ``SaveError`` if a background save has failed, or the error of a digest that
    failed (no waiting); once a save is complete, starts writing its digest in the digest
    thread (so a run killed later resumes from a verified checkpoint)."""
    self._digest_written(wait=False)
    with self._save_errors():
      self.manager.check_for_errors()
    if self.saving is not None and not self.manager.is_saving_in_progress():
      self._complete(wait_digest=False)  # orbax's finalize ended on every process: no wait

  def wait(self) -> None:
    """Waits until the save in progress is complete and its digest written; ``SaveError`` if
    the save failed."""
    self._complete(wait_digest=True)

  def latest_step(self):
    """The newest saved step, or None."""
    return self.manager.latest_step()

  def restore_latest(self, abstract_state, log=print):
    """Returns (state, step) of the newest checkpoint that restores, or (None, 0) if none does;
    ``log`` receives one line per quarantined checkpoint and one if none restores. Sets
    ``verified``: whether the returned checkpoint passed a digest check."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    self.verified = False
    for step in steps:
      step_dir = os.path.join(self.directory, str(step))
      problem = verify(step_dir)
      if problem is None:
        try:
          with quiet_stderr():
            state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        except Exception as e:  # pylint: disable=broad-except
          problem = f"could not be restored ({_first_line(e)})"
        else:
          bad = non_finite(state)
          if bad is None:
            self.verified = has_digest(step_dir)
            return state, step
          problem = f"holds non-finite values in {bad}"
      else:
        problem = f"failed its check ({problem})"
      log(f"warning: checkpoint at step {step} {problem}; {self.quarantine(step)}")
    if steps:
      log(f"warning: none of the {len(steps)} checkpoints restored; training starts from step 0")
    return None, 0

  def quarantine(self, step: int) -> str:
    """Moves the checkpoint of ``step`` aside (process 0; the others wait); returns what
    happened to it (a read-only workdir keeps it in place: the next older one is tried)."""
    self.manager.close()
    parallel.barrier("quarantine_checked")  # no process still reads it when process 0 moves it
    target = os.path.join(self.corrupt_dir, str(step))
    suffix = 0
    while files.path(target).exists():
      suffix += 1
      target = os.path.join(self.corrupt_dir, f"{step}.{suffix}")
    if parallel.is_main_process():
      try:
        files.path(self.corrupt_dir).mkdir(parents=True, exist_ok=True)
        files.move_tree(os.path.join(self.directory, str(step)), target)
      except OSError as e:  # a read-only workdir (export of a finished run): skip it in place
        return self._reopen(f"left in place, not moved ({e.strerror or e})")
    return self._reopen(f"moved to {target}")

  def _reopen(self, outcome: str) -> str:
    parallel.barrier("quarantine")
    self.manager = self._open()
    return outcome

  def stop_requested(self, step: int, signals: StopSignals) -> bool:
    """True on every process when one received a stop signal or orbax's multi-host preemption
    notice (e.g. a TPU maintenance event) fired."""
    return (parallel.any_process(signals.raised is not None)
            or self.manager.reached_preemption(int(step)))

  def close(self) -> None:
    """Waits for the save in progress (``SaveError`` if it failed), then closes."""
    self.wait()
    self.manager.close()
    self._digests.shutdown()
