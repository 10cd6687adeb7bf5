"""Writing files so that a reader never sees half of one, and reading JSON with one-line errors.

* ``atomic_write(path, write)``: ``write(tmp)`` writes the whole file to a temporary path in the
  same directory (same extension, so ``np.save`` / ``np.savez`` add nothing to the name), which
  is then renamed onto ``path``; on any error the temporary file is removed and ``path`` is left
  as it was. Errors name ``path``, never the temporary file: an ``OSError`` (a bad path: exit
  status 2), or ``WriteError`` (also an ``OSError``) when the machine is at fault (a full disk, a
  quota, an I/O error): exit status 1, as a failed checkpoint save.
* ``write_json(path, obj)``: ``atomic_write`` of ``obj`` as indented JSON.
* ``read_json(path)``: the JSON value of a file; a missing, unreadable or malformed file is one
  ``ValueError`` naming it.
"""
import errno
import json
import os

from orthohash_jax import cli

FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)  # the machine's fault, not the user's


class WriteError(cli.CommandError, OSError):
  """A file could not be written for lack of space or an I/O error: exit status 1."""
  status = 1


def atomic_write(path: str, write) -> None:
  """Writes ``path`` through ``write(tmp_path)`` and a rename (see the module docstring)."""
  directory, name = os.path.split(os.path.abspath(path))
  stem, ext = os.path.splitext(name)
  tmp = os.path.join(directory, f".{stem}.tmp{os.getpid()}{ext}")
  try:
    write(tmp)
    os.replace(tmp, path)
  except OSError as e:
    error = WriteError if e.errno in FULL else OSError
    raise error(f"cannot write {path} ({e.strerror or e})") from None
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path: str, obj) -> None:
  def write(tmp):
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=2)
  atomic_write(path, write)


def read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise ValueError(f"{path} does not exist") from None
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path} is not readable JSON ({e})") from None
