"""The binary record: one image and its label, replacing a pickle per image.

A record is a 32-byte little-endian header followed by the pixel payload::

    offset size type    field
         0    4 bytes   magic, b"IMGR"
         4    1 u8      format version, 1
         5    1 u8      dtype code: 1 uint8, 2 uint16 (LE), 3 float32 (LE)
         6    2 u16     channels  (C)
         8    4 u32     height    (H)
        12    4 u32     width     (W)
        16    8 i64     label
        24    4 u32     payload length in bytes = H * W * C * itemsize
        28    4 u32     CRC32C of bytes 0..27 followed by the payload
        32    -         payload: pixels in (H, W, C) C order

Records are laid back to back in a batch buffer with no padding. The checksum
covers the header too, so a flipped label or shape is caught like a flipped
pixel. FORMAT.md is the full specification, including how versions evolve.

``pack_records`` and ``unpack_records`` work on whole batches in compiled code
(see ``imgconv.kernels``); ``unpack_record`` and ``read_header`` handle one
record of any shape. Every malformed input raises :class:`RecordError`.
"""
import functools
import math
import struct
from collections import namedtuple

import numpy as np

from . import kernels
from .errors import RecordError

MAGIC = b"IMGR"
VERSION = 1
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

DTYPE_CODES = {1: np.dtype("u1"), 2: np.dtype("<u2"), 3: np.dtype("<f4")}
_CODE_OF = {dtype: code for code, dtype in DTYPE_CODES.items()}

RecordHeader = namedtuple(
    "RecordHeader", "version dtype height width channels label length crc"
)
RecordHeader.__doc__ = "The decoded header of one record; ``dtype`` is a NumPy dtype."

PackedRecords = namedtuple("PackedRecords", "buffer offsets")
PackedRecords.__doc__ = """N records back to back.

``buffer`` is a 1-D uint8 array; record i occupies
``buffer[offsets[i]:offsets[i + 1]]`` (``offsets`` has N + 1 entries).
"""

_MAX_DIM = {"height": 0xFFFFFFFF, "width": 0xFFFFFFFF, "channels": 0xFFFF}


def dtype_code(dtype):
    """The header's code for ``dtype``; TypeError for a dtype records cannot hold."""
    dtype = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).itemsize > 1 else np.dtype(dtype)
    try:
        return _CODE_OF[dtype]
    except KeyError:
        names = ", ".join(str(d) for d in DTYPE_CODES.values())
        raise TypeError(f"records hold {names} pixels, not {dtype}") from None


def record_size(shape, dtype=np.uint8):
    """Bytes taken by one record of an image of ``shape`` (H, W, C) and ``dtype``."""
    return HEADER_SIZE + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _image_shape(shape, where):
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3:
        raise ValueError(f"{where}: an image must be (H, W) or (H, W, C), got shape {shape}")
    for name, value in zip(("height", "width", "channels"), shape):
        if not 1 <= value <= _MAX_DIM[name]:
            raise ValueError(f"{where}: {name} {value} is outside 1..{_MAX_DIM[name]}")
    payload = shape[0] * shape[1] * shape[2]
    return tuple(int(v) for v in shape), payload


def _labels_array(labels, n):
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
    return labels.astype(np.int64)


def _payload_bytes(length, where):
    if length > 0xFFFFFFFF:
        raise ValueError(f"{where}: an image of {length} bytes exceeds the record limit of 4 GiB")
    return length


def _headers(n, shape, dtype, labels):
    (height, width, channels), payload = shape
    headers = np.zeros(n, HEADER_DTYPE)
    headers["magic"] = MAGIC
    headers["version"] = VERSION
    headers["dtype"] = dtype_code(dtype)
    headers["channels"] = channels
    headers["height"] = height
    headers["width"] = width
    headers["label"] = labels
    headers["length"] = _payload_bytes(payload * np.dtype(dtype).itemsize, "images")
    return headers.view(np.uint8).reshape(n, HEADER_SIZE)


def _pixels(image, where):
    """``image`` as contiguous little-endian bytes, checked."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{where}: images must be NumPy arrays, got {type(image).__name__}")
    code = dtype_code(image.dtype)
    return np.ascontiguousarray(image, dtype=DTYPE_CODES[code])


def pack_records(images, labels):
    """Pack images and labels into records laid back to back.

    ``images`` is either one array (N, H, W, C) or (N, H, W) of uint8, uint16
    or float32, or a sequence of N arrays (H, W, C) or (H, W) whose shapes may
    differ. ``labels`` holds N integers. Returns :class:`PackedRecords`.
    Raises TypeError or ValueError for input records cannot hold.
    """
    if isinstance(images, np.ndarray):
        return _pack_uniform(images, labels)
    images = list(images)
    labels = _labels_array(labels, len(images))
    pixels = [_pixels(image, f"image {i}") for i, image in enumerate(images)]
    shapes = [_image_shape(p.shape, f"image {i}") for i, p in enumerate(pixels)]
    sizes = [HEADER_SIZE + _payload_bytes(n * p.dtype.itemsize, f"image {i}")
             for i, ((_, n), p) in enumerate(zip(shapes, pixels))]
    offsets = np.zeros(len(images) + 1, np.int64)
    np.cumsum(sizes, out=offsets[1:])
    buffer = np.empty(int(offsets[-1]), np.uint8)
    impl = kernels.implementation()
    for i, (p, shape) in enumerate(zip(pixels, shapes)):
        header = _headers(1, shape, p.dtype, labels[i : i + 1])
        impl.pack_uniform(header, p.reshape(1, -1).view(np.uint8), buffer[offsets[i] : offsets[i + 1]])
    return PackedRecords(buffer, offsets)


def _pack_uniform(images, labels):
    if images.ndim not in (3, 4):
        raise ValueError(f"images must be (N, H, W, C) or (N, H, W), got shape {images.shape}")
    n = images.shape[0]
    pixels = _pixels(images, "images")
    shape = _image_shape(pixels.shape[1:], "images")
    headers = _headers(n, shape, pixels.dtype, _labels_array(labels, n))
    size = HEADER_SIZE + _payload_bytes(shape[1] * pixels.dtype.itemsize, "images")
    buffer = np.empty(n * size, np.uint8)
    kernels.implementation().pack_uniform(headers, pixels.reshape(n, shape[1]).view(np.uint8), buffer)
    return PackedRecords(buffer, np.arange(n + 1, dtype=np.int64) * size)


def read_header(buffer, offset=0):
    """Decode and check the header of the record at ``offset`` in ``buffer``.

    Checks the magic, version, dtype code, that the payload length matches the
    shape, and that the whole record fits in the buffer (the checksum is left
    to :func:`unpack_record`). Returns a :class:`RecordHeader`.
    """
    return _read_header(kernels.as_bytes(buffer, "buffer"), offset)


def _read_header(data, offset):
    if offset < 0:
        raise RecordError(f"record offset {offset} is negative")
    left = data.size - offset
    if left < HEADER_SIZE:
        raise RecordError(
            f"truncated record at offset {offset}: {max(left, 0)} bytes left, a header needs {HEADER_SIZE}"
        )
    magic, version, code, channels, height, width, label, length, crc = _HEADER_STRUCT.unpack_from(data, offset)
    if magic != MAGIC:
        raise RecordError(f"bad magic {magic!r} at offset {offset} (expected {MAGIC!r}): not an imgconv record")
    if version != VERSION:
        raise RecordError(f"record at offset {offset} has format version {version}; this imgconv reads version {VERSION}")
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


def unpack_record(buffer, offset=0, *, verify=True):
    """Decode the record at ``offset``: returns ``(image (H, W, C), label)``.

    With ``verify`` (the default) the CRC32C is checked. Raises RecordError.
    """
    data = kernels.as_bytes(buffer, "buffer")
    header = _read_header(data, offset)
    start = offset + HEADER_SIZE
    payload = data[start : start + header.length]
    if verify:
        impl = kernels.implementation()
        crc = impl.crc32c(payload, impl.crc32c(data[offset : offset + HEADER_SIZE - 4], 0))
        if crc != header.crc:
            raise RecordError(
                f"record at offset {offset}: checksum mismatch (stored {header.crc:#010x}, computed {crc:#010x})"
            )
    image = payload.view(header.dtype).reshape(header.height, header.width, header.channels)
    return image.copy(), header.label


def _index_array(values, name):
    array = np.asarray(values)
    if array.size and array.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {array.dtype}")
    if array.dtype.kind == "u" and array.size and array.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} must fit in a signed 64-bit integer")
    return np.ascontiguousarray(array, np.int64).reshape(-1)


def _normalise_sources(records, offsets, sources):
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


def _first_shape(buffers, sources, offsets):
    header = _read_header(buffers[int(sources[0])], int(offsets[0]))
    return (header.height, header.width, header.channels), header.dtype


@functools.lru_cache(maxsize=64)
def _expected_header(shape, dtype):
    header = _headers(1, _image_shape(shape, "out"), dtype, np.zeros(1, np.int64))[0]
    header.flags.writeable = False
    return header


def unpack_records(records, offsets=None, *, sources=None, out=None, labels_out=None, verify=True):
    """Decode N records of one shape into an image array and a label array.

    ``records`` is a :class:`PackedRecords`; or one buffer (bytes, memoryview,
    uint8 array) with ``offsets`` giving each record's start (default: records
    back to back from 0); or a sequence of buffers, each one record, or with
    ``offsets`` and ``sources`` (the buffer index of each record) for records
    gathered from many buffers, as LMDB values are.

    ``out`` (N, H, W, C) and ``labels_out`` (N,) int64 are filled when given,
    else allocated with the shape of the first record. ``verify=False`` skips
    the checksum (headers and bounds are still checked). ``out`` and
    ``labels_out`` must not overlap the input. Returns ``(images, labels)``.
    Raises RecordError naming the first bad record; after it, the contents of
    ``out`` and ``labels_out`` are unspecified.
    """
    if offsets is None and not isinstance(records, (list, tuple, PackedRecords)):
        return _unpack_back_to_back(records, out, labels_out, verify)
    buffers, sources, offsets = _normalise_sources(records, offsets, sources)
    n = offsets.size
    if out is None:
        if n == 0:
            raise ValueError("no records to unpack and no out array to take the shape from")
        shape, dtype = _first_shape(buffers, sources, offsets)
        out = np.empty((n, *shape), dtype)
    else:
        _check_out(out, n)
    if labels_out is None:
        labels_out = np.empty(n, np.int64)
    else:
        _check_labels_out(labels_out, n)
    _check_no_overlap(buffers, out, labels_out)
    expected = _expected_header(out.shape[1:], out.dtype)
    payloads = out.reshape(n, math.prod(out.shape[1:])).view(np.uint8)
    bad, status = kernels.implementation().unpack_records(
        buffers, sources, offsets, expected, payloads, labels_out, bool(verify)
    )
    if bad >= 0:
        raise _describe(buffers, int(sources[bad]), int(offsets[bad]), bad, status, out.shape[1:], out.dtype)
    return out, labels_out


def _unpack_back_to_back(records, out, labels_out, verify):
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
    return unpack_records([data], np.arange(n, dtype=np.int64) * size, out=out, labels_out=labels_out, verify=verify)


def _check_labels_out(labels_out, n):
    if (not isinstance(labels_out, np.ndarray) or labels_out.dtype != np.int64 or labels_out.shape != (n,)
            or not labels_out.flags.c_contiguous or not labels_out.flags.writeable):
        raise ValueError(f"labels_out must be a writeable contiguous int64 array of shape ({n},)")


def _check_no_overlap(buffers, out, labels_out):
    # The compiled kernel copies record by record: an output overlapping the
    # input would overwrite records before they are read.
    if np.may_share_memory(out, labels_out):
        raise ValueError("out and labels_out must not overlap")
    for i, buffer in enumerate(buffers):
        if np.may_share_memory(buffer, out) or np.may_share_memory(buffer, labels_out):
            raise ValueError(f"out and labels_out must not overlap the input buffer {i}")


def _check_out(out, n):
    if not isinstance(out, np.ndarray) or out.ndim != 4:
        raise ValueError("out must be a 4-D array (N, H, W, C)")
    if out.shape[0] != n:
        raise ValueError(f"out holds {out.shape[0]} images, there are {n} records")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be a writeable C-contiguous array")
    dtype_code(out.dtype)
    if out.dtype.byteorder == ">":
        raise ValueError("out must be little-endian or native")


def _describe(buffers, source, offset, index, status, shape, dtype):
    where = f"record {index} (buffer {source}, offset {offset})"
    impl = kernels.implementation()
    if status == impl.CRC_MISMATCH:
        return RecordError(f"{where}: checksum mismatch, the record is corrupt")
    try:
        header = _read_header(buffers[source], offset)
    except RecordError as exc:
        # FORMAT.md's order: what the header says wrong comes before "truncated".
        return RecordError(f"{where}: {exc}")
    found = (header.height, header.width, header.channels)
    if status == impl.TRUNCATED and found == tuple(shape) and header.dtype == np.dtype(dtype):
        size = record_size(shape, dtype)
        have = buffers[source].size
        return RecordError(f"{where}: truncated, a {size}-byte record does not fit in a buffer of {have} bytes")
    return RecordError(
        f"{where}: image is {'x'.join(map(str, found))} {header.dtype}, "
        f"the batch is {'x'.join(map(str, shape))} {np.dtype(dtype)}; use unpack_record for mixed shapes"
    )
