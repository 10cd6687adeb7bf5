"""orthohash-jax: OrthoHash deep hashing (Hoe et al., NeurIPS 2021) in JAX / Flax NNX."""
from orthohash_jax import xla_cpu

xla_cpu.apply()  # before JAX compiles anything: convolutions on CPU through Eigen (see xla_cpu)
