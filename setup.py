"""The one C extension: initprobe._fused, the probe's one-pass statistics for CPU tensors (initprobe/_fused.c).
Optional: where it cannot be built (no C compiler), the package installs without it and the probe uses torch."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("initprobe._fused", ["initprobe/_fused.c"], optional=True,
                             extra_compile_args=["-O3", "-fopenmp"], extra_link_args=["-fopenmp"])])
