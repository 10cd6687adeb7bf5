"""Command line: export the binary codes of a run (format: ``codes_file``).

``python -m orthohash_jax.export --workdir=DIR --output=codes.npz [--faiss]`` re-encodes the
queries and the database with the latest checkpoint of a run. Writes ``--output`` and, with
``--faiss``, ``<output without its extension>.faissbin`` beside it; prints both. An output that
names a file of a run (``DIR/config.json``, ``DIR/codes.npz``, ...) is refused.
"""
import sys

from orthohash_jax import cli, codes_file, evaluation, run
from orthohash_jax import workdir as workdir_lib


def export_run(workdir: str, output: str, faiss_index: bool = False) -> dict:
  """Restores the latest checkpoint of ``workdir`` and writes its codes to ``output``; returns
  mAP, step and the paths written (``files``)."""
  for target in [output] + ([codes_file.faiss_path(output)] if faiss_index else []):
    workdir_lib.refuse_run_file(target)
  trainer, data, state, step = run.restore_run(workdir)
  try:
    result = evaluation.evaluate(trainer, data, state)
  finally:
    data.close()
  written = codes_file.save_codes(output, result, trainer.config.num_bits,
                                  trainer.config.to_dict(), faiss_index)
  return {"mAP": result["mAP"], "step": step, "files": written}


def main(argv=None) -> int:
  parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--output", required=True)
  parser.add_argument("--faiss", action="store_true", help="also write <output>.faissbin")
  args = parser.parse_args(argv)

  def export():
    info = export_run(args.workdir, args.output, args.faiss)
    cli.say(f"wrote {' and '.join(info['files'])} (checkpoint step {info['step']}, "
            f"mAP {info['mAP']:.4f})")
  return cli.run_tool(export)


if __name__ == "__main__":
  sys.exit(main())
