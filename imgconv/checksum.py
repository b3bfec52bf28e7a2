"""The per-image checksum HDF5 and PNG stores keep: CRC32C of the pixels continued over the label
and the image's position, and the CRC arithmetic that lets a writer bind a checksum to its position
after a worker computed the rest.

For image i with pixels P (its (H, W, C) bytes in C order), label L and
index i (each 8 bytes, little-endian int64) the checksum is
``crc32c(i, crc32c(L, crc32c(P)))``: the CRC of P followed by L and i, so
that a changed label is caught like a changed pixel, and an image found at
another position (a damaged chunk index, offset table or labels file) is
caught too. Format version 2 of those stores left out the position (the
checksum ends at L), version 1 the label too. LMDB records carry their own
CRC32C (:mod:`imgconv.record`), which version 2 records end with their
position the same way.

A CRC32C continued over 8 more bytes is affine over GF(2) in both the CRC and
the bytes, so continuing many CRCs over many integers, or moving a checksum
from one position to another, is a few vectorised table lookups
(:func:`continue_over_int64`, :func:`suffix_change`): a worker computes
what depends on the pixels, and the writer, which alone knows where each
image lands, binds the position.
"""
import functools
import struct
from typing import Any, Sequence, Tuple, Union

import numpy as np

from . import kernels

# Up to this many images (store[i], a short read_batch) direct calls cost
# less than the table lookups of the vectorised continuation.
_FEW = 8

Images = Union[np.ndarray, Sequence[np.ndarray]]


def image_checksums(images: Images, labels: Any, positions: Any = None) -> np.ndarray:
    """The checksum of each image, its label and (unless None) its position: a (N,) uint32 array.

    ``images`` as for :func:`imgconv.kernels.crc32c_images` (an (N, H, W, C)
    array or a list of arrays); ``labels`` N integers; ``positions`` N
    integers, the images' indices in the store, or None for the checksum
    that ends with the label (format version 2, and what a worker computes
    before the writer binds the position). ValueError when the counts differ.
    """
    labels = _int64s(labels)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if positions is not None and len(_int64s(positions)) != len(labels):
        raise ValueError(f"{len(labels)} images but {len(_int64s(positions))} positions")
    if len(labels) <= _FEW:
        return direct_checksums(images, labels, positions)
    crcs = continue_over_int64(kernels.crc32c_images(images), labels)
    return crcs if positions is None else continue_over_int64(crcs, positions)


_INT64 = struct.Struct("<q")


def image_checksum(image: np.ndarray, label: int, position: Any = None) -> int:
    """The checksum of one (H, W, C) uint8 ``image``, its ``label`` and (unless None) its ``position``:
    :func:`image_checksums` of one.

    A few kernel calls and no arrays built: the check of ``store[i]``.
    """
    impl = kernels.implementation()
    crc = impl.crc32c(np.ascontiguousarray(image).reshape(-1), 0)
    crc = impl.crc32c(np.frombuffer(_INT64.pack(label), np.uint8), crc)
    if position is not None:
        crc = impl.crc32c(np.frombuffer(_INT64.pack(position), np.uint8), crc)
    return int(crc)


def direct_checksums(images: Images, labels: Any, positions: Any = None) -> np.ndarray:
    """:func:`image_checksums` by one ``crc32c`` call per image, label and position: the definition."""
    raw = _int64s(labels).view(np.uint8)
    at = None if positions is None else _int64s(positions).view(np.uint8)
    out = np.empty(len(images), np.uint32)
    for j, image in enumerate(images):
        crc = kernels.crc32c(raw[8 * j : 8 * j + 8], kernels.crc32c(np.ascontiguousarray(image)))
        out[j] = crc if at is None else kernels.crc32c(at[8 * j : 8 * j + 8], crc)
    return out


_FEW = 8  # up to this many CRCs, continue_over_int64 calls the kernel per CRC


def continue_over_int64(crcs: np.ndarray, values: Any) -> np.ndarray:
    """Continue each CRC32C in ``crcs`` over its value's 8 bytes (little-endian int64), all at once.

    Continuing a CRC c over 8 bytes b equals K ^ A(c) ^ B(b) with A and B
    linear over GF(2), so both are XORs of per-byte tables (built once from
    ``kernels.crc32c``): a few vectorised table lookups instead of N calls.
    """
    crcs = np.asarray(crcs, np.uint32)
    if crcs.ndim == 1 and len(crcs) <= _FEW:
        value_bytes = _int64s(values).view(np.uint8)
        if len(value_bytes) == 8 * len(crcs):
            # A few kernel calls cost less than the tables' dozen array operations (a one-image store).
            return np.array([kernels.crc32c(value_bytes[8 * j : 8 * j + 8], int(crc)) for j, crc in enumerate(crcs)],
                            np.uint32)
    const, by_crc_byte, _ = _continuation_tables()
    out = np.full(crcs.shape, const, np.uint32)
    for k in range(4):
        out ^= by_crc_byte[k][(crcs >> np.uint32(8 * k)) & np.uint32(0xFF)]
    return out ^ _suffix_term(_int64s(values))


def suffix_change(old: Any, new: Any) -> np.ndarray:
    """What to XOR into the CRC32C of any message ending with 8 bytes ``old`` when they become ``new``.

    ``old`` and ``new`` are int64s (arrays or scalars, little-endian bytes);
    the change does not depend on what comes before them: B(old) ^ B(new) =
    B(old ^ new) for the linear B of :func:`continue_over_int64`. Returns a
    flat uint32 array (one entry per pair; a scalar pairs with every entry).
    """
    return _suffix_term(_int64s(old) ^ _int64s(new))


# The labels' continuation, as earlier versions named it.
continue_over_labels = continue_over_int64


def _int64s(values: Any) -> np.ndarray:
    return np.ascontiguousarray(values, "<i8").reshape(-1)


def _suffix_term(values: np.ndarray) -> np.ndarray:
    """B(v) for each int64 v: the part of a continuation over v that depends on v."""
    _, _, by_value_byte = _continuation_tables()
    value_bytes = values.view(np.uint8).reshape(-1, 8)
    out = np.zeros(len(values), np.uint32)
    for j in range(8):
        out ^= by_value_byte[j][value_bytes[:, j]]
    return out


@functools.cache
def _continuation_tables() -> Tuple[np.uint32, np.ndarray, np.ndarray]:
    zero = bytes(8)
    const = kernels.crc32c(zero, 0)
    by_crc_byte = np.array(
        [[kernels.crc32c(zero, v << (8 * k)) ^ const for v in range(256)] for k in range(4)], np.uint32
    )
    by_value_byte = np.array(
        [[kernels.crc32c(bytes(j) + bytes([v]) + bytes(7 - j), 0) ^ const for v in range(256)] for j in range(8)],
        np.uint32,
    )
    return np.uint32(const), by_crc_byte, by_value_byte


def bind_positions(checksums: np.ndarray, first: int) -> np.ndarray:
    """Checksums of consecutive images ending with their labels, continued over the images'
    positions ``first, first + 1, ...``: what a writer does to the checksums a worker computed."""
    return continue_over_int64(checksums, np.arange(first, first + len(checksums), dtype=np.int64))
