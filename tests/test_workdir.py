"""The run directory (``workdir``): one training run at a time, nothing left by a failed start,
atomic files, and the saved-config checks."""
import json
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


def test_a_half_written_last_metrics_line_is_dropped_on_resume_with_one_warning(
    tmp_path, fake_load, capsys):
  """What a crash during an append leaves (issue 36 #17): resume drops it, says so once."""
  fake_load(blobs())  # 8 steps per epoch
  w = str(tmp_path / "w")
  run.train_and_evaluate(small_config(num_epochs=1), w)
  metrics = tmp_path / "w" / workdir.METRICS
  with open(metrics, "a") as f:
    f.write('{"step": 16, "loss": 0.')
  capsys.readouterr()
  run.train_and_evaluate(small_config(num_epochs=2), w)
  warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
  assert warnings == [f"warning: {metrics}: dropped its half-written last line (line 2, left by "
                      "a crash during an append)"]
  steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
  assert steps == [8, 16]


@pytest.mark.parametrize("name,text,message", [
    (workdir.CONFIG, "[]", "expected a JSON object of config keys, got []"),
    (workdir.CONFIG, "null", "expected a JSON object of config keys, got None"),
    (workdir.CONFIG, '{"num_bits": "abc"}', "num_bits must be an integer, got 'abc'"),
    (workdir.PROGRESS, "[1]", "expected {\"step\", \"train_seconds\", \"steps_timed\"}"),
    (workdir.PROGRESS, '{"train_seconds": "x", "steps_timed": 1}', "(numbers >= 0)"),
    (workdir.METRICS, '{"step": 1}\n[1,2]\n{"step": 3}\n',
     "line 2: expected a JSON object with an integer \"step\", got [1, 2]"),
    (workdir.METRICS, '{"step": 1}\n{"step": \n{"step": 3}\n', "line 2 is not JSON"),
])
def test_a_damaged_run_file_is_one_line_naming_it(tmp_path, name, text, message):
  (tmp_path / name).write_text(text)
  read = {workdir.CONFIG: workdir.read_config, workdir.PROGRESS: workdir.read_progress,
          workdir.METRICS: lambda w: workdir.MetricsLog(w, 10)}[name]
  with pytest.raises(ValueError) as e:
    read(str(tmp_path))
  assert str(e.value).startswith(str(tmp_path / name)) and message in str(e.value)
  assert "\n" not in str(e.value)


def test_a_config_json_without_a_tuple_key_resumes(tmp_path, monkeypatch):
  """Issue 36 #20: the default (512, 512) is compared as config.json holds it, [512, 512]."""
  saved = small_config(hidden=(512, 512)).to_dict()
  del saved["hidden"]
  files.write_json(str(tmp_path / workdir.CONFIG), saved)
  monkeypatch.setattr(workdir.checkpoint, "has_checkpoints", lambda directory: True)
  assert workdir.check_same_run(str(tmp_path), small_config(hidden=(512, 512)))["hidden"] == [
      512, 512]


def test_a_pickled_codebook_is_named_without_numpy_pickle_hint(tmp_path):
  np.save(tmp_path / workdir.CODEBOOK, np.array([{"a": 1}], dtype=object), allow_pickle=True)
  with pytest.raises(ValueError) as e:
    workdir.codebook(small_config(), 4, str(tmp_path))
  assert str(e.value) == (f"{tmp_path / workdir.CODEBOOK} is not a readable +-1 codebook (it "
                          "holds Python objects, not numbers)")


@pytest.mark.parametrize("text,message", [
    ('{"mAP": 0.5', "is not readable JSON"), ("[1]", "must hold a JSON object, got list"),
    ('{"steps": 3, "steps_per_second": 1.0}', "no mAP; delete it to train the run again"),
    ('{"mAP": true, "steps": 3, "steps_per_second": 1.0}',
     "mAP must be a number or null, got True"),
    ('{"mAP": 0.5, "steps": 1.5}', "steps must be an integer, got 1.5"),
    ('{"mAP": 0.5, "steps": 3, "steps_per_second": "fast"}',
     "steps_per_second must be a number or null, got 'fast'")])
def test_results_json_has_one_reader_and_a_damaged_one_is_one_line_naming_it(
    tmp_path, text, message):
  """read_results (serve, run_grid and compare_torch read results.json through it): None
  before a run finished, the dict of a good file, one ValueError naming a damaged one."""
  assert workdir.read_results(str(tmp_path)) is None
  good = {"mAP": None, "steps": 3, "steps_per_second": None, "num_bits": 16}
  (tmp_path / workdir.RESULTS).write_text(json.dumps(good))
  assert workdir.read_results(str(tmp_path)) == good
  (tmp_path / workdir.RESULTS).write_text(text)
  with pytest.raises(ValueError) as e:
    workdir.read_results(str(tmp_path))
  assert str(e.value).startswith(str(tmp_path / workdir.RESULTS)) and message in str(e.value)
  assert "\n" not in str(e.value)
