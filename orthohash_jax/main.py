"""Command line: train, evaluate and export an OrthoHash model.

  python -m orthohash_jax.main --config=configs/digits.py[:VARIANT] --workdir=runs/digits \
      [--config.num_bits=32 --config.seed=1 ...] [--list_keys]

``--config.KEY=VALUE`` (or ``--config.KEY VALUE``) sets a declared key (``config_base``): VALUE
is read as a Python literal (``32``, ``(64,)``, ``None``; ``true`` / ``false`` for booleans),
else as a string. Writes into the workdir: config.json, codebook.npy, progress.json,
metrics.jsonl, checkpoints/, TensorBoard events, results.json, codes.npz (and codes.faissbin
with ``export_faiss``; see ``workdir``); the next-to-last output line names them, the last is
the results as JSON. A rerun with the same workdir resumes from the latest checkpoint. Exit
status (each with one line on stderr when not 0):
  0  finished: results.json and codes.npz written;
  1  training failed (non-finite loss): stopped without saving, the last good checkpoint kept;
     or a file could not be written (a full disk): the checkpoints kept, rerun once space is free;
  2  bad flags, config or data: nothing trained, nothing new on disk;
  3  interrupted (SIGTERM, Ctrl-C or a preemption notice): the running chunk finished and a
     checkpoint was saved; the same command resumes. A second Ctrl-C aborts at once (130,
     nothing saved since the last checkpoint).
  4  multi-process: another process died (a collective failed); checkpoints kept, the same
     command on every host resumes. jaxlib itself aborts a process (134, SIGABRT) when process
     0 dies or another stops sending heartbeats for 30 s (docs/multihost.md#preemption).
Multi-process: set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (or pass
--coordinator=auto on TPU pods) on every process.
"""
import json
import sys

from absl import logging

from orthohash_jax import cli, config_base, files, methods, parallel, run
from orthohash_jax import workdir as workdir_lib

OVERRIDE = "--config."


class Aborted(cli.CommandError):
  status = 130


def parse_args(argv):
  """(argparse namespace, ["key=value", ...] config overrides) of the command line."""
  rest, overrides = [], []
  args = iter(argv)
  for arg in args:
    if not arg.startswith(OVERRIDE):
      rest.append(arg)
    elif "=" in arg:
      overrides.append(arg[len(OVERRIDE):])
    else:
      overrides.append(f"{arg[len(OVERRIDE):]}={next(args, '')}")
  parser = cli.ArgumentParser(prog="python -m orthohash_jax.main",
                              description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/digits.py",
                      help="experiment config file, PATH[:VARIANT]")
  parser.add_argument("--workdir", help="directory for checkpoints, logs and results (required)")
  parser.add_argument("--list_keys", action="store_true",
                      help="print every config key with its default and description")
  parser.add_argument("--coordinator", help="jax.distributed coordinator host:port, or 'auto'")
  parser.add_argument("--num_processes", type=int, help="number of processes")
  parser.add_argument("--process_id", type=int, help="index of this process")
  parser.add_argument("--verbose", action="store_true", help="the libraries' INFO logs too")
  return parser.parse_args(rest), overrides


def main(argv=None) -> int:
  args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
  if args.list_keys:
    print(config_base.describe())
    print(f"\nmethods (--config.loss=NAME; the paper's name; docs/methods.md):\n"
          f"{methods.describe()}")
    return 0

  def body():
    if not args.workdir:
      raise ValueError("--workdir is required")
    config = config_base.load_config_file(args.config)
    config_base.apply_overrides(config, overrides)
    logging.set_verbosity(logging.INFO if args.verbose else logging.WARNING)  # orbax: INFO a save
    parallel.initialize(args.coordinator, args.num_processes, args.process_id)
    try:
      results = run.train_and_evaluate(config, args.workdir)
    except KeyboardInterrupt:
      raise Aborted("aborted by Ctrl-C (nothing saved since the last checkpoint)") from None
    if parallel.is_main_process():
      kept = [name for name in (workdir_lib.CONFIG, workdir_lib.CODEBOOK, workdir_lib.PROGRESS,
                                workdir_lib.METRICS)
              if files.path(workdir_lib.path(args.workdir, name)).exists()]
      cli.say(f"wrote {', '.join(workdir_lib.result_files(args.workdir, config))} (with "
              f"{', '.join(kept)}, checkpoints/ and TensorBoard events in {args.workdir}: "
              "docs/runs.md)")
      cli.say(json.dumps(results))
  return cli.run_tool(body)


if __name__ == "__main__":
  sys.exit(main())
