"""Orbax checkpoints of the train state in ``<workdir>/checkpoints``, resumed automatically.

Checkpoints are written synchronously (orbax writes to a temporary directory and renames it, so
a process killed mid-save leaves the previous checkpoints intact). A latest checkpoint that fails
to restore is reported, moved to ``<workdir>/checkpoints_corrupt/<step>`` (kept for inspection,
never deleted) and the next older one is used.
"""
import os
import shutil

from absl import logging
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores a pytree train state keyed by training step."""

  def __init__(self, workdir: str, keep: int = 3):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.corrupt_dir = os.path.abspath(os.path.join(workdir, "checkpoints_corrupt"))
    self.keep = keep
    self.manager = self._open()

  def _open(self):
    options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(self.directory, options=options)

  def save(self, step: int, state) -> None:
    self.manager.save(int(step), args=ocp.args.StandardSave(state), force=True)
    self.manager.wait_until_finished()

  def restore_latest(self, abstract_state):
    """Returns (state, step) of the newest checkpoint that restores, or (None, 0) if none does."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        return state, step
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("checkpoint at step %d is corrupt (%s: %s); trying an older one",
                        step, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        print(f"warning: checkpoint at step {step} could not be restored "
              f"({type(e).__name__}); moved to {self.corrupt_dir}, using an older one", flush=True)
        self._quarantine(step)
    return None, 0

  def _quarantine(self, step: int) -> None:
    self.manager.close()
    os.makedirs(self.corrupt_dir, exist_ok=True)
    shutil.move(os.path.join(self.directory, str(step)), os.path.join(self.corrupt_dir, str(step)))
    self.manager = self._open()

  def reached_preemption(self, step: int) -> bool:
    """True when orbax's multi-host preemption signal (e.g. a TPU maintenance event) fired."""
    return self.manager.reached_preemption(int(step))

  def close(self) -> None:
    self.manager.close()
