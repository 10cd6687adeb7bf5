"""Command-line conventions shared by the ``python -m orthohash_jax.*`` tools.

* ``ArgumentParser``: usage errors are one ``error:`` line on stderr and exit status 2.
* ``int_list(minimum)``: an argparse type for comma-separated integers (e.g. ``--bits=16,32``).
* ``say(line, err=False)``: prints a progress line; a closed stdout (``main | head -1``) turns
  further progress output off instead of killing the run.
"""
import argparse
import os
import sys


class ArgumentParser(argparse.ArgumentParser):
  """argparse whose usage errors are one ``error:`` line on stderr and exit status 2."""

  def error(self, message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def int_list(minimum: int):
  """An argparse type: comma-separated integers >= ``minimum`` ("16,32" -> [16, 32])."""
  def parse(text: str):
    try:
      values = [int(v) for v in text.split(",")]
    except ValueError:
      raise argparse.ArgumentTypeError(
          f"expected comma-separated integers, got {text!r}") from None
    if any(v < minimum for v in values):
      raise argparse.ArgumentTypeError(f"expected integers >= {minimum}, got {text!r}")
    return values
  return parse


def say(line: str, err: bool = False) -> None:
  """Prints one line (flushed) to stdout, or stderr with ``err``; survives a closed pipe."""
  stream = sys.stderr if err else sys.stdout
  try:
    print(line, file=stream, flush=True)
  except (BrokenPipeError, ValueError):  # reader gone (or stream closed): stop printing there
    devnull = open(os.devnull, "w")  # pylint: disable=consider-using-with
    if err:
      sys.stderr = devnull
    else:
      sys.stdout = devnull
