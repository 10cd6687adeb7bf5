"""Training methods by ``config.loss``: OrthoHash, the CE baselines and the paper's comparison
methods (Sec. 4, Tables 2-3) as in the authors' framework CISiPLab/cisip-FIRe.

``METHODS[name]`` is a ``base.Method``: its head (``models.build_model`` builds it), its loss of
the codes, head outputs, labels, step, key and config (``trainer.Trainer`` calls it), its own
config keys and whether it takes multi-label data. A new method is a module defining ``METHOD``
and one line here.

``check_config(config, multilabel=None)`` refuses a setting that the chosen method cannot take
(a key of other methods changed from its default, multi-label data for a single-label method).
"""
from orthohash_jax import config_base
from orthohash_jax.methods.base import Inputs, Method
from orthohash_jax.methods import ce, csq, dpn, dtsh, greedyhash, hashnet, jmlh, orthohash, sdhc

METHODS = {
    "orthohash": orthohash.METHOD,
    "ce": ce.METHOD,
    "hashnet": hashnet.METHOD,
    "dtsh": dtsh.METHOD,
    "sdhc": sdhc.METHOD,
    "greedyhash": greedyhash.METHOD,
    "jmlh": jmlh.METHOD,
    "dpn": dpn.METHOD,
    "csq": csq.METHOD,
}


def check_config(config, multilabel=None) -> None:
  """Raises ValueError (one line) when ``config.loss`` is unknown, when a key that only other
  methods read differs from its default, or when ``multilabel`` data meets a single-label
  method (None: not checked)."""
  if config.loss not in METHODS:
    raise ValueError(f"loss must be one of {list(METHODS)}, got {config.loss!r}")
  method = METHODS[config.loss]
  for name in sorted({key for m in METHODS.values() for key in m.keys} - set(method.keys)):
    if config[name] != config_base.KEYS_BY_NAME[name].default:
      takers = [n for n, m in METHODS.items() if name in m.keys]
      raise ValueError(f"{name} is a setting of loss {' / '.join(takers)}, not of "
                       f"{config.loss!r}: leave it at its default")
  if multilabel and not method.multilabel:
    takers = [n for n, m in METHODS.items() if m.multilabel]
    raise ValueError(f"loss {config.loss!r} takes single-label data only; multi-label data "
                     f"takes loss {' / '.join(takers)}")
