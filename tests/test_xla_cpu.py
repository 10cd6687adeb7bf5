"""The XLA:CPU option set on import: convolutions (and their gradients) compiled without
YNNPACK, dots still with it, and a user's own XLA_FLAGS setting kept."""
import os

import jax
import jax.numpy as jnp

from orthohash_jax import xla_cpu


def conv(x, k):
  return jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def compiled_text(fn, *args):
  return jax.jit(fn).lower(*args).compile().as_text()


def test_apply_appends_once_and_keeps_a_users_choice():
  env = {}
  xla_cpu.apply(env)
  assert env["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
  xla_cpu.apply(env)
  assert env["XLA_FLAGS"].count("ynn_fusion_type") == 1
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  xla_cpu.apply(env)
  assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2",
                                      f"{xla_cpu.OPTION}={xla_cpu.VALUE}"]
  env = {"XLA_FLAGS": f"{xla_cpu.OPTION}=individual_dot,individual_convolution"}
  xla_cpu.apply(env)
  assert env["XLA_FLAGS"] == f"{xla_cpu.OPTION}=individual_dot,individual_convolution"


def test_this_process_compiles_convolutions_without_ynnpack():
  assert f"{xla_cpu.OPTION}={xla_cpu.VALUE}" in os.environ["XLA_FLAGS"]
  x, k = jnp.ones((2, 32, 32, 64)), jnp.ones((3, 3, 64, 64))
  weight_grad = lambda x, k: jax.vjp(conv, x, k)[1](jnp.ones((2, 32, 32, 64)))
  for fn in (conv, weight_grad):
    text = compiled_text(fn, x, k)
    assert "convolution(" in text and "__ynn_fusion" not in text
  assert "__ynn_fusion" in compiled_text(jnp.matmul, jnp.ones((64, 256)), jnp.ones((256, 128)))
