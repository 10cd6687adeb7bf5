"""Workdirs on an object store (gs://, the local GCS emulator of ``gcs_emulator``): the files,
the lock, checkpoints and events of a run, in-process; and real multi-process runs whose only
shared state is the bucket."""
import collections
import io
import itertools
import json
import os
import subprocess
import time
import types
import urllib.parse

import fsspec
import gcsfs
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.compat.proto import event_pb2

from conftest import (CLI_ENV, ROOT, blobs, free_port, main_cmd, sigterm_during_step,
                      small_config)
from orthohash_jax import (checkpoint, codes_file, config_base, export, files, reporting, run,
                           summary, weights, workdir)
from orthohash_jax import data as data_lib


def names_under(prefix: str) -> list:
  """Every object under ``prefix``, relative to it (sorted; listed afresh)."""
  fs, root = fsspec.core.url_to_fs(prefix)
  fs.invalidate_cache()
  return sorted(name[len(root) + 1:] for name in fs.find(root))


@pytest.fixture
def object_io(monkeypatch):
  """Counts the reads (``object_io.reads``) and uploads (``object_io.uploads``) of each object
  through gcsfs, by the object's name (its last path component)."""
  counts = types.SimpleNamespace(reads=collections.Counter(), uploads=collections.Counter())
  call = gcsfs.GCSFileSystem._call  # pylint: disable=protected-access

  async def counted_call(self, method, path, *args, **kwargs):
    if method == "GET" and "/download/" in path:  # a read of an object's data
      key = urllib.parse.unquote(path.split("/o/", 1)[1].split("?", 1)[0])
      counts.reads[key.rsplit("/", 1)[-1]] += 1
    return await call(self, method, path, *args, **kwargs)
  monkeypatch.setattr(gcsfs.GCSFileSystem, "_call", counted_call)
  for name in ("simple_upload", "initiate_upload"):  # small objects, resumable uploads
    def counted(upload):
      async def counted_upload(fs, bucket, key, *args, **kwargs):
        counts.uploads[key.rstrip("/").rsplit("/", 1)[-1]] += 1
        return await upload(fs, bucket, key, *args, **kwargs)
      return counted_upload
    monkeypatch.setattr(gcsfs.core, name, counted(getattr(gcsfs.core, name)))
  return counts


def fake_clock(monkeypatch):
  """The progress clock ticks 0.5 s per reading: steps_per_second the same in every run."""
  monkeypatch.setattr(reporting, "time", types.SimpleNamespace(
      perf_counter=itertools.count(1.0, 0.5).__next__))


def train_then_resume_before_the_last_checkpoint(workdir_path, monkeypatch):
  """Blobs, 8 steps per epoch in chunks of 4, a checkpoint every 8 steps, an evaluation every
  epoch: 2 epochs, then the checkpoint of step 16 deleted (as if killed before it was saved)
  and 3 epochs, resumed from step 8 (the lines of steps 12 and 16 dropped and redone)."""
  config = small_config(num_epochs=2, steps_per_chunk=4, checkpoint_every_steps=8,
                        eval_every_epochs=1)
  fake_clock(monkeypatch)
  run.train_and_evaluate(config, workdir_path)
  files.path(workdir.path(workdir_path, "checkpoints/16")).rmtree()
  config.num_epochs = 3
  fake_clock(monkeypatch)
  run.train_and_evaluate(config, workdir_path)


# ---- files and workdir files ----
def test_atomic_write_replaces_an_object_whole_and_keeps_it_on_error(gcs):
  target = gcs.prefix("atomic") + "/x.json"
  files.write_json(target, {"a": 1})
  files.write_json(target, {"a": 2})
  assert files.read_json(target) == {"a": 2}

  def fails_half_way(tmp):
    with open(tmp, "w") as f:
      f.write('{"a": ')
    raise OSError(28, "No space left on device")
  with pytest.raises(OSError, match=rf"cannot write {target} \(No space left on device\)"):
    files.atomic_write(target, fails_half_way)
  assert files.read_json(target) == {"a": 2}
  assert names_under(target.rsplit("/", 1)[0]) == ["x.json"]  # no temporary object


def test_read_json_of_a_missing_object_is_one_error(gcs):
  target = gcs.prefix("missing") + "/results.json"
  with pytest.raises(ValueError, match=f"^{target} does not exist$"):
    files.read_json(target)


def test_metrics_lines_are_appended_and_truncated_on_an_object_store(gcs):
  wd = gcs.prefix("metrics")
  records = [{"step": s, "loss": 1.0 / s} for s in (10, 20, 30)]
  log = workdir.MetricsLog(wd, 0)
  for r in records:
    log.append(r)
  text = files.path(workdir.path(wd, workdir.METRICS)).read_text()
  assert [json.loads(line) for line in text.splitlines()] == records
  log = workdir.MetricsLog(wd, 20)  # resumed at step 20: the line of step 30 is redone
  assert log.dropped == records[2:]
  log.append({"step": 30, "loss": 0.5})
  text = files.path(workdir.path(wd, workdir.METRICS)).read_text()
  assert [json.loads(line) for line in text.splitlines()] == records[:2] + [{"step": 30,
                                                                             "loss": 0.5}]


@pytest.mark.slow  # two runs of two invocations, ~10 s
def test_a_bucket_run_logs_the_metrics_and_events_of_a_local_run(gcs, fake_load, monkeypatch,
                                                                 tmp_path, object_io):
  """After a run of several chunks and a resume that drops lines, metrics.jsonl in the bucket
  equals the local run's file: read once (on resume), not once per chunk, and uploaded once per
  line; the event files hold the local run's events, each uploaded once per chunk (its
  evaluation included) and once at the end (the final evaluation)."""
  fake_load(blobs())
  local = str(tmp_path / "run")
  train_then_resume_before_the_last_checkpoint(local, monkeypatch)
  wd = gcs.prefix("metrics-run")
  object_io.reads.clear()
  object_io.uploads.clear()
  train_then_resume_before_the_last_checkpoint(wd, monkeypatch)
  assert events_in(wd, tmp_path) == events_in(local, tmp_path)
  events = sorted(n for n in object_io.uploads if n.startswith("events.out.tfevents."))
  assert len(events) == 2  # one file per invocation, uploaded once per chunk and at the end
  assert [object_io.uploads[n] for n in events] == [4 + 1, 4 + 1]
  on_disk = open(workdir.path(local, workdir.METRICS)).read()
  assert files.path(workdir.path(wd, workdir.METRICS)).read_text() == on_disk
  steps = [json.loads(line)["step"] for line in on_disk.splitlines()]
  assert steps == [4, 8, 12, 16, 20, 24]
  assert object_io.reads[workdir.METRICS] == 1 + 1  # the resume, and this test's read above
  assert object_io.uploads[workdir.METRICS] == 4 + 4  # one per line


def test_config_codebook_and_codes_round_trip_through_the_bucket(gcs):
  wd = gcs.prefix("files")
  config = small_config(loss="orthohash")
  targets = workdir.codebook(config, 4)
  workdir.start(wd, config, targets)
  assert (files.read_json(workdir.path(wd, workdir.CONFIG))
          == json.loads(json.dumps(config.to_dict())))
  assert workdir.read_config(wd).num_bits == config.num_bits
  np.testing.assert_array_equal(workdir.codebook(config, 4, wd), targets)
  rng = np.random.default_rng(0)
  result = {"query_codes": rng.integers(0, 2**32, (3, 1), dtype=np.uint32),
            "db_codes": rng.integers(0, 2**32, (5, 1), dtype=np.uint32),
            "query_labels": np.arange(3, dtype=np.int32), "db_labels": np.arange(5, dtype=np.int32)}
  codes_file.save_codes(workdir.path(wd, workdir.CODES), result, 32, {"x": 1})
  back = codes_file.load_codes(workdir.path(wd, workdir.CODES))
  for key, value in result.items():
    np.testing.assert_array_equal(back[key], value)
  assert names_under(wd) == ["codebook.npy", "codes.npz", "config.json"]


# ---- the lock ----
def test_the_lock_is_an_object_created_only_if_absent_and_deleted_at_the_end(gcs):
  wd = gcs.prefix("lock")
  with workdir.lock(wd):
    holder = files.path(workdir.path(wd, workdir.LOCK)).read_text()
    assert holder.startswith(f"PID {os.getpid()} on host ")
    with pytest.raises(ValueError, match=rf"in use by a training run \(PID {os.getpid()} on "
                       rf"host .* since .*; if it is gone, delete {wd}/.lock\)"):
      with workdir.lock(wd):
        pass
    with pytest.raises(ValueError, match="in use by a training run"):
      with workdir.lock(wd, shared=True):
        pass
  assert not files.path(workdir.path(wd, workdir.LOCK)).exists()
  with workdir.lock(wd, shared=True), workdir.lock(wd):  # free again
    pass


def test_a_failed_run_releases_the_lock(gcs):
  wd = gcs.prefix("lock-error")
  with pytest.raises(RuntimeError):
    with workdir.lock(wd):
      raise RuntimeError("training failed")
  assert names_under(wd) == []


# ---- checkpoints and events ----
def test_checkpoints_save_restore_and_quarantine_in_the_bucket(gcs, capsys):
  wd = gcs.prefix("ckpt")
  assert not checkpoint.has_checkpoints(wd)
  ckpt = checkpoint.Checkpointer(wd)
  assert ckpt.directory == wd + "/checkpoints"
  state = {"w": np.arange(6, dtype=np.float32)}
  ckpt.save(5, state)
  ckpt.save(6, {"w": state["w"] + 1})
  assert checkpoint.has_checkpoints(wd)
  for name in names_under(f"{wd}/checkpoints/6"):  # damage every array file of step 6
    if "d/" in name:
      files.path(f"{wd}/checkpoints/6/{name}").write_bytes(b"garbage")
  restored, step = ckpt.restore_latest({"w": np.zeros(6, np.float32)}, log=print)
  ckpt.close()
  assert step == 5
  np.testing.assert_array_equal(restored["w"], state["w"])
  assert f"moved to {wd}/checkpoints_corrupt/6" in capsys.readouterr().out
  names = names_under(wd)
  assert any(n.startswith("checkpoints_corrupt/6/") for n in names), names
  assert not any(n.startswith("checkpoints/6/") for n in names), names
  assert not files.path(f"{wd}/checkpoints/6").exists()


def events_in(directory: str, tmp_path) -> list:
  """(step, tag, scalar, image bytes) of every value in the event files of ``directory`` (local
  or gs://), sorted (wall times left out: they differ between runs)."""
  seen = []
  for name in sorted(p.name for p in files.path(directory).iterdir()
                     if p.name.startswith("events.out.tfevents.")):
    local = tmp_path / f"events-copy-{len(seen)}"
    local.write_bytes(files.path(directory).joinpath(name).read_bytes())
    for raw in event_file_loader.RawEventFileLoader(str(local)).Load():
      event = event_pb2.Event.FromString(raw)
      seen += [(event.step, v.tag, v.simple_value, v.image.encoded_image_string)
               for v in event.summary.value]
  return sorted(seen)


def test_events_are_uploaded_once_per_flush_and_readable(gcs, tmp_path, object_io):
  wd = gcs.prefix("events")
  writer = summary.EventWriter(wd)
  writer.scalars(3, {"train/loss": 0.5})
  writer.scalars(6, {"train/loss": 0.25})
  writer.flush()
  (name,) = names_under(wd)  # readable before close
  assert object_io.uploads[name] == 1  # one upload for the two events
  writer.flush()
  writer.close()
  assert object_io.uploads[name] == 1  # nothing new: nothing uploaded
  assert events_in(wd, tmp_path) == [(3, "train/loss", 0.5, b""), (6, "train/loss", 0.25, b"")]


@pytest.mark.slow
def test_an_interrupted_run_resumes_from_the_bucket(gcs, fake_load, monkeypatch, capsys):
  d = blobs()
  fake_load(d)
  config = small_config(num_epochs=5, checkpoint_every_steps=1000)
  whole = run.train_and_evaluate(config, gcs.prefix("whole"))
  cut = gcs.prefix("cut")
  original = sigterm_during_step(monkeypatch, data_lib.RetrievalData, 17)
  with pytest.raises(run.Interrupted, match="interrupted at step 24; checkpoint saved"):
    run.train_and_evaluate(config, cut)
  monkeypatch.setattr(data_lib.RetrievalData, "train_rows", original)
  assert not files.path(workdir.path(cut, workdir.LOCK)).exists()
  resumed = run.train_and_evaluate(config, cut)
  assert "resumed from checkpoint at step 24" in capsys.readouterr().out
  assert resumed["mAP"] == whole["mAP"] and resumed["steps"] == 40
  assert files.read_json(workdir.path(cut, workdir.RESULTS))["mAP"] == whole["mAP"]
  exported = export.export_run(cut, f"{cut}/exported.npz")  # a tool reading the bucket run
  assert (exported["mAP"], exported["step"]) == (whole["mAP"], 40)
  for key, value in codes_file.load_codes(f"{cut}/{workdir.CODES}").items():
    np.testing.assert_array_equal(codes_file.load_codes(f"{cut}/exported.npz")[key], value)


# ---- command-line runs on the bucket ----
def cli_env(gcs, devices=2):
  env = gcs.subprocess_env(CLI_ENV)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["PYTHONPATH"] = ROOT  # the processes run in their own empty directories
  return env


def main_args(wd, *args):
  """The digits job with the config named by its absolute path (the processes run elsewhere)."""
  return main_cmd(wd, *args, config=os.path.join(ROOT, "configs/digits.py"))


def two_processes(workdirs, cwds, env, *args, timeout=600):
  """Runs the digits job as 2 processes (each in its own ``cwds[i]``, with ``workdirs[i]``);
  returns [(returncode, stdout, stderr)] and the wall time."""
  port = free_port()
  start = time.perf_counter()
  procs = [subprocess.Popen(main_args(wd, *args, f"--coordinator=127.0.0.1:{port}",
                                      "--num_processes=2", f"--process_id={i}"),
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i, (wd, cwd) in enumerate(zip(workdirs, cwds))]
  try:
    outs = [p.communicate(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return [(p.returncode, *out) for p, out in zip(procs, outs)], time.perf_counter() - start


def empty_dirs(root, n=2):
  """``n`` new empty directories under ``root``, one per host."""
  dirs = [root / f"host{i}" for i in range(n)]
  for d in dirs:
    d.mkdir(parents=True)
  return [str(d) for d in dirs]


@pytest.mark.slow
def test_two_hosts_sharing_only_a_bucket_train_like_a_shared_disk(gcs, tmp_path):
  """2 processes x 2 devices, each in its own empty directory, workdir gs://: the run finishes,
  its files are in the bucket, nothing named gs: on local disk, and the mAP equals the same
  2 x 2 run on a shared local workdir bit for bit (same devices, same sums)."""
  args = ["--config.num_epochs=2"]
  wd = gcs.prefix("two-hosts")
  cwds = empty_dirs(tmp_path / "bucket_run")
  outcome, bucket_seconds = two_processes([wd, wd], cwds, cli_env(gcs), *args)
  for rc, _, err in outcome:
    assert rc == 0, err[-3000:]
  names = names_under(wd)
  for name in ("results.json", "codes.npz", "config.json", "codebook.npy", "metrics.jsonl",
               "checkpoints/46/commit_success.txt"):
    assert name in names
  assert any(n.startswith("events.out.tfevents.") for n in names)
  assert workdir.LOCK not in names
  for cwd in cwds:
    assert os.listdir(cwd) == []  # no ./gs:/... written instead of the bucket
  local = str(tmp_path / "shared")
  local_cwds = empty_dirs(tmp_path / "local_run")
  outcome, local_seconds = two_processes([local, local], local_cwds, cli_env(gcs), *args)
  for rc, _, err in outcome:
    assert rc == 0, err[-3000:]
  on_bucket = files.read_json(f"{wd}/results.json")
  on_disk = files.read_json(os.path.join(local, "results.json"))
  assert on_bucket["mAP"] == on_disk["mAP"] and on_bucket["steps"] == on_disk["steps"] == 46
  print(f"2 x 2 digits run, 2 epochs: {bucket_seconds:.1f} s on gs://, {local_seconds:.1f} s "
        "on local disk")


@pytest.mark.slow
def test_processes_given_different_workdirs_stop_with_one_error(gcs, tmp_path):
  outcome, _ = two_processes([gcs.prefix("a"), gcs.prefix("b")], empty_dirs(tmp_path),
                             cli_env(gcs), "--config.num_epochs=1", timeout=300)
  for rc, _, err in outcome:
    lines = err.strip().splitlines()
    assert rc == 2, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    assert lines[0] == ("error: process 1 of 2 cannot see the workdir of process 0 (its run "
                         "token in .run_token): give every process the same --workdir, on "
                         "storage that all hosts reach (gs://... or a shared file system)")


@pytest.mark.slow
def test_unshared_local_workdirs_stop_with_one_error(gcs, tmp_path):
  """The same relative --workdir in each host's own directory: not one workdir."""
  outcome, _ = two_processes(["run", "run"], empty_dirs(tmp_path), cli_env(gcs),
                             "--config.num_epochs=1", timeout=300)
  for rc, _, err in outcome:
    assert rc == 2, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("error: process 1 of 2 cannot see the workdir")


@pytest.mark.slow
def test_a_second_run_on_a_held_bucket_workdir_is_refused_naming_the_holder(gcs, tmp_path):
  wd = gcs.prefix("held")
  with workdir.lock(wd):
    proc = subprocess.run(main_args(wd, "--config.num_epochs=1"), cwd=str(tmp_path),
                          env=cli_env(gcs, devices=1), capture_output=True, text=True,
                          timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr[-2000:]
  assert lines[0].startswith(f"error: {wd} is in use by a training run (PID {os.getpid()} on "
                             "host "), lines[0]
  assert names_under(wd) == []  # the refused run wrote nothing


# ---- profile_steps ----
def trace_files(logdir: str) -> list:
  if files.is_remote(logdir):
    return names_under(logdir)
  return [os.path.relpath(os.path.join(d, f), logdir) for d, _, fs in os.walk(logdir) for f in fs]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "gs"])
def test_profile_steps_traces_two_steps_into_the_workdir(gcs, fake_load, tmp_path, where):
  fake_load(blobs())  # 128 training rows, batch 16: 8 steps per epoch, one chunk each
  wd = gcs.prefix("profile") if where == "gs" else str(tmp_path / "run")
  profiled = run.train_and_evaluate(small_config(num_epochs=2, profile_steps="2:4"), wd)
  traces = trace_files(workdir.path(wd, workdir.PROFILE))
  assert traces and all(t.startswith("plugins/profile/") for t in traces), traces
  assert any(t.endswith(".xplane.pb") for t in traces), traces
  assert any(t.endswith("perfetto_trace.json.gz") for t in traces), traces
  metrics = files.path(workdir.path(wd, workdir.METRICS)).read_text().splitlines()
  assert [json.loads(line)["step"] for line in metrics] == [2, 4, 12, 16]  # 2..4 on their own
  plain = run.train_and_evaluate(small_config(num_epochs=2), str(tmp_path / "plain"))
  assert profiled["mAP"] == plain["mAP"]  # the cut chunks train the same steps


def test_profile_steps_must_be_a_step_range():
  for bad in ("4:2", "2", "a:b", "-1:3"):
    with pytest.raises(ValueError, match=f"profile_steps must be 'A:B' with integers "
                       f"0 <= A < B, got '{bad}'"):
      config_base.validate(small_config(profile_steps=bad))
  config_base.validate(small_config(profile_steps="0:2"))


@pytest.mark.slow  # imports torch
def test_torch_weights_are_read_from_the_bucket(gcs):
  torch = pytest.importorskip("torch")
  buffer = io.BytesIO()
  torch.save({"features.0.weight": torch.arange(6.0).reshape(2, 3)}, buffer)
  source = gcs.prefix("weights") + "/alexnet.pth"
  files.path(source).write_bytes(buffer.getvalue())
  state = weights.read_torch_state_dict(source)
  np.testing.assert_array_equal(state["features.0.weight"].numpy(),
                                np.arange(6.0).reshape(2, 3))
  with pytest.raises(ValueError, match=f"^{source}x: file not found$"):
    weights.read_torch_state_dict(source + "x")
