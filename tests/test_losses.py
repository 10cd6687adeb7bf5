import math

import jax
import jax.numpy as jnp
from jax import test_util as jtu
import numpy as np
import pytest

from orthohash_jax import losses


def np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_orthohash(cos, onehot, s, m, kind):
  if kind == "cos":
    z = s * (cos - m * onehot)
  else:
    z = s * np.cos(np.arccos(np.clip(cos, -1 + 1e-5, 1 - 1e-5)) + m * onehot)
  return z


def test_hand_computed_cos_margin():
  # z = 8 * (0.5 - 0.2, -0.5) = (2.4, -4.0); loss = log(1 + exp(-6.4))
  loss = losses.orthohash_loss(jnp.array([[0.5, -0.5]]), jnp.array([0]))
  assert float(loss) == pytest.approx(math.log1p(math.exp(-6.4)), rel=1e-4)  # float32


def test_hand_computed_arc_margin():
  # cos(theta)=0 -> theta=pi/2; target logit 8*cos(pi/2+0.5) = -8 sin(0.5); other 8*0 = 0
  loss = losses.orthohash_loss(jnp.array([[0.0, 0.0]]), jnp.array([0]), margin=0.5,
                               margin_type="arc")
  t = -8 * math.sin(0.5)
  assert float(loss) == pytest.approx(-(t - math.log(math.exp(t) + 1.0)), rel=1e-4)


@pytest.mark.parametrize("kind", ["cos", "arc"])
@pytest.mark.parametrize("batch", [1, 7])
def test_single_label_matches_numpy(kind, batch):
  rng = np.random.default_rng(batch)
  cos = rng.uniform(-1, 1, (batch, 5)).astype(np.float32)
  labels = rng.integers(0, 5, batch)
  onehot = np.eye(5)[labels]
  z = np_orthohash(cos.astype(np.float64), onehot, 8.0, 0.2, kind)
  expected = -(np_log_softmax(z) * onehot).sum(-1).mean()
  got = jax.jit(lambda c, l: losses.orthohash_loss(c, l, margin_type=kind))(cos, labels)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_label_smoothing_and_bce_match_numpy():
  rng = np.random.default_rng(0)
  cos = rng.uniform(-1, 1, (6, 4))
  y = (rng.random((6, 4)) < 0.5).astype(np.float32)
  y[0] = 0  # a row without labels contributes zero to label smoothing
  y[1] = [1, 0, 0, 1]
  z = np_orthohash(cos, y, 8.0, 0.2, "cos")
  soft = y / np.maximum(y.sum(1, keepdims=True), 1)
  expected_ls = -(soft * np_log_softmax(z)).sum(1).mean()
  expected_bce = np.mean(np.logaddexp(0, z) - y * z)
  got_ls = losses.orthohash_loss(jnp.asarray(cos, jnp.float32), y, multilabel=True)
  got_bce = losses.orthohash_loss(jnp.asarray(cos, jnp.float32), y, multilabel=True,
                                  multilabel_loss="bce")
  np.testing.assert_allclose(got_ls, expected_ls, rtol=1e-5)
  np.testing.assert_allclose(got_bce, expected_bce, rtol=1e-5)
  # row 1 has target (0.5, 0, 0, 0.5), as in the paper's example
  np.testing.assert_allclose(soft[1], [0.5, 0, 0, 0.5])


@pytest.mark.parametrize("kind", ["cos", "arc"])
def test_gradients_finite_at_plus_minus_one(kind):
  logits = jnp.array([[1.0, -1.0, 0.0], [-1.0, 1.0, 1.0]])
  grads = jax.grad(lambda c: losses.orthohash_loss(c, jnp.array([0, 1]), margin_type=kind))(logits)
  assert np.all(np.isfinite(grads))


def test_cross_entropy_matches_numpy():
  rng = np.random.default_rng(1)
  z = rng.normal(size=(5, 3)).astype(np.float32)
  labels = rng.integers(0, 3, 5)
  expected = -np_log_softmax(z.astype(np.float64))[np.arange(5), labels].mean()
  np.testing.assert_allclose(losses.cross_entropy_loss(z, labels), expected, rtol=1e-5)


def test_quantization_losses():
  v = np.array([[0.5, -2.0], [1.0, 1.0]], np.float32)
  b = np.sign(v)
  cs = 1 - (np.abs(v).sum(1) / (np.linalg.norm(v, axis=1) * np.sqrt(2)))
  np.testing.assert_allclose(losses.quantization_loss(v, "cs"), cs.mean(), rtol=1e-6)
  np.testing.assert_allclose(losses.quantization_loss(v, "l1"), np.abs(np.abs(v) - 1).mean())
  np.testing.assert_allclose(losses.quantization_loss(v, "l2"), ((np.abs(v) - 1) ** 2).mean())
  assert float(losses.quantization_loss(b, "cs")) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("logits,labels,kwargs,match", [
    (np.zeros((2, 3)), np.array([0, 3]), {}, r"labels must lie in \[0, 3\)"),
    (np.zeros((2, 3)), np.array([0, -1]), {}, "labels must lie"),
    (np.zeros((2, 3)), np.array([0, 1, 2]), {}, "batch size mismatch"),
    (np.zeros((2, 3)), np.zeros((2, 4)), {"multilabel": True}, r"shape \(B, 3\)"),
    (np.zeros((2, 3)), np.full((2, 3), 2), {"multilabel": True}, "0/1"),
    (np.zeros((2, 3)), np.array([0, 1]), {"margin_type": "sphere"}, "margin_type"),
    (np.zeros(3), np.array([0]), {}, r"\(B, C\)"),
])
def test_bad_input(logits, labels, kwargs, match):
  with pytest.raises(ValueError, match=match):
    losses.orthohash_loss(jnp.asarray(logits, jnp.float32), labels, **kwargs)


@pytest.mark.parametrize("kind,multilabel,multilabel_loss", [
    ("cos", False, "label_smoothing"), ("arc", False, "label_smoothing"),
    ("cos", True, "label_smoothing"), ("cos", True, "bce")])
def test_gradient_matches_finite_differences(kind, multilabel, multilabel_loss):
  """The gradient with respect to the logits is that of the loss's value (central differences,
  first and second order, 1% tolerance in float32): a rescaled or detached gradient path fails
  here even when every value agrees."""
  rng = np.random.default_rng(0)
  cos = jnp.asarray(rng.uniform(-0.9, 0.9, (5, 6)), jnp.float32)
  labels = jnp.asarray((rng.random((5, 6)) < 0.3) if multilabel else np.arange(5) % 6)
  loss = lambda z: losses.orthohash_loss(z, labels, margin_type=kind, multilabel=multilabel,
                                         multilabel_loss=multilabel_loss)
  ce = lambda z: losses.cross_entropy_loss(z, labels, multilabel=multilabel)
  for fn in (loss, ce):
    jtu.check_grads(fn, (cos,), order=2, modes=("rev",), eps=1e-2, atol=1e-2, rtol=1e-2)
