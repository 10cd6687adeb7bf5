r"""Converts the authors' FIRe descriptor files and revisitop ground truth to our formats.

  python -m orthohash_jax.data.convert_fire --input=data/gldv2delgembed/train.txt \
      --output=data/gldv2/train.npz
  python -m orthohash_jax.data.convert_fire --input=data/roxford5k/gnd_roxford5k.pkl \
      --output=data/roxford5k/gnd_roxford5k.json

Inputs, recognised by content:
* FIRe descriptors (``{train,test,database}.txt`` despite the name): a dict with ``codes``
  (N, D), ``id`` (N,) and optionally ``labels`` (N,), 1-indexed, written by ``torch.save``.
  Output ``.npz`` with codes float32, ids str and labels int32 minus 1 (``descriptors`` format);
  ``--drop_labels`` leaves them out (e.g. placeholder labels of test/database files).
* revisitop ``gnd_<name>.pkl``: a dict with ``imlist``, ``qimlist`` and ``gnd`` (per query
  ``easy``, ``hard``, ``junk``, ``bbx``). Output ``.json``.

Files written by ``torch.save`` (zip or legacy format, or pickles holding torch tensors) need
PyTorch, imported only for them; torch is not a requirement of this project. Plain pickles are
read with ``pickle``. Only convert files you trust: unpickling can run arbitrary code.
"""
import json
import os
import pickle
import sys
import zipfile

import numpy as np

from orthohash_jax import cli
from orthohash_jax.data import DataError

TORCH_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


def _torch_load(path):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise DataError(f"{path} was written by torch.save; converting it needs PyTorch "
                    f"(pip install torch, the CPU build is enough)") from None
  try:
    return torch.load(path, map_location="cpu", weights_only=False)
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"torch.load cannot read {path}: {type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}") from None


def read_pickle(path: str):
  """Unpickles ``path`` with pickle, or with torch.load for files written by torch.save."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: file not found")
  if zipfile.is_zipfile(path):
    return _torch_load(path)
  try:
    with open(path, "rb") as f:
      obj = pickle.load(f)
  except ModuleNotFoundError as e:
    if e.name != "torch":
      raise DataError(f"{path}: needs module {e.name} to unpickle") from None
    return _torch_load(path)
  except (pickle.UnpicklingError, EOFError) as e:
    raise DataError(f"{path}: not a pickle file ({e})") from None
  if isinstance(obj, int) and obj == TORCH_LEGACY_MAGIC:
    return _torch_load(path)
  return obj


def _numpy(value):
  if hasattr(value, "detach"):  # a torch tensor
    value = value.detach().cpu().numpy()
  return np.asarray(value)


def convert_descriptors(obj, path: str, drop_labels: bool = False) -> dict:
  """FIRe dict {codes, id, labels (1-indexed)} -> {"codes", "ids", "labels" (0-based)}."""
  missing = {"codes", "id"} - set(obj)
  if missing:
    raise DataError(f"{path}: descriptor dict lacks {sorted(missing)} (has {sorted(obj)})")
  out = {"codes": _numpy(obj["codes"]).astype(np.float32),
         "ids": np.array([str(i) for i in _numpy(obj["id"]).ravel()])}
  if out["codes"].ndim != 2 or len(out["ids"]) != len(out["codes"]):
    raise DataError(f"{path}: codes {out['codes'].shape} and {len(out['ids'])} ids do not match")
  if "labels" in obj and not drop_labels:
    labels = _numpy(obj["labels"]).astype(np.int64).reshape(-1)
    if labels.shape != (len(out["codes"]),):
      raise DataError(f"{path}: {labels.size} labels for {len(out['codes'])} codes")
    if labels.min() < 1:
      raise DataError(f"{path}: labels must be 1-indexed (FIRe convention), found "
                      f"{labels.min()}; use --drop_labels for placeholder labels")
    out["labels"] = (labels - 1).astype(np.int32)
  return out


def convert_gnd(obj, path: str) -> dict:
  """revisitop gnd dict -> JSON-ready {"imlist", "qimlist", "gnd"} with int lists."""
  missing = {"imlist", "qimlist", "gnd"} - set(obj)
  if missing:
    raise DataError(f"{path}: ground-truth dict lacks {sorted(missing)} (has {sorted(obj)})")
  gnd = []
  for entry in obj["gnd"]:
    out = {k: [int(i) for i in _numpy(entry.get(k, ())).ravel()] for k in ("easy", "hard", "junk")}
    if entry.get("bbx") is not None:
      out["bbx"] = [float(v) for v in _numpy(entry["bbx"]).ravel()]
    gnd.append(out)
  return {"imlist": [str(i) for i in obj["imlist"]],
          "qimlist": [str(i) for i in obj["qimlist"]], "gnd": gnd}


def convert(input_path: str, output_path: str, drop_labels: bool = False) -> str:
  """Converts one file; returns a one-line summary."""
  obj = read_pickle(input_path)
  if not isinstance(obj, dict):
    raise DataError(f"{input_path}: expected a dict, got {type(obj).__name__}")
  if "gnd" in obj:
    if not output_path.endswith(".json"):
      raise DataError(f"{input_path} is revisitop ground truth: the output must be .json")
    out = convert_gnd(obj, input_path)
    with open(output_path, "w", encoding="utf-8") as f:
      json.dump(out, f)
    return f"{output_path}: {len(out['qimlist'])} queries, {len(out['imlist'])} database images"
  if not output_path.endswith(".npz"):
    raise DataError(f"{input_path} holds descriptors: the output must be .npz")
  out = convert_descriptors(obj, input_path, drop_labels)
  np.savez(output_path, **out)
  return (f"{output_path}: {out['codes'].shape[0]} x {out['codes'].shape[1]} codes, "
          f"{'labels' if 'labels' in out else 'no labels'}")


def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--input", required=True)
  parser.add_argument("--output", required=True)
  parser.add_argument("--drop_labels", action="store_true")
  args = parser.parse_args(argv)
  return cli.run_tool(lambda: cli.say(convert(args.input, args.output, args.drop_labels)))


if __name__ == "__main__":
  sys.exit(main())
