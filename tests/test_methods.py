"""The training methods (``orthohash_jax.methods``).

The comparison methods against torch re-expressions of CISiPLab/cisip-FIRe's losses
(``fire_reference``): value and gradients w.r.t. the codes and the classifier / projection
parameters, single- and multi-label where FIRe takes it, float64 (skipped without torch). The
registry: config keys, refusals, and every method training through the trainer and the CLI.
"""
import json
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (ROOT, assert_one_line_error, blobs, final_params, main_cmd, make_trainer,
                      run_cmd, sigterm_during_step, small_config, train_steps)
from orthohash_jax import config_base, main, methods, run
from orthohash_jax import trainer as trainer_lib
from orthohash_jax import workdir as workdir_lib
from orthohash_jax import data as data_lib
from experiments import run_grid
from orthohash_jax.methods import csq, dpn, dtsh, greedyhash, hashnet, jmlh, sdhc

try:
  import torch  # pylint: disable=g-import-not-at-top
  import fire_reference as fire  # pylint: disable=g-import-not-at-top
except ImportError:
  torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="the FIRe references need torch")

B, K, C, D = 12, 16, 5, 7


def _labels(rng, multilabel):
  """(jax labels, one-hot / multi-hot float64 rows for the reference)."""
  if multilabel:
    y = (rng.random((B, C)) < 0.35).astype(np.float64)
    y[np.arange(B), rng.integers(0, C, B)] = 1  # no empty rows (FIRe's soft CE divides by sum)
    return y.astype(np.int32), y
  ids = rng.integers(0, C, B)
  ids[:2] = [0, 1]  # at least two classes: HashNet needs dissimilar pairs
  return ids.astype(np.int32), np.eye(C)[ids]


def _centres(rng):
  return np.where(rng.random((C, K)) < 0.5, 1.0, -1.0)


def _classifier(rng):
  return {"weight": rng.normal(size=(C, K)) * 0.5, "bias": rng.normal(size=C) * 0.1}


def _case(method, multilabel, seed=0):
  """(params, jax loss of params, torch loss of params) of one method on random inputs."""
  rng = np.random.default_rng(seed)
  labels, y = _labels(rng, multilabel)
  ty = torch.tensor(y)
  params = {"codes": rng.normal(size=(B, K)) * 1.5}
  if method == "hashnet":
    epoch = 45  # beta = sqrt(3)
    return (params,
            lambda p: hashnet.hashnet_loss(p["codes"], labels, epoch=epoch),
            lambda p: fire.hashnet(p["codes"], ty, epoch))
  if method == "dtsh":
    params["codes"] *= 0.5
    return (params, lambda p: dtsh.dtsh_loss(p["codes"], labels),
            lambda p: fire.dtsh(p["codes"], ty))
  if method in ("greedyhash", "jmlh", "sdhc"):
    params.update(_classifier(rng))
    if method == "greedyhash":
      head = greedyhash.classifier_input
      loss = lambda p, logits: greedyhash.greedyhash_loss(p["codes"], logits, labels)
      reference = lambda p: fire.greedyhash(p["codes"], p["weight"], p["bias"], ty, multilabel)
    elif method == "jmlh":
      eps = rng.random((B, K))
      head = lambda v: jmlh.stochastic_codes(v, eps)
      loss = lambda p, logits: jmlh.jmlh_loss(p["codes"], logits, labels)
      reference = lambda p: fire.jmlh(p["codes"], p["weight"], p["bias"], ty,
                                      torch.tensor(eps), multilabel)
    else:
      params["projection"] = rng.normal(size=(D, K)) * 0.3
      head = sdhc.classifier_input
      loss = lambda p, logits: sdhc.sdhc_loss(p["codes"], logits, labels, p["projection"])
      reference = lambda p: fire.sdhc(p["codes"], p["weight"], p["bias"], p["projection"].t(), ty)
    return (params, lambda p: loss(p, head(p["codes"]) @ p["weight"].T + p["bias"]), reference)
  centres = _centres(rng)
  if method == "dpn":
    return (params, lambda p: dpn.dpn_loss(p["codes"], labels, centres),
            lambda p: fire.dpn(p["codes"], ty, torch.tensor(centres), multilabel))
  if method == "csq":
    bits = (rng.random(K) < 0.5).astype(np.float64)
    return (params, lambda p: csq.csq_loss(p["codes"], labels, centres, 2 * bits - 1),
            lambda p: fire.csq(p["codes"], ty, torch.tensor(centres), torch.tensor(bits),
                               multilabel))
  raise ValueError(method)


def _relative_error(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def max_relative_error(method, multilabel, seed=0):
  """max over the loss value and every gradient of |jax - torch| / max|torch| (float64)."""
  params, jax_loss, torch_loss = _case(method, multilabel, seed)
  with jax.enable_x64(True):
    value, grads = jax.value_and_grad(jax_loss)(jax.tree.map(jnp.asarray, params))
    value, grads = float(value), jax.tree.map(np.asarray, grads)
  tparams = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
  want = torch_loss(tparams)
  want.backward()
  errors = [_relative_error(value, want.item())]
  errors += [_relative_error(grads[k], tparams[k].grad.numpy()) for k in params]
  return max(errors)


CASES = [(m, False) for m in ("hashnet", "dtsh", "sdhc", "greedyhash", "jmlh", "dpn", "csq")] + [
    (m, True) for m in ("hashnet", "dtsh", "greedyhash", "jmlh", "dpn", "csq")]


@pytest.mark.slow  # float64 first compiles, ~14 s of CPU; test_float32_close_to_fire is the quick check
@needs_torch
@pytest.mark.parametrize("method,multilabel", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_fire(method, multilabel, seed):
  assert max_relative_error(method, multilabel, seed) < 1e-5


@needs_torch
@pytest.mark.parametrize("method,multilabel", CASES)
def test_float32_close_to_fire(method, multilabel):
  """The training dtype: value within 1e-4 of the float64 reference."""
  params, jax_loss, torch_loss = _case(method, multilabel)
  got = float(jax.jit(jax_loss)(jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)))
  want = torch_loss({k: torch.tensor(v) for k, v in params.items()}).item()
  assert got == pytest.approx(want, rel=1e-4)


def test_hashnet_continuation_scale():
  np.testing.assert_allclose([hashnet.continuation_scale(e, 20) for e in (0, 19, 20, 99)],
                             np.sqrt([1, 1, 2, 5]), rtol=1e-6)


def test_sdhc_refuses_multilabel():
  with pytest.raises(ValueError, match="single-label"):
    sdhc.sdhc_loss(jnp.zeros((2, K)), jnp.zeros((2, C)), jnp.ones((2, C), jnp.int32),
                   jnp.zeros((D, K)))


def test_jmlh_eval_codes_are_thresholds():
  v = jnp.array([[-2.0, -0.1, 0.3, 4.0]])
  np.testing.assert_array_equal(jmlh.classifier_input(v, train=False), [[0, 0, 1, 1]])
  drawn = jmlh.classifier_input(jnp.zeros((64, 64)), train=True, key=jax.random.key(0))
  assert 0.4 < float(drawn.mean()) < 0.6  # q = 0.5 against eps ~ U[0, 1)


def test_greedyhash_sign_is_exact_and_straight_through():
  v = jnp.array([0.1, -0.3, 0.0, 2.0])
  np.testing.assert_array_equal(greedyhash.classifier_input(v), [1, -1, 0, 1])
  np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(greedyhash.classifier_input(x) * 3))(v),
                                [3, 3, 3, 3])


COMPARISON = ("hashnet", "dtsh", "sdhc", "greedyhash", "jmlh", "dpn", "csq")


def test_registry_names_and_keys_equal_the_config_declarations():
  assert config_base.LOSSES == tuple(methods.METHODS) == ("orthohash", "ce", *COMPARISON)
  for name, method in methods.METHODS.items():
    assert set(method.keys) == {k.name for k in config_base.KEYS if name in k.losses}, name
  assert [n for n, m in methods.METHODS.items() if m.uses_codebook] == ["orthohash", "dpn", "csq"]
  assert [n for n, m in methods.METHODS.items() if not m.multilabel] == list(
      config_base.SINGLE_LABEL_LOSSES) == ["sdhc"]


@pytest.mark.parametrize("values,message", [
    ({"loss": "hashnet", "codebook": "maxmin"},
     "codebook is a setting of loss orthohash / dpn / csq, not of 'hashnet'"),
    ({"loss": "csq", "margin": 0.3}, "margin is a setting of loss orthohash, not of 'csq'"),
    ({"loss": "orthohash", "dtsh_alpha": 2.0}, "dtsh_alpha is a setting of loss dtsh,"),
    ({"loss": "hinge"}, "loss must be one of"),
])
def test_a_key_of_another_method_is_refused(values, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(")) as e:
    config_base.validate(small_config(**values))
  assert "\n" not in str(e.value)


def test_own_keys_are_accepted():
  config_base.validate(small_config(loss="dpn", codebook="maxmin", dpn_margin=0.5))
  config_base.validate(small_config(loss="sdhc", sdhc_alpha=2.0))


def test_multilabel_data_is_refused_for_a_single_label_method(tmp_path, fake_load):
  d = blobs()
  eye = np.eye(4, dtype=np.uint8)
  fake_load(data_lib.RetrievalData("multi", 4, d.train_x, eye[d.train_y], d.query_x,
                                   eye[d.query_y], d.db_x, eye[d.db_y]))
  with pytest.raises(ValueError, match="loss 'sdhc' takes single-label data only; multi-label "
                     "data takes loss orthohash / ce / hashnet / dtsh / greedyhash / jmlh / dpn / "
                     "csq"):
    run.train_and_evaluate(small_config(loss="sdhc"), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
@pytest.mark.parametrize("loss", COMPARISON)
def test_trains_single_and_multilabel(loss):
  d = blobs()
  eye = np.eye(4, dtype=np.uint8)
  multi = data_lib.RetrievalData("multi", 4, d.train_x, eye[d.train_y], d.query_x, eye[d.query_y],
                                 d.db_x, eye[d.db_y])
  for data in (d, multi) if methods.METHODS[loss].multilabel else (d,):
    trainer = make_trainer(small_config(loss=loss), data)
    _, step_losses = train_steps(trainer, data, trainer.initial_state(), 0, 24)
    assert np.all(np.isfinite(step_losses)) and step_losses[-4:].mean() < step_losses[:4].mean()


@pytest.mark.slow
@pytest.mark.parametrize("loss", COMPARISON)
def test_cli_trains_on_digits_and_writes_codes(loss, tmp_path):
  workdir = str(tmp_path / loss)
  proc = run_cmd(main_cmd(workdir, f"--config.loss={loss}", "--config.num_epochs=2"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  with np.load(os.path.join(workdir, "codes.npz")) as codes:
    assert len(codes.files)


@pytest.mark.slow
@pytest.mark.parametrize("values", [
    {"loss": "jmlh"},  # stochastic thresholds: a key per step
    {"loss": "hashnet", "hashnet_step_continuation": 1},  # beta grows every epoch
], ids=["jmlh", "hashnet"])
def test_resume_after_sigterm_is_identical(values, tmp_path, fake_load, monkeypatch):
  """A run stopped by SIGTERM in its third epoch and resumed ends as the uninterrupted run."""
  fake_load(blobs())  # 8 steps per epoch
  config = small_config(num_epochs=5, checkpoint_every_steps=1000, **values)
  whole = run.train_and_evaluate(config, str(tmp_path / "whole"))
  original = sigterm_during_step(monkeypatch, data_lib.RetrievalData, 17)
  with pytest.raises(run.Interrupted, match="interrupted at step 24; checkpoint saved"):
    run.train_and_evaluate(config, str(tmp_path / "cut"))
  monkeypatch.setattr(data_lib.RetrievalData, "train_rows", original)
  cut = run.train_and_evaluate(config, str(tmp_path / "cut"))
  assert cut["mAP"] == whole["mAP"]
  (step_a, a), (step_b, b) = (final_params(str(tmp_path / w)) for w in ("whole", "cut"))
  assert step_a == step_b == 40
  jax.tree.map(np.testing.assert_array_equal, a, b)
  with np.load(tmp_path / "whole" / "codes.npz") as x, np.load(tmp_path / "cut" / "codes.npz") as y:
    for name in ("query_codes", "db_codes"):
      np.testing.assert_array_equal(x[name], y[name])


@pytest.mark.slow  # a subprocess; test_a_key_of_another_method_is_refused checks it in-process
def test_cli_refuses_a_key_of_another_method(tmp_path):
  proc = run_cmd(main_cmd(str(tmp_path / "w"), "--config.loss=hashnet",
                          "--config.codebook=maxmin"))
  assert_one_line_error(proc, "codebook is a setting of loss orthohash / dpn / csq")


def test_run_grid_takes_the_paper_names():
  names = "HashNet,DTSH,SDH-C,GreedyHash,JMLH,DPN,CSQ"
  assert run_grid.parse_methods(None, names) == names.split(",")  # the parser only reports errors
  assert [run_grid.METHODS[n][0]["loss"] for n in names.split(",")] == list(COMPARISON)
  for name in names.split(","):
    config_base.validate(small_config(**run_grid.METHODS[name][0]))


def docs_methods_table():
  """{loss: {column: cell}} of docs/methods.md's table."""
  with open(os.path.join(ROOT, "docs", "methods.md")) as f:
    lines = [line for line in f if line.startswith("| ")]
  split = lambda line: [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
  header = split(lines[0])
  return {split(line)[0].strip("`"): dict(zip(header, split(line))) for line in lines[2:]}


# FIRe's models of the comparison methods have no BatchNorm after the hash layer; OrthoHash's
# and the CE baseline's have one (the paper's "+BN").
EXPECTED_BN = {"orthohash": True, "ce": True, **{name: False for name in COMPARISON}}


def test_each_method_declares_its_architecture_equal_to_the_grid_and_the_docs():
  table = docs_methods_table()
  assert list(table) == list(methods.METHODS)
  for loss, method in methods.METHODS.items():
    assert method.architecture == {"use_bn": EXPECTED_BN[loss]}, loss
    row = table[loss]
    assert row["`run_grid` name"] == method.name and row["`use_bn`"] == str(EXPECTED_BN[loss])
    assert row["`codebook`"] == ("yes" if method.uses_codebook else "no")
    keys = re.findall(r"`(\w+)=([^`]+)`", row["its keys (defaults)"])
    assert keys == [(k, repr(config_base.KEYS_BY_NAME[k].default))
                    for k in method.keys if k != "codebook"], loss
    assert row["train it alone"].endswith(f"--config.loss={loss}`")
    # the grid trains the method under its paper name with nothing but its loss set: the
    # architecture comes from the same declaration
    assert run_grid.METHODS[method.name][0] == {"loss": loss}
    config = small_config(**run_grid.METHODS[method.name][0])
    methods.apply_architecture(config)
    assert config.use_bn is EXPECTED_BN[loss]


def test_a_trainer_of_a_config_that_leaves_use_bn_unset_builds_the_methods_model():
  # any Trainer (benchmarks, tools), not only the CLI's run: None never means "no BN"
  for loss in ("orthohash", "hashnet"):
    config = small_config(loss=loss)
    assert config.use_bn is None
    trainer = trainer_lib.Trainer(config, input_shape=(8,), num_classes=3,
                                  codebook=workdir_lib.codebook(config, 3), total_steps=4,
                                  mesh=None)
    assert bool(jax.tree.leaves(trainer.initial_state().batch_stats)) is EXPECTED_BN[loss], loss


def test_a_users_use_bn_wins_over_the_methods_and_config_json_records_the_value(tmp_path,
                                                                               fake_load):
  config = small_config(loss="hashnet", use_bn=True)
  methods.apply_architecture(config)
  assert config.use_bn is True
  fake_load(blobs())
  run.train_and_evaluate(small_config(loss="hashnet", num_epochs=1), str(tmp_path / "w"))
  with open(tmp_path / "w" / "config.json") as f:
    assert json.load(f)["use_bn"] is False
  trainer, data, _, _ = run.restore_run(str(tmp_path / "w"))
  data.close()
  assert trainer.config.use_bn is False


def test_list_keys_and_run_grid_help_list_every_method_a_line_each(capsys, monkeypatch):
  assert main.main(["--list_keys"]) == 0
  out = capsys.readouterr().out.splitlines()
  for loss, method in methods.METHODS.items():
    assert len([line for line in out if line.split()[:2] == [loss, method.name]]) == 1, loss
  monkeypatch.setattr(sys, "argv", ["run_grid", "--help"])
  with pytest.raises(SystemExit):
    run_grid.main()
  out = capsys.readouterr().out.splitlines()
  for name in run_grid.METHODS:
    assert len([line for line in out if line.split()[:1] == [name]]) == 1, name
