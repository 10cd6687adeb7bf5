"""A training run in a workdir: validation, the training loop, resume, and the files it writes.

``train_and_evaluate(config, workdir)``:
1. ``validate_config`` (every key and option, before any data is loaded or anything compiled),
   ``check_same_run`` (a workdir holding checkpoints of another config is refused), data loading;
2. the codebook: ``<workdir>/codebook.npy`` float32 (C, K) +-1 is written when the run starts and
   used on every resume, export and evaluation (``run_codebook``), so the class targets never
   depend on the numpy version that regenerates them;
3. resume from the latest usable checkpoint (``checkpoint.Checkpointer``), then the loop: chunks of
   ``steps_per_chunk`` steps (an epoch by default), each one compiled ``lax.scan``. The next chunk
   is dispatched before the losses of the previous one are read (host batching and logging
   overlap the device), so a non-finite loss is seen one chunk late; a checkpoint is only saved
   after the losses of every step before it were read and found finite, so the last good
   checkpoint rule holds. ``metrics.jsonl`` gets a line per chunk, and so does stdout (step /
   total, loss, lr, steps/s, ETA; ``cli.progress``: redrawn in place on a terminal, plain lines
   in a log) and the TensorBoard event file in the workdir (``summary``: loss, lr, steps/s,
   and mAP / quantization angle of every evaluation);
4. SIGTERM, SIGINT (Ctrl-C) or orbax's preemption notice: the chunk finishes, a checkpoint is
   saved and ``Interrupted`` is raised; a non-finite loss raises ``TrainingError`` without
   saving. On resume, ``metrics.jsonl`` lines after the restored step are dropped, and
   ``check_extension`` says what a changed ``num_epochs`` may do;
5. evaluation (``evaluation.evaluate``, its encoding reported by ``cli.progress``, plus
   revisited Oxford/Paris when ``config.revisited``), ``codes.npz`` (``codes_file``),
   ``results.json`` and, for category-level data, the Figure-3 histogram as a TensorBoard image
   (process 0 writes every file).

The ETA is (steps left) x (wall time per step since the end of this invocation's first,
compiling chunk), so checkpoint saves and evaluations during training count; it is "?" until a
chunk after the first has finished. It leaves out the final evaluation.

``restore_run(workdir)`` rebuilds (trainer, data, state, step) of the latest checkpoint for the
export and instance tools.
"""
import json
import os
import signal
import time

import jax
import ml_collections
import numpy as np

from orthohash_jax import checkpoint as checkpoint_lib
from orthohash_jax import codebook as codebook_lib
from orthohash_jax import backbones, cli, codes_file, config_base, evaluation, losses, models
from orthohash_jax import parallel, plots, summary
from orthohash_jax import trainer as trainer_lib
from orthohash_jax import data as data_lib
from orthohash_jax.data import streaming, transforms

CODEBOOK_FILE = "codebook.npy"
PROGRESS_FILE = "progress.json"  # training time totals over every invocation of the run
LARGE_NUM_BITS = 4096  # beyond this a warning: the paper uses 16 to 128 bits


class TrainingError(RuntimeError):
  """Training cannot go on (e.g. a non-finite loss); reported as one line by ``main``."""


class Interrupted(Exception):
  """Training stopped on SIGTERM, SIGINT (Ctrl-C) or a preemption notice after saving a
  checkpoint; the same command resumes."""


def _options(name, value, allowed):
  return (value in allowed, f"{name} must be one of {list(allowed)}, got {value!r}")


def validate_config(config) -> None:
  """Raises ValueError with a one-line message for any key or value that cannot work."""
  config_base.check_known_keys(config)
  c = config
  options = {  # key -> the names its implementing module knows
      "dataset": data_lib.SOURCES, "backbone": models.BACKBONES, "init": models.INITS,
      "loss": losses.LOSSES, "codebook": codebook_lib.METHODS, "margin_type": losses.MARGIN_TYPES,
      "multilabel_loss": losses.MULTILABEL_LOSSES,
      "quantization_kind": losses.QUANTIZATION_KINDS, "lr_schedule": trainer_lib.LR_SCHEDULES,
      "train_transform": transforms.KINDS, "eval_transform": transforms.KINDS,
      "image_mode": transforms.MODES, "pixel_norm": streaming.PIXEL_NORMS,
      "compute_dtype": models.COMPUTE_DTYPES,
  }
  checks = [_options(key, c[key], allowed) for key, allowed in options.items()] + [
      (c.eval_transform not in transforms.RANDOM_KINDS,
       f"eval_transform must be deterministic, got {c.eval_transform!r}"),
      (c.image_size > 0, f"image_size must be positive, got {c.image_size}"),
      (not c.pretrained_required or c.pretrained,
       f"the {c.backbone} backbone of this config starts from ImageNet weights: convert "
       f"torchvision's file with python -m orthohash_jax.weights --arch={c.backbone} "
       f"--torch=FILE.pth --output=DIR, then pass --config.pretrained=DIR"),
      (not c.pretrained or c.backbone in backbones.BACKBONES,
       f"pretrained weights are for {sorted(backbones.BACKBONES)}, not backbone {c.backbone!r}"),
      (not c.pretrained or os.path.isdir(c.pretrained),
       f"pretrained directory {c.pretrained} does not exist"),
      (c.init == "torch" or c.backbone not in backbones.BACKBONES,
       f"init {c.init!r} is for mlp / cnn / cnn_gap: backbone {c.backbone} is initialised as "
       "torchvision's (init 'torch')"),
      (c.data_workers >= 0, f"data_workers must be >= 0, got {c.data_workers}"),
      (c.num_bits > 0, f"num_bits must be positive, got {c.num_bits}"),
      (c.batch_size > 0, f"batch_size must be positive, got {c.batch_size}"),
      (c.num_epochs > 0, f"num_epochs must be positive, got {c.num_epochs}"),
      (c.learning_rate > 0, f"learning_rate must be positive, got {c.learning_rate}"),
      (c.scale > 0, f"scale must be positive, got {c.scale}"),
      (c.steps_per_chunk >= 0, f"steps_per_chunk must be >= 0 (0: one epoch), got "
       f"{c.steps_per_chunk}"),
      (c.eval_topk is None or c.eval_topk > 0,
       f"eval_topk must be positive or None (whole database), got {c.eval_topk}"),
      (c.eval_batch_size > 0, f"eval_batch_size must be positive, got {c.eval_batch_size}"),
      (c.eval_every_epochs >= 0, f"eval_every_epochs must be >= 0, got {c.eval_every_epochs}"),
      (c.checkpoint_every_steps > 0,
       f"checkpoint_every_steps must be positive, got {c.checkpoint_every_steps}"),
      (c.keep_checkpoints >= 1, f"keep_checkpoints must be at least 1, got {c.keep_checkpoints}"),
      (c.model_axis >= 1, f"model_axis must be at least 1, got {c.model_axis}"),
      (c.augment_crop_pad >= 0, f"augment_crop_pad must be >= 0, got {c.augment_crop_pad}"),
      (not c.export_faiss or c.num_bits % 8 == 0,
       f"export_faiss needs num_bits divisible by 8, got {c.num_bits}"),
      (c.codebook != "hadamard" or c.num_bits & (c.num_bits - 1) == 0,
       f"the hadamard codebook needs num_bits a power of two, got {c.num_bits}"),
      (c.revisited is None or all(":" in s for s in c.revisited.split(",")),
       f"revisited must be ROOT:name[,ROOT:name], got {c.revisited!r}"),
  ]
  for ok, message in checks:
    if not ok:
      raise ValueError(message)


def validate_data(config, data) -> None:
  """Checks of the config against the loaded data."""
  if config.batch_size > data.size("train"):
    raise ValueError(f"batch_size {config.batch_size} is larger than the training set "
                     f"({data.size('train')})")
  if config.eval_topk is not None and config.eval_topk > data.size("db"):
    raise ValueError(f"eval_topk {config.eval_topk} is larger than the database "
                     f"({data.size('db')})")


def _to_json(config) -> dict:
  return json.loads(json.dumps(config.to_dict()))  # tuples -> lists, as saved


def check_same_run(workdir: str, config):
  """Raises ValueError when ``workdir`` is a file or holds checkpoints of a run with another
  config (keys declared resumable in ``config_base`` may differ); returns the saved config
  (a dict) of a run with checkpoints, else None."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"--workdir {workdir} is a file, not a directory")
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path) or not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return None
  with open(path) as f:
    saved = json.load(f)
  current = _to_json(config)
  changed = sorted(k for k in set(saved) | set(current)
                   if k not in config_base.RESUMABLE_KEYS and saved.get(k) != current.get(k))
  if changed:
    diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
    raise ValueError(f"{workdir} holds checkpoints of a run with another config ({diffs}); "
                     "use a new --workdir")
  return saved


def check_extension(config, saved, start: int, steps_per_epoch: int) -> None:
  """What changing ``num_epochs`` on resume may do: a run resumed at step ``start`` trains on to
  the new end exactly as a run started with the new ``num_epochs`` would (same batches, same lr)
  as long as that run's lr so far is the same. So the new end may not lie before ``start``, and
  with the step schedule the decay (at 80% of the old length) may not have happened yet."""
  total = steps_per_epoch * config.num_epochs
  if start > total:
    raise ValueError(f"the run is at step {start}, beyond the {total} steps of num_epochs "
                     f"{config.num_epochs}; use num_epochs >= {-(-start // steps_per_epoch)}")
  if saved is None or saved.get("num_epochs") == config.num_epochs:
    return
  old_decay = int(0.8 * steps_per_epoch * saved["num_epochs"])
  if config.lr_schedule == "step" and start >= old_decay:
    raise ValueError(f"the run decayed its lr at step {old_decay}; changing num_epochs "
                     f"({saved['num_epochs']} -> {config.num_epochs}) would move the decay and "
                     "raise the lr again: keep num_epochs or start a new run")


def write_json(path: str, obj) -> None:
  """Atomic JSON write on process 0."""
  if parallel.is_main_process():
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def run_codebook(config, num_classes: int, workdir: str):
  """The run's class targets float32 (C, K) (None for the ce loss): ``<workdir>/codebook.npy``
  when it exists, else generated from (codebook, C, K, seed) and written there."""
  if config.loss != "orthohash":
    return None
  path = os.path.join(workdir, CODEBOOK_FILE)
  if os.path.exists(path):
    try:
      saved = codebook_lib.check_binary(np.load(path, allow_pickle=False))
    except (OSError, ValueError) as e:
      raise ValueError(f"{path} is not a readable +-1 codebook ({e})") from None
    if saved.shape != (num_classes, config.num_bits):
      raise ValueError(f"{path} holds a {saved.shape} codebook, the run needs "
                       f"({num_classes}, {config.num_bits})")
    return saved.astype(np.float32)
  codebook = codebook_lib.make_codebook(config.codebook, num_classes, config.num_bits, config.seed)
  if parallel.is_main_process():
    np.save(path + ".tmp.npy", codebook)
    os.replace(path + ".tmp.npy", path)
  return codebook


class _StopFlag:
  """Remembers SIGTERM / SIGINT instead of dying, so the loop can checkpoint and exit; a second
  Ctrl-C stops at once (KeyboardInterrupt)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.raised = None
    self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

  def _handle(self, signum, frame):
    del frame
    if self.raised == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.raised = signum
    if signum == signal.SIGINT:
      cli.say("interrupt: saving a checkpoint at the end of this chunk (Ctrl-C again to abort)",
              err=True)

  def restore(self):
    for s, previous in self._previous.items():
      signal.signal(s, previous)


def training_steps(config, data):
  """(steps per epoch, total steps): the incomplete last batch of an epoch is dropped."""
  steps_per_epoch = data.size("train") // config.batch_size
  return steps_per_epoch, steps_per_epoch * config.num_epochs


def make_trainer(config, data, mesh, codebook=None) -> trainer_lib.Trainer:
  """The Trainer of a validated config for ``data`` (input interface); ``codebook`` (C, K): the
  class targets (None: generated from the config, as a new run does)."""
  if codebook is None and config.loss == "orthohash":
    codebook = codebook_lib.make_codebook(config.codebook, data.num_classes, config.num_bits,
                                          config.seed)
  return trainer_lib.Trainer(
      config, input_shape=data.input_shape, num_classes=data.num_classes, codebook=codebook,
      total_steps=training_steps(config, data)[1], mesh=mesh, mean_std=data.mean_std)


def host_batch(config, data, start: int, stop: int, labels=None):
  """This process's inputs (S, b, ...) and labels of the global steps [start, stop)
  (``labels``: the training labels, to avoid fetching them again)."""
  rows = parallel.process_batch_slice(config.batch_size)
  idx = data_lib.step_indices(config.seed, data.size("train"), config.batch_size, start,
                              stop)[:, rows]
  labels = data.labels("train") if labels is None else labels
  return (data.train_rows(idx, np.arange(start, stop), np.arange(config.batch_size)[rows]),
          labels[idx])


def train_steps(trainer, data, state, start: int, stop: int, labels=None):
  """Dispatches training of the global steps [start, stop) in one compiled chunk; returns
  (state, losses (stop - start,)) as device arrays."""
  xs, ys = host_batch(trainer.config, data, start, stop, labels)
  return trainer.run_chunk(state, xs, ys)


def _setup(config, workdir: str):
  """(data, trainer) of a validated config; the codebook comes from the workdir."""
  data = data_lib.load(config)
  validate_data(config, data)
  mesh = parallel.make_mesh(config.num_devices, config.model_axis)
  os.makedirs(workdir, exist_ok=True)  # only once the data loaded: no empty workdir on bad input
  codebook = run_codebook(config, data.num_classes, workdir)
  return data, make_trainer(config, data, mesh, codebook)


def restore_run(workdir: str):
  """(trainer, data, state, step) of the latest usable checkpoint of the run in ``workdir``."""
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    raise ValueError(f"{workdir} is not a training run (no config.json)")
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  validate_config(config)
  data, trainer = _setup(config, workdir)
  ckpt = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints)
  try:
    state, step = ckpt.restore_latest(trainer.abstract_state())
  finally:
    ckpt.close()
  if state is None:
    raise ValueError(f"no usable checkpoint in {workdir}/checkpoints")
  return trainer, data, state, step


def _read_progress(workdir: str) -> dict:
  path = os.path.join(workdir, PROGRESS_FILE)
  if not os.path.exists(path):
    return {"train_seconds": 0.0, "steps_timed": 0}
  with open(path) as f:
    return json.load(f)


def _truncate_log(path: str, step: int) -> None:
  """Drops the metrics.jsonl lines of steps after ``step`` (logged before a kill, redone now)."""
  if not parallel.is_main_process() or not os.path.exists(path):
    return
  with open(path) as f:
    lines = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
  with open(path + ".tmp", "w") as f:
    f.writelines(lines)
  os.replace(path + ".tmp", path)


def format_seconds(seconds: float) -> str:
  """H:MM:SS of a duration (rounded to whole seconds)."""
  minutes, secs = divmod(int(round(seconds)), 60)
  return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


SPLIT_NAMES = {"query": "query", "db": "database"}


def _report_encoding(split: str, done: int, n: int) -> None:
  """Evaluation progress on process 0: each batch on a terminal, the start of a split in a log."""
  if parallel.is_main_process():
    cli.progress(f"evaluation: encoding {n} {SPLIT_NAMES[split]} rows" if done == 0 else
                 f"evaluation: encoded {done}/{n} {SPLIT_NAMES[split]} rows",
                 log=done == 0, keep=done == n)


def evaluate(trainer, data, state, events, step: int) -> dict:
  """``evaluation.evaluate`` with its progress on stdout, then mAP and quantization angle to
  TensorBoard and a line with the mAP."""
  result = evaluation.evaluate(trainer, data, state, _report_encoding)
  events.scalars(step, {"eval/mAP": result["mAP"],
                        "eval/quantization_angle": result["quantization_angle"]})
  if parallel.is_main_process():
    cli.progress(f"evaluation at step {step}: mAP {result['mAP']:.4f}", keep=True)
  return result


class _Loop:
  """The training loop's host side: batches, logging and the one-chunk-late loss check.
  ``train_seconds`` / ``steps_timed`` are totals over every invocation of the run (kept in
  ``progress.json`` with each checkpoint), each invocation's first (compiling) chunk excluded."""

  def __init__(self, config, workdir, data, trainer, ckpt, steps_per_epoch, total_steps, events):
    self.config, self.data, self.trainer, self.ckpt = config, data, trainer, ckpt
    self.events = events
    self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
    self.workdir = workdir
    self.log_path = os.path.join(workdir, "metrics.jsonl")
    self.train_labels = data.labels("train")
    self.chunk = config.steps_per_chunk or steps_per_epoch
    progress = _read_progress(workdir)
    self.train_seconds, self.steps_timed = progress["train_seconds"], progress["steps_timed"]
    self.first = True
    self.clock = time.perf_counter()
    self.eta_origin = None  # (time, step) at the end of this invocation's first chunk

  def finish(self, start: int, stop: int, losses, state=None) -> None:
    """Reads the losses of steps [start, stop) (a host sync), stops on a non-finite one, logs a
    line; with ``state`` (the state after ``stop``) also evaluates when an evaluation is due."""
    losses = np.asarray(losses)
    now = time.perf_counter()
    elapsed, self.clock = now - self.clock, now
    if not np.all(np.isfinite(losses)):
      bad = start + int(np.argmin(np.isfinite(losses)))
      last = self.ckpt.latest_step()
      where = (f"last good checkpoint: step {last} in {self.ckpt.directory}" if last is not None
               else "no checkpoint was saved yet")
      raise TrainingError(f"loss is not finite at step {bad}; stopped without saving ({where})")
    if not self.first:  # the first chunk of an invocation includes compilation
      self.train_seconds += elapsed
      self.steps_timed += stop - start
    else:
      self.eta_origin = (now, stop)
    self.first = False
    record = {"step": stop, "epoch": stop / self.steps_per_epoch, "loss": float(losses.mean()),
              "lr": float(self.trainer.schedule(stop - 1)),
              "steps_per_second": len(losses) / elapsed}
    self.events.scalars(stop, {"train/loss": record["loss"], "train/lr": record["lr"],
                               "train/steps_per_second": record["steps_per_second"]})
    self.report(stop, record)
    if state is not None and self.evaluation_due(stop):
      record["mAP"] = evaluate(self.trainer, self.data, state, self.events, stop)["mAP"]
      self.clock = time.perf_counter()
    if parallel.is_main_process():
      with open(self.log_path, "a") as f:
        f.write(json.dumps(record) + "\n")

  def report(self, step: int, record: dict) -> None:
    """The progress line of a chunk (kept on a terminal at the end and before an evaluation)."""
    if not parallel.is_main_process():
      return
    origin_time, origin_step = self.eta_origin
    seconds = time.perf_counter() - origin_time
    eta = (format_seconds((self.total_steps - step) * seconds / (step - origin_step))
           if step > origin_step and seconds > 0 else "?")
    cli.progress(f"step {step}/{self.total_steps} ({100 * step // self.total_steps}%) "
                 f"loss {record['loss']:.4f} lr {record['lr']:.2g} "
                 f"{record['steps_per_second']:.1f} steps/s ETA {eta}",
                 keep=step == self.total_steps or self.evaluation_due(step))

  def evaluation_due(self, step: int) -> bool:
    every = self.config.eval_every_epochs * self.steps_per_epoch
    return bool(every) and step % every == 0 and step < self.total_steps

  def save(self, step: int, state) -> None:
    self.ckpt.save(step, state)
    write_json(os.path.join(self.workdir, PROGRESS_FILE),
               {"step": step, "train_seconds": self.train_seconds,
                "steps_timed": self.steps_timed})
    self.clock = time.perf_counter()

  def train(self, state, start: int, stop_flag: _StopFlag):
    """Trains from ``start`` to the end; returns the final state."""
    chunk = self.chunk
    ckpt_every = max(chunk, -(-self.config.checkpoint_every_steps // chunk) * chunk)
    pending = None  # (start, stop, losses) of the chunk whose losses were not read yet
    step = start
    while step < self.total_steps:
      stop = min(step + chunk, self.total_steps)
      # host batching overlaps the device's work on the previous chunk
      state, losses = train_steps(self.trainer, self.data, state, step, stop, self.train_labels)
      if pending:
        self.finish(*pending)
      pending, step = (step, stop, losses), stop
      interrupted = (parallel.any_process(stop_flag.raised is not None)
                     or self.ckpt.reached_preemption(step))
      if (step % ckpt_every == 0 or step == self.total_steps or interrupted
          or self.evaluation_due(step)):
        self.finish(*pending, state=state)
        pending = None
        if step % ckpt_every == 0 or step == self.total_steps or interrupted:
          self.save(step, state)
        if interrupted:
          raise Interrupted(f"interrupted at step {step}; checkpoint saved in "
                            f"{self.ckpt.directory}; rerun the same command to resume")
    return state


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (resuming if possible), evaluates, writes results.json and codes.npz in workdir."""
  validate_config(config)
  saved = check_same_run(workdir, config)
  if config.num_bits > LARGE_NUM_BITS:
    cli.say(f"warning: num_bits {config.num_bits} is far beyond the paper's 16 to 128 bits: the "
            "hash layer, codebook and logits grow with it", err=True)
  data, trainer = _setup(config, workdir)
  try:
    return _train_evaluate_write(config, workdir, data, trainer, saved)
  finally:
    data.close()  # stops decoding workers, also on errors


def _train_evaluate_write(config, workdir, data, trainer, saved) -> dict:
  events = summary.EventWriter(workdir)
  try:
    return _train_evaluate_events(config, workdir, data, trainer, saved, events)
  finally:
    events.close()


def write_histogram(events, result: dict, num_bits: int, step: int) -> None:
  """Figure 3 of the final codes as the TensorBoard image ``analysis/hamming_histogram``."""
  if parallel.is_main_process():
    intra, inter = plots.distance_histograms(result["query_codes"], result["db_codes"],
                                             result["query_labels"], result["db_labels"])
    events.image("analysis/hamming_histogram", step,
                 plots.png(plots.histogram_figure(intra, inter, num_bits)))


def _train_evaluate_events(config, workdir, data, trainer, saved, events) -> dict:
  steps_per_epoch, total_steps = training_steps(config, data)
  ckpt = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints)
  stop_flag = _StopFlag()
  try:
    state, start = ckpt.restore_latest(trainer.abstract_state(),
                                       log=lambda line: cli.say(line, err=True))
    check_extension(config, saved, start, steps_per_epoch)
    write_json(os.path.join(workdir, "config.json"), config.to_dict())
    if state is None:
      state = trainer.initial_state()
    else:
      cli.say(f"resumed from checkpoint at step {start}")
    _truncate_log(os.path.join(workdir, "metrics.jsonl"), start)
    loop = _Loop(config, workdir, data, trainer, ckpt, steps_per_epoch, total_steps, events)
    state = loop.train(state, start, stop_flag)
  finally:
    stop_flag.restore()
    ckpt.close()
  step = int(jax.device_get(state.step))
  result = evaluate(trainer, data, state, events, step)
  if data.protocol == "category":
    write_histogram(events, result, config.num_bits, step)
  if parallel.is_main_process():
    codes_file.save_codes(os.path.join(workdir, "codes.npz"), result, config.num_bits,
                          config.to_dict(), faiss_index=config.export_faiss)
  summary = {
      "mAP": result["mAP"], "num_bits": config.num_bits, "steps": step,
      "train_seconds": loop.train_seconds,
      "steps_per_second": loop.steps_timed / loop.train_seconds if loop.train_seconds else None,
      "quantization_angle": result["quantization_angle"],
      "eval_topk": config.eval_topk, "tie_policy": "ties broken by database index",
      "zero_relevance_policy": "AP = 0, counted in the mean",
      "num_queries": data.size("query"), "num_database": data.size("db"),
      "multilabel": data.multilabel, "dataset": data.name,
      "skipped_images": len(data.skipped), "skipped_image_files": data.skipped,
  }
  summary.update({k: v for k, v in result.items() if k.startswith("mAP_")})
  if config.revisited:  # ROxford / RParis E/M/H with the trained hash layer
    for spec in config.revisited.split(","):
      root, name = evaluation.parse_revisited(spec)
      summary[name] = evaluation.evaluate_revisited(trainer, data, state, root, name)
  write_json(os.path.join(workdir, "results.json"), summary)
  return summary
