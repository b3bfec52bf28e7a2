"""The per-image checksum HDF5 and PNG stores keep: CRC32C of the pixels continued over the label.

For image i with pixels P (its (H, W, C) bytes in C order) and label L (8
bytes, little-endian int64) the checksum is ``crc32c(L, crc32c(P))``: the CRC
of P followed by L, so a changed label is caught like a changed pixel. LMDB
records carry their own CRC32C (:mod:`imgconv.record`).
"""
import functools
import struct
from typing import Any, Sequence, Tuple, Union

import numpy as np

from . import kernels

# Up to this many images (store[i], a short read_batch) direct calls cost
# less than the table lookups of the vectorised continuation.
_FEW = 8


def image_checksums(images: Union[np.ndarray, Sequence[np.ndarray]], labels: Any) -> np.ndarray:
    """The checksum of each image and its label (see the module docstring): a (N,) uint32 array.

    ``images`` as for :func:`imgconv.kernels.crc32c_images` (an (N, H, W, C)
    array or a list of arrays); ``labels`` N integers. ValueError when the
    counts differ.
    """
    labels = np.ascontiguousarray(labels, "<i8").reshape(-1)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if len(labels) <= _FEW:
        return direct_checksums(images, labels)
    return continue_over_labels(kernels.crc32c_images(images), labels)


_LABEL = struct.Struct("<q")


def image_checksum(image: np.ndarray, label: int) -> int:
    """The checksum of one (H, W, C) uint8 ``image`` and its ``label``: :func:`image_checksums` of one.

    Two kernel calls and no arrays built: the check of ``store[i]``.
    """
    impl = kernels.implementation()
    pixels = impl.crc32c(np.ascontiguousarray(image).reshape(-1), 0)
    return int(impl.crc32c(np.frombuffer(_LABEL.pack(label), np.uint8), pixels))


def direct_checksums(images: Union[np.ndarray, Sequence[np.ndarray]], labels: Any) -> np.ndarray:
    """:func:`image_checksums` by one ``crc32c`` call per image and per label: the definition."""
    raw = np.ascontiguousarray(labels, "<i8").reshape(-1).view(np.uint8)
    return np.array([kernels.crc32c(raw[8 * j : 8 * j + 8], kernels.crc32c(np.ascontiguousarray(image)))
                     for j, image in enumerate(images)], np.uint32)


def continue_over_labels(crcs: np.ndarray, labels: Any) -> np.ndarray:
    """Continue each CRC32C in ``crcs`` over its label's 8 bytes, all at once.

    CRC32C is affine over GF(2): continuing a CRC c over 8 bytes b equals
    K ^ A(c) ^ B(b) with A and B linear, so both are XORs of per-byte
    tables (built once from ``kernels.crc32c``), and the continuation is a
    few vectorised table lookups instead of N calls.
    """
    const, by_crc_byte, by_label_byte = _continuation_tables()
    out = np.full(crcs.shape, const, np.uint32)
    for k in range(4):
        out ^= by_crc_byte[k][(crcs >> np.uint32(8 * k)) & np.uint32(0xFF)]
    label_bytes = np.ascontiguousarray(labels, "<i8").view(np.uint8).reshape(-1, 8)
    for j in range(8):
        out ^= by_label_byte[j][label_bytes[:, j]]
    return out


@functools.cache
def _continuation_tables() -> Tuple[np.uint32, np.ndarray, np.ndarray]:
    zero = bytes(8)
    const = kernels.crc32c(zero, 0)
    by_crc_byte = np.array(
        [[kernels.crc32c(zero, v << (8 * k)) ^ const for v in range(256)] for k in range(4)], np.uint32
    )
    by_label_byte = np.array(
        [[kernels.crc32c(bytes(j) + bytes([v]) + bytes(7 - j), 0) ^ const for v in range(256)] for j in range(8)],
        np.uint32,
    )
    return np.uint32(const), by_crc_byte, by_label_byte
