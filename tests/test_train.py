import jax
import ml_collections
import numpy as np
import pytest

from orthohash_jax import config_base, data as data_lib, parallel, train


def blobs(seed=0, n_per_class=32, classes=4, dim=8):
  rng = np.random.default_rng(seed)
  means = rng.normal(size=(classes, dim)) * 3
  y = np.repeat(np.arange(classes), n_per_class).astype(np.int32)
  x = (means[y] + rng.normal(size=(len(y), dim))).astype(np.float32)
  return data_lib.RetrievalData("blobs", classes, x, y, x[::8], y[::8], x, y)


def small_config(**overrides):
  c = config_base.base_config()
  c.hidden = (16,)
  c.num_bits = 16
  c.batch_size = 16
  c.num_epochs = 4
  c.eval_batch_size = 32
  c.update(overrides)
  return c


def test_loss_decreases_and_codes_retrieve():
  trainer = train.Trainer(small_config(), blobs(), parallel.make_mesh(1))
  state = trainer.initial_state()
  losses = []
  for step in range(0, trainer.total_steps, trainer.steps_per_chunk):
    state, chunk = trainer.run_chunk(state, step, step + trainer.steps_per_chunk)
    losses.append(float(np.mean(chunk)))
  assert losses[-1] < 0.5 * losses[0]
  assert int(state.step) == trainer.total_steps
  assert trainer.evaluate(state)["mAP"] > 0.9


def test_batch_order_depends_only_on_seed_and_step():
  trainer = train.Trainer(small_config(), blobs(), parallel.make_mesh(1))
  whole = trainer.batch_indices(0, 20)
  np.testing.assert_array_equal(np.concatenate([trainer.batch_indices(0, 5),
                                                trainer.batch_indices(5, 20)]), whole)
  epoch = whole[:trainer.steps_per_epoch].ravel()
  assert len(np.unique(epoch)) == len(epoch)  # no repeats within an epoch


def final_params(num_devices, **overrides):
  trainer = train.Trainer(small_config(**overrides), blobs(), parallel.make_mesh(num_devices))
  state = trainer.initial_state()
  state, _ = trainer.run_chunk(state, 0, 24)
  return jax.tree.map(np.asarray, (state.params, state.batch_stats))


def test_four_devices_equal_one_device():
  assert len(jax.devices()) == 4
  one, four = final_params(1), final_params(4)
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_step_schedule_and_backbone_lr_scale():
  config = small_config(lr_schedule="step", backbone_lr_scale=0.0)
  trainer = train.Trainer(config, blobs(), parallel.make_mesh(1))
  assert float(trainer.schedule(int(0.8 * trainer.total_steps) - 1)) == pytest.approx(1e-3)
  assert float(trainer.schedule(int(0.8 * trainer.total_steps))) == pytest.approx(1e-4)
  before = trainer.initial_state().params
  state, _ = trainer.run_chunk(trainer.initial_state(), 0, 3)
  for a, b in zip(jax.tree.leaves(before["backbone"]), jax.tree.leaves(state.params["backbone"])):
    np.testing.assert_array_equal(a, b)  # backbone lr x 0 freezes it
  assert not np.allclose(before["hash_layer"]["fc"]["kernel"],
                         state.params["hash_layer"]["fc"]["kernel"])


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
  good = blobs()
  monkeypatch.setattr(data_lib, "load", lambda config: good)
  config = small_config(num_epochs=2, checkpoint_every_steps=1)
  train.train_and_evaluate(config, str(tmp_path))
  bad = blobs()
  bad.train_x[:] = np.nan
  monkeypatch.setattr(data_lib, "load", lambda config: bad)
  config.num_epochs = 4
  with pytest.raises(train.TrainingError, match="not finite at step 16.*last good checkpoint: "
                     "step 16"):
    train.train_and_evaluate(config, str(tmp_path))
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()
                if p.name.isdigit())[-1] == 16


def test_ce_baseline_and_multilabel_train():
  d = blobs()
  multi = data_lib.RetrievalData("multi", 4, d.train_x, np.eye(4, dtype=np.uint8)[d.train_y],
                                 d.query_x, np.eye(4, dtype=np.uint8)[d.query_y], d.db_x,
                                 np.eye(4, dtype=np.uint8)[d.db_y])
  for data, loss in ((d, "ce"), (multi, "orthohash")):
    trainer = train.Trainer(small_config(loss=loss), data, parallel.make_mesh(1))
    state, losses = trainer.run_chunk(trainer.initial_state(), 0, 16)
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_bad_config_values():
  with pytest.raises(ValueError, match="batch_size 500 is larger"):
    train.Trainer(small_config(batch_size=500), blobs(), parallel.make_mesh(1))
  with pytest.raises(ValueError, match="num_bits must be positive"):
    train.Trainer(small_config(num_bits=-1), blobs(), parallel.make_mesh(1))
  with pytest.raises(ValueError, match="not divisible by the 4 devices"):
    train.Trainer(small_config(batch_size=6), blobs(), parallel.make_mesh(4))


def test_crop_flip_augmentation_is_applied_and_deterministic():
  d = blobs(dim=16)
  images = data_lib.RetrievalData("img", 4, d.train_x.reshape(-1, 4, 4, 1), d.train_y,
                                  d.query_x.reshape(-1, 4, 4, 1), d.query_y,
                                  d.db_x.reshape(-1, 4, 4, 1), d.db_y)

  def losses_with(pad):
    trainer = train.Trainer(small_config(augment_crop_pad=pad), images, parallel.make_mesh(1))
    return np.asarray(trainer.run_chunk(trainer.initial_state(), 0, 8)[1])

  plain, augmented = losses_with(0), losses_with(1)
  assert not np.allclose(plain, augmented)  # the inputs of step 0 on are cropped / flipped
  np.testing.assert_array_equal(augmented, losses_with(1))
