"""What a training method gives the model and the trainer (``Method``), and what its loss sees
(``Inputs``)."""
import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax

from orthohash_jax import models


class Inputs(NamedTuple):
  """One training step as a method's loss sees it (inside ``jax.jit``).

  codes: float32 (B, K) continuous codes v of the hash layer.
  outputs: the head's outputs (see ``models``), None without a head.
  labels: int (B,) class ids, or 0/1 (B, C) multi-hot.
  step: int32 scalar, the global step (0-based).
  key: PRNG key of this step (from (seed, step), so resumed runs draw the same).
  model: the ``models.HashModel`` whose parameters are being differentiated.
  num_classes: C, the real number of classes (heads may pad theirs).
  steps_per_epoch: training steps per epoch.
  mesh: the device mesh.
  """
  codes: jax.Array
  outputs: Any
  labels: jax.Array
  step: jax.Array
  key: jax.Array
  model: Any
  num_classes: int
  steps_per_epoch: int
  mesh: Any


@dataclasses.dataclass(frozen=True)
class Method:
  """One value of ``config.loss``.

  loss: (config, Inputs) -> float scalar, the batch loss.
  make_head: (config, num_classes, codebook (C, K) +-1 or None, nnx.Rngs) -> the head module
    (see ``models``), or None for a method without a head.
  keys: the config keys that this method reads and methods without them do not ("codebook":
    the method takes the class targets of ``config.codebook``).
  multilabel: takes multi-hot (B, C) labels.
  name: the method's name in the paper's tables (``experiments.run_grid --methods``).
  summary: one line: the paper, the loss and the head (``--list_keys``, ``run_grid --help``).
  architecture: {config key: value}, the model the method trains (``use_bn``: FIRe's models
    of the comparison methods have no BatchNorm); ``apply_architecture`` applies it wherever
    the config leaves the key at None.
  """
  loss: Callable
  make_head: Optional[Callable] = None
  keys: tuple = ()
  multilabel: bool = True
  name: str = ""
  summary: str = ""
  architecture: dict = dataclasses.field(default_factory=dict)

  @property
  def uses_codebook(self) -> bool:
    return "codebook" in self.keys


def linear_head(transform=None):
  """``make_head`` of a ``models.LinearHead`` (with bias) on ``transform(codes, train=, key=)``
  (None: on the codes)."""
  return lambda config, num_classes, codebook, rngs: models.LinearHead(
      config.num_bits, num_classes, init=config.init, transform=transform, rngs=rngs)


def centres_head(config, num_classes, codebook, rngs):
  """``make_head`` of the fixed class targets (``models.Centres``)."""
  del config, num_classes, rngs
  return models.Centres(codebook)
