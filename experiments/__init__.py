"""Experiments and benchmarks, run from the repository root as ``python -m experiments.NAME``."""
