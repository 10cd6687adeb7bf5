"""Every config key, its default, its one-line description and whether a resumed run may change it.

Experiment configs (``configs/*.py``) start from ``base_config()`` and override keys; the command
line overrides them again (``--config.key=value``). ``KEYS`` is the one place where a key and its
default are declared: loaders and the training code read keys, never fall back to defaults of
their own. A key whose default is ``None`` is a typed placeholder (``None`` has the meaning given
in its description). ``resumable`` keys alter neither the train state nor the batch of any step, so
a workdir may be resumed with other values of them (see ``workdir.check_same_run``).

Validation lives here, with the declarations: a key's type (that of its default, or ``type``;
a bool is not an integer, a float is finite), its ``allowed`` values or ``check``, and the rules that tie keys
together (``_rules``). ``validate(config)`` runs them all, once, before any data is read;
nothing downstream checks config values again. Every message is one line: the key, what it
must be, what was given. ``check_labels(config, multilabel)`` refuses, once the data is known,
a single-label loss on multi-label data and a multi-label key changed on single-label data.
``use_bn`` defaults to None: the method's own (``methods.apply_architecture``).

``apply_overrides(config, ["key=value", ...])`` sets keys from strings (``main``'s
``--config.key=value``, the experiment scripts' ``--set``; ``parse_value``).
``load_config_file("PATH[:VARIANT]")`` loads a config file; a variant of a config without any is
refused naming the ``VARIANTS`` of the configs beside it. ``check_known_keys(config)``
rejects keys that are not declared here (a typo such as ``num_bitz`` in a config file);
``describe()`` lists the keys with their defaults and descriptions
(``python -m orthohash_jax.main --list_keys``).
"""
import ast
import dataclasses
import difflib
import importlib.util
import math
import os
import re
from typing import Any

import ml_collections
from ml_collections import config_dict


@dataclasses.dataclass(frozen=True)
class Key:
  """A config key. ``allowed``: the values it may take (the owning module's table, e.g.
  ``models.BACKBONES``; tests/test_config_base.py holds the two equal); ``check``: (predicate of
  a valid value, what it requires) for keys with a range instead. ``None`` passes both checks
  where the default is ``None`` (a placeholder). ``losses``: the methods that read the key; with
  another ``loss`` it must keep its default (``methods.METHODS``' keys, held equal by a test)."""
  name: str
  default: Any
  doc: str
  resumable: bool = False
  type: type = None  # the placeholder type of a key whose default is None
  allowed: tuple = ()
  check: tuple = ()
  losses: tuple = ()  # the values of ``loss`` that read this key (empty: every one)
  multilabel_only: bool = False  # read only with multi-label data (else it must keep its default)

  @property
  def value_type(self) -> type:
    """The type a value must have: ``type``, else that of the default."""
    return self.type or type(self.default)

  def type_error(self, value):
    """The one-line message for a ``value`` of the wrong type, or None."""
    if value is None and self.default is None:
      return None
    if not _TYPE_CHECKS[self.value_type](value):
      return f"{self.name} must be {_TYPE_WORDS[self.value_type]}, got {shown(value)}"
    return None

  def error(self, value):
    """The one-line message for an invalid ``value``, or None when it is valid."""
    if value is None and self.default is None:
      return None
    wrong_type = self.type_error(value)
    if wrong_type:
      return wrong_type
    if self.allowed and value not in self.allowed:
      return f"{self.name} must be one of {list(self.allowed)}, got {value!r}"
    if self.check and not self.check[0](value):
      return f"{self.name} must be {self.check[1]}, got {value!r}"
    return None


def shown(value, limit: int = 60) -> str:
  """``repr(value)`` cut to ``limit`` characters (a 100k-character value stays one short line)."""
  text = repr(value) if not isinstance(value, int) or abs(value) < 10 ** 60 else "<a long integer>"
  return text if len(text) <= limit else f"{text[:limit - 15]}... ({len(text)} characters)"


_TYPE_CHECKS = {
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    bool: lambda v: isinstance(v, bool),
    str: lambda v: isinstance(v, str),
    tuple: lambda v: isinstance(v, (tuple, list)),
    dict: lambda v: isinstance(v, dict),
}
_TYPE_WORDS = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string",
               tuple: "a tuple such as (512, 512)", dict: "a dict such as {'train': 100}"}


def _positive(x):
  return x > 0


def _non_negative(x):
  return x >= 0


def _positive_ints(sizes):
  return len(sizes) > 0 and all(_TYPE_CHECKS[int](x) and x > 0 for x in sizes)


def _uint32(x):
  return 0 <= x < 2 ** 32


POSITIVE = (_positive, "positive")
SEED = (_uint32, "an integer in [0, 2**32 - 1] (JAX keys take 32 bits)")
NON_NEGATIVE = (_non_negative, ">= 0")
AT_LEAST_ONE = (_positive, "at least 1")  # of a count
IMAGENET_BACKBONES = ("alexnet", "vgg16", "resnet50")  # torchvision's, weights from .pth files
LOSSES = ("orthohash", "ce", "hashnet", "dtsh", "sdhc", "greedyhash", "jmlh", "dpn", "csq")
SINGLE_LABEL_LOSSES = ("sdhc",)  # losses that cannot take multi-hot labels


def step_range(text: str):
  """(A, B) of a step range "A:B" (0 <= A < B), or None when ``text`` is not one."""
  first, sep, last = str(text).partition(":")
  if not (sep and first.strip().isdigit() and last.strip().isdigit()):
    return None
  return (int(first), int(last)) if int(first) < int(last) else None


def _is_step_range(text):
  return step_range(text) is not None


def _revisited_list(text):
  return all(":" in spec for spec in text.split(","))


KEYS = (
    Key("seed", 0, "model init, codebook, data order and augmentation draws", check=SEED),
    # data
    Key("dataset", "digits", "data source",
        allowed=("digits", "fashion_mnist", "imagenet100", "nuswide", "coco", "listfile",
                 "arrayrecord", "tfds", "cifar10", "gldv2", "synthetic_descriptors")),
    Key("data_dir", None, "directory of the dataset's files (None: the source's documented location)",
        resumable=True, type=str),
    Key("split_seed", 0, "seed of the query / database / training split", check=SEED),
    Key("num_query_per_class", 30, "queries per class (digits, Fashion-MNIST, CIFAR-10, synthetic)"),
    Key("num_train_per_class", 500, "training items per class (Fashion-MNIST, CIFAR-10, synthetic)"),
    Key("num_classes", None, "list files / descriptors: number of classes (None: the dataset's own)",
        type=int),
    Key("image_size", 224, "list-file images: side of the crops fed to the model", check=POSITIVE),
    Key("image_mode", "RGB", "list-file images: RGB, or L (grayscale)", allowed=("RGB", "L")),
    Key("train_transform", "random_resized_crop", "list-file training transform",
        allowed=("random_resized_crop", "resize_random_crop", "resize_center_crop", "none")),
    Key("train_resize", 256, "shorter side before the random crop (resize_random_crop)"),
    Key("eval_transform", "resize_center_crop", "list-file evaluation transform (deterministic)",
        allowed=("resize_center_crop", "none")),
    Key("eval_resize", None, "shorter side before the centre crop (None: image_size; NUS-WIDE's "
        "config: 256 for 224 crops)", type=int, check=POSITIVE),
    Key("jpeg_draft", False, "decode JPEGs at a reduced DCT scale when much larger than needed"),
    Key("pixel_norm", "imagenet", "device normalisation of uint8 images (imagenet needs RGB)",
        allowed=("imagenet", "unit")),
    Key("data_workers", 2, "threads decoding list-file / ArrayRecord images (0: in the calling "
        "thread)",
        resumable=True, check=NON_NEGATIVE),
    Key("skip_bad_images", False, "replace unreadable images by a constant one and count them "
        "in results.json, instead of stopping"),
    Key("expected_sizes", None, "list files: {'train': n, 'test': n, 'database': n} to check",
        type=dict),
    Key("allow_duplicates", False, "list files: keep a path listed twice instead of failing"),
    Key("descriptor_dim", 2048, "synthetic descriptors: dimension"),
    Key("synthetic_noise", 1.0, "synthetic descriptors: noise std times sqrt(dim)"),
    Key("synthetic_eval_classes", 1000, "synthetic descriptors: classes of queries and database"),
    Key("download", False, "tfds: allow downloading (never possible offline)", resumable=True),
    Key("tfds_name", None, "tfds: TFDS dataset name (None: the dataset key, e.g. cifar10)",
        type=str),
    Key("tfds_splits", "per_class=train+test", "tfds: 'train=S,query=S,db=S' (TFDS split "
        "expressions) or 'per_class=S' (S cut per class: num_query_per_class queries, "
        "num_train_per_class training, database = training + the rest)"),
    Key("image_feature", "image", "tfds: the image feature"),
    Key("label_feature", "label", "tfds: the class-label feature"),
    # model
    Key("backbone", "mlp", "feature extractor",
        allowed=("mlp", "cnn", "cnn_gap", "identity") + IMAGENET_BACKBONES),
    Key("hidden", (512, 512), "MLP widths",
        check=(_positive_ints, "a non-empty tuple of positive integers")),
    Key("init", "torch", "layer initialisation (torch: as the PyTorch modules; flax: Flax's "
        "defaults, mlp / cnn / cnn_gap only)", allowed=("torch", "flax")),
    Key("stem_stride", 1, "cnn / cnn_gap: average-pool k x k blocks before the first convolution "
        "(1: none; the image configs' small variant: 8)", check=POSITIVE),
    Key("pretrained", None, "alexnet / vgg16 / resnet50: directory of weights converted by "
        "python -m orthohash_jax.weights (None: random init)", type=str),
    Key("pretrained_required", False, "fail up front when pretrained is unset (paper configs)"),
    Key("compute_dtype", "float32", "convolutions and matmuls (parameters, BatchNorm, head and "
        "loss stay float32)", allowed=("float32", "bfloat16")),
    Key("num_bits", 64, "code length K", check=POSITIVE),
    Key("use_bn", None, "BatchNorm after the hash layer (None: the method's own, as "
        "docs/methods.md: orthohash and ce with, the comparison methods without)", type=bool),
    # loss
    Key("loss", "orthohash", "training method (each in a line below; docs/methods.md)",
        allowed=LOSSES),
    Key("codebook", "bernoulli", "class targets (hadamard: num_bits a power of two)",
        allowed=("bernoulli", "gaussian", "hadamard", "maxmin"), losses=("orthohash", "dpn", "csq")),
    Key("scale", 8.0, "s of the cosine-margin softmax (the paper uses sqrt(num_bits))",
        check=POSITIVE, losses=("orthohash",)),
    Key("margin", 0.2, "m of the cosine-margin softmax", losses=("orthohash",)),
    Key("margin_type", "cos", "cos: s (cos - m); arc: s cos(theta + m)", allowed=("cos", "arc"),
        losses=("orthohash",)),
    Key("multilabel_loss", "label_smoothing", "loss of multi-label data",
        allowed=("label_smoothing", "bce"), losses=("orthohash",), multilabel_only=True),
    Key("quantization_weight", 0.0, "weight of the quantization loss (ablation only)"),
    Key("quantization_kind", "cs", "kind of the quantization loss", allowed=("cs", "l1", "l2")),
    # comparison methods (FIRe's defaults; each key is read by its loss only)
    Key("hashnet_alpha", 1.0, "hashnet: scale of the code inner products in the likelihood",
        losses=("hashnet",)),
    Key("hashnet_step_continuation", 20, "hashnet: epochs per step of the tanh scale "
        "sqrt(epoch // this + 1)", losses=("hashnet",), check=POSITIVE),
    Key("dtsh_alpha", 5.0, "dtsh: triplet margin", losses=("dtsh",)),
    Key("dtsh_lambda", 1.0, "dtsh: weight of the quantization term", losses=("dtsh",)),
    Key("sdhc_lambda0", 0.001, "sdhc: weight of the quantization term", losses=("sdhc",)),
    Key("sdhc_lambda1", 0.001, "sdhc: weight of the bit variance (maximised)", losses=("sdhc",)),
    Key("sdhc_lambda2", 0.001, "sdhc: weight of the projection's orthogonality term",
        losses=("sdhc",)),
    Key("sdhc_alpha", 1.0, "sdhc: weight of the classification cross-entropy", losses=("sdhc",)),
    Key("greedyhash_alpha", 1.0, "greedyhash: weight of mean(||v| - 1|^pow) (FIRe: 0.1 on "
        "CIFAR-10)", losses=("greedyhash",)),
    Key("greedyhash_pow", 3, "greedyhash: exponent of that penalty", losses=("greedyhash",)),
    Key("jmlh_lambda", 0.1, "jmlh: weight of the KL to Bernoulli(0.5)", losses=("jmlh",)),
    Key("jmlh_stochastic", True, "jmlh: thresholds eps ~ U[0, 1) while training (False: 0.5)",
        losses=("jmlh",)),
    Key("dpn_margin", 1.0, "dpn: margin of the polarization hinge", losses=("dpn",)),
    Key("dpn_reg", 0.1, "dpn: weight of mean(v^2)", losses=("dpn",)),
    Key("csq_lambda_q", 0.001, "csq: weight of the quantization term", losses=("csq",)),
    Key("csq_scale_c", 1.0, "csq: weight of the hash-centre binary cross-entropy",
        losses=("csq",)),
    # optimisation
    Key("learning_rate", 1e-3, "Adam learning rate", check=POSITIVE),
    Key("adam_eps", 1e-8, "Adam epsilon (as torch; larger values damp near-zero gradients)"),
    Key("backbone_lr_scale", 1.0, "learning-rate factor of the backbone (authors: 0.1 if pretrained)"),
    Key("weight_decay", 0.0, "coupled (torch Adam style) L2 weight decay"),
    Key("lr_schedule", "constant", "constant, or step: x0.1 at 80% of training",
        allowed=("constant", "step")),
    Key("batch_size", 64, "global batch; the last incomplete batch of an epoch is dropped",
        check=POSITIVE),
    Key("num_epochs", 100, "training length in epochs (a resumed run may extend it)",
        resumable=True, check=POSITIVE),
    Key("augment_crop_pad", 0, "in-memory images: pad + random crop + horizontal flip (0: off)",
        check=NON_NEGATIVE),
    Key("steps_per_chunk", 0, "steps per compiled lax.scan call (0: one epoch)", resumable=True,
        check=NON_NEGATIVE),
    Key("chunk_seconds", 0.0, "if > 0: chunks of about this many seconds (at most "
        "steps_per_chunk), timed at the start of each invocation; a stop request is saved within "
        "about two chunks", resumable=True, check=NON_NEGATIVE),
    # evaluation
    Key("eval_topk", None, "R of mAP@R (None: the whole database)", resumable=True, type=int,
        check=POSITIVE),
    Key("eval_batch_size", 1024, "global batch of encoding at evaluation", resumable=True,
        check=POSITIVE),
    Key("eval_every_epochs", 0, "evaluate mAP every this many epochs (0: only at the end)",
        resumable=True, check=NON_NEGATIVE),
    Key("revisited", None, "'ROOT:roxford5k,ROOT:rparis6k': also scored after training",
        resumable=True, type=str, check=(_revisited_list, "ROOT:name[,ROOT:name]")),
    Key("recompute_bn", False, "instance data: also score with hash BN statistics of the database",
        resumable=True),
    # checkpoints, devices and outputs
    Key("checkpoint_every_steps", 1000, "checkpoint period, rounded up to whole chunks",
        resumable=True, check=POSITIVE),
    Key("keep_checkpoints", 3, "number of newest checkpoints kept", resumable=True,
        check=AT_LEAST_ONE),
    Key("num_devices", -1, "mesh size (-1: all devices of all processes)", resumable=True),
    Key("model_axis", 1, "devices sharding the classes of codebook and logits", resumable=True,
        check=AT_LEAST_ONE),
    Key("export_faiss", False, "also write a FAISS IndexBinaryFlat (num_bits divisible by 8)",
        resumable=True),
    Key("profile_steps", None, "'A:B': a jax.profiler trace of steps [A, B) in <workdir>/profile",
        resumable=True, type=str, check=(_is_step_range, "'A:B' with integers 0 <= A < B")),
)
KEYS_BY_NAME = {k.name: k for k in KEYS}
RESUMABLE_KEYS = frozenset(k.name for k in KEYS if k.resumable)


def base_config() -> ml_collections.ConfigDict:
  """A ConfigDict holding every key of ``KEYS`` at its default."""
  c = ml_collections.ConfigDict()
  for key in KEYS:
    setattr(c, key.name, config_dict.placeholder(key.type) if key.default is None else key.default)
  return c


def check_known_keys(config) -> None:
  """Raises ValueError (one line, with a suggestion) for a key that ``KEYS`` does not declare."""
  for name in config.keys():
    if name not in KEYS_BY_NAME:
      close = difflib.get_close_matches(name, KEYS_BY_NAME, n=1)
      hint = f"; did you mean {close[0]!r}?" if close else ""
      raise ValueError(f"unknown config key {name!r}{hint} (list the keys with "
                       "python -m orthohash_jax.main --list_keys)")


def _rules(c):
  """(holds, message) of the checks that involve several keys or the file system."""
  imagenet = c.backbone in IMAGENET_BACKBONES
  return [
      (not c.pretrained_required or c.pretrained,
       f"the {c.backbone} backbone of this config starts from ImageNet weights: convert "
       f"torchvision's file with python -m orthohash_jax.weights --arch={c.backbone} "
       f"--torch=FILE.pth --output=DIR, then pass --config.pretrained=DIR"),
      (not c.pretrained or imagenet,
       f"pretrained weights are for {sorted(IMAGENET_BACKBONES)}, not backbone {c.backbone!r}"),
      (not c.pretrained or os.path.isdir(c.pretrained) or not os.path.exists(c.pretrained),
       f"pretrained {c.pretrained} is a file: give the directory written by python -m "
       f"orthohash_jax.weights --arch={c.backbone} --torch={c.pretrained} --output=DIR"),
      (not c.pretrained or os.path.exists(c.pretrained),
       f"pretrained directory {c.pretrained} does not exist"),
      (c.init == "torch" or not imagenet,
       f"init {c.init!r} is for mlp / cnn / cnn_gap: backbone {c.backbone} is initialised as "
       "torchvision's (init 'torch')"),
      (c.stem_stride == 1 or c.backbone in ("cnn", "cnn_gap"),
       f"stem_stride is a setting of backbone cnn / cnn_gap, not {c.backbone!r}: leave it at 1"),
      (not c.export_faiss or c.num_bits % 8 == 0,
       f"export_faiss needs num_bits divisible by 8, got {c.num_bits}"),
      (c.codebook != "hadamard" or c.num_bits & (c.num_bits - 1) == 0,
       f"the hadamard codebook needs num_bits a power of two, got {c.num_bits}"),
      (c.pixel_norm != "imagenet" or c.image_mode == "RGB",
       f"pixel_norm 'imagenet' needs image_mode 'RGB', got {c.image_mode!r}"),
  ]


def validate(config) -> None:
  """Raises ValueError with a one-line message for an unknown key, a value its key does not
  allow, or keys that do not work together. Nothing after this checks config values again:
  loaders, models and the trainer trust a validated config."""
  check_known_keys(config)
  for key in KEYS:
    message = key.error(config[key.name])
    if message:
      raise ValueError(message)
  for holds, message in _rules(config):
    if not holds:
      raise ValueError(message)
  for key in KEYS:
    if key.losses and config.loss not in key.losses and config[key.name] != key.default:
      raise ValueError(f"{key.name} is a setting of loss {' / '.join(key.losses)}, not of "
                       f"{config.loss!r}: leave it at its default")


MAX_VALUE_CHARS = 10_000  # an override longer than this is refused before it is parsed


def parse_value(key: str, text: str):
  """The value of ``--config.key=text``: a Python literal, else the string itself (``true`` /
  ``false`` for a boolean key); raises ValueError (one line: key, expected type, what was given)
  for a value of the wrong type."""
  declared = KEYS_BY_NAME[key]
  if len(text) > MAX_VALUE_CHARS:
    raise ValueError(f"{key} must be {_TYPE_WORDS[declared.value_type]}, got a value of "
                     f"{len(text)} characters")
  try:
    value = ast.literal_eval(text)
  except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
    value = text  # not a literal (or an unhashable / too deep one): the string itself
  if declared.value_type is bool and text.lower() in ("true", "false"):
    value = text.lower() == "true"
  if declared.value_type is tuple and isinstance(value, list):
    value = tuple(value)
  if declared.value_type is float and _TYPE_CHECKS[int](value):
    value = float(value)
  message = declared.type_error(value)
  if message:
    raise ValueError(message)
  return value


def apply_overrides(config, items) -> None:
  """Sets ``"key=value"`` strings on ``config`` (``parse_value``); raises ValueError (one line)
  for a malformed item, an unknown key or a value of the wrong type."""
  for item in items:
    key, sep, text = item.partition("=")
    if not sep or not key:
      raise ValueError(f"config overrides are key=value, got {shown(item)}")
    check_known_keys({key: None})
    value = parse_value(key, text)
    try:
      setattr(config, key, value)
    except (TypeError, ValueError):  # the config file gave the key a value of another type
      raise ValueError(f"{key} must be {_TYPE_WORDS[KEYS_BY_NAME[key].value_type]} as its "
                       f"config file sets it, got {shown(value)}") from None


def check_labels(config, multilabel: bool) -> None:
  """Refuses (ValueError, one line) settings that cannot apply to data with (``multilabel``) or
  without multi-hot labels: a single-label loss on multi-label data, a multi-label key changed
  on single-label data."""
  if multilabel and config.loss in SINGLE_LABEL_LOSSES:
    takers = [name for name in LOSSES if name not in SINGLE_LABEL_LOSSES]
    raise ValueError(f"loss {config.loss!r} takes single-label data only; multi-label data "
                     f"takes loss {' / '.join(takers)}")
  for key in KEYS:
    if key.multilabel_only and not multilabel and config[key.name] != key.default:
      raise ValueError(f"{key.name} is a setting of multi-label data; dataset "
                       f"{config.dataset!r} is single-label: leave it at its default")


def describe() -> str:
  """One line per key: name, default and description."""
  width = max(len(k.name) for k in KEYS)
  return "\n".join(f"{k.name:<{width}}  {k.default!r:<18} {k.doc}"
                   + (" [may change on resume]" if k.resumable else "") for k in KEYS)


def _variants(path: str):
  """The variants of the config file ``path``: its ``VARIANTS`` tuple, "?" when its
  ``get_config`` takes a parameter but it declares none, or () (read with ast: nothing is
  run)."""
  try:
    with open(path) as f:
      tree = ast.parse(f.read())
  except (OSError, SyntaxError, ValueError):
    return ()
  takes = any(isinstance(node, ast.FunctionDef) and node.name == "get_config"
              and (node.args.args or node.args.vararg) for node in tree.body)
  for node in tree.body:
    if (takes and isinstance(node, ast.Assign)
        and [getattr(t, "id", None) for t in node.targets] == ["VARIANTS"]):
      try:
        return tuple(ast.literal_eval(node.value))
      except ValueError:
        break
  return "?" if takes else ()


def _refuse_variant(path: str, arg: str) -> None:
  """Raises ValueError when ``--config=path:arg`` names a variant of a config that has none,
  naming the configs beside it that have variants, and theirs."""
  if _variants(path):
    return
  directory = os.path.dirname(path) or "."
  others = {name: _variants(os.path.join(directory, name))
            for name in sorted(os.listdir(directory)) if name.endswith(".py")}
  listed = "; ".join(f"{name}: {', '.join(v) if v != '?' else 'see its docstring'}"
                     for name, v in others.items() if v)
  raise ValueError(f"config {path} has no variants: drop ':{arg}'"
                   + (f" (configs with variants: {listed})" if listed else ""))


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """The ConfigDict of a config file, as ``--config=PATH[:ARG]`` gives it (``get_config(ARG)``)."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ValueError(f"config file {path} does not exist")
  if arg:
    _refuse_variant(path, arg)
  module_spec = importlib.util.spec_from_file_location("experiment_config", path)
  if module_spec is None or module_spec.loader is None:
    raise ValueError(f"config file {path} is not a Python file (configs/*.py)")
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
      raise ValueError(f"config file {path} defines no get_config()")
    config = module.get_config(arg) if arg else module.get_config()
  except ValueError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # the file's own error (a typo, a bad import), as one line
    text = str(e).strip().splitlines()
    field = re.match(r"Could not override field '(\w+)' \(reference\)\. (.*) is of original type",
                     text[0] if text else "")
    if isinstance(e, TypeError) and field and field.group(1) in KEYS_BY_NAME:
      key = KEYS_BY_NAME[field.group(1)]  # ml_collections' type check, in our words
      raise ValueError(f"config {path} sets {key.name} to {shown(field.group(2))}: it must be "
                       f"{_TYPE_WORDS[key.value_type]}") from None
    raise ValueError(f"cannot load the config {path}: {type(e).__name__}"
                     + (f": {text[0]}" if text else "")) from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ValueError(f"config file {path}: get_config() must return an ml_collections "
                     f"ConfigDict (config_base.base_config()), got {type(config).__name__}")
  check_known_keys(config)
  return config


# The authors' transforms per list-file dataset (their configs.py): training crop, and the
# shorter side before the evaluation centre crop where it is not the crop's own (224).
PAPER_TRANSFORMS = {
    "imagenet100": {"train_transform": "random_resized_crop"},
    "nuswide": {"train_transform": "resize_random_crop", "train_resize": 256, "eval_resize": 256},
    "coco": {"train_transform": "resize_random_crop", "train_resize": 256},
}


def paper_image_config(dataset: str, eval_topk,
                       variant: str = "alexnet") -> ml_collections.ConfigDict:
  """The category-level setting of the paper's Table 1 with the authors' code defaults: list
  files streamed from disk with their transforms at 224x224, ImageNet normalisation, Adam lr
  1e-4, weight decay 5e-4, lr x0.1 at 80% of 100 epochs, s = 8, m = 0.2 cos, Bernoulli
  codebook. ``variant`` "alexnet" (the paper's): an ImageNet-pretrained AlexNet (``pretrained``
  required: torchvision's alexnet-owt-7be5be79.pth converted by ``python -m
  orthohash_jax.weights``), backbone lr x0.1, batch 256. "small": a small CNN with global
  average pooling behind an 8x8 average-pool stem (its convolutions at 28x28), trained from
  scratch at batch 32 (CPU smoke runs; mAP not comparable with the paper's). ``data_dir`` stays
  unset: the loader reports it."""
  if variant not in ("alexnet", "small"):
    raise ValueError(f"image configs take the variant 'alexnet' or 'small', got {variant!r}")
  c = base_config()
  c.dataset = dataset
  c.eval_topk = eval_topk
  c.update(PAPER_TRANSFORMS[dataset])
  c.backbone = "cnn_gap"
  c.learning_rate = 1e-4
  c.weight_decay = 5e-4
  c.lr_schedule = "step"
  c.batch_size = 32  # CPU-sized (the authors: 256); the small CNN's activations at 224 x 224
  c.num_epochs = 100
  c.steps_per_chunk = 8  # 8 x 32 images of 224 x 224 x 3 uint8 (39 MB) per host call
  c.eval_batch_size = 64
  c.checkpoint_every_steps = 400
  if variant == "alexnet":
    c.update(backbone="alexnet", pretrained_required=True, backbone_lr_scale=0.1,
             batch_size=256, eval_batch_size=256, steps_per_chunk=2)
  else:
    c.stem_stride = 8  # the convolutions at 28 x 28: a 224 x 224 epoch in seconds on CPU
  return c
