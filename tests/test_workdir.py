"""The run directory (``workdir``): one training run at a time, nothing left by a failed start,
atomic files, and the saved-config checks."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, blobs, small_config
from orthohash_jax import files, run, workdir
from orthohash_jax import data as data_lib

HOLD = ("import sys; from orthohash_jax import workdir\n"
        "with workdir.lock(sys.argv[1]):\n"
        "  print('held', flush=True); sys.stdin.read()\n")


def test_a_second_run_is_refused_naming_the_holder(tmp_path, monkeypatch):
  monkeypatch.setattr(data_lib, "load", lambda config: blobs())
  with workdir.lock(str(tmp_path)):
    with pytest.raises(ValueError, match=rf"in use by a training run \(PID {os.getpid()} on "
                       r"host .+\); wait for it"):
      run.train_and_evaluate(small_config(num_epochs=1), str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [workdir.LOCK]  # the refused run wrote nothing
    files.write_json(str(tmp_path / workdir.CONFIG), small_config(num_epochs=1).to_dict())
    with pytest.raises(ValueError, match="in use by a training run"):
      run.restore_run(str(tmp_path))  # export, serve and instance read a run through it


def test_a_lock_left_by_kill_9_does_not_block(tmp_path):
  proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "held"
  with pytest.raises(ValueError, match=rf"PID {proc.pid} on host"):
    with workdir.lock(str(tmp_path)):
      pass
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  with workdir.lock(str(tmp_path)):
    assert os.path.exists(tmp_path / workdir.LOCK)


def test_a_failed_start_leaves_no_workdir(tmp_path):
  new = tmp_path / "new"
  with pytest.raises(RuntimeError):
    with workdir.lock(str(new)):
      raise RuntimeError("a check after the lock failed")
  assert not new.exists()


def test_a_workdir_without_checkpoints_is_never_another_run(tmp_path):
  (tmp_path / "checkpoints").mkdir()  # left by a crash before the first save
  files.write_json(str(tmp_path / workdir.CONFIG), small_config(num_bits=32).to_dict())
  assert workdir.check_same_run(str(tmp_path), small_config()) is None


def test_a_run_saved_before_a_key_was_declared_reads_it_at_its_default(tmp_path, monkeypatch):
  saved = small_config(backbone="cnn").to_dict()
  del saved["stem_stride"]  # a config.json written before stem_stride existed
  files.write_json(str(tmp_path / workdir.CONFIG), saved)
  monkeypatch.setattr(workdir.checkpoint, "has_checkpoints", lambda directory: True)
  assert workdir.check_same_run(str(tmp_path), small_config(backbone="cnn"))["stem_stride"] == 1
  assert workdir.read_config(str(tmp_path)).stem_stride == 1
  with pytest.raises(ValueError, match=r"another config \(stem_stride: 1 -> 2\)"):
    workdir.check_same_run(str(tmp_path), small_config(backbone="cnn", stem_stride=2))


def test_atomic_write_keeps_the_old_file_on_error_and_names_the_target(tmp_path):
  target = tmp_path / "codes.npz"
  target.write_bytes(b"old")

  def fail(tmp):
    np.savez(tmp, a=np.zeros(3))
    assert tmp.endswith(".npz") and os.path.exists(tmp)  # savez adds nothing to the name
    raise OSError(28, "No space left on device")
  with pytest.raises(OSError, match=rf"cannot write {target} \(No space left on device\)"):
    files.atomic_write(str(target), fail)
  assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["codes.npz"]


def test_a_truncated_config_json_is_one_line_naming_the_file(tmp_path):
  (tmp_path / workdir.CONFIG).write_text('{"seed": 0, "dataset": "dig')
  with pytest.raises(ValueError, match=f"{tmp_path / workdir.CONFIG} is not readable JSON"):
    workdir.read_config(str(tmp_path))
