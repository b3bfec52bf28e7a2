"""The HDF5 store's layout: plain HDF5 that h5py alone can read.

Layout of one file (FORMAT.md, "Stores", is the full specification):

* images of one shape: ``/images`` (N, H, W, C) uint8, chunked along N
  (``chunk_images`` images per chunk), growable (``maxshape`` (None, H, W, C));
* images of varying shapes: ``/pixels`` 1-D uint8 holding every image's
  (H, W, C) pixels back to back, ``/offsets`` (N,) int64 start of each image
  in ``/pixels``, ``/shapes`` (N, 3) int64 (H, W, C);
* ``/labels`` (N,) int64;
* ``/crc32c`` (N,) uint32: the CRC32C of each image's pixel bytes (in
  (H, W, C) C order) continued over its label and its index (8 bytes each,
  little-endian int64), checked on every read, since HDF5 keeps no checksums
  of its own unless asked (format version 2 left out the index, version 1
  the label too);
* the metadata as attributes of the root group (``imgconv_format`` = "hdf5",
  ``imgconv_format_version``, ``count``, ``shape``, ...), written last: a file
  without them is not a finished store. Text HDF5 cannot hold as UTF-8 (a
  name with bytes that are not UTF-8, as a folder name can have) and text
  that starts like JSON are stored as JSON, so that every value reads back
  exactly.

Optional compression (``compression="gzip"`` with ``compression_level``, or
"lzf") applies to the pixel dataset; it is off by default.
"""
import json
import os
from typing import Any, Optional

import h5py
import numpy as np

from ..._platform import open_regular_file
from ...checksum import image_checksums
from ..batch import EncodedBatch, check_batch

FORMAT_NAME = "hdf5"
# Version 3: /crc32c covers the label and the index (version 2: the label, version 1: the pixels only).
FORMAT_VERSION = 3
SIGNATURE = b"\x89HDF\r\n\x1a\n"
COMPRESSIONS = (None, "gzip", "lzf")
# Automatic chunk size: about this many bytes per chunk (64 CIFAR images).
# FORMAT.md has the measurements behind it.
CHUNK_TARGET_BYTES = 192 * 1024
PIXEL_CHUNK_BYTES = 256 * 1024
LABEL_CHUNK = 1024

# Metadata keys whose attribute names say they belong to imgconv.
ATTR_NAMES = {"format": "imgconv_format", "format_version": "imgconv_format_version"}
KEY_NAMES = {v: k for k, v in ATTR_NAMES.items()}


class EncodedArrays(EncodedBatch):
    """A batch as contiguous arrays: ``images`` (N, H, W, C), or for varying
    sizes ``pixels`` (every image's bytes back to back) with ``shapes``."""

    def __init__(self, images: Optional[np.ndarray], pixels: Optional[np.ndarray], labels: np.ndarray,
                 shapes: np.ndarray, variable: bool, checksums: np.ndarray) -> None:
        super().__init__(labels, shapes, variable)
        self.images = images
        self.pixels = pixels
        self.checksums = checksums


def encode_batch(images: Any, labels: Any) -> EncodedArrays:
    """Check a batch and lay it out as the contiguous arrays the HDF5 datasets take.

    The checksums end with the labels: the writer, which alone knows where
    the batch lands, continues them over the images' indices
    (:func:`imgconv.checksum.bind_positions`). Returns
    :class:`EncodedArrays`. Raises StoreArgumentError for a bad batch.
    """
    batch = check_batch(images, labels)
    checksums = image_checksums(batch.images, batch.labels)
    if not batch.variable:
        assert isinstance(batch.images, np.ndarray)
        return EncodedArrays(batch.images, None, batch.labels, batch.shapes(), False, checksums)
    pixels = np.concatenate([image.reshape(-1) for image in batch.images]) if batch.images else np.empty(0, np.uint8)
    return EncodedArrays(None, pixels, batch.labels, batch.shapes(), True, checksums)


def attr_value(value: Any) -> Any:
    """A metadata value as an HDF5 attribute can hold it (None: leave the attribute out)."""
    if value is None:
        return None
    if isinstance(value, str):
        # JSON (ASCII) for text UTF-8 cannot hold and for text read_attr would take for JSON.
        return json.dumps(value) if not _utf8(value) or value[:1] in '"[{' else value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and _utf8(v) for v in value):
        return np.array(value, dtype=h5py.string_dtype())
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) for v in value):
        return np.array(value, dtype=np.int64)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_attr(value: Any) -> Any:
    """An attribute read back as the metadata value it was written from."""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, str):
        if value[:1] in '"[{':
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                return value
        return value
    if isinstance(value, np.ndarray):
        return [read_attr(v) for v in value.tolist()]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def detect(path: str) -> bool:
    """True when ``path`` is a file with the HDF5 signature at 0, 512, 1024, 2048, ... (after a user block)."""
    if not os.path.isfile(path):
        return False
    try:
        with open_regular_file(path) as f:  # not a FIFO put there since the test above
            size = os.fstat(f.fileno()).st_size
            at = 0
            while at + len(SIGNATURE) <= size:
                f.seek(at)
                if f.read(len(SIGNATURE)) == SIGNATURE:
                    return True
                at = 512 if at == 0 else 2 * at
    except OSError:
        return False
    return False
