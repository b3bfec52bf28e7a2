"""A decoder for the PNG files imgconv writes, faster than Pillow for small images; anything else is left to Pillow.

A PNG folder's images are written by Pillow (``png_folder.encode_png``):
8-bit L, LA, RGB or RGBA, not interlaced, the chunks IHDR, IDAT (one or
more) and IEND and no others. :func:`decode` reads exactly such a file when
its IHDR declares the shape the store holds, and returns None for anything
else (another colour type or bit depth, a palette, interlacing, an
ancillary chunk, a chunk CRC that does not match, a chunk past the end of
the file, a zlib stream that is damaged, short, long or followed by more
data, an unknown filter type): the caller then decodes the file with Pillow
as before, so what a damaged or unusual file gives (pixels or an error
message) does not change. The decoded pixels are checked against the
store's checksums by the reader, as Pillow's are.

The header is compared with the store's shape before anything is
inflated, and inflating stops one byte past the exact size of the image
data (``height * (1 + width * channels)``): a file declaring a huge image,
or a small stream inflating to a huge one, never allocates more than that.
"""
from __future__ import annotations

import functools
import os
import struct
import zlib
from typing import Optional

import numpy as np

from .. import kernels

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (grey, grey+alpha, RGB, RGBA)
_CHUNK = struct.Struct(">I4s")
_CRC = struct.Struct(">I")
_IDAT = b"IDAT"
_IEND = b"IEND"
_PREFIX_SIZE = len(_SIGNATURE) + 8 + 13 + 4  # the signature and the whole IHDR chunk


@functools.lru_cache(maxsize=64)
def header(shape: tuple[int, int, int]) -> Optional[bytes]:
    """The first bytes of the PNG file imgconv writes for an image of ``shape`` (H, W, C): the signature
    and the IHDR chunk (8-bit, not interlaced), CRC included; None when PNG cannot hold the shape."""
    height, width, channels = shape
    if channels not in _COLOUR_TYPES or not (0 < height < 2**31 and 0 < width < 2**31):
        return None
    chunk = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, _COLOUR_TYPES[channels], 0, 0, 0)
    return _SIGNATURE + _CRC.pack(13) + chunk + _CRC.pack(zlib.crc32(chunk))


def file_limit(shape: tuple[int, int, int]) -> int:
    """The size of the largest file :func:`decode` reads for ``shape``: the image data stored uncompressed
    in many chunks and deflate blocks, and room to spare. A larger file is left to Pillow."""
    height, width, channels = shape
    raw = height * (1 + width * channels)
    return raw + raw // 64 + 65536


def decode(data: bytes, shape: tuple[int, int, int], out: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
    """The (H, W, C) uint8 pixels of the PNG file ``data`` written as imgconv writes an image of ``shape``,
    or None when the file is anything else (see the module docstring).

    ``out``, a writeable C-contiguous (H, W, C) uint8 array, receives the
    pixels instead of a new array (its contents are undefined after None).
    """
    prefix = header(shape)
    if prefix is None or data[:_PREFIX_SIZE] != prefix:
        return None
    compressed = _image_data(data)
    if compressed is None:
        return None
    height, width, channels = shape
    size = height * (1 + width * channels)
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(compressed, size + 1)  # one byte more than it should make: a longer one is refused
    except zlib.error:
        return None
    if len(raw) != size or not inflater.eof or inflater.unused_data:
        return None
    image = np.empty(shape, np.uint8) if out is None else out
    # The kernel unchecked: raw has exactly the size of the rows, and image is new or out, as documented.
    if kernels.implementation().png_unfilter(raw, image.reshape(height, width * channels), channels) != -1:
        return None
    return image


def _image_data(data: bytes) -> Optional[bytes | memoryview]:
    """The concatenated IDAT data of ``data`` after its IHDR chunk, or None unless the chunks that follow
    are IDAT (one or more, each within the file and with a matching CRC) and then IEND, ending the file."""
    view = memoryview(data)
    end = len(data)
    at = _PREFIX_SIZE
    parts: list[memoryview] = []
    while True:
        if at + 12 > end:
            return None
        length, kind = _CHUNK.unpack_from(data, at)
        stop = at + 12 + length
        if stop > end:
            return None
        if kind == _IEND:
            if length or stop != end or not parts:
                return None
            return parts[0] if len(parts) == 1 else b"".join(parts)
        if kind != _IDAT or zlib.crc32(view[at + 4:stop - 4]) != _CRC.unpack_from(data, stop - 4)[0]:
            return None
        parts.append(view[at + 8:stop - 4])
        at = stop


def read_file(fd: int, limit: int) -> Optional[bytes]:
    """The bytes of the open regular file ``fd`` in one read, or None when it holds more than ``limit``.

    One read gives a regular file's bytes up to its end. Should it give
    fewer (a short read, which some file systems may do), the file looks
    truncated to :func:`decode`, which then leaves it to Pillow: reading
    less is never reading wrong.
    """
    data = os.read(fd, limit + 1)
    return None if len(data) > limit else data
