"""The run directory (``--workdir``): its file names, and every file ``run`` keeps there.

Files (process 0 writes them, each with ``files.atomic_write``; the others only read):
  config.json      the run's config (``read_config``), written with codebook.npy by ``start``
                   once every check passed, before training
  codebook.npy     float32 (C, K) +-1 class targets (orthohash, dpn, csq), written when the run
                   starts and used on every resume, export and evaluation (``codebook``), so the
                   targets never depend on the numpy version that regenerates them
  progress.json    {"step", "train_seconds", "steps_timed"}: training time totals over every
                   invocation of the run (``read_progress`` / ``write_progress``)
  metrics.jsonl    a JSON line per chunk of steps (``MetricsLog``); lines of steps after the
                   restored checkpoint are dropped on resume
  results.json     the final summary (``write_results``; ``read_results``, the one reader)
  codes.npz        packed codes and labels (``codes_file``); codes.faissbin with export_faiss
  checkpoints/     orbax checkpoints (``checkpoint``), checkpoints_corrupt/ the quarantined ones
  events.out.tfevents.*  TensorBoard (``summary``); profile/ the traces of profile_steps
  .lock            the lock of the run training here (``lock``)
  .run_token       a multi-process run's check that all processes share the workdir
                   (``check_shared``)

The workdir may be local or on an object store (``gs://bucket/run``, through ``files``): there,
metrics.jsonl is rewritten whole for each line, from the lines ``MetricsLog`` keeps in memory
(one upload per line, no read), and the lock is a create-only object.

``refuse_run_file(output)``: a command's output path that names one of a run's files (a file
above, or anything under checkpoints/) is refused, so no command writes over a run.
``result_files(workdir, config)``: the paths ``write_results`` writes (commands name them).

``check_same_run(workdir, config)`` refuses a workdir that holds checkpoints of a run with
another config (keys declared resumable in ``config_base`` may differ); a workdir without a
checkpoint is never another run.
"""
import contextlib
import fcntl
import json
import os
import secrets
import socket
import time

import jax
import ml_collections
import numpy as np

from orthohash_jax import checkpoint, cli, codebook as codebook_lib, codes_file, config_base, files
from orthohash_jax import methods, parallel

CONFIG = "config.json"
CODEBOOK = "codebook.npy"
PROGRESS = "progress.json"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
CODES = "codes.npz"
LOCK = ".lock"
RUN_TOKEN = ".run_token"
PROFILE = "profile"
RUN_FILES = (CONFIG, CODEBOOK, PROGRESS, METRICS, RESULTS, CODES, LOCK,
             codes_file.faiss_path(CODES))


@contextlib.contextmanager
def lock(workdir: str, shared: bool = False):
  """Holds the workdir's lock while the block runs: exclusive for a training run (process 0;
  a run creates the workdir here and, if it fails before writing anything else, removes it
  again), shared for tools that only read a run (export, serve). Another holder makes it raise
  ValueError naming that holder's PID, host and start time.

  A local workdir: ``<workdir>/.lock`` held with the OS's ``flock``, which ends with its process,
  so a run killed with -9 never blocks the next one (on a network file system ``flock`` may not
  reach other hosts: there, give every run its own workdir). An object store (gs://) has no
  ``flock``: the lock is the object ``<workdir>/.lock``, created only if absent (an upload with
  the ``ifGenerationMatch=0`` precondition, so of two runs exactly one gets it) and deleted when
  the run ends (finished, failed or interrupted). A run killed with -9, or a host lost, leaves
  it behind: the next run is refused with the holder's line; once that holder is gone for sure,
  break the lock by deleting the object (``gcloud storage rm gs://BUCKET/RUN/.lock``)."""
  if not parallel.is_main_process():
    yield
  elif files.is_remote(workdir):
    with _object_lock(workdir, shared):
      yield
  else:
    with _flock(workdir, shared):
      yield


def _in_use(workdir: str, holder: str) -> ValueError:
  return ValueError(f"{workdir} is in use by a training run ({holder or 'another process'}); "
                    "wait for it to end or use another --workdir")


def _holder_line() -> str:
  return (f"PID {os.getpid()} on host {socket.gethostname()} since "
          f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")


@contextlib.contextmanager
def _flock(workdir: str, shared: bool):
  if shared and not os.path.exists(path(workdir, LOCK)):
    yield  # nothing to share with: no run ever trained here
    return
  created = not os.path.exists(workdir)
  os.makedirs(workdir, exist_ok=True)
  fd = os.open(path(workdir, LOCK), os.O_RDONLY if shared else os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
      raise _in_use(workdir, os.pread(fd, 200, 0).decode(errors="replace").strip()) from None
    if not shared:
      os.ftruncate(fd, 0)
      os.pwrite(fd, _holder_line().encode(), 0)
    yield
  finally:
    if created and os.listdir(workdir) == [LOCK]:
      os.remove(path(workdir, LOCK))
      os.rmdir(workdir)
    os.close(fd)


@contextlib.contextmanager
def _object_lock(workdir: str, shared: bool):
  lock_object = files.path(path(workdir, LOCK))
  if shared:  # a reader only checks that no run trains now
    if lock_object.exists():
      raise _in_use(workdir, lock_object.read_text().strip())
    yield
    return
  if not files.create_only(path(workdir, LOCK), _holder_line().encode()):
    try:
      holder = lock_object.read_text().strip()
    except FileNotFoundError:  # released meanwhile
      holder = ""
    raise _in_use(workdir, holder + (f"; if it is gone, delete {path(workdir, LOCK)}"
                                     if holder else ""))
  try:
    yield
  finally:
    lock_object.unlink(missing_ok=True)


def check_shared(workdir: str) -> None:
  """Checks that every process of a multi-process run reaches the same workdir (one process:
  nothing to check): process 0 writes a fresh random token to ``<workdir>/.run_token``, every
  process reads it back and the tokens are compared across processes. A process given another
  --workdir, or a local directory that the others do not share, reads another token or none:
  ValueError on every process alike (so all stop; none waits for the others)."""
  if jax.process_count() == 1:
    return
  token_path = files.path(path(workdir, RUN_TOKEN))
  failure = ""  # process 0 fails alone: every process must still reach the collectives below
  if parallel.is_main_process():
    try:
      files.path(workdir).mkdir(parents=True, exist_ok=True)
      token = secrets.token_hex(16)
      files.atomic_write(str(token_path), lambda tmp: files.path(tmp).write_text(token))
    except OSError as e:
      failure = str(e)
  if parallel.any_process(bool(failure)):
    raise ValueError(f"process 0 cannot write to --workdir {workdir}"
                     + (f" ({failure})" if failure else ""))
  try:
    seen = token_path.read_text()
  except OSError:  # FileNotFoundError included: this process does not see process 0's workdir
    seen = ""
  differing = parallel.processes_differing(seen)
  if differing:
    raise ValueError(
        f"process{'es' if len(differing) > 1 else ''} {', '.join(map(str, differing))} of "
        f"{jax.process_count()} cannot see the workdir of process 0 (its run token in "
        f"{RUN_TOKEN}): give every process the same --workdir, on storage that all hosts reach "
        "(gs://... or a shared file system)")


def path(workdir: str, name: str) -> str:
  return os.path.join(workdir, name)


def _exists(workdir: str, name: str) -> bool:
  return files.path(path(workdir, name)).exists()


def _is_run(directory: str) -> bool:
  return (files.path(path(directory, CONFIG)).is_file()
          or files.path(path(directory, LOCK)).is_file()
          or files.path(path(directory, checkpoint.DIRECTORY)).is_dir())


def refuse_run_file(output: str) -> None:
  """Raises ValueError (one line) when ``output`` would write over a file of a run: a name of
  ``RUN_FILES`` (or a TensorBoard file) in a directory that holds a run, or a path inside a
  run's checkpoints/ or checkpoints_corrupt/."""
  remote = files.is_remote(output)
  output = output if remote else os.path.realpath(output)
  directory, name = os.path.split(output)
  if _is_run(directory) and (name in RUN_FILES or name.startswith("events.out.tfevents")):
    raise ValueError(f"--output {output} is a file of the run in {directory}: write it "
                     "elsewhere (no command writes over a run's files)")
  parent = directory
  while not remote and os.path.dirname(parent) != parent:
    if (os.path.basename(parent) in (checkpoint.DIRECTORY, checkpoint.CORRUPT_DIRECTORY)
        and _is_run(os.path.dirname(parent))):
      raise ValueError(f"--output {output} is inside the checkpoints of the run in "
                       f"{os.path.dirname(parent)}: write it elsewhere")
    parent = os.path.dirname(parent)


def result_files(workdir: str, config) -> list:
  """The paths ``write_results`` writes: results.json, codes.npz and, with ``export_faiss``,
  codes.faissbin."""
  codes = path(workdir, CODES)
  return [path(workdir, RESULTS), codes] + ([codes_file.faiss_path(codes)]
                                            if config.export_faiss else [])


def _config_json(config) -> dict:
  """``config`` as config.json holds it: tuples as lists, the method's architecture applied."""
  values = json.loads(json.dumps(config.to_dict()))
  methods.apply_architecture(values)
  return values


def _saved_config(workdir: str) -> dict:
  """config.json of ``workdir``, with the keys declared after it was written at their defaults
  (which keep the behaviour of the code that wrote it) and its method's architecture where it
  holds None; a file that is not a JSON object of
  values of the declared types is one ValueError naming it."""
  file = path(workdir, CONFIG)
  saved = files.read_json(file)
  if not isinstance(saved, dict):
    raise ValueError(f"{file}: expected a JSON object of config keys, got "
                     f"{config_base.shown(saved)}")
  for key in config_base.KEYS:
    saved.setdefault(key.name, json.loads(json.dumps(key.default)))  # (512, 512) as saved: a list
    message = key.type_error(saved[key.name])
    if message:
      raise ValueError(f"{file}: {message}")
  methods.apply_architecture(saved)
  return saved


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The saved config of the run in ``workdir`` (not validated)."""
  if not _exists(workdir, CONFIG):
    raise ValueError(f"{workdir} is not a training run (no {CONFIG})")
  return ml_collections.ConfigDict(_saved_config(workdir))


def check_same_run(workdir: str, config):
  """The saved config (a dict) of the run with checkpoints in ``workdir``, else None; raises
  ValueError when ``workdir`` is a file or its checkpoints are of a run with another config."""
  if files.path(workdir).is_file():
    raise ValueError(f"--workdir {workdir} is a file, not a directory")
  if not checkpoint.has_checkpoints(workdir) or not _exists(workdir, CONFIG):
    return None
  saved, current = _saved_config(workdir), _config_json(config)
  changed = sorted(k for k in set(saved) | set(current)
                   if k not in config_base.RESUMABLE_KEYS and saved.get(k) != current.get(k))
  if changed:
    diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
    raise ValueError(f"{workdir} holds checkpoints of a run with another config ({diffs}); "
                     "use a new --workdir")
  return saved


def codebook(config, num_classes: int, workdir: str = None):
  """The class targets float32 (C, K) of a loss that takes them (orthohash, dpn, csq; else
  None): those saved in
  ``<workdir>/codebook.npy`` when it exists, else generated from (codebook, C, K, seed)."""
  if config.loss not in config_base.KEYS_BY_NAME["codebook"].losses:
    return None
  file = workdir and path(workdir, CODEBOOK)
  if not file or not files.path(file).exists():
    return codebook_lib.make_codebook(config.codebook, num_classes, config.num_bits, config.seed)
  try:
    with files.path(file).open("rb") as f:
      saved = codebook_lib.check_binary(np.load(f, allow_pickle=False))
  except (OSError, ValueError) as e:
    reason = "it holds Python objects, not numbers" if "allow_pickle" in str(e) else e
    raise ValueError(f"{file} is not a readable +-1 codebook ({reason})") from None
  if saved.shape != (num_classes, config.num_bits):
    raise ValueError(f"{file} holds a {saved.shape} codebook, the run needs "
                     f"({num_classes}, {config.num_bits})")
  return saved


def start(workdir: str, config, targets) -> None:
  """Makes the workdir of a run whose checks all passed: config.json, and codebook.npy of the
  class targets (None: ce loss) unless the run saved it already."""
  if not parallel.is_main_process():
    return
  files.path(workdir).mkdir(parents=True, exist_ok=True)
  if targets is not None and not _exists(workdir, CODEBOOK):
    files.atomic_write(path(workdir, CODEBOOK), lambda tmp: np.save(tmp, targets))
  files.write_json(path(workdir, CONFIG), config.to_dict())


def read_progress(workdir: str) -> dict:
  """progress.json's training time totals; a file without them is one ValueError naming it."""
  file = path(workdir, PROGRESS)
  if not files.path(file).exists():
    return {"train_seconds": 0.0, "steps_timed": 0}
  progress = files.read_json(file)
  if (not isinstance(progress, dict)
      or not all(isinstance(progress.get(k), (int, float)) and not isinstance(progress[k], bool)
                 and progress[k] >= 0 for k in ("train_seconds", "steps_timed"))):
    raise ValueError(f"{file}: expected {{\"step\", \"train_seconds\", \"steps_timed\"}} "
                     f"(numbers >= 0), got {config_base.shown(progress)}; delete it to reset "
                     "the timing totals")
  return progress


def write_progress(workdir: str, step: int, train_seconds: float, steps_timed: int) -> None:
  if parallel.is_main_process():
    files.write_json(path(workdir, PROGRESS), {"step": step, "train_seconds": train_seconds,
                                               "steps_timed": steps_timed})


def _metrics_lines(file: str) -> list:
  """(line, record) of each line of metrics.jsonl; a half-written last line (a crash during an
  append) is dropped with one warning; any other bad line is one ValueError naming the file."""
  lines = [line for line in files.path(file).read_text().splitlines(keepends=True)
           if line.strip()]
  out = []
  for number, line in enumerate(lines, 1):
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      if number == len(lines) and not line.endswith("\n"):
        cli.say(f"warning: {file}: dropped its half-written last line (line {number}, left by a "
                "crash during an append)", err=True)
        break
      raise ValueError(f"{file} line {number} is not JSON ({e})") from None
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
      raise ValueError(f"{file} line {number}: expected a JSON object with an integer \"step\", "
                       f"got {config_base.shown(record)}")
    out.append((line if line.endswith("\n") else line + "\n", record))
  return out


def _write_lines(file: str, lines: list) -> None:
  def write(tmp):
    with open(tmp, "w") as f:
      f.writelines(lines)
  files.atomic_write(file, write)


class MetricsLog:
  """metrics.jsonl of the run training in ``workdir`` from the restored step ``step`` (0: none).

  Opening it reads the file and drops the lines of steps after ``step`` (logged before a kill,
  redone now) and a half-written last line; ``dropped`` holds the records of the dropped lines
  (every one logged with finite losses). The file is rewritten without them by the first
  ``append(record)``, so a run that stops before it logs a chunk (a non-finite loss at the
  restored step) leaves the file, and that evidence, as it was. Later lines are appended
  locally; an object store cannot append, so there each line rewrites the whole object (one
  line per chunk of steps: small) from the lines kept in memory: one upload per line, and the
  object is never read again. Process 0 reads and writes the file; on the others ``dropped``
  is [] (``run`` shares process 0's logged loss with a collective) and ``append`` does
  nothing."""

  def __init__(self, workdir: str, step: int):
    self.file, self.dropped, self.lines = path(workdir, METRICS), [], []
    self.main, self.remote = parallel.is_main_process(), files.is_remote(workdir)
    self.rewrite = True  # the next append rewrites the file from ``lines``
    if self.main and files.path(self.file).exists():
      logged = _metrics_lines(self.file)
      self.lines = [line for line, record in logged if record["step"] <= step]
      self.dropped = [record for _, record in logged if record["step"] > step]

  def append(self, record: dict) -> None:
    if not self.main:
      return
    line = json.dumps(record) + "\n"
    if self.rewrite:
      self.lines.append(line)
      _write_lines(self.file, self.lines)
      self.rewrite = self.remote
    else:
      with open(self.file, "a") as f:
        f.write(line)


def write_results(workdir: str, results: dict, evaluation: dict, config) -> None:
  """``results.json`` and ``codes.npz`` (packed codes and labels of ``evaluation``)."""
  if parallel.is_main_process():
    codes_file.save_codes(path(workdir, CODES), evaluation, config.num_bits, config.to_dict(),
                          faiss_index=config.export_faiss)
    files.write_json(path(workdir, RESULTS), results)


def _is_number(value, integer=False) -> bool:
  return not isinstance(value, bool) and isinstance(value, int if integer else (int, float))


def read_results(workdir: str):
  """results.json of the run in ``workdir`` as a dict, None where there is none (the run has not
  finished); a file that is not readable JSON, not an object, or without a mAP that is a number
  or null, steps that are an integer and steps_per_second that is a number or null, is one
  ValueError naming the file."""
  file = path(workdir, RESULTS)
  if not files.path(file).exists():
    return None
  results = files.read_json(file)
  if not isinstance(results, dict):
    raise ValueError(f"{file} must hold a JSON object, got {type(results).__name__}")
  for key, kind, integer in (("mAP", "a number or null", False), ("steps", "an integer", True),
                             ("steps_per_second", "a number or null", False)):
    if key not in results:
      raise ValueError(f"{file}: no {key}; delete it to train the run again")
    value = results[key]
    if not (_is_number(value, integer) or (value is None and not integer)):
      raise ValueError(f"{file}: {key} must be {kind}, got {config_base.shown(value)}")
  return results
