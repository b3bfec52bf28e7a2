"""Type stub for the compiled kernels (ext/_core.pyx); imgconv/_pure.py has the same names (a test checks).

The kernels trust their arguments (``imgconv.kernels`` and ``imgconv.record``
check them) and check what depends on the data. ``select_*`` are test-only.
"""
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

# Status codes of unpack_records and unpack_one.
OK: int
TRUNCATED: int
HEADER_MISMATCH: int
CRC_MISMATCH: int
# The record header's layout: record.py asserts that these match HEADER_DTYPE.
HEADER_SIZE: int
LABEL_OFFSET: int
LENGTH_OFFSET: int
CRC_OFFSET: int
CRC32C_IMPL: str
INTERLEAVE_IMPL: str
CRC32C_IMPLS: tuple[str, ...]
INTERLEAVE_IMPLS: tuple[str, ...]

def select_interleave(name: str) -> str: ...
def select_crc32c(name: str) -> str: ...
def chw_to_hwc_into(src: NDArray[np.uint8], dst: NDArray[np.uint8]) -> None: ...
def crc32c(data: NDArray[np.uint8], value: int = ...) -> int: ...
def crc32c_rows(rows: NDArray[np.uint8], out: NDArray[np.uint32]) -> None: ...
def gather_rows(
    data: object,
    offsets: NDArray[np.int64],
    rows: NDArray[np.uint8],
    crcs: NDArray[np.uint32] | None = ...,
    tails: NDArray[np.int64] | None = ...,
) -> int: ...
def pack_uniform(
    headers: NDArray[np.uint8],
    payloads: NDArray[np.uint8],
    out: NDArray[np.uint8],
    positions: NDArray[np.int64] | None = ...,
) -> None: ...
def png_unfilter(data: NDArray[np.uint8], out: NDArray[np.uint8], channels: int) -> int: ...
def unpack_records(
    buffers: Sequence[object],
    sources: NDArray[np.int64],
    offsets: NDArray[np.int64],
    expected: NDArray[np.uint8],
    payloads: NDArray[np.uint8],
    labels: NDArray[np.int64],
    verify: bool,
    positions: NDArray[np.int64] | None = ...,
) -> tuple[int, int]: ...
def unpack_one(
    buffer: object,
    offset: int,
    expected: NDArray[np.uint8],
    payload: NDArray[np.uint8],
    verify: bool,
    position: int | None = ...,
) -> tuple[int, int]: ...
