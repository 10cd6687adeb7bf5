"""Checkpoints (``checkpoint.Checkpointer``): quarantine of checkpoints that do not restore."""
import os

import jax
import numpy as np

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
