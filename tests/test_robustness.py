"""What a new user hit (issue 16): config typos, interrupted and repeated runs, stuck recovery,
noisy or misleading messages. Each test runs in-process on tiny data."""
import dataclasses
import json
import os
import shutil
import signal
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, blobs, small_config
from orthohash_jax import checkpoint, cli, codes_file, config_base, instance, run, search
from orthohash_jax import data as data_lib

sys.path.insert(0, ROOT)
from experiments import plot_analysis, run_grid  # pylint: disable=wrong-import-position


@pytest.fixture
def use_data(monkeypatch):
  def use(data):
    monkeypatch.setattr(data_lib, "load", lambda config: data)
  return use


def params_of(workdir):
  _, _, state, step = run.restore_run(str(workdir))
  return step, jax.tree.leaves(jax.tree.map(np.asarray, state.params))


# ---- config typos and values -------------------------------------------------------------
def test_overrides_reject_unknown_keys_and_bad_values():
  config = config_base.base_config()
  with pytest.raises(ValueError, match="unknown config key 'num_bitz'; did you mean 'num_bits'"):
    config_base.apply_overrides(config, ["num_bitz=8"])
  with pytest.raises(ValueError, match="bad value for num_bits: 'abc'"):
    config_base.apply_overrides(config, ["num_bits=abc"])
  with pytest.raises(ValueError, match="key=value"):
    config_base.apply_overrides(config, ["num_bits"])
  config_base.apply_overrides(config, ["num_bits=8", "hidden=(4, 4)", "loss=ce"])
  assert (config.num_bits, tuple(config.hidden), config.loss) == (8, (4, 4), "ce")


def test_experiment_scripts_report_bad_arguments_in_one_line(capsys, monkeypatch, tmp_path):
  for bits in ("abc", "0"):
    monkeypatch.setattr(sys, "argv", ["run_grid.py", "--config=configs/digits.py",
                                      f"--bits={bits}", f"--out={tmp_path}"])
    with pytest.raises(SystemExit) as e:
      run_grid.main()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--bits" in err[0]
  assert plot_analysis.main([f"--config={ROOT}/configs/digits.py", f"--out={tmp_path}",
                             "--set", "num_bits=abc"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "bad value for num_bits" in err[0]


def test_large_num_bits_warns(tmp_path, monkeypatch, capsys):
  def no_data(config):
    raise data_lib.DataError("stop here")
  monkeypatch.setattr(data_lib, "load", no_data)
  with pytest.raises(data_lib.DataError):
    run.train_and_evaluate(small_config(num_bits=100_000), str(tmp_path / "w"))
  assert "num_bits 100000 is far beyond" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "w")  # a run that failed on its data leaves no workdir


def test_workdir_that_is_a_file(tmp_path):
  (tmp_path / "f").write_text("")
  with pytest.raises(ValueError, match="is a file, not a directory"):
    run.train_and_evaluate(small_config(), str(tmp_path / "f"))


# ---- checkpoints: quarantine, noise, restarts --------------------------------------------
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
    corrupt(os.path.join(ckpt.directory, "5"))
    lines = []
    assert ckpt.restore_latest(abstract, log=lines.append) == (None, 0)
    ckpt.close()
    moved = os.path.join(tmp_path, "checkpoints_corrupt", "5" if attempt == 0 else "5.1")
    assert lines == [lines[0], "warning: none of the 1 checkpoints restored; training starts "
                     "from step 0"]
    assert lines[0].startswith("warning: checkpoint at step 5 could not be restored (")
    assert lines[0].endswith(f"moved to {moved}") and os.path.isdir(moved)
  out, err = capfd.readouterr()
  assert not out and not err  # the libraries' error dumps stay out of the terminal


@pytest.mark.slow
def test_resume_truncates_the_log_and_keeps_time_totals(tmp_path, use_data):
  use_data(blobs())
  config = small_config(num_epochs=4, checkpoint_every_steps=16)
  first = run.train_and_evaluate(config, str(tmp_path))
  # a kill after step 32 was logged but before its checkpoint: drop the last checkpoint
  shutil.rmtree(tmp_path / "checkpoints" / "32")
  second = run.train_and_evaluate(config, str(tmp_path))
  steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
  assert steps == [8, 16, 24, 32]
  assert second["mAP"] == first["mAP"]
  again = json.loads((tmp_path / "results.json").read_text(),
                     parse_constant=lambda c: pytest.fail(f"{c} in results.json"))
  run.train_and_evaluate(config, str(tmp_path))  # a finished run, repeated
  repeated = json.loads((tmp_path / "results.json").read_text(),
                        parse_constant=lambda c: pytest.fail(f"{c} in results.json"))
  assert repeated["train_seconds"] == again["train_seconds"] > 0
  assert repeated["steps_per_second"] == again["steps_per_second"]


@pytest.mark.slow
def test_num_epochs_on_resume(tmp_path, use_data):
  use_data(blobs())
  run.train_and_evaluate(small_config(num_epochs=2), str(tmp_path / "a"))
  with pytest.raises(ValueError, match="the run is at step 16, beyond the 8 steps"):
    run.train_and_evaluate(small_config(num_epochs=1), str(tmp_path / "a"))
  # extending: the same as a run started with the longer schedule
  run.train_and_evaluate(small_config(num_epochs=4), str(tmp_path / "a"))
  run.train_and_evaluate(small_config(num_epochs=4), str(tmp_path / "b"))
  assert json.loads((tmp_path / "a" / "config.json").read_text())["num_epochs"] == 4
  (sa, a), (sb, b) = params_of(tmp_path / "a"), params_of(tmp_path / "b")
  assert sa == sb == 32
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  # the step schedule decayed at step 12 of 16: extending would raise the lr again
  run.train_and_evaluate(small_config(num_epochs=2, lr_schedule="step"), str(tmp_path / "c"))
  with pytest.raises(ValueError, match="decayed its lr at step 12"):
    run.train_and_evaluate(small_config(num_epochs=4, lr_schedule="step"), str(tmp_path / "c"))


class _InterruptAt(data_lib.RetrievalData):
  """Sends this process a signal when the batches of ``step`` are read."""
  step, signum = None, None

  def train_rows(self, indices, steps, positions):
    if self.step in steps:
      os.kill(os.getpid(), self.signum)
    return super().train_rows(indices, steps, positions)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_saves_and_resumes_identically(tmp_path, use_data, signum, capsys):
  d = blobs()
  use_data(d)
  config = small_config(num_epochs=5, checkpoint_every_steps=1000)
  run.train_and_evaluate(config, str(tmp_path / "whole"))
  stopping = _InterruptAt(**{f.name: getattr(d, f.name) for f in dataclasses.fields(d)})
  stopping.step, stopping.signum = 17, signum
  use_data(stopping)
  with pytest.raises(run.Interrupted, match="interrupted at step 24; checkpoint saved"):
    run.train_and_evaluate(config, str(tmp_path / "cut"))
  assert signal.getsignal(signum) is not None  # handlers restored
  use_data(d)
  run.train_and_evaluate(config, str(tmp_path / "cut"))
  assert "resumed from checkpoint at step 24" in capsys.readouterr().out
  (sa, a), (sb, b) = params_of(tmp_path / "whole"), params_of(tmp_path / "cut")
  assert sa == sb == 40
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


# ---- files and tools -----------------------------------------------------------------------
def test_codes_file_errors(tmp_path):
  result = {"query_codes": np.zeros((2, 1), np.uint32), "db_codes": np.zeros((3, 1), np.uint32),
            "query_labels": np.zeros(2, np.int32), "db_labels": np.zeros(3, np.int32)}
  with pytest.raises(ValueError, match="is a directory"):
    codes_file.save_codes(str(tmp_path), result, 8, {})
  assert os.listdir(tmp_path) == []  # no stray temporary file
  path = str(tmp_path / "codes.npz")
  codes_file.save_codes(path, result, 8, {})
  raw = bytearray(open(path, "rb").read())
  raw[150:154] = b"\xff\xff\xff\xff"  # in the first member's npy header: a CRC mismatch
  open(path, "wb").write(bytes(raw))
  with pytest.raises(ValueError, match=f"cannot read codes file {path}"):
    codes_file.load_codes(path)
  (tmp_path / "text.npz").write_text("not a zip")
  with pytest.raises(ValueError, match=f"cannot read codes file {tmp_path / 'text.npz'}"):
    codes_file.load_codes(str(tmp_path / "text.npz"))


def test_instance_refuses_a_category_run(tmp_path, use_data):
  use_data(blobs())
  run.train_and_evaluate(small_config(num_epochs=1), str(tmp_path))
  with pytest.raises(ValueError, match="without instance-level ground truth"):
    instance.evaluate_run(str(tmp_path))


def test_say_survives_a_closed_stdout(monkeypatch):
  class Closed:
    def write(self, text):
      raise BrokenPipeError

    def flush(self):
      raise BrokenPipeError

  monkeypatch.setattr(sys, "stdout", Closed())
  cli.say("step 1")  # no exception: progress output is switched off
  cli.say("step 2")
  assert sys.stdout.name == os.devnull


def test_search_cli_reads_damaged_code_files_in_one_line(tmp_path, capsys):
  result = {"query_codes": np.zeros((2, 1), np.uint32), "db_codes": np.zeros((3, 1), np.uint32),
            "query_labels": np.zeros(2, np.int32), "db_labels": np.zeros(3, np.int32)}
  path = str(tmp_path / "codes.npz")
  codes_file.save_codes(path, result, 8, {})
  raw = bytearray(open(path, "rb").read())
  raw[150:154] = b"\xff\xff\xff\xff"  # a CRC mismatch inside the first member
  open(path, "wb").write(bytes(raw))
  (tmp_path / "text.npz").write_text("not a zip")
  for bad in (path, str(tmp_path / "text.npz")):
    assert search.main([f"--codes={bad}", "--k=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {bad}: not a readable .npz file"), err
