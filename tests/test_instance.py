"""Instance-level evaluation: GLDv2 training run scored by ground truth, BN recompute, the CLI."""
import json

import jax
import numpy as np
import pytest

from conftest import blobs, make_trainer, small_config, train_steps
from orthohash_jax import config_base, evaluation, instance, revisited, run as run_lib
from orthohash_jax import data as data_lib

CLASSES, DIM, BITS = 4, 8, 16


def write_npz(path, x, prefix, labels=None, order=None):
  """Descriptor file in the GLDv2 npz format; rows written in ``order`` (ids keep their row)."""
  order = np.arange(len(x)) if order is None else order
  ids = np.array([f"{prefix}{i:03d}" for i in range(len(x))])
  arrays = {"codes": x[order], "ids": ids[order]}
  if labels is not None:
    arrays["labels"] = labels[order]
  np.savez(path, **arrays)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A GLDv2-format dataset, a revisited-format set (shifted, shuffled files) and a short run."""
  tmp = tmp_path_factory.mktemp("instance")
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(CLASSES, DIM)) * 2

  def sample(per_class, shift=0.0):
    y = np.repeat(np.arange(CLASSES), per_class)
    return (centres[y] + rng.normal(size=(len(y), DIM)) + shift).astype(np.float32), y

  gld = tmp / "gldv2"
  gld.mkdir()
  (train_x, train_y), (q_x, q_y), (db_x, db_y) = sample(16), sample(2), sample(6)
  write_npz(gld / "train.npz", train_x, "t", train_y)
  write_npz(gld / "test.npz", q_x, "q")
  write_npz(gld / "database.npz", db_x, "d")
  lines = [f"q{i:03d}," + " ".join(f"d{j:03d}" for j in np.flatnonzero(db_y == c))
           for i, c in enumerate(q_y)]
  lines[-1] = f"q{len(q_y) - 1:03d},None"  # a query without ground truth is skipped
  (gld / "ground_truth.csv").write_text("id,images\n" + "\n".join(lines) + "\n")

  rev = tmp / "roxf"
  rev.mkdir()
  (rq_x, rq_y), (rdb_x, rdb_y) = sample(2, shift=1.5), sample(5, shift=1.5)
  write_npz(rev / "test.npz", rq_x, "rq", order=rng.permutation(len(rq_x)))
  write_npz(rev / "database.npz", rdb_x, "rd", order=rng.permutation(len(rdb_x)))
  gnd = []
  for c in rq_y:
    same = np.flatnonzero(rdb_y == c).tolist()
    gnd.append({"easy": same[:2], "hard": same[2:4], "junk": same[4:], "bbx": None})
  (rev / "gnd_roxford5k.json").write_text(json.dumps({
      "imlist": [f"rd{i:03d}" for i in range(len(rdb_x))],
      "qimlist": [f"rq{i:03d}" for i in range(len(rq_x))], "gnd": gnd}))

  config = config_base.base_config()
  config.update({"dataset": "gldv2", "data_dir": str(gld), "num_classes": CLASSES,
                 "backbone": "identity", "num_bits": BITS, "batch_size": 16, "num_epochs": 3,
                 "recompute_bn": True, "eval_batch_size": 16,
                 "revisited": f"{rev}:roxford5k"})
  workdir = tmp / "run"
  summary = run_lib.train_and_evaluate(config, str(workdir))
  return {"workdir": workdir, "summary": summary, "config": config, "rev_root": rev,
          "gldv2": (q_x, db_x, lines), "rev": (rq_x, rdb_x, gnd)}


def numpy_codes(run, x, db):
  """Eval-mode codes of the restored run in numpy: BN(x W) with running or db statistics."""
  _, _, state, _ = run_lib.restore_run(str(run["workdir"]))
  params, stats = jax.tree.map(np.asarray, (state.params["hash_layer"], state.batch_stats))
  w, bn = params["fc"]["kernel"], params["bn"]
  mean, var = stats["hash_layer"]["bn"]["mean"], stats["hash_layer"]["bn"]["var"]
  if db is not None:
    mean, var = (db @ w).mean(0), (db @ w).var(0)
  return ((x @ w) - mean) / np.sqrt(var + 1e-5) * bn["scale"] + bn["bias"]


def numpy_ranking(q, db):
  dist = ((q[:, None, :] > 0) != (db[None, :, :] > 0)).sum(-1)
  return np.stack([np.lexsort((np.arange(len(d)), d)) for d in dist])


def numpy_gldv2_map(ranking, lines, db_len):
  """AP@100 = sum_i P@i rel_i / min(#relevant, 100) over queries with ground truth."""
  aps = []
  for row, line in zip(ranking, lines):
    images = line.split(",")[1]
    if images == "None":
      continue
    relevant = {int(i[1:]) for i in images.split()}
    rel = np.isin(row[:min(100, db_len)], list(relevant))
    aps.append((np.cumsum(rel) / np.arange(1, len(rel) + 1) * rel).sum() / min(len(relevant), 100))
  return np.mean(aps)


@pytest.mark.slow  # the module fixture trains a GLDv2-like run (~20 s)
def test_training_scores_gldv2_ground_truth(run):
  q_x, db_x, lines = run["gldv2"]
  q, db = numpy_codes(run, q_x, None), numpy_codes(run, db_x, None)
  expected = numpy_gldv2_map(numpy_ranking(q, db), lines, len(db_x))
  assert run["summary"]["mAP"] == pytest.approx(expected)
  assert run["summary"]["dataset"] == "gldv2" and run["summary"]["num_database"] == len(db_x)
  assert 0.5 < expected <= 1.0  # the codes retrieve: the trained model separates the classes


@pytest.mark.slow  # the module fixture trains a GLDv2-like run (~20 s)
def test_recompute_bn_sets_database_statistics(run):
  d = data_lib.load(run["config"])
  trainer = make_trainer(run["config"], d)
  state, _ = train_steps(trainer, d, trainer.initial_state(), 0, 4)
  shifted_db = run["rev"][1]
  new = evaluation.recompute_bn(trainer, state, lambda idx: shifted_db[idx], len(shifted_db))
  params = jax.tree.map(np.asarray, new.params["hash_layer"])
  v = shifted_db.astype(np.float64) @ params["fc"]["kernel"]  # identity backbone
  z = (evaluation.encode_array(trainer, new, shifted_db) - params["bn"]["bias"]) / params["bn"]["scale"]
  np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-4)
  np.testing.assert_allclose(z.var(0), v.var(0) / (v.var(0) + 1e-5), rtol=1e-3)
  result = evaluation.evaluate_gldv2(trainer, d, state, recompute=False)
  assert "mAP_recompute_bn" not in result and result["query_codes"].dtype == np.uint32


@pytest.mark.slow  # the module fixture trains a GLDv2-like run (~20 s)
def test_cli_gldv2_and_revisited(run, tmp_path, capsys):
  out = tmp_path / "instance.json"
  assert instance.main([f"--workdir={run['workdir']}", f"--revisited={run['rev_root']}:roxford5k",
                        f"--output={out}"]) == 0
  printed = json.loads(capsys.readouterr().out)
  assert printed == json.loads(out.read_text())
  assert run["summary"]["roxford5k"] == printed["roxford5k"]  # also scored by the training run
  q_x, db_x, lines = run["gldv2"]
  for key, db_stats in (("mAP@100", None), ("mAP@100_recompute_bn", db_x)):
    ranking = numpy_ranking(numpy_codes(run, q_x, db_stats), numpy_codes(run, db_x, db_stats))
    assert printed["gldv2"][key] == pytest.approx(numpy_gldv2_map(ranking, lines, len(db_x)))
  rq_x, rdb_x, gnd = run["rev"]
  rankings = {key: numpy_ranking(numpy_codes(run, rq_x, db_stats), numpy_codes(run, rdb_x, db_stats))
              for key, db_stats in (("running_bn", None), ("recompute_bn", rdb_x))}
  assert not np.array_equal(rankings["running_bn"], rankings["recompute_bn"])
  for key, ranking in rankings.items():
    expected = revisited.revisited_map(ranking, gnd)
    for setup in ("easy", "medium", "hard"):
      assert set(printed["roxford5k"][key][setup]) == {"map", "mp@1", "mp@5", "mp@10",
                                                       "num_queries"}
      for metric, value in expected[setup].items():
        assert printed["roxford5k"][key][setup][metric] == pytest.approx(value)


@pytest.mark.slow  # the module fixture trains a GLDv2-like run (~20 s)
@pytest.mark.parametrize("args, pattern", [
    (["--workdir={tmp}/missing"], "is not a training run"),
    (["--workdir={run}", "--revisited=nocolon"], "revisited sets are ROOT:name"),
    (["--workdir={run}", "--revisited={tmp}:rparis6k"], "gnd_rparis6k.json: ground truth file"),
])
def test_cli_bad_input(run, tmp_path, capsys, args, pattern):
  argv = [a.format(tmp=tmp_path, run=run["workdir"]) for a in args]
  assert instance.main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and pattern in err[0]


def test_instance_refuses_a_category_run(tmp_path, fake_load):
  fake_load(blobs())
  run_lib.train_and_evaluate(small_config(num_epochs=1), str(tmp_path))
  with pytest.raises(ValueError, match="without instance-level ground truth"):
    instance.evaluate_run(str(tmp_path))
