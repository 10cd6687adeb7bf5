"""The training run in a workdir (``run``): validation up front, the loop, codebook file, resume."""
import dataclasses
import json
import os
import shutil
import signal

import jax
import numpy as np
import pytest

from conftest import blobs, small_config
from orthohash_jax import checkpoint
from orthohash_jax import codebook as codebook_lib
from orthohash_jax import config_base, run, workdir
from test_checkpoint import file_size_limit
from orthohash_jax import data as data_lib


@pytest.mark.slow
def test_nan_loss_stops_one_chunk_late_and_keeps_last_checkpoint(tmp_path, fake_load):
  fake_load(blobs())
  config = small_config(num_epochs=2, checkpoint_every_steps=1)
  run.train_and_evaluate(config, str(tmp_path))
  bad = blobs()
  bad.train_x[:] = np.nan
  fake_load(bad)
  config.num_epochs = 5
  config.checkpoint_every_steps = 16  # two chunks per checkpoint: the NaN is read one chunk late
  with pytest.raises(run.TrainingError, match="not finite at step 16.*last good checkpoint: "
                     "step 16"):
    run.train_and_evaluate(config, str(tmp_path))
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert steps[-1] == 16
  logged = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
  assert logged == [8, 16]  # no line for a chunk with a non-finite loss


def test_nan_before_any_checkpoint(tmp_path, fake_load):
  bad = blobs()
  bad.train_x[:] = np.nan
  fake_load(bad)
  with pytest.raises(run.TrainingError, match="no checkpoint was saved yet"):
    run.train_and_evaluate(small_config(), str(tmp_path))


def test_codebook_is_saved_and_used_on_resume(tmp_path, fake_load, monkeypatch):
  d = blobs()
  fake_load(d)
  config = small_config(num_epochs=1)
  run.train_and_evaluate(config, str(tmp_path))
  saved = np.load(tmp_path / workdir.CODEBOOK)
  np.testing.assert_array_equal(saved, codebook_lib.make_codebook("bernoulli", 4, 16, 0))
  # a numpy whose random stream changed would generate other targets: the saved ones are used
  monkeypatch.setattr(codebook_lib, "make_codebook", lambda *a: -saved)
  trainer, _, _, step = run.restore_run(str(tmp_path))
  assert step == 8
  np.testing.assert_array_equal(np.asarray(trainer.constants["head"]["codebook"]) * 4,
                                saved)  # rows normalised: +-1/sqrt(16)
  (tmp_path / workdir.CODEBOOK).write_bytes(b"garbage")
  with pytest.raises(ValueError, match="not a readable"):
    run.restore_run(str(tmp_path))


@pytest.mark.parametrize("overrides,message", [
    ({"loss": "hinge"}, "loss must be one of"),
    ({"codebook": "sobol"}, "codebook must be one of"),
    ({"multilabel_loss": "focal"}, "multilabel_loss must be one of"),
    ({"quantization_kind": "l3"}, "quantization_kind must be one of"),
    ({"backbone": "vit"}, "backbone must be one of"),
    ({"dataset": "mnist"}, "dataset must be one of"),
    ({"lr_schedule": "cosine"}, "lr_schedule must be one of"),
    ({"num_bits": -1}, "num_bits must be positive"),
    ({"eval_topk": 0}, "eval_topk must be positive"),
    ({"eval_batch_size": 0}, "eval_batch_size must be positive"),
    ({"steps_per_chunk": -1}, "steps_per_chunk must be >= 0"),
    ({"keep_checkpoints": 0}, "keep_checkpoints must be at least 1"),
    ({"export_faiss": True, "num_bits": 12}, "export_faiss needs num_bits divisible by 8"),
    ({"codebook": "hadamard", "num_bits": 48}, "power of two"),
    ({"scale": 0.0}, "scale must be positive"),
])
def test_bad_settings_fail_before_loading_data(tmp_path, fake_load, overrides, message):
  calls = fake_load(blobs())
  with pytest.raises(ValueError, match=message):
    run.train_and_evaluate(small_config(**overrides), str(tmp_path / "w"))
  assert not calls and not os.path.exists(tmp_path / "w")


def test_settings_checked_against_the_data(tmp_path, fake_load):
  fake_load(blobs())
  with pytest.raises(ValueError, match="batch_size 500 is larger"):
    run.train_and_evaluate(small_config(batch_size=500), str(tmp_path))
  with pytest.raises(ValueError, match="eval_topk 1000 is larger than the database"):
    run.train_and_evaluate(small_config(eval_topk=1000), str(tmp_path))


def test_unknown_key_in_a_config_file(tmp_path):
  path = tmp_path / "typo.py"
  path.write_text("from orthohash_jax.config_base import base_config\n"
                  "def get_config():\n  c = base_config()\n  c.num_bitz = 32\n  return c\n")
  with pytest.raises(ValueError, match="unknown config key 'num_bitz'; did you mean 'num_bits'"):
    config_base.load_config_file(str(path))
  (tmp_path / "empty.py").write_text("x = 1\n")
  with pytest.raises(ValueError, match="defines no get_config"):
    config_base.load_config_file(str(tmp_path / "empty.py"))


def test_resumable_keys_may_change_others_may_not(tmp_path, fake_load):
  fake_load(blobs())
  run.train_and_evaluate(small_config(num_epochs=1), str(tmp_path))
  workdir.check_same_run(str(tmp_path), small_config(num_epochs=1, eval_topk=5, num_devices=1))
  with pytest.raises(ValueError, match=r"another config \(margin: 0.2 -> 0.3\)"):
    workdir.check_same_run(str(tmp_path), small_config(num_epochs=1, margin=0.3))


def params_of(workdir):
  _, _, state, step = run.restore_run(str(workdir))
  return step, jax.tree.leaves(jax.tree.map(np.asarray, state.params))


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


@pytest.mark.slow
def test_resume_truncates_the_log_and_keeps_time_totals(tmp_path, fake_load):
  fake_load(blobs())
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
def test_num_epochs_on_resume(tmp_path, fake_load):
  fake_load(blobs())
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
def test_interrupt_saves_and_resumes_identically(tmp_path, fake_load, signum, capsys):
  d = blobs()
  fake_load(d)
  config = small_config(num_epochs=5, checkpoint_every_steps=1000)
  run.train_and_evaluate(config, str(tmp_path / "whole"))
  stopping = _InterruptAt(**{f.name: getattr(d, f.name) for f in dataclasses.fields(d)})
  stopping.step, stopping.signum = 17, signum
  fake_load(stopping)
  with pytest.raises(run.Interrupted, match="interrupted at step 24; checkpoint saved"):
    run.train_and_evaluate(config, str(tmp_path / "cut"))
  assert signal.getsignal(signum) is not None  # handlers restored
  fake_load(d)
  run.train_and_evaluate(config, str(tmp_path / "cut"))
  assert "resumed from checkpoint at step 24" in capsys.readouterr().out
  (sa, a), (sb, b) = params_of(tmp_path / "whole"), params_of(tmp_path / "cut")
  assert sa == sb == 40
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def test_too_few_bits_for_the_classes_is_refused_before_training(tmp_path, fake_load):
  fake_load(blobs())  # 4 classes
  with pytest.raises(ValueError, match=r"num_bits 1 gives at most 2 distinct codes for 4 "
                     r"classes; use num_bits >= 2"):
    run.train_and_evaluate(small_config(num_bits=1, loss="ce"), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_rerunning_a_finished_run_adds_no_event_file(tmp_path, fake_load):
  fake_load(blobs())
  first = run.train_and_evaluate(small_config(num_epochs=1), str(tmp_path))
  events = sorted(p.name for p in tmp_path.glob("events.out.tfevents.*"))
  assert len(events) == 1
  again = run.train_and_evaluate(small_config(num_epochs=1), str(tmp_path))
  assert sorted(p.name for p in tmp_path.glob("events.out.tfevents.*")) == events
  assert again["mAP"] == first["mAP"]


@pytest.mark.slow
def test_a_failed_start_writes_nothing_and_the_corrected_command_runs(tmp_path, fake_load):
  d = blobs(dim=16 * 16 * 3)
  images = data_lib.RetrievalData("images", 4, *(a.reshape(-1, 16, 16, 3) if a.ndim == 2 else a
                                                 for a in (d.train_x, d.train_y, d.query_x,
                                                           d.query_y, d.db_x, d.db_y)))
  fake_load(images)
  new = tmp_path / "w"
  with pytest.raises(ValueError, match="backbone alexnet needs images of at least 63x63 "
                     r"pixels, got 16x16 \(set image_size >= 63\)"):
    run.train_and_evaluate(small_config(backbone="alexnet", num_epochs=1), str(new))
  assert not new.exists()
  run.train_and_evaluate(small_config(num_epochs=1), str(new))  # the mlp takes 16x16
  assert (new / "results.json").exists()


@pytest.mark.slow  # four runs and a re-save, ~9 s
def test_a_checkpoint_giving_a_non_finite_loss_at_its_own_step_is_kept_if_it_passed_its_digest(
    tmp_path, fake_load, capsys):
  """Issue 36 #15: a checkpoint whose own step gives a non-finite loss, a step whose loss the
  run logged as finite before (here: finite parameters x 1e20, re-saved). With a digest, which
  it passes, its files are those saved, so the data, code or config changed: one error line
  naming the step and the logged loss, and nothing quarantined. Without a digest (an older
  run) it may be damage no check caught: quarantined in one line, and the rerun resumes from
  the previous checkpoint."""
  fake_load(blobs())  # 8 steps per epoch, chunks of 4 steps, each one checkpointed
  config = small_config(num_epochs=2, steps_per_chunk=4, checkpoint_every_steps=4)
  run.train_and_evaluate(config, str(tmp_path))
  shutil.rmtree(tmp_path / "checkpoints" / "16")  # as if killed after logging step 16
  trainer, data, _, _ = run.restore_run(str(tmp_path))
  data.close()
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  state = ckpt.manager.restore(12, args=checkpoint.ocp.args.StandardRestore(
      trainer.abstract_state()))
  shutil.rmtree(tmp_path / "checkpoints" / "12")
  ckpt.close()
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  ckpt.save(12, state.replace(params=jax.tree.map(lambda p: p * 1e20, state.params)))
  ckpt.close()
  metrics = (tmp_path / "metrics.jsonl").read_text()
  logged = {json.loads(line)["step"]: json.loads(line)["loss"] for line in metrics.splitlines()}
  with pytest.raises(run.TrainingError) as e:
    run.train_and_evaluate(config, str(tmp_path))
  assert str(e.value) == (
      "checkpoint at step 12 gives a non-finite loss at its own step, where the run that saved "
      f"it logged a finite one ({np.float32(logged[16]):.4g}, its chunk's mean); the checkpoint "
      "passed its digest check, so the data, code or config differ from that run's: rerun with "
      "those, or use a new --workdir (no checkpoint was quarantined)")
  assert not (tmp_path / "checkpoints_corrupt").exists()
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["12", "8"]
  assert (tmp_path / "metrics.jsonl").read_text() == metrics  # no chunk logged: kept as it was
  os.remove(tmp_path / "checkpoints" / "12" / checkpoint.DIGEST)  # as saved by an older run
  with pytest.raises(run.TrainingError) as e:
    run.train_and_evaluate(config, str(tmp_path))
  assert str(e.value) == (f"checkpoint at step 12 gives a non-finite loss at its own step; "
                          f"moved to {tmp_path / 'checkpoints_corrupt' / '12'}; rerun the same "
                          "command to resume from the previous checkpoint")
  capsys.readouterr()
  assert run.train_and_evaluate(config, str(tmp_path))["steps"] == 16
  assert "resumed from checkpoint at step 8" in capsys.readouterr().out


def test_nan_data_at_a_resumed_step_never_logged_keeps_the_checkpoint(tmp_path, fake_load):
  """The other side: a step the run never reached gives a non-finite loss after resume (here
  NaN inputs): the data may be at fault, so the checkpoint stays where it is."""
  fake_load(blobs())
  config = small_config(num_epochs=1)
  run.train_and_evaluate(config, str(tmp_path))
  bad = blobs()
  bad.train_x[:] = np.nan
  fake_load(bad)
  config.num_epochs = 2
  with pytest.raises(run.TrainingError, match="loss is not finite at step 8; stopped without "
                     "saving"):
    run.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / "checkpoints_corrupt").exists()


def _chunk_ends(workdir):
  return [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))]


@pytest.mark.slow
def test_chunk_seconds_sets_the_chunks_and_changes_no_result(tmp_path, fake_load):
  """3 epochs of 8 steps, evaluations at 8 and 16, a save once 5 steps have passed. Timed
  chunks start with 2 single steps; chunk_seconds 1e9 then gives the whole epoch (cut at the
  evaluations), 1e-9 one step per chunk. Same parameters and mAPs bit for bit."""
  fake_load(blobs())
  runs = {}
  for seconds, ends, saves in [(0, [8, 16, 24], [8, 16, 24]),
                               (1e9, [1, 2, 8, 16, 24], [8, 16, 24]),
                               (1e-9, list(range(1, 25)), [15, 20, 24])]:
    workdir = str(tmp_path / str(seconds))
    config = small_config(num_epochs=3, eval_every_epochs=1, checkpoint_every_steps=5,
                          chunk_seconds=seconds)
    runs[seconds] = run.train_and_evaluate(config, workdir)["mAP"], params_of(workdir)
    assert _chunk_ends(workdir) == ends
    assert sorted(int(p) for p in os.listdir(os.path.join(workdir, "checkpoints"))) == saves
    evaluated = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in evaluated if "mAP" in r] == [8, 16]
  (map0, (step0, params0)) = runs[0]
  for seconds in (1e9, 1e-9):
    mean_ap, (step, params) = runs[seconds]
    assert mean_ap == map0 and step == step0 == 24
    for x, y in zip(params, params0):
      np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_a_stop_request_with_one_step_chunks_saves_at_the_next_step(tmp_path, fake_load):
  d = blobs()
  stopping = _InterruptAt(**{f.name: getattr(d, f.name) for f in dataclasses.fields(d)})
  stopping.step, stopping.signum = 17, signal.SIGTERM
  fake_load(stopping)
  config = small_config(num_epochs=5, checkpoint_every_steps=1000, chunk_seconds=1e-9)
  with pytest.raises(run.Interrupted, match="interrupted at step 18; checkpoint saved"):
    run.train_and_evaluate(config, str(tmp_path))
  assert os.listdir(tmp_path / "checkpoints") == ["18"]


@pytest.mark.slow
def test_a_failed_background_save_is_one_line_and_keeps_the_previous_checkpoint(tmp_path,
                                                                               fake_load):
  fake_load(blobs())
  config = small_config(num_epochs=1, hidden=(2048,), keep_checkpoints=1)  # a state of ~600 kB
  run.train_and_evaluate(config, str(tmp_path))
  config.num_epochs = 2
  with file_size_limit(200_000), pytest.raises(checkpoint.SaveError) as e:
    run.train_and_evaluate(config, str(tmp_path))
  assert str(e.value).startswith("cannot save the checkpoint of step 16 in ")
  assert str(e.value).endswith("; the last checkpoint is step 8") and "\n" not in str(e.value)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["8"]
  assert not (tmp_path / "results.json").exists() or json.loads(
      (tmp_path / "results.json").read_text())["steps"] == 8
