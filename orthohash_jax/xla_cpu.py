"""The XLA:CPU option the package sets before JAX starts its CPU backend.

jaxlib 0.10 hands every convolution to YNNPACK (``--xla_cpu_experimental_ynn_fusion_type``
includes ``individual_convolution`` by default). Its weight gradient of a 3x3 convolution at a
large image side, which XLA expresses as a convolution whose window is the whole image
(224x224 for VGG16's first layers), ran ~16x slower than Eigen's; VGG16's training step ran at
0.38 images/s against PyTorch's 0.76, and at 1.09 with Eigen (ResNet-50: 0.82 -> 2.17-2.45).
``-individual_convolution`` leaves convolutions to Eigen and keeps the other YNNPACK fusions
(dots); figures: docs/performance.md (bench_layers, bench_backbones).

``apply`` appends the option to ``XLA_FLAGS`` unless the variable already names
``xla_cpu_experimental_ynn_fusion_type`` (a user's own choice wins). It must run before JAX
compiles anything (``orthohash_jax/__init__`` calls it on import); later it has no effect
(only speed differs). ``xla_cpu_*`` options are read by the CPU backend only: GPU and TPU runs
are unchanged. Convolution results on CPU differ from YNNPACK's in the last bits (another
summation order); the MLP configs have no convolution.
"""
import os

OPTION = "--xla_cpu_experimental_ynn_fusion_type"
VALUE = "-individual_convolution"


def apply(environ=os.environ):
  """Adds ``OPTION=VALUE`` to ``environ["XLA_FLAGS"]`` unless it names the option already."""
  flags = environ.get("XLA_FLAGS", "")
  if OPTION not in flags:
    environ["XLA_FLAGS"] = f"{flags} {OPTION}={VALUE}".strip()
