"""Writing files so that a reader never sees half of one, and reading JSON with one-line errors.

* ``atomic_write(path, write)``: ``write(tmp)`` writes the whole file to a temporary path in the
  same directory (same extension, so ``np.save`` / ``np.savez`` add nothing to the name), which
  is then renamed onto ``path``; on any error the temporary file is removed and ``path`` is left
  as it was. Errors name ``path``, never the temporary file.
* ``write_json(path, obj)``: ``atomic_write`` of ``obj`` as indented JSON.
* ``read_json(path)``: the JSON value of a file; a missing, unreadable or malformed file is one
  ``ValueError`` naming it.
"""
import json
import os


def atomic_write(path: str, write) -> None:
  """Writes ``path`` through ``write(tmp_path)`` and a rename (see the module docstring)."""
  directory, name = os.path.split(os.path.abspath(path))
  stem, ext = os.path.splitext(name)
  tmp = os.path.join(directory, f".{stem}.tmp{os.getpid()}{ext}")
  try:
    write(tmp)
    os.replace(tmp, path)
  except OSError as e:
    raise OSError(f"cannot write {path} ({e.strerror or e})") from None
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
