"""Build the compiled extensions: ext/_core.pyx becomes imgconv._core, ext/_augment.pyx imgconv._augment.

Everything else (metadata, dependencies, extras) lives in pyproject.toml. The
kernels take typed memoryviews, not the NumPy C API, so the build needs
neither NumPy's headers nor NumPy itself.
"""
import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup


def _compile_args():
    """Optimisation flags for the kernels.

    -O3 against -O2 was measured with `python -m imgconv.bench.kernel_bench` (see
    BENCHMARKS.md). IMGCONV_CFLAGS replaces the defaults, for such measurements.
    """
    if os.environ.get("IMGCONV_CFLAGS"):
        return os.environ["IMGCONV_CFLAGS"].split()
    if sys.platform == "win32":
        return ["/O2"]
    return ["-O3", "-fno-strict-aliasing"]


extensions = [
    Extension(
        "imgconv._core",
        sources=["ext/_core.pyx"],
        include_dirs=["ext"],
        depends=["ext/crc32c.h", "ext/interleave.h"],
        extra_compile_args=_compile_args(),
    ),
    Extension("imgconv._augment", sources=["ext/_augment.pyx"], extra_compile_args=_compile_args()),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "initializedcheck": False,
            "cdivision": True,
        },
    ),
)
