"""Training methods by ``config.loss``: OrthoHash, the CE baselines and the paper's comparison
methods (Sec. 4, Tables 2-3) as in the authors' framework CISiPLab/cisip-FIRe.

``METHODS[name]`` is a ``base.Method``: its head (``models.build_model`` builds it), its loss of
the codes, head outputs, labels, step, key and config (``trainer.Trainer`` calls it), its own
config keys and whether it takes multi-label data. A new method is a module defining ``METHOD``
and one line here.

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

