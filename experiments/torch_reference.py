r"""The OrthoHash protocol in PyTorch, one run: the reference side of ``compare_torch.py``.

  python -m experiments.torch_reference --config=configs/digits.py --output=run.json \
      --set loss=ce use_bn=True num_bits=64 seed=0 [num_epochs=20 ...]

Written here from the paper (Hoe et al., NeurIPS 2021), with torch's default module
initialisation: MLP (``nn.Linear`` + ReLU, widths ``config.hidden``) -> hash layer
``nn.Linear(bias=False)`` with W ~ N(0, 0.01^2) -> ``nn.BatchNorm1d`` (torch defaults: momentum
0.1, eps 1e-5, unbiased running variance; absent without BN) -> head: a cosine head on the
L2-normalised +-1 codebook with the margin softmax loss (cos: s (cos - m y); arc:
s cos(acos(cos) + m y), cos clipped to +-(1 - 1e-5)), or an ``nn.Linear`` classifier with bias and
plain softmax cross-entropy (CE / CE+BN). Adam (lr ``config.learning_rate``, eps
``config.adam_eps``), constant lr, ``num_epochs`` x (N // batch) steps.

Shared with orthohash-jax, so that only the framework differs: the data split and the device
normalisation (``orthohash_jax.data``), the codebook (``codebook.make_codebook`` of the run's
seed, as ``workdir.codebook``), the batches of every step (``data.step_indices``) and the metric
(``metrics.mean_average_precision`` on sign(v), v > 0 -> 1). Parameters are drawn by torch from
``torch.manual_seed(seed)``. Runs with ``torch.set_num_threads(--threads)``; writes
``{"mAP": float, "seconds": float}`` to ``--output``. Needs torch (the ``bench`` extra).
"""
import argparse
import json
import sys
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from orthohash_jax import codebook as codebook_lib
from orthohash_jax import config_base, methods, metrics
from orthohash_jax import data as data_lib

ARC_EPS = 1e-5


class HashNet(nn.Module):
  """MLP -> hash layer (-> BN) -> cosine head on ``codebook`` (C, K), or a linear classifier."""

  def __init__(self, in_features, hidden, num_bits, num_classes, use_bn, codebook=None):
    super().__init__()
    sizes = (in_features, *hidden)
    self.backbone = nn.Sequential(*[m for a, b in zip(sizes[:-1], sizes[1:])
                                    for m in (nn.Linear(a, b), nn.ReLU())])
    self.hash = nn.Linear(sizes[-1], num_bits, bias=False)
    nn.init.normal_(self.hash.weight, std=0.01)
    self.bn = nn.BatchNorm1d(num_bits) if use_bn else nn.Identity()
    if codebook is None:
      self.classifier = nn.Linear(num_bits, num_classes)
    else:
      self.classifier = None
      self.register_buffer("targets", F.normalize(torch.as_tensor(codebook), dim=-1))

  def forward(self, x):
    codes = self.bn(self.hash(self.backbone(x.flatten(1))))
    if self.classifier is not None:
      return codes, self.classifier(codes)
    return codes, F.normalize(codes, dim=-1) @ self.targets.T


def orthohash_loss(cos, labels, scale, margin, margin_type):
  """Paper eq. 9 with the margin on the target class: softmax CE of the margined, scaled cosines."""
  onehot = F.one_hot(labels, cos.shape[1]).to(cos.dtype)
  if margin_type == "cos":
    z = scale * (cos - margin * onehot)
  else:
    theta = torch.acos(cos.clamp(-1 + ARC_EPS, 1 - ARC_EPS))
    z = scale * torch.cos(theta + margin * onehot)
  return F.cross_entropy(z, labels)


def inputs(data, x):
  """float32 tensor of data rows ``x``: uint8 images normalised as on the JAX device."""
  if data.mean_std is not None:
    table = data_lib.normalization_table(data.mean_std)
    x = table[x.astype(np.int64), np.arange(table.shape[1])]
  return torch.from_numpy(np.ascontiguousarray(x, np.float32))


def train_and_evaluate(config) -> float:
  """mAP (``config.eval_topk``) of one PyTorch run of ``config`` (loss, use_bn, margin_type...)."""
  torch.manual_seed(config.seed)
  data = data_lib.load(config)
  codebook = None
  if config.loss == "orthohash":
    codebook = codebook_lib.make_codebook(config.codebook, data.num_classes, config.num_bits,
                                          config.seed)
  model = HashNet(int(np.prod(data.input_shape)), tuple(config.hidden), config.num_bits,
                  data.num_classes, config.use_bn, codebook)
  optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, eps=config.adam_eps)
  steps = data.size("train") // config.batch_size * config.num_epochs
  order = data_lib.step_indices(config.seed, data.size("train"), config.batch_size, 0, steps)
  model.train()
  for idx in order:
    x, y = inputs(data, data.train_x[idx]), torch.from_numpy(data.train_y[idx].astype(np.int64))
    codes, logits = model(x)
    del codes
    if config.loss == "orthohash":
      loss = orthohash_loss(logits, y, config.scale, config.margin, config.margin_type)
    else:
      loss = F.cross_entropy(logits, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
  model.eval()
  with torch.no_grad():
    def encode(x):
      return np.concatenate([model(inputs(data, x[i:i + 1024]))[0].numpy()
                             for i in range(0, len(x), 1024)])
    return metrics.mean_average_precision(encode(data.query_x), encode(data.db_x), data.query_y,
                                          data.db_y, config.eval_topk)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--set", nargs="*", default=[], help="key=value config overrides")
  parser.add_argument("--output", required=True)
  parser.add_argument("--threads", type=int, default=1)
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  config = config_base.load_config_file(args.config)
  config_base.apply_overrides(config, args.set)
  methods.apply_architecture(config)
  if config.backbone != "mlp" or config.loss not in ("ce", "orthohash"):
    print("error: the torch reference implements the mlp backbone with ce / orthohash losses",
          file=sys.stderr)
    return 2
  start = time.time()
  result = {"mAP": train_and_evaluate(config), "seconds": time.time() - start}
  with open(args.output, "w") as f:
    json.dump(result, f)
  return 0


if __name__ == "__main__":
  sys.exit(main())
