"""Command-line conventions shared by the ``python -m orthohash_jax.*`` tools."""
import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
  """argparse whose usage errors are one ``error:`` line on stderr and exit status 2."""

  def error(self, message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
