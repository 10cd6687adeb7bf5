"""orthohash-jax: OrthoHash deep hashing (Hoe et al., NeurIPS 2021) in JAX / Flax NNX."""
