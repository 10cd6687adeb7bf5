"""Checkpoints (``checkpoint.Checkpointer``): quarantine of checkpoints that do not restore,
failed saves, partial saves of a killed run."""
import contextlib
import json
import logging
import os
import resource
import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orthohash_jax import checkpoint


def corrupt(directory):
  for root, _, files in os.walk(directory):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")


def test_quarantine_twice_and_quiet_one_line_per_checkpoint(tmp_path, capfd):
  state = {"w": np.arange(4.0, dtype=np.float32)}
  abstract = {"w": jax.ShapeDtypeStruct((4,), np.float32)}
  for attempt in range(2):  # the same step goes bad twice: both copies are kept
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    ckpt.save(5, state)
    if attempt == 0:  # saved without a digest (an older version): orbax finds the damage
      os.remove(os.path.join(ckpt.directory, "5", checkpoint.DIGEST))
    corrupt(os.path.join(ckpt.directory, "5"))
    lines = []
    assert ckpt.restore_latest(abstract, log=lines.append) == (None, 0)
    ckpt.close()
    moved = os.path.join(tmp_path, "checkpoints_corrupt", "5" if attempt == 0 else "5.1")
    assert lines == [lines[0], "warning: none of the 1 checkpoints restored; training starts "
                     "from step 0"]
    assert lines[0].startswith("warning: checkpoint at step 5 " + (
        "could not be restored (" if attempt == 0 else "failed its check ("))
    assert lines[0].endswith(f"moved to {moved}") and os.path.isdir(moved)
  out, err = capfd.readouterr()
  assert not out and not err  # the libraries' error dumps stay out of the terminal


@contextlib.contextmanager
def file_size_limit(limit):
  """Writes past ``limit`` bytes per file fail (EFBIG) while the block runs, as on a full disk."""
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
  try:
    yield
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, previous)


@pytest.mark.parametrize("background", [False, True])
def test_a_failed_save_is_one_line_and_leaves_no_partial_files(tmp_path, capfd, background):
  """In the background the failure is raised by ``wait`` (or the next ``save`` / ``check``)."""
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3, background=background)
  state = {"w": jnp.asarray(np.random.default_rng(0).standard_normal(200_000, np.float32))}
  ckpt.save(1, state)
  ckpt.wait()
  capfd.readouterr()
  with file_size_limit(20_000), pytest.raises(checkpoint.SaveError) as e:
    ckpt.save(2, state)
    ckpt.wait()
  message = str(e.value)
  assert message.startswith(f"cannot save the checkpoint of step 2 in {ckpt.directory} (")
  assert message.endswith("; the last checkpoint is step 1") and "\n" not in message
  assert e.value.status == 1
  out, err = capfd.readouterr()
  assert not out and not err  # orbax's own tracebacks stay off the terminal
  assert sorted(os.listdir(ckpt.directory)) == ["1"]
  ckpt.save(3, state)  # the next save works
  ckpt.close()
  assert sorted(os.listdir(ckpt.directory)) == ["1", "3"]


def test_background_saves_equal_the_state_even_when_its_buffers_are_donated(tmp_path):
  """``save`` returns once the state is off the devices: a jitted step that donates (and
  overwrites) the saved buffers right after does not change what is written."""
  ckpt = checkpoint.Checkpointer(str(tmp_path), background=True)
  state = {"w": jnp.arange(100_000, dtype=jnp.float32)}
  expected = np.asarray(state["w"])
  step = jax.jit(lambda s: {"w": s["w"] * 2 + 1}, donate_argnums=0)
  ckpt.save(1, state)
  for _ in range(5):
    state = step(state)
  ckpt.close()
  restored, at = checkpoint.Checkpointer(str(tmp_path)).restore_latest(
      {"w": jax.ShapeDtypeStruct((100_000,), np.float32)})
  assert at == 1
  np.testing.assert_array_equal(restored["w"], expected)


def test_partial_saves_of_a_killed_run_are_removed_on_open(tmp_path):
  partial = tmp_path / checkpoint.DIRECTORY / f"5{checkpoint.TMP_MARK}-1234"
  partial.mkdir(parents=True)
  checkpoint.Checkpointer(str(tmp_path)).close()
  assert not partial.exists()


def test_a_read_only_workdir_skips_a_corrupt_checkpoint_in_place(tmp_path, monkeypatch):
  state = {"w": np.arange(4.0, dtype=np.float32)}
  abstract = {"w": jax.ShapeDtypeStruct((4,), np.float32)}
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  ckpt.save(5, state)
  ckpt.save(6, {"w": state["w"] + 1})
  corrupt(os.path.join(ckpt.directory, "6"))

  def read_only(*args):
    raise OSError(30, "Read-only file system")
  monkeypatch.setattr(checkpoint.files.shutil, "move", read_only)
  lines = []
  restored, step = ckpt.restore_latest(abstract, log=lines.append)
  ckpt.close()
  assert step == 5 and np.array_equal(restored["w"], state["w"])  # the previous checkpoint
  assert len(lines) == 1 and lines[0].endswith("; left in place, not moved (Read-only file "
                                               "system)")
  assert sorted(os.listdir(tmp_path / checkpoint.DIRECTORY)) == ["5", "6"]


def save_two(tmp_path, second):
  """A Checkpointer holding step 5 (arange) and step 9 (``second``), and the abstract state."""
  state = {"w": np.arange(256, dtype=np.float32), "b": np.ones(3, np.float32)}
  abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in state.items()}
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  ckpt.save(5, state)
  ckpt.save(9, second(state))
  ckpt.close()
  return state, abstract


def test_flipped_data_bytes_fail_the_digest_and_the_previous_checkpoint_is_used(tmp_path, capfd):
  """Issue 36 #15: bytes flipped in the data files of the newest checkpoint (metadata intact):
  its digest no longer matches, it is quarantined in one line and step 5 restored, quietly."""
  state, abstract = save_two(tmp_path, lambda s: {k: v * 2 for k, v in s.items()})
  data_dir = os.path.join(tmp_path, "checkpoints", "9", "default")
  flipped = 0
  for root, _, names in os.walk(data_dir):
    for name in names:
      path = os.path.join(root, name)
      if os.sep + "d" + os.sep in path and os.path.getsize(path) > 64:
        raw = bytearray(open(path, "rb").read())
        raw[-40] ^= 0x01
        open(path, "wb").write(bytes(raw))
        flipped += 1
  assert flipped
  lines = []
  ckpt = checkpoint.Checkpointer(str(tmp_path))  # reopened: the digest of a closed save holds
  restored, step = ckpt.restore_latest(abstract, log=lines.append)
  ckpt.close()
  assert step == 5 and len(lines) == 1
  np.testing.assert_array_equal(restored["w"], state["w"])
  assert lines[0].startswith("warning: checkpoint at step 9 failed its check (its file default/")
  assert "differs from the digest written at save); moved to" in lines[0]
  out, err = capfd.readouterr()
  assert not out and not err


def test_a_checkpoint_holding_non_finite_values_is_quarantined(tmp_path):
  _, abstract = save_two(tmp_path, lambda s: {**s, "b": np.array([1, np.inf, 0], np.float32)})
  lines = []
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  _, step = ckpt.restore_latest(abstract, log=lines.append)
  ckpt.close()
  assert step == 5 and len(lines) == 1
  assert lines[0].startswith("warning: checkpoint at step 9 holds non-finite values in ['b']; "
                             "moved to")


def test_a_checkpoint_without_a_digest_restores_unverified(tmp_path):
  state, abstract = save_two(tmp_path, lambda s: s)
  os.remove(os.path.join(tmp_path, "checkpoints", "9", checkpoint.DIGEST))
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  restored, step = ckpt.restore_latest(abstract, log=pytest.fail)
  ckpt.close()
  assert step == 9
  np.testing.assert_array_equal(restored["w"], state["w"])


def test_a_checkpoint_file_that_cannot_be_read_fails_the_check_in_one_line(tmp_path):
  """A file of the newest checkpoint that cannot be opened (here a dangling link; an I/O error
  alike) is a failed check, not an OSError that stops the run: step 5 is restored."""
  state, abstract = save_two(tmp_path, lambda s: s)
  step_dir = os.path.join(tmp_path, "checkpoints", "9")
  name = next(n for n in sorted(os.listdir(step_dir)) if os.path.isfile(os.path.join(step_dir, n))
              and n != checkpoint.DIGEST)
  os.remove(os.path.join(step_dir, name))
  os.symlink(os.path.join(tmp_path, "nowhere"), os.path.join(step_dir, name))
  lines = []
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  restored, step = ckpt.restore_latest(abstract, log=lines.append)
  ckpt.close()
  assert step == 5 and len(lines) == 1
  np.testing.assert_array_equal(restored["w"], state["w"])
  assert lines[0].startswith(f"warning: checkpoint at step 9 failed its check (its file {name} "
                             "is unreadable (No such file or directory)); moved to")


def test_a_completed_background_save_gets_its_digest_at_the_next_check(tmp_path, monkeypatch):
  """Not only at the next save: a run killed between two saves resumes from a verified
  checkpoint. orbax's own wait stands for the save completing while a chunk trains. The hashing
  (a download of the checkpoint on gs://) runs in the digest thread: ``check`` returns while it
  is still hashing, and the digest is computed once per save."""
  original, threads = checkpoint.file_digests, []
  hashing = threading.Event()  # held until the test has seen check() return

  def held_digests(directory):
    threads.append(threading.current_thread())
    if threading.current_thread() is not threading.main_thread():
      assert hashing.wait(timeout=60)
    return original(directory)
  monkeypatch.setattr(checkpoint, "file_digests", held_digests)
  ckpt = checkpoint.Checkpointer(str(tmp_path), background=True)
  ckpt.save(3, {"w": np.arange(1000, dtype=np.float32)})
  ckpt.manager.wait_until_finished()
  digest = os.path.join(ckpt.directory, "3", checkpoint.DIGEST)
  assert not os.path.exists(digest)
  ckpt.check()
  ckpt.check()  # still hashing: nothing more is started
  assert len(threads) == 1 and threads[0] is not threading.main_thread()
  assert not os.path.exists(digest)  # check() did not wait for the hashing
  hashing.set()
  ckpt.wait()
  with open(digest) as f:
    assert json.load(f) == original(os.path.join(ckpt.directory, "3"))
  assert checkpoint.verify(os.path.join(ckpt.directory, "3")) is None
  ckpt.close()
  assert len(threads) == 2  # the one digest, and verify's own check above


def test_a_digest_that_cannot_be_written_stops_the_run_at_the_next_check(tmp_path, monkeypatch):
  """The digest thread's error (here a full disk) is raised in the training loop, as a failed
  save is: by the next ``check`` once the thread ended, or by ``wait``."""
  checked = threading.Event()

  def full(path, obj):
    checked.wait(60)  # fails only once the check that started it has returned
    raise checkpoint.files.WriteError(f"cannot write {path} (No space left on device)")
  monkeypatch.setattr(checkpoint.files, "write_json", full)
  ckpt = checkpoint.Checkpointer(str(tmp_path), background=True)
  ckpt.save(3, {"w": np.arange(10, dtype=np.float32)})
  ckpt.manager.wait_until_finished()
  ckpt.check()  # starts the digest thread
  checked.set()
  ckpt._digest.exception(timeout=60)  # pylint: disable=protected-access  # the thread ended
  with pytest.raises(checkpoint.files.WriteError, match=f"cannot write .*/3/{checkpoint.DIGEST}"):
    ckpt.check()
  ckpt.check()  # raised once
  ckpt.save(4, {"w": np.arange(10, dtype=np.float32)})
  with pytest.raises(checkpoint.files.WriteError):
    ckpt.wait()
  ckpt.close()


def test_asyncio_reports_of_errors_in_orbax_code_are_dropped(tmp_path):
  """A failed save's unawaited writes are logged by asyncio ("... exception was never
  retrieved", when garbage-collected, so at no fixed moment): dropped when the error was raised
  in orbax's code (``SaveError`` reports the failure in one line), kept otherwise."""
  checkpoint.Checkpointer(str(tmp_path))  # installs the filters
  namespace = {}
  exec(compile("def write():\n  raise ValueError('OUT_OF_RANGE: Failed writing')\n",
               "/venv/site-packages/orbax/checkpoint/_src/serialization/fake.py", "exec"),
       namespace)
  records = []

  class Keep(logging.Handler):
    def emit(self, record):
      records.append(record.getMessage())

  logger = logging.getLogger("asyncio")
  handler = Keep()
  logger.addHandler(handler)
  try:
    for fn, message in ((namespace["write"], "in orbax"), (lambda: 1 / 0, "elsewhere")):
      try:
        fn()
      except Exception:  # pylint: disable=broad-except
        logger.error("_GatheringFuture exception was never retrieved (%s)", message,
                     exc_info=True)
    logger.warning("a warning from orbax's code is kept")
  finally:
    logger.removeHandler(handler)
  assert records == ["_GatheringFuture exception was never retrieved (elsewhere)",
                     "a warning from orbax's code is kept"]


def test_non_finite_names_the_first_array_holding_nan_or_inf():
  state = {"a": jnp.arange(3, dtype=jnp.int32), "b": jnp.ones(4), "c": np.array([1.0, np.inf]),
           "d": jnp.array([np.nan], jnp.bfloat16)}
  assert checkpoint.non_finite(state) == "['c']"
  state["c"] = np.zeros(2)
  assert checkpoint.non_finite(state) == "['d']"
  state["d"] = jnp.zeros(1, jnp.bfloat16)
  assert checkpoint.non_finite(state) is None
  assert checkpoint.non_finite({}) is None


@pytest.mark.parametrize("text, phrase", [("[1, 2]", "is not a JSON object"),
                                          ("{not json", "is unreadable (")])
def test_a_damaged_digest_fails_the_check_in_one_phrase(tmp_path, text, phrase):
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  ckpt.save(3, {"w": np.arange(4, dtype=np.float32)})
  ckpt.close()
  step_dir = os.path.join(ckpt.directory, "3")
  with open(os.path.join(step_dir, checkpoint.DIGEST), "w") as f:
    f.write(text)
  assert checkpoint.verify(step_dir).startswith(f"its digest {checkpoint.DIGEST} {phrase}")
