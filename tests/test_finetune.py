"""The paper's pretrained-AlexNet configs: the up-front error without converted weights, and a
short fine-tuning run from converted torchvision weights through the command lines (convert ->
train -> interrupt -> resume identically -> export)."""
import os
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, checkpoint_steps, final_params, main_cmd, run_cmd, sigterm_during_step
from conftest import write_image_lists
from orthohash_jax import codes_file, config_base, run
from orthohash_jax.data import streaming

# The short run: 8 training images, batch 4, 3 epochs = 6 steps, 64x64 crops, 3 classes, one
# device (the command-line runs see one; pytest's process four, which changes float sums).
SHORT = {"num_devices": 1, "num_epochs": 3, "batch_size": 4, "eval_batch_size": 4, "num_bits": 16,
         "num_classes": 3, "image_size": 64, "train_resize": 72, "eval_resize": 64, "eval_topk": 5,
         "steps_per_chunk": 1, "checkpoint_every_steps": 100, "data_workers": 1}


def paper_config(**overrides):
  config = config_base.load_config_file(os.path.join(ROOT, "configs", "imagenet100.py"))
  config.update(SHORT, **overrides)
  return config


def test_missing_pretrained_is_one_clear_error(tmp_path):
  with pytest.raises(ValueError, match="python -m orthohash_jax.weights --arch=alexnet"):
    run.train_and_evaluate(paper_config(data_dir=str(tmp_path)), str(tmp_path / "w"))
  with pytest.raises(ValueError, match="pretrained directory .* does not exist"):
    run.train_and_evaluate(paper_config(data_dir=str(tmp_path), pretrained=str(tmp_path / "x")),
                           str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.slow
def test_finetune_from_converted_alexnet_end_to_end(tmp_path, monkeypatch):
  torch = pytest.importorskip("torch")
  from experiments import torchvision_replicas as replicas  # pylint: disable=g-import-not-at-top  (needs torch)
  write_image_lists(tmp_path / "data", n_train=8, n_test=3, n_db=8)
  torch.save(replicas.randomize(replicas.AlexNet(), 0).state_dict(), tmp_path / "alexnet.pth")
  proc = run_cmd([sys.executable, "-m", "orthohash_jax.weights", "--arch=alexnet",
                  f"--torch={tmp_path / 'alexnet.pth'}", f"--output={tmp_path / 'weights'}"])
  assert proc.returncode == 0, proc.stderr[-2000:]
  values = {**SHORT, "data_dir": str(tmp_path / "data"), "pretrained": str(tmp_path / "weights")}
  flags = [f"--config.{k}={v}" for k, v in values.items()]

  whole = run_cmd(main_cmd(tmp_path / "whole", *flags, config="configs/imagenet100.py"))
  assert whole.returncode == 0, whole.stderr[-2000:]

  # Fine-tuning starts from the converted weights: after 6 Adam steps at lr 1e-4 x 0.1
  # (backbone_lr_scale) no backbone weight has moved by more than ~6e-5, and some have moved.
  with np.load(tmp_path / "weights" / "backbone.npz") as npz:
    converted = {k: npz[k] for k in npz.files}
  step, params = final_params(str(tmp_path / "whole"))
  assert step == 6
  trained = {"/".join(str(getattr(k, "key", k)) for k in path): leaf for path, leaf
             in jax.tree_util.tree_flatten_with_path(params["backbone"])[0]}
  assert sorted(trained) == sorted(converted)
  moved = max(np.abs(trained[k] - converted[k]).max() for k in converted)
  assert 0 < moved <= 6.1e-5

  # The same run interrupted by SIGTERM during step 3, then resumed through the command line.
  sigterm_during_step(monkeypatch, streaming.ImageListSource, 3)
  with pytest.raises(run.Interrupted, match="interrupted at step 4"):
    run.train_and_evaluate(paper_config(**values), str(tmp_path / "cut"))
  assert checkpoint_steps(tmp_path / "cut") == [4]
  resumed = run_cmd(main_cmd(tmp_path / "cut", *flags, config="configs/imagenet100.py"))
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  np.testing.assert_array_equal(final_params(str(tmp_path / "cut"))[1]["hash_layer"]["fc"]["kernel"],
                                params["hash_layer"]["fc"]["kernel"])

  exported = []
  for name in ("whole", "cut"):
    out = tmp_path / f"{name}.npz"
    proc = run_cmd([sys.executable, "-m", "orthohash_jax.export", f"--workdir={tmp_path / name}",
                    f"--output={out}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    exported.append(codes_file.load_codes(str(out)))
  for key in ("db_codes", "query_codes"):
    np.testing.assert_array_equal(exported[0][key], exported[1][key])
  assert exported[0]["db_codes"].shape == (8, 1)
