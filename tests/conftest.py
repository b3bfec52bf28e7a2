"""Shared fixtures: every kernel test runs against both implementations; a directory other users reach."""
import importlib
import os
import shutil
import tempfile

import pytest

from imgconv import kernels


def _compiled():
    try:
        return importlib.import_module("imgconv._core")
    except ImportError as exc:
        pytest.fail(
            f"the compiled core imgconv._core is not built ({exc}); run `pip install -e .` "
            "(set IMGCONV_PURE=1 to test the NumPy kernels alone)"
        )


@pytest.fixture(params=kernels.BACKENDS)
def backend(request):
    """Make the kernels of ``imgconv.kernels`` the compiled or the NumPy ones for one test."""
    if request.param == "compiled":
        if kernels.BACKEND == "numpy" and kernels._flag("IMGCONV_PURE"):
            pytest.skip("IMGCONV_PURE=1: the NumPy kernels alone are under test")
        _compiled()
    previous = kernels.use_backend(request.param)
    yield request.param
    kernels.use_backend(previous)


@pytest.fixture
def shared_dir():
    """A directory outside pytest's private tmp tree (tmp_path is private to root), so another user can reach it."""
    path = tempfile.mkdtemp(prefix="imgconv-test-")
    os.chmod(path, 0o755)
    yield path
    for d, _, _ in os.walk(path):
        os.chmod(d, 0o755)
    shutil.rmtree(path)
