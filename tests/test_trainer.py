"""The compiled train / encode functions (``trainer``) and the host batching they are fed with."""
import jax
import numpy as np
import pytest

from conftest import blobs, make_trainer, small_config, train_steps
from orthohash_jax import data as data_lib
from orthohash_jax import evaluation, run


def test_loss_decreases_and_codes_retrieve():
  d = blobs()
  trainer = make_trainer(small_config(), d)
  state = trainer.initial_state()
  state, losses = train_steps(trainer, d, state, 0, 32)
  assert losses[-8:].mean() < 0.5 * losses[:8].mean()
  assert int(state.step) == 32
  assert evaluation.evaluate(trainer, d, state)["mAP"] > 0.9


def test_epoch_order_is_a_fresh_permutation_of_seed_and_epoch():
  n, batch = 100, 16  # 6 steps per epoch, 4 items dropped per epoch
  whole = data_lib.step_indices(3, n, batch, 0, 18)
  np.testing.assert_array_equal(np.concatenate([data_lib.step_indices(3, n, batch, 0, 5),
                                                data_lib.step_indices(3, n, batch, 5, 18)]), whole)
  epochs = whole.reshape(3, -1)
  for e, order in enumerate(epochs):
    np.testing.assert_array_equal(order, np.random.default_rng([3, e]).permutation(n)[:96])
  assert not np.array_equal(epochs[0], epochs[1])  # every epoch has its own order
  assert not np.array_equal(whole, data_lib.step_indices(4, n, batch, 0, 18))


def final_params(num_devices, **overrides):
  d = blobs()
  trainer = make_trainer(small_config(**overrides), d, num_devices)
  state, _ = train_steps(trainer, d, trainer.initial_state(), 0, 24)
  return jax.tree.map(np.asarray, (state.params, state.batch_stats))


@pytest.mark.slow
def test_four_devices_equal_one_device():
  assert len(jax.devices()) == 4
  one, four = final_params(1), final_params(4)
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_step_schedule_and_backbone_lr_scale():
  d = blobs()
  trainer = make_trainer(small_config(lr_schedule="step", backbone_lr_scale=0.0), d)
  total = run.step_counts(trainer.config, d)[1]
  assert float(trainer.schedule(int(0.8 * total) - 1)) == pytest.approx(1e-3)
  assert float(trainer.schedule(int(0.8 * total))) == pytest.approx(1e-4)
  before = jax.tree.map(np.asarray, trainer.initial_state().params)
  state, _ = train_steps(trainer, d, trainer.initial_state(), 0, 3)
  for a, b in zip(jax.tree.leaves(before["backbone"]), jax.tree.leaves(state.params["backbone"])):
    np.testing.assert_array_equal(a, b)  # backbone lr x 0 freezes it
  assert not np.allclose(before["hash_layer"]["fc"]["kernel"],
                         state.params["hash_layer"]["fc"]["kernel"])


@pytest.mark.slow
def test_ce_baseline_and_multilabel_train():
  d = blobs()
  eye = np.eye(4, dtype=np.uint8)
  multi = data_lib.RetrievalData("multi", 4, d.train_x, eye[d.train_y], d.query_x, eye[d.query_y],
                                 d.db_x, eye[d.db_y])
  for data, loss in ((d, "ce"), (multi, "orthohash")):
    trainer = make_trainer(small_config(loss=loss), data)
    _, losses = train_steps(trainer, data, trainer.initial_state(), 0, 16)
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_batch_not_divisible_by_devices():
  with pytest.raises(ValueError, match="not divisible by the 4 devices"):
    make_trainer(small_config(batch_size=6), blobs(), num_devices=4)


@pytest.mark.slow
def test_crop_flip_augmentation_is_applied_and_deterministic():
  d = blobs(dim=16)
  images = data_lib.RetrievalData("img", 4, d.train_x.reshape(-1, 4, 4, 1), d.train_y,
                                  d.query_x.reshape(-1, 4, 4, 1), d.query_y,
                                  d.db_x.reshape(-1, 4, 4, 1), d.db_y)

  def losses_with(pad):
    trainer = make_trainer(small_config(augment_crop_pad=pad, backbone="cnn"), images)
    return train_steps(trainer, images, trainer.initial_state(), 0, 8)[1]

  plain, augmented = losses_with(0), losses_with(1)
  assert not np.allclose(plain, augmented)  # the inputs of step 0 on are cropped / flipped
  np.testing.assert_array_equal(augmented, losses_with(1))


@pytest.mark.slow
def test_uint8_inputs_are_normalised_on_the_device():
  """uint8 rows with mean_std (0, 255) train exactly like the float32 rows x / 255 normalised by
  numpy on the host (the device looks the values up in a table built with numpy)."""
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (64, 3, 3, 1), dtype=np.uint8)
  y = np.repeat(np.arange(4), 16).astype(np.int32)
  as_float = data_lib.RetrievalData("f", 4, pixels.astype(np.float32) / 255.0, y,
                                    pixels[:8].astype(np.float32) / 255.0, y[:8],
                                    pixels.astype(np.float32) / 255.0, y)
  as_uint8 = data_lib.RetrievalData("u", 4, pixels, y, pixels[:8], y[:8], pixels, y,
                                    mean_std=data_lib.UNIT_MEAN_STD)
  out = []
  for d in (as_float, as_uint8):
    trainer = make_trainer(small_config(), d)
    state, losses = train_steps(trainer, d, trainer.initial_state(), 0, 8)
    out.append((losses, evaluation.encode_split(trainer, d, state, "query")))
  np.testing.assert_array_equal(out[0][0], out[1][0])
  np.testing.assert_array_equal(out[0][1], out[1][1])


@pytest.mark.slow
def test_bn_recompute_sets_database_statistics():
  d = blobs()
  trainer = make_trainer(small_config(), d)
  state, _ = train_steps(trainer, d, trainer.initial_state(), 0, 8)
  shifted = d.db_x + 5.0
  new = evaluation.recompute_bn(trainer, state, lambda idx: shifted[idx], len(shifted))
  pre_bn = evaluation.encode_array(trainer, state, shifted, pre_bn=True).astype(np.float64)
  bn = jax.device_get(new.batch_stats)["hash_layer"]["bn"]
  np.testing.assert_allclose(bn["mean"], pre_bn.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bn["var"], pre_bn.var(0), rtol=1e-5, atol=1e-6)
  bn_params = jax.device_get(new.params)["hash_layer"]["bn"]
  z = (evaluation.encode_array(trainer, new, shifted) - bn_params["bias"]) / bn_params["scale"]
  np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)  # balanced on that database
