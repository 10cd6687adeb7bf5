"""orthohash_jax.weights: torchvision state dict -> .pth -> CLI -> load_pretrained, and bad input.

The torchvision layer names and shapes come from experiments/torchvision_replicas.py (built on torch's
"meta" device where only shapes matter). Every failing conversion must print one ``error:``
line, exit with status 2 and leave nothing at --output (nor temporary directories beside it).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from flax import nnx  # pylint: disable=g-import-not-at-top,wrong-import-position

from orthohash_jax import backbones  # pylint: disable=g-import-not-at-top,wrong-import-position
from orthohash_jax import weights  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import torchvision_replicas as replicas  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def meta_state_dict(arch):
  with torch.device("meta"):
    return replicas.REPLICAS[arch]().state_dict()


@pytest.mark.parametrize("arch", sorted(backbones.BACKBONES))
def test_key_map_covers_torchvision_and_flax(arch):
  """Every torchvision key is converted or is a head / num_batches_tracked key, with torch's
  shape; every Flax variable is produced exactly once."""
  torch_shapes = {k: tuple(v.shape) for k, v in meta_state_dict(arch).items()}
  entries = weights.key_map(arch)
  ignored = {k for k in torch_shapes if k.endswith("num_batches_tracked")}
  assert set(weights.HEAD_KEYS[arch]) <= set(torch_shapes)
  assert {t: tuple(s) for t, _, s, _ in entries} == {
      k: s for k, s in torch_shapes.items() if k not in ignored | set(weights.HEAD_KEYS[arch])}
  flax_keys = [f for _, f, _, _ in entries]
  assert sorted(flax_keys) == sorted(backbones.flat_shapes(arch))


@pytest.mark.slow
def test_cli_round_trip_resnet50(tmp_path):
  """torch.save(state_dict) -> python -m orthohash_jax.weights -> load_pretrained == torch."""
  ref = replicas.randomize(replicas.ResNet50(), seed=3)
  pth = tmp_path / "resnet50-random.pth"
  torch.save(ref.state_dict(), pth)
  out = tmp_path / "converted"
  proc = subprocess.run([sys.executable, "-m", "orthohash_jax.weights", "--arch=resnet50",
                         f"--torch={pth}", f"--output={out}"], capture_output=True, text=True,
                        cwd=ROOT, check=False)
  assert proc.returncode == 0, proc.stderr
  assert "resnet50, 265 arrays" in proc.stdout
  assert sorted(os.listdir(tmp_path)) == ["converted", "resnet50-random.pth"]
  with open(out / backbones.META_FILE) as f:
    assert json.load(f) == {"arch": "resnet50", "source": "resnet50-random.pth"}
  module = backbones.load_pretrained("resnet50", str(out))
  x = np.random.default_rng(0).standard_normal((2, 3, 45, 70)).astype(np.float32)
  with torch.no_grad():
    expected = ref.features_out(torch.from_numpy(x)).numpy()
  got = np.asarray(nnx.jit(lambda m, a: m(a, train=False))(module, x.transpose(0, 2, 3, 1)))
  assert np.max(np.abs(got - expected)) <= 1e-4 * np.max(np.abs(expected))


@pytest.mark.slow
def test_headless_and_half_precision_state_dicts_convert():
  ref = replicas.randomize(replicas.ResNet50(), seed=4)
  full = weights.convert_state_dict("resnet50", ref.state_dict())
  headless = {k: v.half() for k, v in ref.state_dict().items()
              if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
  half = weights.convert_state_dict("resnet50", headless)
  assert half.keys() == full.keys()
  for key, value in full.items():
    assert half[key].dtype == np.float32
    np.testing.assert_array_equal(half[key], value.astype(np.float16).astype(np.float32))


def _save(obj, path):
  torch.save(obj, path)
  return str(path)


def _bad_inputs(tmp_path):
  """{case: (arch, path of the input file, expected message fragment)}."""
  good = _save({"features.0.weight": torch.zeros(64, 3, 11, 11),
                "features.0.bias": torch.zeros(64)}, tmp_path / "good.pth")
  with open(good, "rb") as f:
    raw = f.read()
  truncated = tmp_path / "truncated.pth"
  truncated.write_bytes(raw[:len(raw) // 2])
  garbage = tmp_path / "garbage.pth"
  garbage.write_bytes(os.urandom(1000))
  return {
      "other arch": ("alexnet", _save({"conv1.weight": torch.zeros(64, 3, 7, 7)},
                                      tmp_path / "resnet.pth"), "unexpected key 'conv1.weight'"),
      "missing key": ("alexnet", _save({"features.0.weight": torch.zeros(64, 3, 11, 11)},
                                       tmp_path / "partial.pth"),
                      "missing key 'features.0.bias'"),
      "mis-shaped": ("alexnet", _save({"features.0.weight": torch.zeros(64, 3, 5, 5)},
                                      tmp_path / "shape.pth"),
                     "'features.0.weight' has shape (64, 3, 5, 5), expected (64, 3, 11, 11)"),
      "integer weights": ("alexnet", _save({"features.0.weight": torch.zeros(64, 3, 11, 11,
                                                                             dtype=torch.int32)},
                                           tmp_path / "int.pth"), "expected floating point"),
      "not a dict": ("alexnet", _save(torch.zeros(3), tmp_path / "tensor.pth"),
                     "holds a Tensor, not a state dict"),
      "missing file": ("alexnet", str(tmp_path / "absent.pth"), "file not found"),
      "truncated": ("alexnet", str(truncated), "torch.load cannot read it"),
      "garbage": ("alexnet", str(garbage), "torch.load cannot read it"),
  }


def test_bad_inputs_one_line_exit_2_nothing_written(tmp_path, capsys):
  inputs = tmp_path / "inputs"
  inputs.mkdir()
  out_parent = tmp_path / "out"
  out_parent.mkdir()
  for case, (arch, path, fragment) in _bad_inputs(inputs).items():
    status = weights.main([f"--arch={arch}", f"--torch={path}", f"--output={out_parent}/w"])
    err = capsys.readouterr().err
    assert status == 2, case
    assert err.startswith("error: ") and err.count("\n") == 1 and fragment in err, (case, err)
    assert not os.listdir(out_parent), case


def test_existing_output_is_refused_and_kept(tmp_path, capsys):
  out = tmp_path / "w"
  out.mkdir()
  (out / "keep.txt").write_text("x")
  pth = _save({}, tmp_path / "empty.pth")
  assert weights.main(["--arch=alexnet", f"--torch={pth}", f"--output={out}"]) == 2
  assert "already exists" in capsys.readouterr().err
  assert os.listdir(out) == ["keep.txt"]


def test_unknown_arch_is_a_usage_error(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    weights.main(["--arch=vgg19", f"--torch={tmp_path}/x.pth", f"--output={tmp_path}/w"])
  assert e.value.code == 2 and "error: argument --arch" in capsys.readouterr().err


def test_missing_torch_is_one_line(tmp_path, monkeypatch, capsys):
  pth = _save({}, tmp_path / "x.pth")
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
  assert weights.main(["--arch=alexnet", f"--torch={pth}", f"--output={tmp_path}/w"]) == 2
  assert "needs PyTorch, which is not installed" in capsys.readouterr().err


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
  arrays = {k: np.zeros(s, np.float32) for k, s in backbones.flat_shapes("resnet50").items()}

  def fail(*args, **kwargs):
    raise OSError("disk full")
  monkeypatch.setattr(np, "savez", fail)
  with pytest.raises(OSError, match="disk full"):
    weights.save_backbone("resnet50", arrays, str(tmp_path / "w"))
  assert not os.listdir(tmp_path)


def test_cli_error_is_one_line_without_traceback(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "orthohash_jax.weights", "--arch=vgg16",
                         f"--torch={tmp_path}/absent.pth", f"--output={tmp_path}/w"],
                        capture_output=True, text=True, cwd=ROOT, check=False)
  assert proc.returncode == 2
  assert proc.stderr == f"error: {tmp_path}/absent.pth: file not found\n"


@pytest.mark.slow
def test_load_pretrained_errors(tmp_path):
  shapes = backbones.flat_shapes("resnet50")
  arrays = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
  weights.save_backbone("resnet50", arrays, str(tmp_path / "ok"))
  assert backbones.load_pretrained("resnet50", str(tmp_path / "ok")).out_features == 2048
  with pytest.raises(ValueError, match="holds resnet50 weights, not alexnet"):
    backbones.load_pretrained("alexnet", str(tmp_path / "ok"))
  with pytest.raises(ValueError, match="file not found .*python -m orthohash_jax.weights"):
    backbones.load_pretrained("resnet50", str(tmp_path / "absent"))
  missing = dict(arrays)
  del missing["stages/3/2/bn3/var"]
  weights.save_backbone("resnet50", missing, str(tmp_path / "missing"))
  with pytest.raises(ValueError, match="missing stages/3/2/bn3/var"):
    backbones.load_pretrained("resnet50", str(tmp_path / "missing"))
  weights.save_backbone("resnet50", {**arrays, "fc/kernel": np.zeros(3)}, str(tmp_path / "extra"))
  with pytest.raises(ValueError, match="unexpected fc/kernel"):
    backbones.load_pretrained("resnet50", str(tmp_path / "extra"))
  (tmp_path / "ok" / backbones.CHECKPOINT_FILE).write_bytes(b"not an npz")
  with pytest.raises(ValueError, match="unreadable backbone checkpoint"):
    backbones.load_pretrained("resnet50", str(tmp_path / "ok"))


def test_truncated_converted_weights_are_one_line_saying_what_to_do(tmp_path):
  arrays = {k: np.zeros(s, np.float32) for k, s in backbones.flat_shapes("alexnet").items()}
  weights.save_backbone("alexnet", arrays, str(tmp_path / "w"))
  path = tmp_path / "w" / backbones.CHECKPOINT_FILE
  path.write_bytes(path.read_bytes()[:100_000])  # a copy cut short
  with pytest.raises(ValueError, match=r"unreadable backbone checkpoint \(BadZipFile: .*\); "
                     r"convert the weights again with python -m orthohash_jax.weights "
                     r"--arch=alexnet"):
    backbones.load_pretrained("alexnet", str(tmp_path / "w"))
