"""Fine-tuning the paper's pretrained AlexNet end to end: torchvision state dict -> .pth ->
``python -m orthohash_jax.weights`` -> ``configs/imagenet100.py`` (streamed list files) ->
train, interrupt, resume identically, export codes; and the up-front error without weights."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import ROOT  # pylint: disable=wrong-import-position
from orthohash_jax import codes_file, config_base, run  # pylint: disable=wrong-import-position
from orthohash_jax.data import streaming  # pylint: disable=wrong-import-position
import torchvision_replicas as replicas  # pylint: disable=wrong-import-position
from PIL import Image  # pylint: disable=wrong-import-position,g-bad-import-order


def write_lists(root, rng):
  """Tiny ImageNet100-format list files (3 classes of 100 columns) over 80x70 JPEGs."""
  (root / "img").mkdir(parents=True)
  for filename, n in (("train.txt", 8), ("test.txt", 3), ("database.txt", 6)):
    lines = []
    for i in range(n):
      name = f"img/{filename[:-4]}_{i}.jpg"
      Image.fromarray(rng.integers(0, 256, (70, 80, 3), dtype=np.uint8)).save(root / name)
      lines.append(name + " " + " ".join("1" if c == i % 3 else "0" for c in range(100)))
    (root / filename).write_text("\n".join(lines) + "\n")


def paper_config(**overrides):
  config = config_base.load_config_file(os.path.join(ROOT, "configs", "imagenet100.py"))
  config.update(num_epochs=3, batch_size=4, eval_batch_size=4, num_bits=16, image_size=64,
                eval_resize=64, eval_topk=5, steps_per_chunk=1, checkpoint_every_steps=100,
                data_workers=1, **overrides)
  return config


def test_missing_pretrained_is_one_clear_error(tmp_path):
  with pytest.raises(ValueError, match="python -m orthohash_jax.weights --arch=alexnet"):
    run.train_and_evaluate(paper_config(data_dir=str(tmp_path)), str(tmp_path / "w"))


@pytest.mark.slow
def test_finetune_converted_alexnet_resumes_identically(tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  write_lists(tmp_path / "data", rng)
  torch.save(replicas.randomize(replicas.AlexNet(), 0).state_dict(), tmp_path / "alexnet.pth")
  proc = subprocess.run([sys.executable, "-m", "orthohash_jax.weights", "--arch=alexnet",
                         f"--torch={tmp_path / 'alexnet.pth'}", f"--output={tmp_path / 'w'}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  config = paper_config(data_dir=str(tmp_path / "data"), pretrained=str(tmp_path / "w"))
  whole = run.train_and_evaluate(config, str(tmp_path / "whole"))
  assert whole["steps"] == 6 and 0.0 <= whole["mAP"] <= 1.0

  original = streaming.ImageListSource.train_rows

  def interrupting(self, indices, steps, positions):
    if 3 in steps:
      os.kill(os.getpid(), signal.SIGTERM)
    return original(self, indices, steps, positions)

  monkeypatch.setattr(streaming.ImageListSource, "train_rows", interrupting)
  with pytest.raises(run.Interrupted, match="interrupted at step 4"):
    run.train_and_evaluate(config, str(tmp_path / "cut"))
  monkeypatch.setattr(streaming.ImageListSource, "train_rows", original)
  resumed = run.train_and_evaluate(config, str(tmp_path / "cut"))
  assert resumed["mAP"] == whole["mAP"]
  a, b = (codes_file.load_codes(str(tmp_path / w / "codes.npz")) for w in ("whole", "cut"))
  np.testing.assert_array_equal(a["db_codes"], b["db_codes"])
  np.testing.assert_array_equal(a["query_codes"], b["query_codes"])
