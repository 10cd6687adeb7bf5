"""torch (float64) re-expressions of the comparison methods' losses in CISiPLab/cisip-FIRe,
written here from the formulas of its ``functions/loss/*.py`` and ``models/layers/activation.py``
(not copied), in FIRe's own terms: one-hot label matrices, per-row loops where FIRe loops,
torch's own BCELoss / cross_entropy, and autograd Functions for the straight-through layers.

Every function takes torch tensors: codes (B, K), labels as one-hot / multi-hot (B, C) float
rows (FIRe's ``onehot`` convention), and returns the loss as a 0-d tensor.
"""
import torch
import torch.nn.functional as F


def similar_pairs(y):
  """bool (B, B): rows of y (B, C) 0/1 share a label."""
  return (y @ y.t()) > 0


def classification_ce(logits, y, multiclass):
  """FIRe's supervised CE: cross_entropy on argmax(y), or soft CE with y / sum(y)."""
  if multiclass:
    return -(y / y.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1).mean()
  return F.cross_entropy(logits, y.argmax(1))


def hashnet(u, y, epoch, alpha=1.0, step_continuation=20):
  beta = (epoch // step_continuation + 1) ** 0.5
  h = torch.tanh(beta * u)
  s = similar_pairs(y)
  d = alpha * h @ h.t()
  per_pair = torch.log1p(torch.exp(-d.abs())) + d.clamp(min=0) - s.double() * d
  n_pos, n_neg = s.sum().double(), (~s).sum().double()
  n = n_pos + n_neg
  weighted = torch.where(s, per_pair * (n / n_pos), per_pair * (n / n_neg))
  return weighted.sum() / n


def dtsh(u, y, alpha=5.0, lmbd=1.0):
  inner = u @ u.t()
  s = similar_pairs(y)
  total, anchors = 0.0, 0
  for i in range(u.shape[0]):
    pos, neg = inner[i][s[i]], inner[i][~s[i]]
    if len(pos) and len(neg):
      anchors += 1
      x = (pos[:, None] - neg[None, :] - alpha).clamp(-100, 50)
      total = total + (torch.log(1 + torch.exp(x)) - x).mean()
  likelihood = total / anchors if anchors else torch.zeros((), dtype=u.dtype)
  return likelihood + lmbd * ((u - u.sign()) ** 2).mean()


class _SignStraightThrough(torch.autograd.Function):
  @staticmethod
  def forward(ctx, x):
    return x.sign()

  @staticmethod
  def backward(ctx, grad):
    return grad


def greedyhash(v, weight, bias, y, multiclass, alpha=1.0, power=3):
  logits = F.linear(_SignStraightThrough.apply(v), weight, bias)
  quant = ((v.abs() - 1) ** power).abs().mean()
  return classification_ce(logits, y, multiclass) + alpha * quant


class _StochasticBinary(torch.autograd.Function):
  """b = (sign(sigmoid(v) - eps) + 1) / 2; d loss / d v = q (1 - q) d loss / d b."""

  @staticmethod
  def forward(ctx, v, eps):
    q = torch.sigmoid(v)
    ctx.save_for_backward(q)
    return (torch.sign(q - eps) + 1) / 2

  @staticmethod
  def backward(ctx, grad):
    q, = ctx.saved_tensors
    return q * (1 - q) * grad, None


def jmlh(v, weight, bias, y, eps, multiclass, lmbd=0.1):
  logits = F.linear(_StochasticBinary.apply(v, eps), weight, bias)
  q = torch.sigmoid(v)
  p = torch.tensor(0.5, dtype=v.dtype)
  kl = (q * torch.log(q + 1e-7) - q * torch.log(p + 1e-7)
        + (1 - q) * torch.log(1 - q + 1e-7) - (1 - q) * torch.log(1 - p + 1e-7)).sum(1).mean()
  return classification_ce(logits, y, multiclass) + lmbd * kl


def sdhc(v, weight, bias, projection_w, y, lmbd0=0.001, lmbd1=0.001, lmbd2=0.001, alpha=1.0):
  """``projection_w`` (K, D) as torch's Linear.weight."""
  u = torch.tanh(v)
  logits = F.linear(u, weight, bias)
  j1 = ((u - u.sign()) ** 2).mean()
  j2 = torch.trace(u.t() @ u) / u.shape[1] / 2
  ortho = projection_w @ projection_w.t()
  j3 = ((ortho - torch.ones_like(ortho)) ** 2).mean()
  return lmbd0 * j1 - lmbd1 * j2 + alpha * F.cross_entropy(logits, y.argmax(1)) + lmbd2 * j3


def dpn(v, y, centroids, multiclass, margin=1.0, reg=0.1):
  if multiclass:
    hinge = torch.relu(margin - v[:, None, :] * centroids[None, :, :]).sum(2)
    sl = (hinge * y).sum(1).mean()
  else:
    sl = torch.relu(margin - v * centroids[y.argmax(1)]).sum(1).mean()
  return sl + reg * (v ** 2).mean()


def csq(v, y, centroids, random_bits, multiclass, lambda_q=0.001, scale_c=1.0):
  """``random_bits`` (K,) 0/1 as FIRe's ``multi_label_random_center``."""
  h = v.tanh()
  if multiclass:
    total = y @ centroids
    total = torch.where(total == 0, random_bits.expand_as(total), total)
    centre = 2 * (total > 0).double() - 1
  else:
    centre = centroids[y.argmax(1)]
  bce = torch.nn.BCELoss()(0.5 * (h + 1), 0.5 * (centre + 1))
  return scale_c * bce + lambda_q * ((h.abs() - 1) ** 2).mean()
