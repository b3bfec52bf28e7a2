"""The kernels imgconv runs, compiled or pure NumPy, behind one set of functions.

The compiled module ``imgconv._core`` (built from ``ext/_core.pyx`` by
``pip install``) is used when it imports; otherwise the NumPy reference in
``imgconv._pure`` stands in and a warning says how to build the fast one.

Environment switches, read once at import:

``IMGCONV_PURE=1``
    use the NumPy kernels even when the compiled ones are built.
``IMGCONV_REQUIRE_EXT=1``
    a missing or broken compiled module is an error instead of a warning.

``BACKEND`` is ``"compiled"`` or ``"numpy"``; ``CRC32C_IMPL`` names the
checksum code in use (``"pclmul"``, ``"sse4.2"``, ``"slice-by-8"`` or
``"numpy"``).

The functions here check their arguments and raise ``TypeError`` or
``ValueError`` naming the problem; the kernels behind them do not. The record
kernels (pack, unpack, gather) have their checked wrapper in
``imgconv.record``, which defines the layout they work on.
"""
from __future__ import annotations

import os
import types
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import _pure
from .errors import ExtensionMissingError

BACKENDS = ("compiled", "numpy")


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _compiled_module() -> types.ModuleType:
    from . import _core

    return _core


def _load_backend() -> tuple[types.ModuleType, str]:
    if _flag("IMGCONV_PURE"):
        if _flag("IMGCONV_REQUIRE_EXT"):
            raise ExtensionMissingError(
                "IMGCONV_PURE=1 and IMGCONV_REQUIRE_EXT=1 contradict each other; unset one"
            )
        return _pure, "numpy"
    try:
        core = _compiled_module()
    except ImportError as exc:
        if _flag("IMGCONV_REQUIRE_EXT"):
            raise ExtensionMissingError(
                f"imgconv's compiled core (imgconv._core) cannot be imported: {exc}. "
                "Build it with `pip install -e .` in the source tree, or unset IMGCONV_REQUIRE_EXT."
            ) from exc
        warnings.warn(
            "imgconv's compiled core is not built, so the much slower NumPy kernels are in use. "
            "Build it with `pip install .` (or `pip install -e .` in a source checkout); "
            "set IMGCONV_PURE=1 to choose the NumPy kernels and silence this warning.",
            RuntimeWarning,
            stacklevel=3,
        )
        return _pure, "numpy"
    return core, "compiled"


_impl, BACKEND = _load_backend()
CRC32C_IMPL: str = _impl.CRC32C_IMPL


def implementation() -> types.ModuleType:
    """The module whose kernels are in use (``imgconv._core`` or ``imgconv._pure``)."""
    return _impl


def use_backend(name: str) -> str:
    """Run every kernel on ``name`` (``"compiled"`` or ``"numpy"``) from now on; returns the backend before.

    For tests only, which run the same checks on both backends: it changes
    process-wide state under any code running at the time and is not
    thread-safe. ``BACKEND`` and ``CRC32C_IMPL`` follow the switch, as does
    every :class:`imgconv.record.Gather` made after it (one made before keeps
    its kernels). Raises ValueError for another name, ImportError when the
    compiled core is not built.
    """
    global _impl, BACKEND, CRC32C_IMPL
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    impl = _compiled_module() if name == "compiled" else _pure
    previous = BACKEND
    _impl, BACKEND, CRC32C_IMPL = impl, name, impl.CRC32C_IMPL
    return previous


def _require_uint8(name: str, array: Any) -> None:
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(array).__name__}")
    if array.dtype != np.uint8:
        raise TypeError(f"{name} must have dtype uint8, got {array.dtype}")


def _check_image_shape(height: int, width: int, channels: int) -> tuple[int, int, int]:
    for name, value in (("height", height), ("width", width), ("channels", channels)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(height), int(width), int(channels)


def chw_to_hwc(rows: NDArray[np.uint8], height: int = 32, width: int = 32, channels: int = 3) -> NDArray[np.uint8]:
    """Turn rows of colour planes into images.

    ``rows`` is a uint8 array (N, C*H*W) in which each row holds all of the
    first channel, then all of the second, and so on (CIFAR's layout). Returns a
    new C-contiguous (N, H, W, C) uint8 array.

    Raises TypeError for a non-array or a dtype other than uint8, ValueError
    for a row length that is not ``channels * height * width``.
    """
    _require_uint8("rows", rows)
    height, width, channels = _check_image_shape(height, width, channels)
    _check_rows(rows, height * width * channels, f"{height}x{width}x{channels}")
    out = np.empty((rows.shape[0], height, width, channels), np.uint8)
    return chw_to_hwc_into(rows, out)


def _check_rows(rows: NDArray[np.uint8], row_bytes: int, shape_text: str) -> None:
    if rows.ndim != 2:
        raise ValueError(f"rows must be 2-D (N, C*H*W), got shape {rows.shape}")
    if rows.shape[1] != row_bytes:
        raise ValueError(
            f"row length {rows.shape[1]} does not match the image shape {shape_text} = {row_bytes} bytes"
        )


def chw_to_hwc_into(rows: NDArray[np.uint8], out: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Like :func:`chw_to_hwc`, writing into ``out`` instead of allocating.

    ``out`` must be a writeable, C-contiguous uint8 array of shape
    (N, H, W, C) with N the number of rows and C*H*W the row length, and must
    not overlap ``rows``. The copy runs without the GIL. Returns ``out``.
    """
    _require_uint8("rows", rows)
    _require_uint8("out", out)
    if out.ndim != 4:
        raise ValueError(f"out must be 4-D (N, H, W, C), got shape {out.shape}")
    n, height, width, channels = out.shape
    _check_rows(rows, height * width * channels, f"{height}x{width}x{channels}")
    if n != rows.shape[0]:
        kind = "too small" if n < rows.shape[0] else "too large"
        raise ValueError(f"out is {kind}: it holds {n} images, rows has {rows.shape[0]}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be a writeable C-contiguous array")
    if np.may_share_memory(rows, out):
        raise ValueError("out must not overlap rows")
    _impl.chw_to_hwc_into(np.ascontiguousarray(rows), out)
    return out


def as_bytes(data: Any, name: str = "data") -> NDArray[np.uint8]:
    """View ``data`` (bytes, bytearray, memoryview, NumPy array) as a 1-D uint8 array, without copying."""
    if isinstance(data, np.ndarray):
        if not data.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
        return data.reshape(-1).view(np.uint8)
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"{name} must be a bytes-like object or array, got {type(data).__name__}") from None
    if not view.c_contiguous:
        raise ValueError(f"{name} must be a contiguous buffer")
    return np.frombuffer(view.cast("B") if view.format != "B" or view.ndim != 1 else view, np.uint8)


def crc32c(data: Any, value: int = 0) -> int:
    """CRC32C (Castagnoli) of a bytes-like object or array, continuing from ``value``.

    ``crc32c(b"123456789") == 0xE3069283``; ``crc32c(b, crc32c(a)) == crc32c(a + b)``.
    """
    if not 0 <= int(value) <= 0xFFFFFFFF:
        raise ValueError(f"value must be a 32-bit unsigned CRC, got {value}")
    return int(_impl.crc32c(as_bytes(data), int(value)))


def crc32c_images(images: NDArray[Any] | Sequence[NDArray[Any]]) -> NDArray[np.uint32]:
    """The CRC32C of each image's pixel bytes: a (N,) uint32 array.

    ``images`` is an (N, ...) array or a sequence of arrays (sizes may
    differ); each image's bytes are taken in C order. Stores keep these
    checksums to find damaged images.
    """
    if isinstance(images, np.ndarray):
        n = images.shape[0] if images.ndim else 0
        rows = np.ascontiguousarray(images).reshape(n, -1).view(np.uint8) if n else np.zeros((0, 0), np.uint8)
        out = np.empty(n, np.uint32)
        _impl.crc32c_rows(rows, out)
        return out
    return np.array([crc32c(np.ascontiguousarray(image)) for image in images], np.uint32)


def gather_rows(data: Any, offsets: Any, rows: NDArray[np.uint8], crcs: NDArray[np.uint32] | None = None,
                tails: Any = None) -> int:
    """Copy row i of ``rows`` from bytes ``offsets[i] ..`` of ``data``, in one call without the GIL.

    ``data`` is bytes-like or a C-contiguous array (a read-only file map is
    one); ``offsets`` holds N integers; ``rows`` is a writeable C-contiguous
    (N, P) uint8 array that must not overlap ``data``. With ``crcs``, a
    writeable contiguous (N,) uint32 array, the CRC32C of each row is written
    there too, computed as it is copied, and continued over the integers of
    its row of ``tails`` ((N, M) integers, each taken as 8 little-endian
    bytes) when given: a store's image checksum continues over the label and
    the position (:mod:`imgconv.checksum`). Returns the index of the first
    row whose bytes do not lie inside ``data`` (the rows before it are
    written), or -1. TypeError or ValueError for unfit arguments.
    """
    _require_uint8("rows", rows)
    if rows.ndim != 2 or not rows.flags.c_contiguous or not rows.flags.writeable:
        raise ValueError("rows must be a writeable C-contiguous (N, P) array")
    n = rows.shape[0]
    offsets = np.ascontiguousarray(offsets, np.int64)
    if offsets.shape != (n,):
        raise ValueError(f"offsets must hold {n} integers, got shape {offsets.shape}")
    source = as_bytes(data, "data")
    if crcs is not None:
        if (not isinstance(crcs, np.ndarray) or crcs.dtype != np.uint32 or crcs.shape != (n,)
                or not crcs.flags.c_contiguous or not crcs.flags.writeable):
            raise ValueError(f"crcs must be a writeable contiguous uint32 array of shape ({n},)")
        if np.may_share_memory(crcs, rows) or np.may_share_memory(crcs, source):
            raise ValueError("crcs must not overlap rows or data")
    if tails is not None:
        if crcs is None:
            raise ValueError("tails continue the checksums: they need crcs")
        tails = np.ascontiguousarray(tails, np.int64)
        if tails.ndim != 2 or tails.shape[0] != n:
            raise ValueError(f"tails must be an (N, M) array of integers with N = {n}, got shape {tails.shape}")
    if np.may_share_memory(source, rows):
        raise ValueError("rows must not overlap data")
    return int(_impl.gather_rows(source, offsets, rows, crcs, tails))


def png_unfilter(data: Any, out: NDArray[np.uint8], channels: int) -> int:
    """Undo the row filters of an 8-bit, non-interlaced PNG image, in one call without the GIL.

    ``data`` (bytes-like or a uint8 array) is the inflated image data: exactly
    H rows of ``1 + W * channels`` bytes, each a filter type (0 None, 1 Sub,
    2 Up, 3 Average, 4 Paeth) then the filtered bytes; ``out`` is a writeable
    C-contiguous (H, W * channels) uint8 array that receives the pixels and
    must not overlap ``data``. Returns the index of the first row whose filter
    type is not 0..4 (the rows before it are written), or -1. TypeError or
    ValueError for unfit arguments.
    """
    _require_uint8("out", out)
    if out.ndim != 2 or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be a writeable C-contiguous (H, W * channels) array")
    if not isinstance(channels, (int, np.integer)) or isinstance(channels, bool) or channels < 1:
        raise ValueError(f"channels must be a positive integer, got {channels!r}")
    if out.shape[1] % channels:
        raise ValueError(f"out's rows of {out.shape[1]} bytes are not whole pixels of {channels} bytes")
    source = as_bytes(data, "data")
    expected = out.shape[0] * (out.shape[1] + 1)
    if source.shape[0] != expected:
        raise ValueError(f"data holds {source.shape[0]} bytes, {out.shape[0]} rows of 1 + {out.shape[1]} "
                         f"are {expected}")
    if np.may_share_memory(source, out):
        raise ValueError("out must not overlap data")
    return int(_impl.png_unfilter(source, out, int(channels)))
