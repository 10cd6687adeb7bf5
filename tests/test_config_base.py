"""Config keys: each key's allowed values are exactly what the module that implements it knows,
and validation rejects what its declaration forbids (one line, before any data is read)."""
import os

import pytest

from conftest import ROOT
from orthohash_jax import backbones, codebook, config_base, losses, methods, models, trainer
from orthohash_jax import data as data_lib
from orthohash_jax.data import streaming, transforms

# key -> the table of the module that implements its values
OWNERS = {
    "dataset": data_lib.SOURCES, "backbone": models.BACKBONES, "init": models.INITS,
    "compute_dtype": models.COMPUTE_DTYPES, "loss": methods.METHODS, "codebook": codebook.METHODS,
    "margin_type": losses.MARGIN_TYPES, "multilabel_loss": losses.MULTILABEL_LOSSES,
    "quantization_kind": losses.QUANTIZATION_KINDS, "lr_schedule": trainer.LR_SCHEDULES,
    "train_transform": transforms.KINDS, "image_mode": transforms.MODES,
    "pixel_norm": streaming.PIXEL_NORMS,
    "eval_transform": [k for k in transforms.KINDS if k not in transforms.RANDOM_KINDS],
}


@pytest.mark.parametrize("name", sorted(OWNERS))
def test_allowed_values_equal_the_owning_table(name):
  assert sorted(config_base.KEYS_BY_NAME[name].allowed) == sorted(OWNERS[name])


def test_every_key_with_a_fixed_set_of_values_has_an_owner():
  assert {k.name for k in config_base.KEYS if k.allowed} == set(OWNERS)
  assert sorted(config_base.IMAGENET_BACKBONES) == sorted(backbones.BACKBONES)


def test_defaults_are_valid():
  config_base.validate(config_base.base_config())


@pytest.mark.parametrize("key", [k for k in config_base.KEYS if k.allowed or k.check])
def test_each_declared_check_rejects_a_bad_value_in_one_line(key):
  config = config_base.base_config()
  bad = "no-such-value" if key.allowed else -1
  if key.name == "revisited":
    bad = "data/roxf"  # no ':name'
  if key.name == "profile_steps":
    bad = "4:2"  # B before A
  if key.value_type is tuple:
    bad = (-1,)
  with config.unlocked():
    config[key.name] = bad
  with pytest.raises(ValueError) as e:
    config_base.validate(config)
  assert str(e.value).startswith(f"{key.name} must be ") and "\n" not in str(e.value)


@pytest.mark.parametrize("overrides,message", [
    ({"eval_transform": "random_resized_crop"}, "eval_transform must be one of"),
    ({"pixel_norm": "imagenet", "image_mode": "L"}, "needs image_mode 'RGB'"),
    ({"backbone": "alexnet", "init": "flax"}, "initialised as torchvision's"),
    ({"pretrained": "/nonexistent/dir"}, "pretrained weights are for"),
    ({"backbone": "alexnet", "pretrained": "/nonexistent/dir"}, "does not exist"),
    ({"backbone": "alexnet", "pretrained_required": True}, "starts from ImageNet weights"),
    ({"backbone": "mlp", "stem_stride": 4}, "stem_stride is a setting of backbone cnn / cnn_gap"),
])
def test_rules_between_keys(overrides, message):
  config = config_base.base_config()
  config.update(overrides)
  with pytest.raises(ValueError, match=message):
    config_base.validate(config)


def test_a_pth_file_as_pretrained_says_to_convert_it(tmp_path):
  pth = tmp_path / "alexnet-owt-7be5be79.pth"
  pth.write_bytes(b"not a directory")
  config = config_base.base_config()
  config.update(backbone="alexnet", pretrained=str(pth))
  with pytest.raises(ValueError, match=r"is a file: give the directory written by python -m "
                     r"orthohash_jax.weights --arch=alexnet"):
    config_base.validate(config)


def test_overrides_read_literals_booleans_and_strings():
  config = config_base.base_config()
  config_base.apply_overrides(config, ["num_bits=32", "use_bn=false", "loss=ce",
                                       "hidden=(64,)", "eval_topk=None"])
  assert (config.num_bits, config.use_bn, config.loss, config.hidden, config.eval_topk) == (
      32, False, "ce", (64,), None)


def test_overrides_reject_unknown_keys_and_bad_values():
  config = config_base.base_config()
  with pytest.raises(ValueError, match="unknown config key 'num_bitz'; did you mean 'num_bits'"):
    config_base.apply_overrides(config, ["num_bitz=8"])
  with pytest.raises(ValueError, match="num_bits must be an integer, got 'abc'"):
    config_base.apply_overrides(config, ["num_bits=abc"])
  with pytest.raises(ValueError, match="key=value"):
    config_base.apply_overrides(config, ["num_bits"])
  with pytest.raises(ValueError, match="chunk_seconds must be a finite number, got inf"):
    config_base.apply_overrides(config, ["chunk_seconds=1e400"])  # a literal, infinite
  config_base.apply_overrides(config, ["num_bits=8", "hidden=(4, 4)", "loss=ce"])
  assert (config.num_bits, tuple(config.hidden), config.loss) == (8, (4, 4), "ce")


@pytest.mark.parametrize("key,value,message", [
    ("num_bits", "abc", "num_bits must be an integer, got 'abc'"),
    ("num_bits", 2.5, "num_bits must be an integer, got 2.5"),
    ("batch_size", True, "batch_size must be an integer, got True"),
    ("learning_rate", "fast", "learning_rate must be a finite number, got 'fast'"),
    ("learning_rate", float("inf"), "learning_rate must be a finite number, got inf"),
    ("chunk_seconds", float("nan"), "chunk_seconds must be a finite number, got nan"),
    ("use_bn", "yes", "use_bn must be true or false, got 'yes'"),
    ("hidden", 512, r"hidden must be a tuple such as \(512, 512\), got 512"),
    ("seed", 2 ** 32, r"seed must be an integer in \[0, 2\*\*32 - 1\]"),
    ("seed", -1, r"seed must be an integer in \[0, 2\*\*32 - 1\]"),
    ("split_seed", 10 ** 20, r"split_seed must be an integer in \[0, 2\*\*32 - 1\]"),
])
def test_a_value_of_the_wrong_type_or_range_is_one_line_naming_key_and_value(key, value, message):
  """As a config file or a resumed config.json sets them (not through ``apply_overrides``)."""
  config = config_base.base_config()
  with config.ignore_type():
    config[key] = value
  with pytest.raises(ValueError, match=message) as e:
    config_base.validate(config)
  assert "\n" not in str(e.value)


def test_a_config_file_setting_a_value_of_the_wrong_type_is_named_in_our_words(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("from orthohash_jax.config_base import base_config\n"
                 "def get_config():\n  c = base_config()\n  c.num_bits = 'x'\n  return c\n")
  with pytest.raises(ValueError) as e:
    config_base.load_config_file(str(bad))
  assert str(e.value) == f"config {bad} sets num_bits to 'x': it must be an integer"


def test_a_config_file_returning_something_else_is_one_line(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config():\n  return [1]\n")
  with pytest.raises(ValueError, match="get_config\\(\\) must return an ml_collections ConfigDict"):
    config_base.load_config_file(str(bad))


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(ROOT, "configs"))))
def test_the_declared_variants_of_each_config_are_what_it_loads(name):
  """``VARIANTS`` (what ``--config=FILE:VARIANT`` errors name) equals what get_config takes."""
  path = os.path.join(ROOT, "configs", name)
  variants = config_base._variants(path)  # pylint: disable=protected-access
  assert variants != "?", f"{name} takes a variant but declares no VARIANTS"
  for variant in variants:
    config_base.load_config_file(f"{path}:{variant}")
  with pytest.raises(ValueError, match="has no variants" if not variants else r"takes? .*"
                     r"no_such_variant"):
    config_base.load_config_file(f"{path}:no_such_variant")
