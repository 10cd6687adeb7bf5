"""Paths that are local or on an object store (``gs://``), writing files so that a reader never
sees half of one, and reading JSON with one-line errors.

Every file a run reads or writes goes through ``etils.epath`` (``path(p)``): local paths go to
``os``/``shutil`` exactly as before, ``gs://bucket/...`` to fsspec/gcsfs (no TensorFlow needed).
Why epath: orbax, which writes the checkpoints, uses it itself, so one path type covers the
checkpoints and every other file; it is a small ``pathlib``-like layer (mkdir, open, exists,
iterdir, rename, rmtree), while plain fsspec would make every caller pick a file system and
handle local paths differently. An object store has no directories (mkdir is a no-op there),
no append and no rename of a directory (a copy, then deletes).

* ``path(p)``: the ``epath.Path`` of a string; ``is_remote(p)``: whether it is on an object
  store; ``absolute(p)``: an absolute local path, or the URL unchanged (never ``./gs:/...``).
* ``atomic_write(path, write)``: ``write(tmp)`` writes the whole file to a local temporary path
  (same extension, so ``np.save`` / ``np.savez`` add nothing to the name). Locally the
  temporary file sits in the same directory and is renamed onto ``path``; on an object store it
  is uploaded as one object, which readers only ever see whole (an upload is atomic). On any
  error ``path`` is left as it was and the temporary file removed. Errors name ``path``, never
  the temporary file: an ``OSError`` (a bad path: exit status 2), or ``WriteError`` (also an
  ``OSError``) when the machine is at fault (a full disk, a quota, an I/O error): exit status 1,
  as a failed checkpoint save.
* ``create_only(path, data)``: writes ``data`` (bytes) only if ``path`` does not exist; returns
  whether it did (locally ``O_CREAT | O_EXCL``, on GCS an upload with the ``ifGenerationMatch=0``
  precondition: of two racing writers exactly one succeeds).
* ``move_tree(source, target)``: moves a directory (on an object store: copy, then delete).
* ``relative_files(directory)``: every file under a directory (relative paths).
* ``upload(local, target)``, ``upload_tree(local, target)``: copies a local file, or every file
  of a local directory, to ``target`` (gs://).
* ``write_json(path, obj)``: ``atomic_write`` of ``obj`` as indented JSON.
* ``read_json(path)``: the JSON value of a file; a missing, unreadable or malformed file is one
  ``ValueError`` naming it.
"""
import errno
import json
import os
import shutil
import tempfile

from etils import epath
import fsspec

from orthohash_jax import cli

FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)  # the machine's fault, not the user's
REMOTE_MARK = "://"
# Other processes write the same workdir: gcsfs's listings cache would answer exists() and
# listings with what this process saw earlier, so it is turned off for every gs:// file system.
for _protocol in ("gs", "gcs"):
  fsspec.config.conf.setdefault(_protocol, {})["use_listings_cache"] = False


class WriteError(cli.CommandError, OSError):
  """A file could not be written for lack of space or an I/O error: exit status 1."""
  status = 1


def is_remote(p) -> bool:
  return REMOTE_MARK in os.fspath(p)


def path(p) -> epath.Path:
  return epath.Path(p)


def absolute(p) -> str:
  p = os.fspath(p)
  return p if is_remote(p) else os.path.abspath(p)


def atomic_write(path: str, write) -> None:
  """Writes ``path`` through ``write(tmp_path)`` (see the module docstring)."""
  name = os.path.basename(os.fspath(path).rstrip("/"))
  stem, ext = os.path.splitext(name)
  if is_remote(path):
    directory = tempfile.mkdtemp(prefix=".upload-")
    tmp = os.path.join(directory, f"{stem}{ext}")
  else:
    directory = None
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{stem}.tmp{os.getpid()}{ext}")
  try:
    write(tmp)
    if directory:
      epath.Path(path).write_bytes(epath.Path(tmp).read_bytes())
    else:
      os.replace(tmp, path)
  except OSError as e:
    error = WriteError if e.errno in FULL else OSError
    raise error(f"cannot write {path} ({e.strerror or e})") from None
  finally:
    if directory:
      shutil.rmtree(directory, ignore_errors=True)
    elif os.path.exists(tmp):
      os.remove(tmp)


def create_only(path: str, data: bytes) -> bool:
  """Writes ``data`` to ``path`` unless it exists; True when this call created it."""
  if is_remote(path):
    fs, name = fsspec.core.url_to_fs(path)
    try:
      fs.pipe_file(name, data, mode="create")
    except FileExistsError:
      return False
    return True
  try:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, "wb") as f:
    f.write(data)
  return True


def move_tree(source: str, target: str) -> None:
  """Moves a directory: a rename locally; on an object store, which cannot rename one, a copy of
  every object under ``source``, then their deletion."""
  if not is_remote(source):
    shutil.move(source, target)
    return
  fs, source_name = fsspec.core.url_to_fs(source)
  fs.copy(source_name, fsspec.core.url_to_fs(target)[1], recursive=True)
  fs.rm(source_name, recursive=True)


def relative_files(directory: str) -> list:
  """The paths of every file under ``directory``, relative to it (every object under the
  prefix on an object store)."""
  if is_remote(directory):
    fs, root = fsspec.core.url_to_fs(directory)
    return [name[len(root.rstrip("/")) + 1:] for name in fs.find(root)]
  return [os.path.relpath(os.path.join(d, name), directory)
          for d, _, names in os.walk(directory) for name in names]


def upload(local: str, target: str) -> None:
  """Copies the local file ``local`` to ``target`` (gs://), whole."""
  destination = epath.Path(target)
  destination.parent.mkdir(parents=True, exist_ok=True)
  destination.write_bytes(epath.Path(local).read_bytes())


def upload_tree(local: str, target: str) -> None:
  """Copies every file under the local directory ``local`` to ``target`` (each file whole)."""
  for directory, _, names in os.walk(local):
    for name in names:
      source = os.path.join(directory, name)
      upload(source, os.path.join(target, os.path.relpath(source, local)))


def write_json(path: str, obj) -> None:
  def write(tmp):
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=2)
  atomic_write(path, write)


def read_json(path: str):
  try:
    return json.loads(epath.Path(path).read_text())
  except FileNotFoundError:
    raise ValueError(f"{path} does not exist") from None
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path} is not readable JSON ({e})") from None
