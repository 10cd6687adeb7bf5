"""The training run in a workdir (``run``): validation up front, the loop, codebook file, resume."""
import json
import os

import numpy as np
import pytest

from conftest import blobs, small_config
from orthohash_jax import codebook as codebook_lib
from orthohash_jax import config_base, run, workdir
from orthohash_jax import data as data_lib


@pytest.fixture
def fake_load(monkeypatch):
  """Makes ``data.load`` return the given data (and counts the calls)."""
  calls = []

  def use(data):
    monkeypatch.setattr(data_lib, "load", lambda config: calls.append(1) or data)
    return calls
  return use


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
