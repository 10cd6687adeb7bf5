"""experiments/notebooks/quickstart.ipynb runs top to bottom (2 epochs) in a fresh kernel; its
Colab install cell stops at once while the repository URL is the placeholder.
tfds_training.ipynb runs headless on a cifar10 built here in the array_record format."""
import json
import os
import re
import sys
import types

import nbclient
import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager

from conftest import ROOT

NOTEBOOK = os.path.join(ROOT, "experiments", "notebooks", "quickstart.ipynb")


def execute(path, monkeypatch, timeout):
  """Runs a notebook top to bottom in a fresh kernel on one CPU device (like a user's machine);
  returns (its printed text, the number of images it drew), after checking it raised nothing."""
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  nb = nbformat.read(path, as_version=4)
  nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                          resources={"metadata": {"path": ROOT}}).execute()
  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  return ("".join(o.get("text", "") for o in outputs if o.output_type == "stream"),
          len([o for o in outputs if "image/png" in o.get("data", {})]))


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  monkeypatch.setenv("QUICKSTART_EPOCHS", "2")
  monkeypatch.setenv("QUICKSTART_WORKDIR", str(tmp_path / "run"))
  text, images = execute(NOTEBOOK, monkeypatch, 120)
  assert images == 3  # bit balance, histogram, search results
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert results["steps"] == 2 * (1497 // 64)
  assert f"mAP@all {results['mAP']:.4f} after {results['steps']} steps" in text
  p_at_8, reference = map(float, re.search(
      r"precision@8 ([\d.]+) \(metrics.precision_at_k: ([\d.]+)\)", text).groups())
  assert p_at_8 == reference and p_at_8 > 0.5


def colab_install_cell(monkeypatch, repo=None):
  """Runs the notebook's first cell as Colab would (``!`` lines through a recording shell);
  returns the shell commands it ran."""
  source = "".join(nbformat.read(NOTEBOOK, as_version=4).cells[1].source)
  if repo:
    source = source.replace("https://github.com/OWNER/orthohash-jax", repo)
  commands, namespace = [], {}

  class Shell:
    def system(self, command):  # IPython expands {name} from the cell's variables
      commands.append(command.format(**namespace))
  namespace["get_ipython"] = Shell
  monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
  monkeypatch.chdir(ROOT)  # no orthohash-jax folder here: the install runs
  exec(TransformerManager().transform_cell(source), namespace)  # pylint: disable=exec-used
  return commands


def test_colab_cell_stops_at_once_while_repo_is_the_placeholder(monkeypatch):
  with pytest.raises(SystemExit, match="Set REPO in this cell to the URL of this repository"):
    colab_install_cell(monkeypatch)


def test_colab_cell_installs_the_pinned_requirements(monkeypatch):
  commands = colab_install_cell(monkeypatch, "https://example.org/me/orthohash-jax")
  assert commands == ["git clone -q https://example.org/me/orthohash-jax orthohash-jax",
                      "pip install -q -r orthohash-jax/requirements.txt -e orthohash-jax"]


TFDS_NOTEBOOK = os.path.join(ROOT, "experiments", "notebooks", "tfds_training.ipynb")


@pytest.mark.slow
def test_tfds_notebook_runs_on_a_locally_built_dataset(tmp_path, monkeypatch):
  """experiments/notebooks/tfds_training.ipynb headless on a cifar10 built here in the
  array_record format (no download): trains, exports, searches and draws its three figures."""
  from test_tfds_source import build_tfds  # pylint: disable=g-import-not-at-top
  build_tfds(tmp_path / "tfds", "cifar10", {"train": 100, "test": 40}, shape=(32, 32, 3),
             version="3.0.2", with_id=True)
  for key, value in (("DATA_DIR", str(tmp_path / "tfds")), ("DOWNLOAD", "0"), ("QUERY", "2"),
                     ("TRAIN", "8"), ("EPOCHS", "2"), ("BACKBONE", "mlp"),
                     ("WORKDIR", str(tmp_path / "run"))):
    monkeypatch.setenv(f"TFDS_NOTEBOOK_{key}", value)
  text, images = execute(TFDS_NOTEBOOK, monkeypatch, 300)
  assert images == 3  # bit balance, Hamming distances, search results
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert results["steps"] == 2 * (80 // 64)  # 8 per class: one batch of 64 per epoch
  assert f"mAP@all {results['mAP']:.4f} after {results['steps']} steps" in text
  assert "database codes (120," in text  # 140 examples less 2 queries per class
