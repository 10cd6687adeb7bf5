"""Shared test set-up: 4 fake CPU devices so mesh code paths run with several devices."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
