"""experiments/compare_torch.py and torch_reference.py: the PyTorch loss and head against ours,
torch's default init of the reference model, and the parity table's 2-standard-error rule."""
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from orthohash_jax import losses

torch = pytest.importorskip("torch")
from experiments import compare_torch, torch_reference  # pylint: disable=wrong-import-position


@pytest.mark.parametrize("margin_type", ["cos", "arc"])
def test_torch_loss_equals_orthohash_loss(margin_type):
  rng = np.random.default_rng(0)
  cos = rng.uniform(-1, 1, (7, 5)).astype(np.float32)
  labels = rng.integers(0, 5, 7)
  ours = losses.orthohash_loss(cos, labels.astype(np.int32), scale=8.0, margin=0.2,
                               margin_type=margin_type)
  theirs = torch_reference.orthohash_loss(torch.tensor(cos), torch.tensor(labels), 8.0, 0.2,
                                          margin_type)
  np.testing.assert_allclose(float(theirs), float(ours), rtol=1e-5)


def test_reference_head_is_cosine_to_codebook_and_hash_init():
  torch.manual_seed(0)
  cb = np.where(np.random.default_rng(1).random((4, 16)) < 0.5, -1.0, 1.0).astype(np.float32)
  net = torch_reference.HashNet(12, (32,), 16, 4, True, cb).eval()
  x = torch.randn(3, 12)
  codes, logits = net(x)
  v = codes.detach().numpy().astype(np.float64)
  expected = (v / np.linalg.norm(v, axis=1, keepdims=True)) @ (cb / 4.0).T
  np.testing.assert_allclose(logits.detach().numpy(), expected, atol=1e-5)
  assert net.hash.bias is None and abs(float(net.hash.weight.detach().std()) - 0.01) < 0.003


def test_summary_row_two_standard_errors():
  a, b = [0.70, 0.72, 0.71], [0.73, 0.74, 0.72]
  se = np.sqrt(np.var(a, ddof=1) / 3 + np.var(b, ddof=1) / 3)  # 0.00816; difference -0.02
  row = compare_torch.summary_row("CE+BN", 64, a, b)
  assert row == (f"| CE+BN | 64 | 3 / 3 | 0.7100 ± 0.0100 | 0.7300 ± 0.0100 | -0.0200 | "
                 f"{'yes' if 0.02 <= 2 * se else 'no'} |")
  assert row.endswith("| no |")
  assert compare_torch.summary_row("CE", 16, [0.5, 0.6], [0.55, 0.56]).endswith("| yes |")
  assert (compare_torch.summary_row("CE", 16, [0.5, 0.6], [0.55])
          == "| CE | 16 | 2 / 1 | 0.5500 ± 0.0707 | 0.5500 | +0.0000 | n/a |")
  assert (compare_torch.summary_row("CE", 16, [0.5], [])
          == "| CE | 16 | 1 / 0 | 0.5000 | not run | n/a | n/a |")


@pytest.mark.slow
def test_table_only_reads_finished_runs(tmp_path):
  jax_dir = tmp_path / "jax" / "CE+BN_64b_s0"
  jax_dir.mkdir(parents=True)
  (jax_dir / "results.json").write_text('{"mAP": 0.71, "steps": 100, "steps_per_second": 5.0}')
  (tmp_path / "torch").mkdir()
  (tmp_path / "torch" / "CE+BN_64b_s0.json").write_text('{"mAP": 0.73, "seconds": 1.0}')
  (tmp_path / "torch" / "CE+BN_64b_s1.json").write_text('{"mAP": 0.75, "seconds": 1.0}')
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.compare_torch", "--dataset=fashion_mnist",
       "--methods=CE+BN", "--bits=64", f"--out={tmp_path}", "--table_only"], cwd=ROOT,
      capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr
  table = (tmp_path / "table.md").read_text()
  assert "| CE+BN | 64 | 1 / 2 | 0.7100 | 0.7400 ± 0.0141 | -0.0300 | n/a |" in table
  assert (tmp_path / "runs.csv").read_text().count("\n") == 4  # header + 3 runs
