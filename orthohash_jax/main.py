"""Command line: train, evaluate and export an OrthoHash model.

  python -m orthohash_jax.main --config=configs/digits.py --workdir=runs/digits \
      [--config.num_bits=32 --config.seed=1 ...]

Writes into the workdir: config.json, metrics.jsonl, checkpoints/, results.json, codes.npz.
A rerun with the same workdir resumes from the latest checkpoint. Exit status (each with one
line on stderr when not 0):
  0  finished: results.json and codes.npz written;
  1  training failed (non-finite loss): stopped without saving, the last good checkpoint kept;
  2  bad flags, config or data: nothing trained, existing checkpoints untouched;
  3  interrupted (SIGTERM, Ctrl-C or a preemption notice): the running chunk finished and a
     checkpoint was saved; the same command resumes. A second Ctrl-C aborts at once (130,
     nothing saved since the last checkpoint).
Multi-process: set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (or pass
--coordinator=auto on TPU pods) on every process.
"""
import json
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from orthohash_jax import cli, config_base, parallel, run

_CONFIG = config_flags.DEFINE_config_file("config", "configs/digits.py", "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_COORDINATOR = flags.DEFINE_string("coordinator", None,
                                   "jax.distributed coordinator host:port, or 'auto'.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Index of this process.")


def fail(message: str, status: int = 2):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(status)


def parse_flags(argv):
  """absl flag parsing with one-line errors (unknown config keys, bad values) and exit 2;
  ``--list_keys`` prints every config key with its default and description."""
  if "--list_keys" in argv[1:]:
    print(config_base.describe())
    sys.exit(0)
  for arg in argv[1:]:
    if arg.startswith("--config="):
      try:  # the file's own errors (missing, no get_config, unknown keys) as one line
        config_base.load_config_file(arg.split("=", 1)[1])
      except ValueError as e:
        fail(str(e))
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
  except AttributeError as e:  # an override of a key the locked config does not have
    found = re.search(r"[A-Za-z_]\w*", str(e))  # ml_collections quotes the name, with a hint
    name = found.group(0) if found else str(e)
    try:
      config_base.check_known_keys({name: None})
    except ValueError as unknown:
      fail(str(unknown))
    fail(f"bad config override: {name}")
  except Exception as e:  # pylint: disable=broad-except
    # a config file that fails to load surfaces as an arbitrary exception while parsing
    fail(f"cannot load the config: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def main(argv):
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}")
  if not _WORKDIR.value:
    fail("--workdir is required")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  try:
    summary = run.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except run.Interrupted as e:
    print(str(e), file=sys.stderr)
    sys.exit(3)
  except KeyboardInterrupt:
    fail("aborted by Ctrl-C (nothing saved since the last checkpoint)", status=130)
  except run.TrainingError as e:
    fail(str(e), status=1)
  except (ValueError, OSError) as e:
    fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
  if parallel.is_main_process():
    cli.say(json.dumps(summary))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
