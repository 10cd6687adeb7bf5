"""What a training run shows while it runs: stdout lines, TensorBoard events, training-time totals.

``Reporter(workdir, total_steps, steps_per_epoch, timing)`` (process 0 prints and writes; on
the others every call only keeps the clock):

* ``chunk(start, stop, losses, lr, keep)`` -> the record of the chunk of steps [start, stop)
  ({"step", "epoch", "loss" (mean), "lr", "steps_per_second"}), also printed as the line
  ``step S/T (P%) loss L lr R X steps/s ETA H:MM:SS`` (``cli.progress``: redrawn in place on a
  terminal, plain lines in a log; ``keep`` ends the line on a terminal) and written to
  TensorBoard as ``train/loss``, ``train/lr``, ``train/steps_per_second``.
* ``encoding(split, done, n)``: evaluation progress (each batch on a terminal, the start of a
  split in a log); ``evaluated(step, result)``: ``eval/mAP``, ``eval/quantization_angle`` and a
  line with the mAP; ``histogram(step, result, num_bits)``: paper Figure 3 of the final codes as
  the image ``analysis/hamming_histogram``.
* ``restart_clock()``: time spent on checkpoints and evaluations is not a chunk's.
* ``flush()``: writes the events so far (``run``: once per chunk, after its evaluation).

The event file is opened by the first chunk an invocation trains: rerunning a finished run
(which only evaluates again) adds no event file.

Timing: ``train_seconds`` / ``steps_timed`` are totals over every invocation of the run (kept
in ``progress.json``, given as ``timing``), each invocation's first (compiling) chunk excluded.
The ETA is (steps left) x (wall time per step since the end of this invocation's first chunk),
so checkpoint saves and evaluations during training count; it is "?" until a chunk after the
first has finished, and leaves out the final evaluation.
"""
import time

import numpy as np

from orthohash_jax import cli, parallel, plots, summary

SPLIT_NAMES = {"query": "query", "db": "database"}


def format_seconds(seconds: float) -> str:
  """H:MM:SS of a duration (rounded to whole seconds)."""
  minutes, secs = divmod(int(round(seconds)), 60)
  return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


class Reporter:
  """Progress lines, ETA and TensorBoard events of one invocation of a run."""

  def __init__(self, workdir: str, total_steps: int, steps_per_epoch: int, timing: dict):
    self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
    self.train_seconds, self.steps_timed = timing["train_seconds"], timing["steps_timed"]
    self.workdir, self.events = workdir, None  # opened by the first chunk trained
    self.main = parallel.is_main_process()
    self.first = True
    self.clock = time.perf_counter()
    self.eta_origin = None  # (time, step) at the end of this invocation's first chunk

  def restart_clock(self) -> None:
    self.clock = time.perf_counter()

  def chunk(self, start: int, stop: int, losses: np.ndarray, lr: float, keep: bool) -> dict:
    now = time.perf_counter()
    elapsed, self.clock = now - self.clock, now
    if self.first:  # the first chunk of an invocation includes compilation
      self.eta_origin, self.first = (now, stop), False
    else:
      self.train_seconds += elapsed
      self.steps_timed += stop - start
    if self.events is None:
      self.events = summary.EventWriter(self.workdir)
    record = {"step": stop, "epoch": stop / self.steps_per_epoch, "loss": float(losses.mean()),
              "lr": lr, "steps_per_second": len(losses) / elapsed}
    self.events.scalars(stop, {"train/loss": record["loss"], "train/lr": lr,
                               "train/steps_per_second": record["steps_per_second"]})
    if self.main:
      origin_time, origin_step = self.eta_origin
      seconds = now - origin_time
      eta = (format_seconds((self.total_steps - stop) * seconds / (stop - origin_step))
             if stop > origin_step and seconds > 0 else "?")
      cli.progress(f"step {stop}/{self.total_steps} ({100 * stop // self.total_steps}%) "
                   f"loss {record['loss']:.4f} lr {lr:.2g} "
                   f"{record['steps_per_second']:.1f} steps/s ETA {eta}", keep=keep)
    return record

  def encoding(self, split: str, done: int, n: int) -> None:
    if self.main:
      cli.progress(f"evaluation: encoding {n} {SPLIT_NAMES[split]} rows" if done == 0 else
                   f"evaluation: encoded {done}/{n} {SPLIT_NAMES[split]} rows",
                   log=done == 0, keep=done == n)

  def evaluated(self, step: int, result: dict) -> None:
    if self.events is not None:
      self.events.scalars(step, {"eval/mAP": result["mAP"],
                                 "eval/quantization_angle": result["quantization_angle"]})
    if self.main:
      cli.progress(f"evaluation at step {step}: mAP {result['mAP']:.4f}", keep=True)

  def histogram(self, step: int, result: dict, num_bits: int) -> None:
    if self.main and self.events is not None:
      intra, inter = plots.distance_histograms(result["query_codes"], result["db_codes"],
                                               result["query_labels"], result["db_labels"])
      self.events.image("analysis/hamming_histogram", step,
                        plots.png(plots.histogram_figure(intra, inter, num_bits)))

  def flush(self) -> None:
    if self.events is not None:
      self.events.flush()

  def close(self) -> None:
    if self.events is not None:
      self.events.close()
