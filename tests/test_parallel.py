"""Class-sharded loss and (data, model) meshes on 4 fake CPU devices."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import blobs, make_trainer, small_config, train_steps
from orthohash_jax import codebook, config_base, data, evaluation, losses, models, parallel


@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize("margin_type", ["cos", "arc"])
def test_class_sharded_loss_equals_unsharded(multilabel, margin_type):
  mesh = parallel.make_mesh(4, model_axis=2)
  rng = np.random.default_rng(0)
  cb = codebook.make_codebook("bernoulli", 13, 32, seed=1)
  padded = np.asarray(models.CosSimHead(cb, pad_classes_to=2).codebook[...])
  assert padded.shape == (14, 32)
  codes = rng.normal(size=(8, 32)).astype(np.float32)
  labels = ((rng.random((8, 13)) < 0.3).astype(np.float32) if multilabel
            else rng.integers(0, 13, 8).astype(np.int32))
  kwargs = dict(margin_type=margin_type, multilabel=multilabel)

  def sharded(v, table):
    logits = jax.lax.with_sharding_constraint(models.normalise(v) @ table.T,
                                              parallel.logits_sharding(mesh))
    return losses.orthohash_loss(logits, labels, num_classes=13, **kwargs)

  def reference(v):
    return losses.orthohash_loss(models.normalise(v) @ jnp.asarray(cb / np.sqrt(32)).T, labels,
                                 **kwargs)

  v = jax.device_put(codes, parallel.batch_sharding(mesh))
  table = jax.device_put(padded, parallel.class_sharding(mesh))
  fn = jax.jit(jax.value_and_grad(sharded))
  value, grad = fn(v, table)
  ref_value, ref_grad = jax.value_and_grad(reference)(codes)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-7)
  hlo = fn.lower(v, table).compile().as_text()
  # the softmax over classes is reduced across the model axis (all-reduce of per-row sums), and
  # no collective ever moves a block of logits (rows x all 14 classes) between devices
  assert "all-reduce" in hlo
  assert not re.search(r"f32\[\d+,14\][^\n]*(all-gather|all-reduce|all-to-all|collective-permute)",
                       hlo)


@pytest.mark.slow
def test_model_axis_training_equals_single_device():
  def run(num_devices, model_axis):
    config = small_config(model_axis=model_axis)
    d = blobs()
    trainer = make_trainer(config, d, num_devices, model_axis)
    state, losses_ = train_steps(trainer, d, trainer.initial_state(), 0, 16)
    return jax.tree.map(np.asarray, state.params), np.asarray(losses_)

  (p1, l1), (p4, l4) = run(1, 1), run(4, 2)
  np.testing.assert_allclose(l1, l4, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_mesh_errors():
  with pytest.raises(ValueError, match="does not divide"):
    parallel.make_mesh(4, model_axis=3)
  with pytest.raises(ValueError, match="available"):
    parallel.make_mesh(8)


@pytest.mark.slow
def test_gldv2_synthetic_config_class_sharded():
  config = config_base.load_config_file("configs/gldv2.py:synthetic")
  config.update(num_classes=301, descriptor_dim=32, synthetic_eval_classes=40, model_axis=4,
                batch_size=64, num_epochs=10, num_bits=32, learning_rate=1e-2)
  d = data.load(config)
  assert d.train_x.shape == (602, 32) and d.num_classes == 301
  np.testing.assert_allclose(np.linalg.norm(d.train_x, axis=1), 1, rtol=1e-5)
  trainer = make_trainer(config, d, 4, model_axis=4)
  table = trainer.constants["head"]["codebook"]
  assert table.shape == (304, 32)  # padded to a multiple of 4
  assert {s.data.shape for s in table.addressable_shards} == {(76, 32)}
  state, losses_ = train_steps(trainer, d, trainer.initial_state(), 0, 90)
  assert losses_[-9:].mean() < losses_[:9].mean()
  assert evaluation.evaluate(trainer, d, state)["mAP"] > 0.3  # chance is 1/40
  with pytest.raises(ValueError, match="'real' or 'synthetic'"):
    config_base.load_config_file("configs/gldv2.py:fake")


def test_rows_from_the_sharding_in_any_device_order():
  """One process holds every row whatever the device order; a reversed mesh keeps every row's
  data on the device the sharding names; shares of n rows over 4 devices pad with -1."""
  devices = jax.devices()[:4][::-1]
  mesh = parallel.make_mesh(4, 2, devices)
  assert list(mesh.devices.flat) == devices and mesh.shape == {"data": 2, "model": 2}
  np.testing.assert_array_equal(parallel.process_rows(mesh, 6), np.arange(6))
  x = np.arange(12).reshape(6, 2)
  placed = parallel.global_batch(mesh, x)
  for shard in placed.addressable_shards:
    np.testing.assert_array_equal(np.asarray(shard.data), x[shard.index])
  with pytest.raises(ValueError, match="not divisible"):
    parallel.process_rows(mesh, 5)
  np.testing.assert_array_equal(parallel.process_share(parallel.make_mesh(4), 6),
                                [0, 1, 2, 3, 4, 5, -1, -1])
  np.testing.assert_array_equal(parallel.gather_rows([2, -1, 0], np.array([2.5, 9.0, 0.5]), 3),
                                [0.5, 0.0, 2.5])
  assert parallel.local_mesh(mesh).devices.tolist() == devices


def test_encode_rows_reads_ahead_and_copies_late():
  """The next batch is read while the current one encodes, and a batch's codes are copied to the
  host only after the next batch is dispatched; the codes are those of rows 0..n-1 in order."""
  events = []

  class Codes:
    def __init__(self, i, x):
      self.i, self.x = i, x

    def __array__(self, dtype=None, copy=None):
      events.append(f"copy{self.i}")
      return self.x * 2

  class FakeTrainer:
    eval_batch, mesh = 4, parallel.make_mesh(1)

    def encode(self, state, x, pre_bn=False):
      del state, pre_bn
      events.append(f"encode{len([e for e in events if e.startswith('encode')])}")
      return Codes(events[-1][6:], x)

  x = np.arange(10, dtype=np.float32)[:, None]
  reads = []
  codes = evaluation.encode_rows(FakeTrainer(), None, lambda idx: reads.append(idx) or x[idx], 10)
  np.testing.assert_array_equal(codes, x * 2)
  assert [list(r) for r in reads] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
  assert events == ["encode0", "encode1", "copy0", "encode2", "copy1", "copy2"]
