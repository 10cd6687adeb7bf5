"""Command-line conventions shared by the ``python -m orthohash_jax.*`` tools.

* ``ArgumentParser``: usage errors are one ``error:`` line on stderr and exit status 2.
* ``int_list(minimum)``: an argparse type for comma-separated integers (e.g. ``--bits=16,32``).
* ``label_text(label)``: a label as people read it: a class id, or the classes of a multi-hot
  row joined by commas ("-" for none).
* ``run_tool(body)``: every entry point's wrapper, the one place that maps outcomes to exit
  statuses: ``body()`` returns the status (None: 0); a ``CommandError`` is its own line and
  status; ``ValueError`` / ``OSError`` (bad flags, config, data, files) are one ``error:`` line
  and status 2; Ctrl-C is status 130; a reader that closed stdout (``tool | head``) ends the
  tool quietly with the status it would have had.
* ``say(line, err=False)``: prints a line; a closed stdout (``main | head -1``) turns further
  output there off instead of killing the run.
* ``progress(line, log=True, keep=False)``: a status line. On a terminal it redraws in place
  (carriage return, clear to the end of the line) and ``keep`` ends it with a newline so the
  next one starts below; elsewhere (a log file, a pipe) it is a plain line, printed only when
  ``log``. A ``say`` after an open (redrawn) line starts on a new line.
"""
import argparse
import os
import sys

import numpy as np


class CommandError(Exception):
  """An outcome with its own exit status (``status``) and stderr line (``prefix`` + message)."""
  status = 2
  prefix = "error: "


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


def label_text(label) -> str:
  """A class id (int), or the set classes of a multi-hot row (C,) joined by commas."""
  label = np.asarray(label)
  if label.ndim:
    return ",".join(str(c) for c in np.flatnonzero(label)) or "-"
  return str(int(label))


class _Terminal:
  open_line = False  # a progress line was drawn on the terminal without its newline


def _write(text: str, err: bool) -> None:
  """Writes ``text`` (flushed) to stdout or stderr; a closed reader switches that stream off."""
  stream = sys.stderr if err else sys.stdout
  try:
    stream.write(text)
    stream.flush()
  except (BrokenPipeError, ValueError):  # reader gone (or stream closed): stop printing there
    devnull = open(os.devnull, "w")  # pylint: disable=consider-using-with
    if err:
      sys.stderr = devnull
    else:
      sys.stdout = devnull


def say(line: str, err: bool = False) -> None:
  """Prints one line (flushed) to stdout, or stderr with ``err``; survives a closed pipe."""
  if _Terminal.open_line:
    _Terminal.open_line = False
    _write("\n", err=False)
  _write(line + "\n", err)


def _first_line(e: Exception) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


def run_tool(body) -> int:
  """Runs a command-line tool's ``body()`` and returns its exit status (module docstring)."""
  try:
    status = body() or 0
  except CommandError as e:
    say(e.prefix + _first_line(e), err=True)
    status = e.status
  except KeyboardInterrupt:
    say("error: aborted by Ctrl-C", err=True)
    status = 130
  except BrokenPipeError:  # stdout's reader is gone: nothing more to say there
    status = 0
  except (ValueError, OSError) as e:
    say(f"error: {_first_line(e)}", err=True)
    status = 2
  try:
    sys.stdout.flush()
  except (BrokenPipeError, ValueError):  # so that the interpreter's last flush is quiet too
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
  return status


def progress(line: str, log: bool = True, keep: bool = False) -> None:
  """A status line on stdout: redrawn in place on a terminal, a plain line (when ``log``)
  elsewhere; see the module docstring."""
  try:
    terminal = sys.stdout.isatty()
  except (AttributeError, ValueError):  # a stream without isatty, or a closed one
    terminal = False
  if not terminal:
    if log:
      say(line)
    return
  _write("\r" + line + "\x1b[K" + ("\n" if keep else ""), err=False)
  _Terminal.open_line = not keep
