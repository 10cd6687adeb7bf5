"""Command line: export the binary codes of a run (format: ``codes_file``).

``python -m orthohash_jax.export --workdir=DIR --output=codes.npz [--faiss]`` re-encodes the
queries and the database with the latest checkpoint of a run.
"""
import sys

from orthohash_jax import cli, codes_file, evaluation, run

def export_run(workdir: str, output: str, faiss_index: bool = False) -> dict:
  """Restores the latest checkpoint of ``workdir`` and writes its codes to ``output``."""
  trainer, data, state, step = run.restore_run(workdir)
  result = evaluation.evaluate(trainer, data, state)
  codes_file.save_codes(output, result, trainer.config.num_bits, trainer.config.to_dict(), faiss_index)
  return {"mAP": result["mAP"], "step": step}


def main(argv=None) -> int:
  parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--output", required=True)
  parser.add_argument("--faiss", action="store_true", help="also write <output>.faissbin")
  args = parser.parse_args(argv)

  def export():
    info = export_run(args.workdir, args.output, args.faiss)
    cli.say(f"wrote {args.output} (checkpoint step {info['step']}, mAP {info['mAP']:.4f})")
  return cli.run_tool(export)


if __name__ == "__main__":
  sys.exit(main())
