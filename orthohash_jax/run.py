"""A training run in a workdir: checks, the training loop with resume, evaluation, results.

``train_and_evaluate(config, workdir)`` reads top to bottom:
1. checks: the config (``config_base.validate``), the workdir (``workdir.check_same_run``), then
   the data against the config (``check_data``); nothing is written before all of them passed;
2. the trainer, with the class targets of ``<workdir>/codebook.npy`` (``workdir.codebook``);
3. resume from the latest usable checkpoint (``checkpoint.Checkpointer``), then the loop over
   chunks of ``steps_per_chunk`` steps (an epoch by default), each one compiled ``lax.scan``,
   cut at every evaluation step. With ``chunk_seconds``, the first two chunks of an invocation
   are single steps, the second one timed; the slowest process's time (agreed by a collective)
   then sets the chunk length (``chunk_seconds`` / step time, at most ``steps_per_chunk``).
   Chunk lengths never change results: the batch and random draws of a step depend on
   (seed, step) only. The next chunk is dispatched before the losses of the previous one are
   read (host batching and logging overlap the device), so a non-finite loss is seen one chunk
   late; a checkpoint is only saved after the losses of every step before it were read and
   found finite, so the last checkpoint is always a good one. Saves happen once
   ``checkpoint_every_steps`` steps have passed since the last one, at the end of a chunk, and
   are written in the background while the next chunks run. Each chunk adds a line to
   ``metrics.jsonl``, stdout and TensorBoard (``reporting``). ``profile_steps`` A:B also cuts
   chunks at A and B, and steps A..B are traced into <workdir>/profile (``summary.Profiler``);
4. SIGTERM, SIGINT (Ctrl-C) or orbax's preemption notice: the chunk finishes, a checkpoint is
   saved (waited for) and ``Interrupted`` is raised; a non-finite loss raises ``TrainingError``
   without saving (a non-finite loss at the restored step that the run logged finite: a
   checkpoint saved without a digest is quarantined, one that passed its digest is kept, since
   then the data, code or config changed); a failed save raises ``checkpoint.SaveError``; a
   collective that fails because another process died ends this one at once
   (``lost_process_exit``). On resume, ``metrics.jsonl`` lines after the restored step are
   dropped, and ``check_extension`` says what a changed ``num_epochs`` may do;
5. evaluation (``evaluation.evaluate``; revisited Oxford/Paris when ``config.revisited``), then
   ``codes.npz`` and ``results.json`` (process 0 writes every file).

``restore_run(workdir)`` rebuilds (trainer, data, state, step) of the latest checkpoint for the
export, instance and serve tools.
"""
import contextlib
import os
import sys
import time

import jax
import numpy as np

from orthohash_jax import checkpoint, cli, config_base, evaluation, methods, parallel, reporting
from orthohash_jax import summary
from orthohash_jax import trainer as trainer_lib
from orthohash_jax import workdir as workdir_lib
from orthohash_jax import data as data_lib

LARGE_NUM_BITS = 4096  # beyond this a warning: the paper uses 16 to 128 bits
PROBE_CHUNKS = 2  # with chunk_seconds: single-step chunks first, the second one timed
LOST_PROBE_SECONDS = 5  # after a failed collective: how long a survivor waits for the others
PROCESS_LOST_STATUS = 4  # exit status of a survivor that lost another process


class TrainingError(cli.CommandError):
  """Training cannot go on (a non-finite loss): exit status 1, the last good checkpoint kept."""
  status = 1


class Interrupted(cli.CommandError):
  """Training stopped on SIGTERM, SIGINT or a preemption notice after saving a checkpoint: exit
  status 3; the same command resumes."""
  status, prefix = 3, ""


@contextlib.contextmanager
def lost_process_exit():
  """Turns a failed cross-process collective (a process was killed) into one ``error:`` line
  naming the processes that no longer answer and exit status 4, at once (``os._exit``): any
  cleanup, jax.distributed's exit-time shutdown included, would wait for the lost process until
  the coordination service's heartbeat timeout and then abort. One process, or every process
  still answering: the error goes on as it is."""
  try:
    yield
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() == 1:
      raise
    lost = parallel.unresponsive_processes("orthohash_lost", LOST_PROBE_SECONDS)
    if not lost:  # every process answers: an error of another kind
      raise
    names = " and ".join(f"process {p}" for p in lost)
    cli.say(f"error: lost {names} of {jax.process_count()} "
            f"({str(e).strip().splitlines()[0][:160]}); rerun the same command on every host "
            "to resume from the last checkpoint", err=True)
    sys.stdout.flush()
    os._exit(PROCESS_LOST_STATUS)


def chunk_stop(step: int, length: int, total_steps: int, eval_every: int) -> int:
  """The end of the chunk that starts at ``step``: ``length`` steps, cut at the next evaluation
  (every ``eval_every`` steps, 0: none) and at the end of training."""
  stop = min(step + length, total_steps)
  return min(stop, (step // eval_every + 1) * eval_every) if eval_every else stop


def check_data(config, data) -> None:
  """Checks of the config against the loaded data."""
  if config.batch_size > data.size("train"):
    raise ValueError(f"batch_size {config.batch_size} is larger than the training set "
                     f"({data.size('train')})")
  config_base.check_labels(config, data.multilabel)
  if 2 ** min(config.num_bits, 63) < data.num_classes:
    raise ValueError(f"num_bits {config.num_bits} gives at most {2 ** config.num_bits} distinct "
                     f"codes for {data.num_classes} classes; use num_bits >= "
                     f"{int(np.ceil(np.log2(data.num_classes)))}")
  if config.eval_topk is not None and config.eval_topk > data.size("db"):
    raise ValueError(f"eval_topk {config.eval_topk} is larger than the database "
                     f"({data.size('db')})")


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


def step_counts(config, data):
  """(steps per epoch, total steps): the incomplete last batch of an epoch is dropped."""
  steps_per_epoch = data.size("train") // config.batch_size
  return steps_per_epoch, steps_per_epoch * config.num_epochs


def make_trainer(config, data, mesh=None, codebook=None) -> trainer_lib.Trainer:
  """The Trainer of a validated config for ``data`` on ``mesh`` (None: from the config);
  ``codebook`` (C, K): the class targets (None: generated from the config)."""
  if codebook is None:
    codebook = workdir_lib.codebook(config, data.num_classes)
  return trainer_lib.Trainer(
      config, input_shape=data.input_shape, num_classes=data.num_classes, codebook=codebook,
      total_steps=step_counts(config, data)[1], mesh=mesh, mean_std=data.mean_std)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (resuming if possible), evaluates, writes results.json and codes.npz in workdir;
  returns the results."""
  # Checks, before anything is written.
  methods.apply_architecture(config)  # the method's use_bn unless set: config.json records it
  config_base.validate(config)
  saved = workdir_lib.check_same_run(workdir, config)
  if config.num_bits > LARGE_NUM_BITS:
    cli.say(f"warning: num_bits {config.num_bits} is far beyond the paper's 16 to 128 bits: the "
            "hash layer, codebook and logits grow with it", err=True)
  with contextlib.ExitStack() as stack:
    data = data_lib.load(config)
    stack.callback(data.close)  # stops decoding workers, also on errors
    check_data(config, data)

    # The trainer, on the class targets saved with the run; resume from its latest checkpoint.
    targets = workdir_lib.codebook(config, data.num_classes, workdir)
    trainer = make_trainer(config, data, codebook=targets)
    steps_per_epoch, total_steps = step_counts(config, data)
    stack.enter_context(workdir_lib.lock(workdir))  # one run per workdir
    workdir_lib.check_shared(workdir)  # every process reaches the same one
    ckpt = stack.enter_context(contextlib.closing(
        checkpoint.Checkpointer(workdir, config.keep_checkpoints, background=True)))
    stack.enter_context(lost_process_exit())
    state, start = ckpt.restore_latest(trainer.abstract_state(),
                                       log=lambda line: cli.say(line, err=True))
    if parallel.processes_differing(str(start)):
      raise ValueError(f"the processes restored different steps of {ckpt.directory} (process 0: "
                       f"{start}); give every process the same --workdir")
    check_extension(config, saved, start, steps_per_epoch)
    workdir_lib.start(workdir, config, targets)  # every check passed
    resumed = state is not None
    if state is None:
      state = trainer.initial_state()
    else:
      cli.say(f"resumed from checkpoint at step {start}")
    metrics_log = workdir_lib.MetricsLog(workdir, start)  # drops the lines after the step
    # the loss logged for the chunk from the restored step (-inf: none): a non-finite one now is
    # the checkpoint's fault, or (a checkpoint that passed its digest) the data's, code's, config's
    logged_loss = metrics_log.dropped[0].get("loss") if metrics_log.dropped else None
    logged_loss = parallel.agreed_max(logged_loss if isinstance(logged_loss, float) else -np.inf)
    restored_step_was_finite = resumed and np.isfinite(logged_loss)
    report = stack.enter_context(contextlib.closing(reporting.Reporter(
        workdir, total_steps, steps_per_epoch, workdir_lib.read_progress(workdir))))

    # Training: chunks of steps; the losses of a chunk are read while the next one runs.
    length = config.steps_per_chunk or steps_per_epoch
    probes = PROBE_CHUNKS if config.chunk_seconds and length > 1 else 0
    eval_every = config.eval_every_epochs * steps_per_epoch
    eval_due = lambda step: bool(eval_every) and step % eval_every == 0 and step < total_steps
    train_labels = data.labels("train")

    def finish(begin, stop, losses, state=None):
      """Reads the losses of steps [begin, stop) (a host sync) and logs them; with ``state``
      (the state at ``stop``) also evaluates when an evaluation is due."""
      losses = np.asarray(losses)
      if not np.all(np.isfinite(losses)):
        bad = begin + int(np.argmin(np.isfinite(losses)))
        if bad == start and restored_step_was_finite and ckpt.verified:
          raise TrainingError(
              f"checkpoint at step {start} gives a non-finite loss at its own step, where the run "
              f"that saved it logged a finite one ({logged_loss:.4g}, its chunk's mean); the "
              "checkpoint passed its digest check, so the data, code or config differ from that "
              "run's: rerun with those, or use a new --workdir (no checkpoint was quarantined)")
        if bad == start and restored_step_was_finite:  # damage no check caught (no digest)
          raise TrainingError(f"checkpoint at step {start} gives a non-finite loss at its own "
                              f"step; {ckpt.quarantine(start)}; rerun the same command to "
                              "resume from the previous checkpoint")
        last = ckpt.latest_step()
        where = (f"last good checkpoint: step {last} in {ckpt.directory}" if last is not None
                 else "no checkpoint was saved yet")
        raise TrainingError(f"loss is not finite at step {bad}; stopped without saving ({where})")
      record = report.chunk(begin, stop, losses, float(trainer.schedule(stop - 1)),
                            keep=stop == total_steps or eval_due(stop))
      if state is not None and eval_due(stop):
        result = evaluation.evaluate(trainer, data, state, report.encoding)
        report.evaluated(stop, result)
        record["mAP"] = result["mAP"]
        report.restart_clock()
      metrics_log.append(record)
      report.flush()

    profiler = summary.Profiler(config.profile_steps,
                                workdir_lib.path(workdir, workdir_lib.PROFILE))
    with checkpoint.StopSignals() as signals:
      pending, step, saved_at = None, start, start  # pending: (begin, stop, losses) not read yet
      while step < total_steps:
        stop = profiler.cut(step, chunk_stop(step, 1 if probes else length, total_steps,
                                             eval_every))
        began = time.perf_counter()
        profiler.begin(step)
        state, losses = trainer.run_chunk(
            state, *data_lib.host_batch(config, data, step, stop, train_labels, trainer.mesh))
        profiler.end(stop, losses, last=stop == total_steps)
        if probes:
          probes -= 1
          if not probes:  # the last probe, compiled by the one before: one step's wall time
            jax.block_until_ready(losses)
            step_seconds = parallel.agreed_max(time.perf_counter() - began)
            length = max(1, min(length, int(config.chunk_seconds / step_seconds)))
        if pending:
          finish(*pending)
        pending, step = (step, stop, losses), stop
        ckpt.check()  # a background save that failed stops the run here
        interrupted = ckpt.stop_requested(step, signals)
        save = (step - saved_at >= config.checkpoint_every_steps or step == total_steps
                or interrupted)
        if save or eval_due(step):
          finish(*pending, state=state)
          pending = None
        if save:
          ckpt.save(step, state)  # in the background: the next chunk runs meanwhile
          saved_at = step
          workdir_lib.write_progress(workdir, step, report.train_seconds, report.steps_timed)
          report.restart_clock()
        if interrupted:
          ckpt.wait()
          raise Interrupted(f"interrupted at step {step}; checkpoint saved in "
                            f"{ckpt.directory}; rerun the same command to resume")

    # Evaluation of the final state, and the files of the finished run.
    step = int(jax.device_get(state.step))
    result = evaluation.evaluate(trainer, data, state, report.encoding)
    report.evaluated(step, result)
    if data.protocol == "category":
      report.histogram(step, result, config.num_bits)
    results = {
        "mAP": result["mAP"], "num_bits": config.num_bits, "steps": step,
        "train_seconds": report.train_seconds,
        "steps_per_second": (report.steps_timed / report.train_seconds
                             if report.train_seconds else None),
        "quantization_angle": result["quantization_angle"],
        "eval_topk": config.eval_topk, "tie_policy": "ties broken by database index",
        "zero_relevance_policy": "AP = 0, counted in the mean",
        "num_queries": data.size("query"), "num_database": data.size("db"),
        "multilabel": data.multilabel, "dataset": data.name,
        "skipped_images": len(data.skipped), "skipped_image_files": data.skipped,
        **{k: v for k, v in result.items() if k.startswith("mAP_")},
    }
    for spec in config.revisited.split(",") if config.revisited else ():
      root, name = evaluation.parse_revisited(spec)  # ROxford / RParis E/M/H, trained hash layer
      results[name] = evaluation.evaluate_revisited(trainer, data, state, root, name)
    ckpt.wait()  # the final checkpoint, saved while the evaluation ran
    workdir_lib.write_results(workdir, results, result, config)
    return results


def restore_run(workdir: str):
  """(trainer, data, state, step) of the latest usable checkpoint of the run in ``workdir``."""
  config = workdir_lib.read_config(workdir)
  config_base.validate(config)
  data = data_lib.load(config)
  trainer = make_trainer(config, data, codebook=workdir_lib.codebook(config, data.num_classes,
                                                                     workdir))
  with workdir_lib.lock(workdir, shared=True), contextlib.closing(
      checkpoint.Checkpointer(workdir, config.keep_checkpoints)) as ckpt:
    state, step = ckpt.restore_latest(trainer.abstract_state(),
                                      log=lambda line: cli.say(line, err=True))
  if state is None:
    data.close()
    raise ValueError(f"no usable checkpoint in {workdir}/checkpoints")
  return trainer, data, state, step
