"""Training methods by ``config.loss``: OrthoHash, the CE baselines and the paper's comparison
methods (Sec. 4, Tables 2-3) as in the authors' framework CISiPLab/cisip-FIRe.

``METHODS[name]`` is a ``base.Method``: its head (``models.build_model`` builds it), its loss of
the codes, head outputs, labels, step, key and config (``trainer.Trainer`` calls it), its own
config keys, whether it takes multi-label data, its name in the paper's tables, a one-line
summary and its architecture (``use_bn``). A new method is a module defining ``METHOD`` and one
line here; docs/methods.md has a row per method (a test holds it equal to these declarations).

``apply_architecture(config)`` sets the architecture keys that the config leaves at None to the
method's values (before validation, so config.json records what was trained); ``describe()`` is
a line per method (``--list_keys``).

A method's keys and whether it takes multi-label data are also declared in ``config_base``
(``Key.losses``, ``SINGLE_LABEL_LOSSES``), where the config is validated; a test holds the two
equal.
"""
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


def apply_architecture(config) -> None:
  """Sets each key of ``METHODS[config["loss"]].architecture`` that ``config`` (a ConfigDict or
  a dict) holds as None (the user did not set it) to the method's value; an unknown loss is
  left to validation."""
  method = METHODS.get(config["loss"])
  for key, value in (method.architecture.items() if method else ()):
    if config[key] is None:
      config[key] = value


def describe() -> str:
  """One line per method: its ``loss`` value, its name in the paper's tables and its summary."""
  width = max(len(name) for name in METHODS)
  return "\n".join(f"{name:<{width}}  {m.name:<12} {m.summary}" for name, m in METHODS.items())
