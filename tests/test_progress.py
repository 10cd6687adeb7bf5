"""What a training run shows: progress lines with ETA (plain in a log, redrawn on a terminal),
evaluation progress, and the TensorBoard event files read back with tensorboard's own reader."""
import io
import json
import re

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

from conftest import blobs, small_config
from orthohash_jax import cli, codes_file, parallel, plots, reporting, run, summary
from orthohash_jax import data as data_lib

LINE = re.compile(r"step (\d+)/(\d+) \((\d+)%\) loss ([\d.]+) lr \S+ ([\d.]+) steps/s "
                  r"ETA (\?|\d+:\d\d:\d\d)$")


def read_events(workdir):
  acc = event_accumulator.EventAccumulator(
      str(workdir), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0})
  acc.Reload()
  return acc


@pytest.fixture(scope="module")
def blob_run(tmp_path_factory):
  """A run on Gaussian blobs (8 steps per epoch, 4 epochs, evaluated every 2 epochs) with its
  stdout."""
  workdir = tmp_path_factory.mktemp("run")
  monkey = pytest.MonkeyPatch()
  out = io.StringIO()
  monkey.setattr(data_lib, "load", lambda config: blobs())
  monkey.setattr("sys.stdout", out)
  try:
    results = run.train_and_evaluate(small_config(eval_every_epochs=2, num_devices=1), str(workdir))
  finally:
    monkey.undo()
  return workdir, results, out.getvalue()


@pytest.mark.slow
def test_a_plain_progress_line_per_chunk_with_eta(blob_run):
  _, _, text = blob_run
  lines = [m.groups() for m in map(LINE.match, text.splitlines()) if m]
  assert [int(g[0]) for g in lines] == [8, 16, 24, 32]
  assert all(int(g[1]) == 32 and int(g[2]) == 100 * int(g[0]) // 32 for g in lines)
  assert lines[0][5] == "?"  # the first chunk compiles: no rate yet
  assert all(g[5] != "?" for g in lines[1:]) and lines[-1][5] == "0:00:00"
  assert "\r" not in text and "\x1b" not in text  # a log gets plain lines
  evaluations = [line for line in text.splitlines() if line.startswith("evaluation")]
  assert evaluations == ["evaluation: encoding 16 query rows",
                         "evaluation: encoding 128 database rows",
                         evaluations[2], "evaluation: encoding 16 query rows",
                         "evaluation: encoding 128 database rows", evaluations[5]]
  assert re.fullmatch(r"evaluation at step 16: mAP [\d.]+", evaluations[2])
  assert re.fullmatch(r"evaluation at step 32: mAP [\d.]+", evaluations[5])


@pytest.mark.slow
def test_event_files_hold_what_metrics_and_results_say(blob_run):
  workdir, results, _ = blob_run
  events = read_events(workdir)
  logged = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  for tag, key in (("train/loss", "loss"), ("train/lr", "lr"),
                   ("train/steps_per_second", "steps_per_second")):
    scalars = events.Scalars(tag)
    assert [s.step for s in scalars] == [r["step"] for r in logged]
    np.testing.assert_array_equal([s.value for s in scalars],
                                  np.float32([r[key] for r in logged]))
  maps = events.Scalars("eval/mAP")
  assert [s.step for s in maps] == [16, 32]
  assert maps[0].value == np.float32(logged[1]["mAP"])  # the evaluation during training
  assert maps[1].value == np.float32(results["mAP"])
  angle = events.Scalars("eval/quantization_angle")[-1]
  assert angle.step == 32 and angle.value == np.float32(results["quantization_angle"])
  (image,) = events.Images("analysis/hamming_histogram")
  with Image.open(io.BytesIO(image.encoded_image_string)) as img:
    assert img.format == "PNG" and img.size == (image.width, image.height) == (600, 400)
  # the histogram is that of the codes file
  codes = codes_file.load_codes(str(workdir / "codes.npz"))
  intra, inter = plots.distance_histograms(codes["query_codes"], codes["db_codes"],
                                           codes["query_labels"], codes["db_labels"])
  expected = plots.png(plots.histogram_figure(intra, inter, 16))
  assert image.encoded_image_string == expected


def test_only_process_zero_writes_events(tmp_path, monkeypatch):
  monkeypatch.setattr(parallel, "is_main_process", lambda: False)
  writer = summary.EventWriter(str(tmp_path))
  writer.scalars(1, {"train/loss": 1.0})
  writer.close()
  assert not list(tmp_path.iterdir())


def test_terminal_lines_redraw_in_place(monkeypatch):
  class Terminal(io.StringIO):
    def isatty(self):
      return True

  out = Terminal()
  monkeypatch.setattr("sys.stdout", out)
  cli.progress("step 1/3")
  cli.progress("step 2/3", log=False)
  cli.say("a message")
  cli.progress("step 3/3", keep=True)
  cli.progress("done", keep=True)
  assert out.getvalue() == ("\rstep 1/3\x1b[K\rstep 2/3\x1b[K\na message\n"
                            "\rstep 3/3\x1b[K\n\rdone\x1b[K\n")


def test_log_lines_skip_terminal_only_updates(capsys):
  cli.progress("shown")
  cli.progress("terminal only", log=False)
  assert capsys.readouterr().out == "shown\n"


def test_format_seconds():
  assert [reporting.format_seconds(s) for s in (0, 59.6, 61, 3600 * 27 + 62)] == [
      "0:00:00", "0:01:00", "0:01:01", "27:01:02"]
