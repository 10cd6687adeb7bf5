"""The command line of ``main`` and ``export``: one real subprocess per exit-code contract
(finish, kill -9 + resume, bad input), the message checks in-process."""
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import (CLI_ENV, ROOT, assert_one_line_error, checkpoint_steps, final_params,
                      main_cmd, run_cmd, write_idx)
from orthohash_jax import cli, codes_file, config_base, main, metrics, retrieval, run
from orthohash_jax import data as data_lib
from test_checkpoint import file_size_limit

SHORT = ["--config.num_epochs=30", "--config.checkpoint_every_steps=92", "--config.hidden=(64,)"]


def short_config(**overrides):
  config = config_base.load_config_file(os.path.join(ROOT, "configs/digits.py"))
  config.update(num_epochs=30, checkpoint_every_steps=92, hidden=(64,), **overrides)
  return config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A finished run whose reader stopped after the first line (``main | head -1``): training
  goes on to the end despite the closed pipe."""
  workdir = str(tmp_path_factory.mktemp("full"))
  proc = subprocess.Popen(main_cmd(workdir, *SHORT), cwd=ROOT, env=CLI_ENV,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  proc.stdout.readline()
  proc.stdout.close()
  err = proc.stderr.read()
  assert proc.wait(timeout=600) == 0, err[-3000:]
  assert os.path.exists(os.path.join(workdir, "results.json"))
  return workdir


@pytest.mark.slow
def test_results_json_and_export_roundtrip(finished_run, tmp_path):
  with open(os.path.join(finished_run, "results.json")) as f:
    results = json.load(f)
  assert {"mAP", "num_bits", "steps", "train_seconds", "steps_per_second"} <= set(results)
  assert results["steps"] == 30 * 23 and results["num_bits"] == 64 and results["mAP"] > 0.9
  out = str(tmp_path / "codes.npz")
  proc = run_cmd([sys.executable, "-m", "orthohash_jax.export", f"--workdir={finished_run}",
                  f"--output={out}", "--faiss"])
  assert proc.returncode == 0, proc.stderr[-2000:]
  codes = codes_file.load_codes(out)
  assert codes["query_codes"].dtype == np.uint32 and codes["query_codes"].shape == (300, 2)
  got = metrics.mean_average_precision(codes["query_codes"], codes["db_codes"],
                                       codes["query_labels"], codes["db_labels"])
  assert got == pytest.approx(results["mAP"], abs=1e-12)
  same = codes_file.load_codes(os.path.join(finished_run, "codes.npz"))
  np.testing.assert_array_equal(same["db_codes"], codes["db_codes"])
  faiss = pytest.importorskip("faiss")
  index = faiss.read_index_binary(os.path.splitext(out)[0] + ".faissbin")
  qbytes = np.ascontiguousarray(codes["query_codes"]).view(np.uint8)
  dist, _ = index.search(qbytes, 5)
  ref = np.sort(np.asarray(retrieval.hamming_distance(codes["query_codes"], codes["db_codes"])),
                1)[:, :5]
  np.testing.assert_array_equal(dist, ref)


@pytest.mark.slow
def test_kill_9_then_resume_matches_uninterrupted(finished_run, tmp_path):
  workdir = str(tmp_path / "killed")
  proc = subprocess.Popen(main_cmd(workdir, *SHORT), cwd=ROOT, env=CLI_ENV,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  for line in proc.stdout:  # progress lines come after the checkpoint of earlier steps
    if line.startswith("step ") and int(line.split()[1].split("/")[0]) >= 200:
      proc.send_signal(signal.SIGKILL)
      break
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  steps = checkpoint_steps(workdir)
  assert steps and steps[-1] < 690
  resumed = run_cmd(main_cmd(workdir, *SHORT))
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f"resumed from checkpoint at step {steps[-1]}" in resumed.stdout
  step_a, a = final_params(workdir)
  step_b, b = final_params(finished_run)
  assert step_a == step_b == 690
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  with open(os.path.join(workdir, "results.json")) as f, \
       open(os.path.join(finished_run, "results.json")) as g:
    assert json.load(f)["mAP"] == json.load(g)["mAP"]


@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back(finished_run, tmp_path, capsys):
  workdir = str(tmp_path / "copy")
  shutil.copytree(finished_run, workdir)
  latest = checkpoint_steps(workdir)[-1]
  for root, _, files in os.walk(os.path.join(workdir, "checkpoints", str(latest))):
    for name in files:
      if "manifest" in name or name.startswith("_METADATA"):
        with open(os.path.join(root, name), "wb") as f:
          f.write(b"garbage")
  summary = run.train_and_evaluate(short_config(), workdir)
  assert f"checkpoint at step {latest} failed its check (its file " in capsys.readouterr().err
  assert os.path.isdir(os.path.join(workdir, "checkpoints_corrupt", str(latest)))
  assert summary["steps"] == 690


@pytest.mark.slow
def test_bad_input_exits_2_with_one_line_and_checkpoints_intact(finished_run):
  before = {s: os.path.getmtime(os.path.join(finished_run, "checkpoints", str(s)))
            for s in checkpoint_steps(finished_run)}
  assert_one_line_error(run_cmd(main_cmd(finished_run, *SHORT, "--config.num_bitz=1")),
                        "unknown config key 'num_bitz'")
  assert_one_line_error(run_cmd(main_cmd(finished_run, *SHORT, "--config.num_bits=32")),
                        "num_bits: 64 -> 32); use a new --workdir")
  after = {s: os.path.getmtime(os.path.join(finished_run, "checkpoints", str(s)))
           for s in checkpoint_steps(finished_run)}
  assert before == after


@pytest.mark.slow
def test_same_workdir_other_config_is_refused(finished_run):
  with pytest.raises(ValueError, match=r"num_bits: 64 -> 32\); use a new --workdir"):
    run.train_and_evaluate(short_config(num_bits=32), finished_run)


def test_fashion_idx_errors(tmp_path):
  config = config_base.load_config_file(os.path.join(ROOT, "configs/fashion_mnist.py"))
  config.data_dir = "/nonexistent"
  with pytest.raises(data_lib.DataError, match="does not exist"):
    data_lib.load(config)
  rng = np.random.default_rng(0)
  for split, n in (("train", 40), ("t10k", 20)):
    write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)),
              corrupt=split == "t10k")
    write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
  config.data_dir = str(tmp_path)
  with pytest.raises(data_lib.DataError, match="header declares shape"):
    data_lib.load(config)


@pytest.mark.parametrize("args,message", [
    (["--config=configs/nope.py"], "config file configs/nope.py does not exist"),
    (["--config=BROKEN"], "cannot load the config .*: NameError: name 'undefined_name'"),
    (["--config.num_bitz=3"], "unknown config key 'num_bitz'; did you mean 'num_bits'"),
    (["--config.num_bits", "many"], "num_bits must be an integer, got 'many'"),
    (["--config.loss=hinge"], r"loss must be one of \['orthohash', 'ce', .*\], got 'hinge'"),
    (["stray"], "unrecognized arguments: stray"),
    # issue 36 #2: a multi-label setting on single-label data, as another method's key is
    (["--config.multilabel_loss=bce"], "multilabel_loss is a setting of multi-label data; "
     "dataset 'digits' is single-label: leave it at its default"),
    # #3: a variant of a config that has none, naming those that have
    (["--config=configs/digits.py:small"], r"config configs/digits.py has no variants: drop "
     r"':small' \(configs with variants: coco.py: alexnet, small; fashion_mnist.py: idx, files; "
     r"gldv2.py: real, synthetic; imagenet100.py: alexnet, small; nuswide.py: alexnet, small\)$"),
    # #4 and #18: values in the project's words, never ml_collections' or a traceback
    (["--config.num_bits=thirtytwo"], "num_bits must be an integer, got 'thirtytwo'$"),
    (["--config.num_bits={[]:1}"], r"num_bits must be an integer, got '\{\[\]:1\}'$"),
    (["--config.num_bits=" + "9" * 100_000], "num_bits must be an integer, got a value of "
     "100000 characters$"),
    (["--config.num_bits=" + "9" * 5000], r"num_bits must be an integer, got '9+\.\.\. \(5002 "
     r"characters\)$"),
    (["--config.seed=99999999999999999999"], r"seed must be an integer in \[0, 2\*\*32 - 1\]"),
    (["--config.hidden=(0,)"], r"hidden must be a non-empty tuple of positive integers, got "
     r"\(0,\)$"),
    (["--config.hidden=(-5,5)"], "hidden must be a non-empty tuple of positive integers"),
    (["--config=/etc/passwd"], "config file /etc/passwd is not a Python file"),
    # #20: a boolean is not a batch size
    (["--config.batch_size=True"], "batch_size must be an integer, got True$"),
])
def test_main_bad_command_lines_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, args,
                                                                      message):
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config():\n  return undefined_name\n")
  args = [a.replace("BROKEN", str(broken)) for a in args]
  workdir = tmp_path / "run"
  with pytest.raises(SystemExit) if args == ["stray"] else contextlib.nullcontext() as exit_:
    status = main.main([f"--workdir={workdir}", *args])
  status = exit_.value.code if args == ["stray"] else status
  err = capsys.readouterr().err.strip().splitlines()
  assert status == 2 and len(err) == 1 and re.match(f"error: .*{message}", err[0]), err
  assert not workdir.exists()


def test_main_sets_overrides_in_both_spellings(monkeypatch):
  seen = {}
  monkeypatch.setattr(run, "train_and_evaluate",
                      lambda config, workdir: seen.update(config=config) or {"mAP": 1.0})
  assert main.main(["--workdir=unused", "--config.num_bits=32", "--config.use_bn", "false",
                    "--config.hidden=(64,)"]) == 0
  config = seen["config"]
  assert (config.num_bits, config.use_bn, config.hidden) == (32, False, (64,))


def test_main_names_the_files_it_wrote_before_the_results(monkeypatch, capsys, tmp_path):
  monkeypatch.setattr(run, "train_and_evaluate", lambda config, workdir: {"mAP": 1.0})
  (tmp_path / "config.json").write_text("{}")
  assert main.main([f"--workdir={tmp_path}", "--config.export_faiss=true"]) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[-2] == (f"wrote {tmp_path}/results.json, {tmp_path}/codes.npz, "
                     f"{tmp_path}/codes.faissbin (with config.json, checkpoints/ and TensorBoard "
                     f"events in {tmp_path}: docs/runs.md)")
  assert json.loads(out[-1]) == {"mAP": 1.0}


def test_say_survives_a_closed_stdout(monkeypatch):
  class Closed:
    def write(self, text):
      raise BrokenPipeError

    def flush(self):
      raise BrokenPipeError

  monkeypatch.setattr(sys, "stdout", Closed())
  cli.say("step 1")  # no exception: progress output is switched off
  cli.say("step 2")
  assert sys.stdout.name == os.devnull


@pytest.mark.slow
def test_a_full_disk_during_a_background_save_is_one_line(tmp_path):
  """A background save that fails (files over 1 MB fail, as on a full disk): one `error:` line and
  status 1; the background threads' callbacks into orbax's closed event loop used to print a
  traceback each (42 of them on digits) before the line."""
  with file_size_limit(1_000_000):
    proc = run_cmd(main_cmd(str(tmp_path / "run"), "--config.num_epochs=3"))
  assert_one_line_error(proc, "cannot save the checkpoint of step 69 in ", status=1)
