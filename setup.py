"""The one C extension: initprobe._fused, the probe's one-pass statistics for CPU tensors (initprobe/_fused.c).

Optional at two levels: built with OpenMP where the compiler has it (gcc), serially where it has not (Apple clang
without libomp), and left out where there is no C compiler at all; the probe then uses torch calls."""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP = ("-fopenmp",)


class BuildExt(build_ext):
    """Try the build with OpenMP; if the compiler or linker refuses it, build again without."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception:  # noqa: BLE001  (CompileError, LinkError: their classes differ between setuptools versions)
            if not any(flag in ext.extra_compile_args for flag in OPENMP):
                raise
            ext.extra_compile_args = [a for a in ext.extra_compile_args if a not in OPENMP]
            ext.extra_link_args = [a for a in ext.extra_link_args if a not in OPENMP]
            self.announce("initprobe._fused: the compiler has no OpenMP; building it single-threaded", level=3)
            super().build_extension(ext)


setup(ext_modules=[Extension("initprobe._fused", ["initprobe/_fused.c"], optional=True,
                             extra_compile_args=["-O3", *OPENMP], extra_link_args=[*OPENMP])],
      cmdclass={"build_ext": BuildExt})
