"""experiments/notebooks/quickstart.ipynb runs top to bottom (2 epochs) in a fresh kernel."""
import json
import os
import re

import nbclient
import nbformat
import pytest

from conftest import ROOT

NOTEBOOK = os.path.join(ROOT, "experiments", "notebooks", "quickstart.ipynb")


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  monkeypatch.setenv("QUICKSTART_EPOCHS", "2")
  monkeypatch.setenv("QUICKSTART_WORKDIR", str(tmp_path / "run"))
  monkeypatch.delenv("XLA_FLAGS", raising=False)  # one CPU device, like a user's machine
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                          resources={"metadata": {"path": ROOT}}).execute()
  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) == 3  # bit balance, histogram, search results
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert results["steps"] == 2 * (1497 // 64)
  assert f"mAP@all {results['mAP']:.4f} after {results['steps']} steps" in text
  p_at_8, reference = map(float, re.search(
      r"precision@8 ([\d.]+) \(metrics.precision_at_k: ([\d.]+)\)", text).groups())
  assert p_at_8 == reference and p_at_8 > 0.5
