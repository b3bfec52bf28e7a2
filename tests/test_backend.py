"""Choosing the compiled or the NumPy kernels, and the switches that force either."""
import json
import os
import subprocess
import sys

import pytest

import imgconv

# Makes `import imgconv._core` fail, as in a source checkout that was never built.
HIDE_EXTENSION = """
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "imgconv._core":
            raise ImportError("simulated: extension not built")
sys.meta_path.insert(0, Hide())
"""

REPORT = """
import json, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        import imgconv
        result = {"backend": imgconv.kernels.BACKEND, "crc": imgconv.kernels.CRC32C_IMPL}
    except Exception as exc:
        result = {"error": type(exc).__name__, "message": str(exc),
                  "is_import_error": isinstance(exc, ImportError)}
result["warnings"] = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
print(json.dumps(result))
"""


def _run(env_extra, hide=False):
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGCONV_")}
    env.update(env_extra)
    code = (HIDE_EXTENSION if hide else "") + REPORT
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_default_uses_the_compiled_core_silently():
    result = _run({})
    assert result == {"backend": "compiled", "crc": result["crc"], "warnings": []}
    assert result["crc"] in ("pclmul", "sse4.2", "slice-by-8")


def test_pure_switch_forces_numpy_without_warning():
    assert _run({"IMGCONV_PURE": "1"}) == {"backend": "numpy", "crc": "numpy", "warnings": []}


def test_missing_extension_falls_back_with_a_warning_that_says_how_to_build():
    result = _run({}, hide=True)
    assert result["backend"] == "numpy"
    assert len(result["warnings"]) == 1 and "pip install" in result["warnings"][0]


def test_require_switch_makes_a_missing_extension_an_error():
    result = _run({"IMGCONV_REQUIRE_EXT": "1"}, hide=True)
    assert result["error"] == "ExtensionMissingError" and result["is_import_error"]
    assert "simulated: extension not built" in result["message"] and "pip install -e ." in result["message"]
    assert _run({"IMGCONV_REQUIRE_EXT": "1"})["backend"] == "compiled"


def test_contradictory_switches_are_refused():
    result = _run({"IMGCONV_PURE": "1", "IMGCONV_REQUIRE_EXT": "1"})
    assert result["error"] == "ExtensionMissingError" and "contradict" in result["message"]


def test_switching_the_backend_switches_every_name_that_reports_it():
    pytest.importorskip("imgconv._core")
    from imgconv import _core, _pure

    start = imgconv.kernels.BACKEND
    try:
        assert imgconv.kernels.use_backend("numpy") == start
        assert (imgconv.kernels.BACKEND, imgconv.kernels.CRC32C_IMPL) == ("numpy", "numpy")
        assert imgconv.kernels.implementation() is _pure
        assert imgconv.kernels.use_backend("compiled") == "numpy"
        assert (imgconv.kernels.BACKEND, imgconv.kernels.CRC32C_IMPL) == ("compiled", _core.CRC32C_IMPL)
        assert imgconv.kernels.implementation() is _core
        with pytest.raises(ValueError, match="compiled, numpy"):
            imgconv.kernels.use_backend("fortran")
        assert imgconv.kernels.BACKEND == "compiled"
    finally:
        imgconv.kernels.use_backend(start)


def test_the_backend_fixture_reports_the_backend_it_chose(backend):
    assert imgconv.kernels.BACKEND == backend
    assert imgconv.kernels.CRC32C_IMPL == imgconv.kernels.implementation().CRC32C_IMPL
    assert (imgconv.kernels.CRC32C_IMPL == "numpy") == (backend == "numpy")


def test_backends_write_identical_records():
    code = (
        "import numpy as np, imgconv, sys;"
        "imgs = np.random.default_rng(5).integers(0, 256, (50, 8, 8, 3), dtype=np.uint8);"
        "sys.stdout.write(imgconv.record.pack_records(imgs, np.arange(50)).buffer.tobytes().hex())"
    )
    outputs = []
    for extra in ({}, {"IMGCONV_PURE": "1"}):
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMGCONV_")} | extra
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1] and len(outputs[0]) > 0
