"""Config keys from strings (``config_base.apply_overrides``): unknown keys and bad values."""
import pytest

from orthohash_jax import config_base


def test_overrides_reject_unknown_keys_and_bad_values():
  config = config_base.base_config()
  with pytest.raises(ValueError, match="unknown config key 'num_bitz'; did you mean 'num_bits'"):
    config_base.apply_overrides(config, ["num_bitz=8"])
  with pytest.raises(ValueError, match="bad value for num_bits: 'abc'"):
    config_base.apply_overrides(config, ["num_bits=abc"])
  with pytest.raises(ValueError, match="key=value"):
    config_base.apply_overrides(config, ["num_bits"])
  config_base.apply_overrides(config, ["num_bits=8", "hidden=(4, 4)", "loss=ce"])
  assert (config.num_bits, tuple(config.hidden), config.loss) == (8, (4, 4), "ce")
