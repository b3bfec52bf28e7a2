"""The binary record: one image and its label, replacing a pickle per image.

A record is a 32-byte little-endian header followed by the pixel payload::

    offset size type    field
         0    4 bytes   magic, b"IMGR"
         4    1 u8      format version, 1 or 2
         5    1 u8      dtype code: 1 uint8, 2 uint16 (LE), 3 float32 (LE)
         6    2 u16     channels  (C)
         8    4 u32     height    (H)
        12    4 u32     width     (W)
        16    8 i64     label
        24    4 u32     payload length in bytes = H * W * C * itemsize
        28    4 u32     CRC32C of bytes 0..27 followed by the payload
                        (version 2: and then by the record's position, 8 bytes)
        32    -         payload: pixels in (H, W, C) C order

Records are laid back to back in a batch buffer with no padding. The checksum
covers the header too, so a flipped label or shape is caught like a flipped
pixel. A version 2 record is bound to its position (the index of its image
in a store): its checksum ends with it, so a record read where another
belongs fails its check like a damaged one, and checking it costs one more
8-byte CRC step. FORMAT.md is the full specification, including how
versions evolve.

This module is the one wrapper of the record kernels (``imgconv._core`` or
its NumPy twin ``imgconv._pure``, chosen by ``imgconv.kernels``): it checks
the arguments, the kernels check the data. ``pack_records`` and
``unpack_records`` work on whole batches of any form; ``unpack_record`` and
``read_header`` handle one record of any shape; :class:`Gather` is the
prepared fast path for a reader that decodes records of one known shape over
and over; :func:`reposition` moves packed version 2 records to other
positions. Every malformed record raises :class:`RecordError`.
"""
from __future__ import annotations

import functools
import operator
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple, Union

import numpy as np
from numpy.typing import DTypeLike, NDArray

from . import _pure, kernels
from .checksum import suffix_change
from .errors import RecordError

#: What the record functions take as a buffer: bytes, bytearray, memoryview or a C-contiguous NumPy array.
Buffer = Union[bytes, bytearray, memoryview, np.ndarray]

MAGIC = b"IMGR"
#: The newest record version: 2, whose checksum ends with the record's position.
VERSION = 2
#: Every version this module reads: 1 (a record on its own) and 2 (bound to a position).
VERSIONS = (1, 2)
HEADER_SIZE = 32

HEADER_DTYPE = np.dtype(
    [
        ("magic", "S4"),
        ("version", "u1"),
        ("dtype", "u1"),
        ("channels", "<u2"),
        ("height", "<u4"),
        ("width", "<u4"),
        ("label", "<i8"),
        ("length", "<u4"),
        ("crc", "<u4"),
    ]
)
# The same layout for one header at a time: struct is ~10x quicker than a
# structured-array view for a single record.
_HEADER_STRUCT = struct.Struct("<4sBBHIIqII")
assert HEADER_DTYPE.itemsize == HEADER_SIZE == _HEADER_STRUCT.size
# The kernels keep the header offsets as constants of their own, which must be
# these, and report a bad record by status codes, which must be the same in both.
_OFFSETS = {name: field[1] for name, field in (HEADER_DTYPE.fields or {}).items()}
_KERNEL_CONSTANTS = {
    "HEADER_SIZE": HEADER_SIZE, "LABEL_OFFSET": _OFFSETS["label"], "LENGTH_OFFSET": _OFFSETS["length"],
    "CRC_OFFSET": _OFFSETS["crc"],
    **{name: getattr(_pure, name) for name in ("OK", "TRUNCATED", "HEADER_MISMATCH", "CRC_MISMATCH")},
}
assert all(getattr(impl, k) == v for impl in {_pure, kernels.implementation()} for k, v in _KERNEL_CONSTANTS.items())

DTYPE_CODES: dict[int, np.dtype[Any]] = {1: np.dtype("u1"), 2: np.dtype("<u2"), 3: np.dtype("<f4")}
_CODE_OF = {dtype: code for code, dtype in DTYPE_CODES.items()}



class RecordHeader(NamedTuple):
    """The decoded header of one record; ``dtype`` is a NumPy dtype."""

    version: int
    dtype: np.dtype[Any]
    height: int
    width: int
    channels: int
    label: int
    length: int
    crc: int


class PackedRecords(NamedTuple):
    """N records back to back.

    ``buffer`` is a 1-D uint8 array; record i occupies
    ``buffer[offsets[i]:offsets[i + 1]]`` (``offsets`` has N + 1 entries).
    """

    buffer: NDArray[np.uint8]
    offsets: NDArray[np.int64]


_MAX_DIM = {"height": 0xFFFFFFFF, "width": 0xFFFFFFFF, "channels": 0xFFFF}


def dtype_code(dtype: DTypeLike) -> int:
    """The header's code for ``dtype``; TypeError for a dtype records cannot hold."""
    dtype = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).itemsize > 1 else np.dtype(dtype)
    try:
        return _CODE_OF[dtype]
    except KeyError:
        names = ", ".join(str(d) for d in DTYPE_CODES.values())
        raise TypeError(f"records hold {names} pixels, not {dtype}") from None


def record_size(shape: Sequence[int], dtype: DTypeLike = np.uint8) -> int:
    """Bytes taken by one record of an image of ``shape`` (H, W, C) and ``dtype``."""
    return HEADER_SIZE + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _image_shape(shape: Sequence[int], where: str) -> tuple[tuple[int, int, int], int]:
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3:
        raise ValueError(f"{where}: an image must be (H, W) or (H, W, C), got shape {shape}")
    for name, value in zip(("height", "width", "channels"), shape):
        if not 1 <= value <= _MAX_DIM[name]:
            raise ValueError(f"{where}: {name} {value} is outside 1..{_MAX_DIM[name]}")
    height, width, channels = (int(v) for v in shape)
    return (height, width, channels), height * width * channels


def _labels_array(labels: Any, n: int) -> NDArray[np.int64]:
    try:
        labels = np.asarray(labels)
    except OverflowError:
        raise ValueError("labels must fit in a signed 64-bit integer") from None
    if labels.dtype == object:
        try:
            labels = labels.astype(np.int64)
        except (OverflowError, TypeError, ValueError):
            raise ValueError("labels must be integers that fit in a signed 64-bit integer") from None
    if labels.shape != (n,):
        raise ValueError(f"expected {n} labels, got an array of shape {labels.shape}")
    if labels.dtype.kind not in "iub":
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.dtype.kind == "u" and labels.size and labels.max() > np.iinfo(np.int64).max:
        raise ValueError("labels must fit in a signed 64-bit integer")
    result: NDArray[np.int64] = labels.astype(np.int64)
    return result


def _payload_bytes(length: int, where: str) -> int:
    if length > 0xFFFFFFFF:
        raise ValueError(f"{where}: an image of {length} bytes exceeds the record limit of 4 GiB")
    return length


def _headers(n: int, shape: tuple[tuple[int, int, int], int], dtype: np.dtype[Any],
             labels: NDArray[np.int64], version: int) -> NDArray[np.uint8]:
    (height, width, channels), payload = shape
    headers = np.zeros(n, HEADER_DTYPE)
    headers["magic"] = MAGIC
    headers["version"] = version
    headers["dtype"] = dtype_code(dtype)
    headers["channels"] = channels
    headers["height"] = height
    headers["width"] = width
    headers["label"] = labels
    headers["length"] = _payload_bytes(payload * np.dtype(dtype).itemsize, "images")
    return headers.view(np.uint8).reshape(n, HEADER_SIZE)


def _pixels(image: Any, where: str) -> np.ndarray:
    """``image`` as contiguous little-endian bytes, checked."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{where}: images must be NumPy arrays, got {type(image).__name__}")
    code = dtype_code(image.dtype)
    return np.ascontiguousarray(image, dtype=DTYPE_CODES[code])


def pack_records(images: NDArray[Any] | Sequence[NDArray[Any]], labels: Any, *,
                 positions: Any = None) -> PackedRecords:
    """Pack images and labels into records laid back to back.

    ``images`` is either one array (N, H, W, C) or (N, H, W) of uint8, uint16
    or float32, or a sequence of N arrays (H, W, C) or (H, W) whose shapes may
    differ. ``labels`` holds N integers. ``positions`` binds each record to a
    position (version 2 records, whose checksum ends with it): N integers,
    or one int, the first of N consecutive positions; None (the default)
    packs version 1 records. Returns :class:`PackedRecords`. Raises
    TypeError or ValueError for input records cannot hold.
    """
    if isinstance(images, np.ndarray):
        return _pack_uniform(images, labels, positions)
    images = list(images)
    labels = _labels_array(labels, len(images))
    at = _positions(positions, len(images))
    version = 1 if at is None else 2
    pixels = [_pixels(image, f"image {i}") for i, image in enumerate(images)]
    shapes = [_image_shape(p.shape, f"image {i}") for i, p in enumerate(pixels)]
    sizes = [HEADER_SIZE + _payload_bytes(n * p.dtype.itemsize, f"image {i}")
             for i, ((_, n), p) in enumerate(zip(shapes, pixels))]
    offsets = np.zeros(len(images) + 1, np.int64)
    np.cumsum(sizes, out=offsets[1:])
    buffer = np.empty(int(offsets[-1]), np.uint8)
    impl = kernels.implementation()
    for i, (p, shape) in enumerate(zip(pixels, shapes)):
        header = _headers(1, shape, p.dtype, labels[i : i + 1], version)
        impl.pack_uniform(header, p.reshape(1, -1).view(np.uint8), buffer[offsets[i] : offsets[i + 1]],
                          None if at is None else at[i : i + 1])
    return PackedRecords(buffer, offsets)


def _pack_uniform(images: np.ndarray, labels: Any, positions: Any) -> PackedRecords:
    if images.ndim not in (3, 4):
        raise ValueError(f"images must be (N, H, W, C) or (N, H, W), got shape {images.shape}")
    n = images.shape[0]
    pixels = _pixels(images, "images")
    shape = _image_shape(pixels.shape[1:], "images")
    at = _positions(positions, n)
    headers = _headers(n, shape, pixels.dtype, _labels_array(labels, n), 1 if at is None else 2)
    size = HEADER_SIZE + _payload_bytes(shape[1] * pixels.dtype.itemsize, "images")
    buffer = np.empty(n * size, np.uint8)
    kernels.implementation().pack_uniform(headers, pixels.reshape(n, shape[1]).view(np.uint8), buffer, at)
    return PackedRecords(buffer, np.arange(n + 1, dtype=np.int64) * size)


def _positions(positions: Any, n: int) -> NDArray[np.int64] | None:
    """The (n,) int64 positions records are bound to, from None, a first position or n integers."""
    if positions is None:
        return None
    if isinstance(positions, (int, np.integer)):
        first = int(positions)
        if not -(2**63) <= first <= 2**63 - 1 - n:
            raise ValueError(f"positions {first} .. {first + n - 1} do not fit in a signed 64-bit integer")
        return np.arange(first, first + n, dtype=np.int64)
    return _int64_vector(positions, "positions", n)


def reposition(records: PackedRecords, old: Any, new: Any) -> None:
    """Move packed version 2 records from positions ``old`` to ``new``, in place.

    ``old`` and ``new`` are N integers each, or a first int of N consecutive
    ones. Only the checksums change, by the CRC arithmetic of
    :func:`imgconv.checksum.suffix_change`, without reading the pixels: a
    worker packs a batch at positions 0 .. N-1 and the writer, which alone
    knows where the batch lands, moves it there. The records must be intact
    version 2 records at ``old`` (nothing is checked: a damaged record stays
    damaged, a record at another position becomes one). ValueError for
    positions that do not fit in int64 or counts that differ.
    """
    n = len(records.offsets) - 1
    if n <= 0:
        return
    crc_bytes = (np.asarray(records.offsets[:-1], np.int64)[:, None] + (_OFFSETS["crc"] + np.arange(4))).reshape(-1)
    crcs = records.buffer[crc_bytes].view("<u4") ^ suffix_change(_positions(old, n), _positions(new, n))
    records.buffer[crc_bytes] = crcs.view(np.uint8)


def read_header(buffer: Buffer, offset: int = 0) -> RecordHeader:
    """Decode and check the header of the record at ``offset`` in ``buffer``.

    Checks the magic, version, dtype code, that the payload length matches the
    shape, and that the whole record fits in the buffer (the checksum is left
    to :func:`unpack_record`). Returns a :class:`RecordHeader`.
    """
    return _read_header(kernels.as_bytes(buffer, "buffer"), offset)


def _read_header(data: NDArray[np.uint8], offset: int) -> RecordHeader:
    if offset < 0:
        raise RecordError(f"record offset {offset} is negative")
    left = data.size - offset
    if left < HEADER_SIZE:
        raise RecordError(
            f"truncated record at offset {offset}: {max(left, 0)} bytes left, a header needs {HEADER_SIZE}"
        )
    fields = _HEADER_STRUCT.unpack_from(data, offset)  # type: ignore[arg-type]  # an ndarray is a buffer
    magic, version, code, channels, height, width, label, length, crc = fields
    if magic != MAGIC:
        raise RecordError(f"bad magic {magic!r} at offset {offset} (expected {MAGIC!r}): not an imgconv record")
    if version not in VERSIONS:
        raise RecordError(
            f"record at offset {offset} has format version {version}; this imgconv reads versions "
            f"{', '.join(map(str, VERSIONS))}"
        )
    dtype = DTYPE_CODES.get(code)
    if dtype is None:
        raise RecordError(f"record at offset {offset} has unknown dtype code {code}")
    if min(height, width, channels) < 1:
        raise RecordError(f"record at offset {offset} has an empty shape {height}x{width}x{channels}")
    expected = height * width * channels * dtype.itemsize
    if length != expected:
        raise RecordError(
            f"record at offset {offset}: payload length {length} does not match "
            f"{height}x{width}x{channels} {dtype} = {expected} bytes"
        )
    if left - HEADER_SIZE < length:
        raise RecordError(
            f"truncated record at offset {offset}: payload needs {length} bytes, {left - HEADER_SIZE} left"
        )
    return RecordHeader(version, dtype, height, width, channels, label, length, crc)


def unpack_record(buffer: Buffer, offset: int = 0, *, verify: bool = True,
                  position: int | None = None, version: int | None = None) -> tuple[np.ndarray, int]:
    """Decode the record at ``offset``: returns ``(image (H, W, C), label)``.

    With ``verify`` (the default) the CRC32C is checked; a version 2
    record's against ``position``, where the caller expects it (a version 2
    record without one is refused: it cannot be checked). ``version``, when
    given, is the only record version accepted. Raises RecordError.
    """
    data = kernels.as_bytes(buffer, "buffer")
    header = _read_header(data, offset)
    if version is not None and header.version != version:
        raise RecordError(f"record at offset {offset}: a version {header.version} record where version {version} "
                          "records are expected")
    start = offset + HEADER_SIZE
    payload = data[start : start + header.length]
    if verify:
        impl = kernels.implementation()
        crc = impl.crc32c(payload, impl.crc32c(data[offset : offset + HEADER_SIZE - 4], 0))
        if header.version >= 2:
            if position is None:
                raise RecordError(f"record at offset {offset} is bound to a position (version {header.version}), "
                                  "and none was given to check it against")
            crc = impl.crc32c(_position_bytes(position), crc)
        if crc != header.crc:
            where = f" at position {position}" if header.version >= 2 else ""
            raise RecordError(
                f"record at offset {offset}: checksum mismatch{where} (stored {header.crc:#010x}, "
                f"computed {crc:#010x}): {_CRC_PROBLEM[header.version]}"
            )
    image = payload.view(header.dtype).reshape(header.height, header.width, header.channels)
    return image.copy(), header.label


def _position_bytes(position: int) -> NDArray[np.uint8]:
    return np.array([operator.index(position)], "<i8").view(np.uint8)


# What a failed checksum means, by record version.
_CRC_PROBLEM = {1: "the record is corrupt", 2: "the record is corrupt or belongs at another position"}


def _index_array(values: Any, name: str) -> NDArray[np.int64]:
    array = np.asarray(values)
    if array.size and array.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {array.dtype}")
    if array.dtype.kind == "u" and array.size and array.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} must fit in a signed 64-bit integer")
    return np.ascontiguousarray(array, np.int64).reshape(-1)


def _normalise_sources(
    records: Any, offsets: Any, sources: Any
) -> tuple[list[NDArray[np.uint8]], NDArray[np.int64], NDArray[np.int64]]:
    """(buffers, sources, offsets) for the gather kernel from the caller's forms."""
    if isinstance(records, PackedRecords):
        if offsets is not None or sources is not None:
            raise ValueError("offsets and sources come from the PackedRecords itself")
        buffers = [kernels.as_bytes(records.buffer, "records.buffer")]
        starts = np.asarray(records.offsets, np.int64)[:-1]
        return buffers, np.zeros(starts.size, np.int64), np.ascontiguousarray(starts)
    if isinstance(records, (list, tuple)):
        buffers = [kernels.as_bytes(b, f"records[{i}]") for i, b in enumerate(records)]
        if offsets is None:
            if sources is not None:
                raise ValueError("sources needs offsets")
            return buffers, np.arange(len(buffers), dtype=np.int64), np.zeros(len(buffers), np.int64)
        offsets = _index_array(offsets, "offsets")
        if sources is None:
            if len(buffers) != 1:
                raise ValueError("with several buffers and offsets, sources must say which buffer each record is in")
            sources = np.zeros(offsets.size, np.int64)
        sources = _index_array(sources, "sources")
        if sources.shape != offsets.shape:
            raise ValueError(f"sources has {sources.size} entries, offsets {offsets.size}")
        if sources.size and (sources.min() < 0 or sources.max() >= len(buffers)):
            raise ValueError(f"sources must index the {len(buffers)} buffers")
        return buffers, sources, offsets
    return _normalise_sources([records], offsets, sources)


def _first_header(buffers: Sequence[NDArray[np.uint8]], sources: NDArray[np.int64],
                  offsets: NDArray[np.int64]) -> RecordHeader:
    return _read_header(buffers[int(sources[0])], int(offsets[0]))


@functools.lru_cache(maxsize=64)
def _expected_header(shape: tuple[int, int, int], dtype: np.dtype[Any], version: int) -> NDArray[np.uint8]:
    header: NDArray[np.uint8] = _headers(1, _image_shape(shape, "shape"), dtype, np.zeros(1, np.int64), version)[0]
    header.flags.writeable = False
    return header


def _int64_vector(values: Any, name: str, n: int | None = None) -> NDArray[np.int64]:
    """``values`` as a C-contiguous (n,) int64 array; the common case, one already, passes untouched."""
    vector: NDArray[np.int64] = values
    if not (isinstance(values, np.ndarray) and values.dtype == np.int64 and values.ndim == 1
            and values.flags.c_contiguous):
        vector = _index_array(values, name)
    if n is not None and vector.size != n:
        raise ValueError(f"{name} has {vector.size} entries, offsets {n}")
    return vector


def _buffer_and_offset(buffer: Any, offset: Any) -> tuple[NDArray[np.uint8], int]:
    """``buffer`` as bytes and ``offset`` as an int, or the TypeError or ValueError that says why not."""
    data = kernels.as_bytes(buffer, "buffer")
    try:
        offset = operator.index(offset)
    except TypeError:
        raise TypeError(f"offset must be an integer, got {type(offset).__name__}") from None
    if not -(2**63) <= offset < 2**63:
        raise ValueError(f"offset {offset} does not fit in a signed 64-bit integer")
    return data, offset


class Gather:
    """Decode records of one shape and dtype over and over: the prepared fast path for readers.

    ``Gather(shape, dtype=np.uint8, *, verify=True, version=1)`` checks its
    arguments once, and holds the header every record must match and the
    kernels in use when it is made (``imgconv.kernels``). ``shape`` is
    (H, W, C), or (H, W) for one channel; ``dtype`` is uint8, uint16 or
    float32; ``verify=False`` skips the CRC32C (headers and bounds are always
    checked); ``version`` is the record version every record must have: with
    2, each record's checksum is checked against the position the caller
    expects it at (``position``, ``positions``), so a record found where
    another belongs fails like a damaged one.

    :meth:`one` decodes one record into a new image; :meth:`into` decodes many,
    from any number of buffers, into arrays the caller gives, in one kernel
    call without the GIL. Both raise :class:`RecordError` for a record that is
    truncated, has another shape, dtype or version, or fails its checksum. A
    Gather holds no mutable state: threads may share one.

    Attributes: ``shape`` (a tuple of three ints), ``dtype``, ``verify``,
    ``version``, ``record_size`` (bytes of one record) and ``header`` (the
    expected header: a read-only (32,) uint8 array whose label and checksum
    are 0).
    """

    __slots__ = ("_bytes", "_kernel", "_positioned", "dtype", "header", "record_size", "shape", "verify", "version")

    def __init__(self, shape: Sequence[int], dtype: DTypeLike = np.uint8, *, verify: bool = True,
                 version: int = 1) -> None:
        (height, width, channels), payload = _image_shape(tuple(shape), "shape")
        if version not in VERSIONS:
            raise ValueError(f"record version {version!r} is not one of {VERSIONS}")
        self.shape = (height, width, channels)
        self.dtype = DTYPE_CODES[dtype_code(dtype)]
        self.verify = bool(verify)
        self.version = version
        self._positioned = version >= 2
        self._bytes = _payload_bytes(payload * self.dtype.itemsize, "shape")
        self.record_size = HEADER_SIZE + self._bytes
        self.header = _expected_header(self.shape, self.dtype, version)
        self._kernel = kernels.implementation()

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.shape))
        return f"Gather({shape} {self.dtype}, verify={self.verify}, version={self.version})"

    def one(self, buffer: Buffer, offset: int = 0, position: int | None = None) -> tuple[np.ndarray, int]:
        """``(image, label)`` of the record at byte ``offset`` of ``buffer``; ``image`` is new, (H, W, C).

        ``buffer`` is bytes-like or a C-contiguous array; ``position`` is
        where the record belongs, required for version 2. Raises RecordError
        for a bad record, TypeError or ValueError for a bad argument.
        """
        payload = np.empty(self._bytes, np.uint8)
        if not self._positioned:
            position = None
        elif position is None:
            raise ValueError("a Gather of version 2 records needs the position of the record")
        try:
            status, label = self._kernel.unpack_one(buffer, operator.index(offset), self.header, payload, self.verify,
                                                    position)
        except (TypeError, ValueError, BufferError, OverflowError):
            # Not a plain byte buffer, offset or position: say what is wrong, or decode its bytes.
            buffer, offset = _buffer_and_offset(buffer, offset)
            position = None if position is None else int(_int64_vector([position], "position")[0])
            status, label = self._kernel.unpack_one(buffer, offset, self.header, payload, self.verify, position)
        if status != _pure.OK:
            data = kernels.as_bytes(buffer, "buffer")
            raise RecordError(f"record at offset {offset}: "
                              f"{_problem(data, offset, status, self.shape, self.dtype, self.version)}")
        image = payload if self.dtype.itemsize == 1 else payload.view(self.dtype)
        return image.reshape(self.shape), label

    def into(
        self,
        buffers: Sequence[Buffer],
        sources: NDArray[np.int64],
        offsets: NDArray[np.int64],
        out: np.ndarray,
        labels: NDArray[np.int64],
        positions: NDArray[np.int64] | None = None,
    ) -> tuple[np.ndarray, NDArray[np.int64]]:
        """Decode record i, at byte ``offsets[i]`` of ``buffers[sources[i]]``, into ``out[i]`` and ``labels[i]``.

        One kernel call for all N records, without the GIL, so that a large
        read may be split over threads, each with its slice of the arrays.
        ``sources`` and ``offsets`` hold N integers (int64 arrays pass without
        a copy), and for version 2 records ``positions`` too: where each
        record belongs. ``out`` is a writeable C-contiguous (N, H, W, C)
        array of this Gather's shape and dtype and ``labels`` a writeable
        contiguous (N,) int64 array. Unlike :func:`unpack_records` it does not check
        each buffer: they must be bytes-like and contiguous (LMDB values and
        NumPy byte arrays are), and must not overlap ``out`` or ``labels``.
        Returns ``(out, labels)``. Raises RecordError naming the first bad
        record; after it, the contents of ``out`` and ``labels`` are
        unspecified.
        """
        offsets = _int64_vector(offsets, "offsets")
        n = offsets.size
        sources = _int64_vector(sources, "sources", n)
        if not self._positioned:
            positions = None
        elif positions is None:
            raise ValueError("a Gather of version 2 records needs the positions of the records")
        else:
            positions = _int64_vector(positions, "positions", n)
        self._check_out(out, labels, n)
        payloads = out.reshape(n, self._bytes // self.dtype.itemsize).view(np.uint8)
        try:
            bad, status = self._kernel.unpack_records(buffers, sources, offsets, self.header, payloads, labels,
                                                      self.verify, positions)
        except (TypeError, ValueError, BufferError):
            # A buffer the kernel cannot view as bytes: say which, or decode its bytes.
            buffers = [kernels.as_bytes(b, f"buffers[{i}]") for i, b in enumerate(buffers)]
            bad, status = self._kernel.unpack_records(buffers, sources, offsets, self.header, payloads, labels,
                                                      self.verify, positions)
        if bad >= 0:
            source, offset = int(sources[bad]), int(offsets[bad])
            if not 0 <= source < len(buffers):
                raise ValueError(f"sources[{bad}] is {source}: there are {len(buffers)} buffers")
            problem = _problem(kernels.as_bytes(buffers[source]), offset, status, self.shape, self.dtype,
                               self.version)
            where = "" if positions is None else f", position {int(positions[bad])}"
            raise RecordError(f"record {bad} (buffer {source}, offset {offset}{where}): {problem}")
        return out, labels

    def _check_out(self, out: Any, labels: Any, n: int) -> None:
        if not (isinstance(out, np.ndarray) and out.shape == (n, *self.shape) and out.dtype == self.dtype):
            got = f"{out.shape} {out.dtype}" if isinstance(out, np.ndarray) else type(out).__name__
            raise ValueError(f"out must be an array of shape {(n, *self.shape)} and dtype {self.dtype}, got {got}")
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError("out must be a writeable C-contiguous array")
        _check_labels_out(labels, n, "labels")
        if np.may_share_memory(out, labels):
            raise ValueError("out and labels must not overlap")


def unpack_records(
    records: PackedRecords | Buffer | Sequence[Buffer],
    offsets: Any = None,
    *,
    sources: Any = None,
    out: np.ndarray | None = None,
    labels_out: NDArray[np.int64] | None = None,
    verify: bool = True,
    positions: Any = None,
) -> tuple[np.ndarray, NDArray[np.int64]]:
    """Decode N records of one shape into an image array and a label array.

    ``records`` is a :class:`PackedRecords`; or one buffer (bytes, memoryview,
    uint8 array) with ``offsets`` giving each record's start (default: records
    back to back from 0); or a sequence of buffers, each one record, or with
    ``offsets`` and ``sources`` (the buffer index of each record) for records
    gathered from many buffers, as LMDB values are.

    ``out`` (N, H, W, C) and ``labels_out`` (N,) int64 are filled when given,
    else allocated with the shape of the first record. ``verify=False`` skips
    the checksum (headers and bounds are still checked). Version 2 records
    (see :func:`pack_records`) are checked against ``positions``, N
    integers or the first of N consecutive ones; all records must have the
    version of the first. ``out`` and
    ``labels_out`` must not overlap the input. Returns ``(images, labels)``.
    Raises RecordError naming the first bad record; after it, the contents of
    ``out`` and ``labels_out`` are unspecified. A reader that decodes records
    of one shape again and again uses :class:`Gather` instead.
    """
    if offsets is None and not isinstance(records, (list, tuple, PackedRecords)):
        return _unpack_back_to_back(records, out, labels_out, verify, positions)
    buffers, sources, offsets = _normalise_sources(records, offsets, sources)
    n = offsets.size
    version = _first_header(buffers, sources, offsets).version if n else 1
    if out is None:
        if n == 0:
            raise ValueError("no records to unpack and no out array to take the shape from")
        header = _first_header(buffers, sources, offsets)
        out = np.empty((n, header.height, header.width, header.channels), header.dtype)
    else:
        _check_out(out, n)
    if labels_out is None:
        labels_out = np.empty(n, np.int64)
    else:
        _check_labels_out(labels_out, n)
    _check_no_overlap(buffers, out, labels_out)
    at = _positions(positions, n)
    if version >= 2 and at is None and verify:
        raise RecordError("the records are bound to positions (version 2), and none were given to check them against")
    return Gather(out.shape[1:], out.dtype, verify=verify, version=version).into(
        buffers, sources, offsets, out, labels_out, np.zeros(n, np.int64) if at is None else at)


def _unpack_back_to_back(records: Any, out: np.ndarray | None, labels_out: NDArray[np.int64] | None,
                         verify: bool, positions: Any) -> tuple[np.ndarray, NDArray[np.int64]]:
    data = kernels.as_bytes(records, "records")
    if data.size == 0:
        n, size = 0, HEADER_SIZE
        if out is None:
            raise RecordError("empty buffer: there are no records to unpack")
    else:
        header = _read_header(data, 0)
        size = HEADER_SIZE + header.length
        n, rest = divmod(data.size, size)
        if rest:
            raise RecordError(
                f"buffer of {data.size} bytes is not a whole number of {size}-byte records "
                f"({n} records and {rest} bytes left over)"
            )
    return unpack_records([data], np.arange(n, dtype=np.int64) * size, out=out, labels_out=labels_out, verify=verify,
                          positions=positions)


def _check_labels_out(labels_out: Any, n: int, name: str = "labels_out") -> None:
    if (not isinstance(labels_out, np.ndarray) or labels_out.dtype != np.int64 or labels_out.shape != (n,)
            or not labels_out.flags.c_contiguous or not labels_out.flags.writeable):
        raise ValueError(f"{name} must be a writeable contiguous int64 array of shape ({n},)")


def _check_no_overlap(buffers: Sequence[NDArray[np.uint8]], out: np.ndarray, labels_out: np.ndarray) -> None:
    # The compiled kernel copies record by record: an output overlapping the
    # input would overwrite records before they are read.
    if np.may_share_memory(out, labels_out):
        raise ValueError("out and labels_out must not overlap")
    for i, buffer in enumerate(buffers):
        if np.may_share_memory(buffer, out) or np.may_share_memory(buffer, labels_out):
            raise ValueError(f"out and labels_out must not overlap the input buffer {i}")


def _check_out(out: Any, n: int) -> None:
    if not isinstance(out, np.ndarray) or out.ndim != 4:
        raise ValueError("out must be a 4-D array (N, H, W, C)")
    if out.shape[0] != n:
        raise ValueError(f"out holds {out.shape[0]} images, there are {n} records")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be a writeable C-contiguous array")
    dtype_code(out.dtype)
    if out.dtype.byteorder == ">":
        raise ValueError("out must be little-endian or native")


def _problem(data: NDArray[np.uint8], offset: int, status: int, shape: tuple[int, ...], dtype: DTypeLike,
             version: int) -> str:
    """What is wrong with the record at ``offset`` of ``data`` that a kernel refused with ``status``."""
    if status == _pure.CRC_MISMATCH:
        return f"checksum mismatch, {_CRC_PROBLEM[version]}"
    try:
        header = _read_header(data, offset)
    except RecordError as exc:
        # FORMAT.md's order: what the header says wrong comes before "truncated".
        return str(exc)
    found = (header.height, header.width, header.channels)
    if status == _pure.TRUNCATED and found == tuple(shape) and header.dtype == np.dtype(dtype):
        size = record_size(shape, dtype)
        return f"truncated, a {size}-byte record does not fit in a buffer of {data.size} bytes"
    if header.version != version:
        return f"a version {header.version} record where version {version} records are expected"
    return (
        f"image is {'x'.join(map(str, found))} {header.dtype}, "
        f"the batch is {'x'.join(map(str, shape))} {np.dtype(dtype)}; use unpack_record for mixed shapes"
    )
