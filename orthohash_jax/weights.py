r"""Converts torchvision state dicts into orthohash_jax.backbones checkpoints.

  python -m orthohash_jax.weights --arch=alexnet --torch=alexnet-owt-7be5be79.pth \
      --output=weights/alexnet

Input: a torchvision ``.pth`` as torchvision downloads it (into ``~/.cache/torch/hub/checkpoints``
on a machine with internet: ``alexnet-owt-7be5be79.pth``, ``vgg16-397923af.pth``,
``resnet50-0676ba61.pth`` / ``resnet50-11ad3fa6.pth``) or any ``torch.save(model.state_dict())``
of ``torchvision.models.alexnet`` / ``vgg16`` / ``resnet50``. The classifier head
(``classifier.6.*`` / ``fc.*``) and ``*.num_batches_tracked`` may be present and are dropped;
every other key must be there, with torchvision's shape. Reading ``.pth`` files needs PyTorch
(an optional extra, the CPU build is enough; ``torch.load(weights_only=True)``); the conversion
itself is numpy.

Output: a new directory with ``backbone.npz`` (float32 arrays keyed by the Flax variable path,
see ``backbones.flat_shapes``; conv kernels (kh, kw, in, out), linear kernels (in, out), fc6's
rows permuted from torch's (C, H, W) flatten order to our NHWC (H, W, C) order; ResNet-50's BN
scale, bias and running mean / var) and ``backbone.json`` (``arch``, ``source``). It is written
to a temporary directory beside it and renamed, so a failed run leaves nothing at ``--output``.
Load it with ``backbones.load_pretrained(arch, DIR)``.

Errors (one ``error:`` line, exit status 2): missing or unreadable file, a state dict of another
architecture (the first unexpected, missing or mis-shaped key is named), an existing non-empty
``--output``, PyTorch not installed.
"""
from collections.abc import Mapping
import json
import os
import shutil
import sys
import tempfile

import numpy as np

from orthohash_jax import backbones
from orthohash_jax import cli, files

# Keys of torchvision's classification heads, which the backbones do not use.
HEAD_KEYS = {
    "alexnet": ("classifier.6.weight", "classifier.6.bias"),
    "vgg16": ("classifier.6.weight", "classifier.6.bias"),
    "resnet50": ("fc.weight", "fc.bias"),
}


def torch_layers(arch: str) -> list:
  """(torchvision module name, Flax path, kind) of each weighted layer of ``arch``, in order.

  kind is "conv", "linear", "bn", or ("fc6", (C, H, W)) for the first linear layer after the
  adaptive pooling, whose input torch flattens in (C, H, W) order.
  """
  if arch == "alexnet":
    convs = [(f"features.{t}", f"convs/{i}", "conv") for i, t in enumerate((0, 3, 6, 8, 10))]
    return convs + [("classifier.1", "fc6", ("fc6", (256, 6, 6))),
                    ("classifier.4", "fc7", "linear")]
  if arch == "vgg16":
    convs, index = [], 0
    for stage in backbones.VGG16.STAGES:
      for _ in stage:
        convs.append((f"features.{index}", f"convs/{len(convs)}", "conv"))
        index += 2  # conv, ReLU
      index += 1  # max pool
    return convs + [("classifier.0", "fc6", ("fc6", (512, 7, 7))),
                    ("classifier.3", "fc7", "linear")]
  if arch == "resnet50":
    layers = [("conv1", "conv1", "conv"), ("bn1", "bn1", "bn")]
    for s, (_, blocks, _) in enumerate(backbones.ResNet50.STAGES):
      for j in range(blocks):
        torch_block, flax_block = f"layer{s + 1}.{j}", f"stages/{s}/{j}"
        for k in (1, 2, 3):
          layers += [(f"{torch_block}.conv{k}", f"{flax_block}/conv{k}", "conv"),
                     (f"{torch_block}.bn{k}", f"{flax_block}/bn{k}", "bn")]
        if j == 0:
          layers += [(f"{torch_block}.downsample.0", f"{flax_block}/downsample_conv", "conv"),
                     (f"{torch_block}.downsample.1", f"{flax_block}/downsample_bn", "bn")]
    return layers
  raise ValueError(f"unknown backbone {arch!r}: expected one of {sorted(backbones.BACKBONES)}")


def _conv_kernel(w):  # torch (O, I, kh, kw) -> (kh, kw, I, O)
  return w.transpose(2, 3, 1, 0)


def _linear_kernel(w):  # torch (O, I) -> (I, O)
  return w.T


def _fc6_kernel(chw):
  """torch (O, C*H*W) in (C, H, W) order -> (H*W*C, O) in NHWC flatten order."""
  c, h, w = chw
  return lambda k: k.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1)


def key_map(arch: str) -> list:
  """(torch key, Flax key, torch shape, torch -> Flax function) of every converted array."""
  shapes = backbones.flat_shapes(arch)
  entries = []
  for torch_name, flax_name, kind in torch_layers(arch):
    if kind == "bn":
      for t, f in (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"),
                   ("running_var", "var")):
        entries.append((f"{torch_name}.{t}", f"{flax_name}/{f}", shapes[f"{flax_name}/{f}"],
                        lambda a: a))
      continue
    kernel_shape = shapes[f"{flax_name}/kernel"]
    if kind == "conv":
      entries.append((f"{torch_name}.weight", f"{flax_name}/kernel",
                      tuple(kernel_shape[i] for i in (3, 2, 0, 1)), _conv_kernel))
    else:
      entries.append((f"{torch_name}.weight", f"{flax_name}/kernel", kernel_shape[::-1],
                       _fc6_kernel(kind[1]) if kind[0] == "fc6" else _linear_kernel))
    if f"{flax_name}/bias" in shapes:
      entries.append((f"{torch_name}.bias", f"{flax_name}/bias", shapes[f"{flax_name}/bias"],
                      lambda a: a))
  return entries


def _as_float_array(value, key: str, source: str) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor (any dtype, e.g. float16 / bfloat16)
    if not value.is_floating_point():
      raise ValueError(f"{source}: {key} is a {value.dtype} tensor, expected floating point")
    value = value.detach().cpu().float().numpy()
  value = np.asarray(value)
  if not np.issubdtype(value.dtype, np.floating):
    raise ValueError(f"{source}: {key} is {value.dtype}, expected floating point")
  return value.astype(np.float32)


def convert_state_dict(arch: str, state_dict: Mapping, source: str = "state dict") -> dict:
  """torchvision ``state_dict`` (tensors or arrays) -> {Flax key: float32 array}.

  Raises ValueError naming the first unexpected key (in the state dict's order), else the first
  missing or mis-shaped one (in the model's order).
  """
  entries = key_map(arch)
  allowed = {t for t, _, _, _ in entries} | set(HEAD_KEYS[arch]) | {
      f"{name}.num_batches_tracked" for name, _, kind in torch_layers(arch) if kind == "bn"}
  for key in state_dict:
    if key not in allowed:
      raise ValueError(f"{source}: not a torchvision {arch} state dict: unexpected key {key!r}")
  out = {}
  for torch_key, flax_key, shape, to_flax in entries:
    if torch_key not in state_dict:
      first = next(iter(state_dict), None)
      raise ValueError(f"{source}: not a torchvision {arch} state dict: missing key "
                       f"{torch_key!r} (its first key is {first!r})")
    value = _as_float_array(state_dict[torch_key], torch_key, source)
    if value.shape != tuple(shape):
      raise ValueError(f"{source}: not a torchvision {arch} state dict: {torch_key!r} has shape "
                       f"{value.shape}, expected {tuple(shape)}")
    out[flax_key] = np.ascontiguousarray(to_flax(value))
  return out


def read_torch_state_dict(path: str) -> Mapping:
  """The state dict in a ``torch.save`` file (``weights_only`` loading: tensors and containers)."""
  if not files.path(path).is_file():
    raise ValueError(f"{path}: file not found")
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError(f"reading {path} needs PyTorch, which is not installed "
                     "(pip install torch; the CPU build is enough)") from None
  try:
    with files.path(path).open("rb") as f:  # a local path or gs://
      obj = torch.load(f, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    message = str(e).strip().splitlines()[0] if str(e).strip() else ""
    raise ValueError(f"{path}: torch.load cannot read it ({type(e).__name__}: {message})") from None
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
  return obj


def _check_output(output: str) -> None:
  if os.path.lexists(output) and not (os.path.isdir(output) and not os.listdir(output)):
    raise ValueError(f"{output} already exists; give a new (or empty) directory")


def save_backbone(arch: str, arrays: dict, output: str, source: str = "") -> None:
  """Writes ``arrays`` (as ``convert_state_dict`` returns) to the new directory ``output``.

  Written into a temporary directory beside ``output`` and renamed: on any failure nothing is
  left at ``output``.
  """
  _check_output(output)
  output = os.path.abspath(output)
  parent = os.path.dirname(output)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.tmp-", dir=parent)
  try:
    np.savez(os.path.join(tmp, backbones.CHECKPOINT_FILE), **arrays)
    with open(os.path.join(tmp, backbones.META_FILE), "w") as f:
      json.dump({"arch": arch, "source": source}, f)
    if os.path.isdir(output):  # empty, checked above
      os.rmdir(output)
    os.rename(tmp, output)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def convert(arch: str, torch_path: str, output: str) -> str:
  """Converts the torchvision ``.pth`` at ``torch_path`` into ``output``; returns a summary line."""
  if arch not in backbones.BACKBONES:
    raise ValueError(f"unknown backbone {arch!r}: expected one of {sorted(backbones.BACKBONES)}")
  _check_output(output)
  arrays = convert_state_dict(arch, read_torch_state_dict(torch_path), source=torch_path)
  try:
    save_backbone(arch, arrays, output, source=os.path.basename(torch_path))
  except OSError as e:
    raise ValueError(f"cannot write {output}: {e}") from None
  count = sum(a.size for a in arrays.values())
  return f"{output}: {arch}, {len(arrays)} arrays, {count / 1e6:.1f}M values from {torch_path}"


def main(argv=None) -> int:
  parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--arch", required=True, choices=sorted(backbones.BACKBONES))
  parser.add_argument("--torch", required=True, help="torchvision state dict (.pth)")
  parser.add_argument("--output", required=True, help="new directory for the checkpoint")
  args = parser.parse_args(argv)
  return cli.run_tool(lambda: cli.say(convert(args.arch, args.torch, args.output)))


if __name__ == "__main__":
  sys.exit(main())
