"""The paper's pretrained-AlexNet configs: the up-front error without converted weights."""
import os

import pytest

from conftest import ROOT
from orthohash_jax import config_base, run


def paper_config(**overrides):
  config = config_base.load_config_file(os.path.join(ROOT, "configs", "imagenet100.py"))
  config.update(num_epochs=3, batch_size=4, eval_batch_size=4, num_bits=16, image_size=64,
                eval_resize=64, eval_topk=5, steps_per_chunk=1, checkpoint_every_steps=100,
                data_workers=1, **overrides)
  return config


def test_missing_pretrained_is_one_clear_error(tmp_path):
  with pytest.raises(ValueError, match="python -m orthohash_jax.weights --arch=alexnet"):
    run.train_and_evaluate(paper_config(data_dir=str(tmp_path)), str(tmp_path / "w"))
  with pytest.raises(ValueError, match="pretrained directory .* does not exist"):
    run.train_and_evaluate(paper_config(data_dir=str(tmp_path), pretrained=str(tmp_path / "x")),
                           str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")
