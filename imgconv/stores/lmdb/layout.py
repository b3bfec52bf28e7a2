"""The LMDB store's layout: runs of consecutive records per value, chunk numbers as keys.

A directory ``name.lmdb/`` holds ``data.mdb`` (and the ``lock.mdb`` LMDB made
while writing; readers do not need it). In the main database (FORMAT.md,
"Stores", is the full specification)

* key ``struct.pack(">Q", c)`` (8 bytes, big-endian, so keys sort in image
  order) holds chunk ``c``: the records of images ``c*K .. c*K + K - 1``
  (fewer in the last chunk), K = ``records_per_value`` in the metadata
  (by default about 192 KiB of records for one image shape, 16 for varying sizes);
* a store of one image shape lays the records back to back; a store of
  varying shapes starts each value with a table: u32 n, u32 0, then n u64
  record offsets from the start of the value;
* key ``b"imgconv.metadata"`` holds the metadata as UTF-8 JSON. It is 16 bytes,
  so it cannot collide with an 8-byte chunk key, and it is written last: a
  database without it is not a finished store.

Why runs of records: one small record per value puts every value on its own
4 KiB overflow page (disk 1.3x the pixels); runs of K records per value fill
their pages and turn a full read into a scan of a few thousand values, while a
single image is still one lookup and one record decode.
"""
import os
import struct
from typing import Any, Optional, Tuple

import numpy as np

from ... import record
from ..batch import VARIABLE, EncodedBatch, StoreShape, check_batch

FORMAT_NAME = "lmdb"
FORMAT_VERSION = 1
METADATA_KEY = b"imgconv.metadata"
KEY_STRUCT = struct.Struct(">Q")
TABLE_HEAD = struct.Struct("<II")

# Value size the automatic records_per_value aims at; see FORMAT.md for the
# measurements (CIFAR: 64 records of 3,104 bytes = 194 KiB).
TARGET_VALUE_BYTES = 192 * 1024
MAX_RECORDS_PER_VALUE = 4096
# K of a store of varying sizes: the first image says nothing about the next
# ones (a 1x1 first image would give K = 4096 and values without bound), so K
# is fixed and small; a value of 16 CIFAR-size images is about 48 KiB.
VARIABLE_RECORDS_PER_VALUE = 16


def chunk_key(chunk: int) -> bytes:
    """The LMDB key of chunk number ``chunk``."""
    return KEY_STRUCT.pack(chunk)


def records_per_value_for(record_bytes: int) -> int:
    """The automatic K for records of ``record_bytes``: about 192 KiB per value, at least 1."""
    return int(min(MAX_RECORDS_PER_VALUE, max(1, round(TARGET_VALUE_BYTES / record_bytes))))


def default_records_per_value(shape: StoreShape) -> int:
    """K for a store of ``shape`` when the writer is not given one."""
    if shape == VARIABLE:
        return VARIABLE_RECORDS_PER_VALUE
    return records_per_value_for(record.record_size(shape))


class EncodedRecords(EncodedBatch):
    """A batch packed into records (``buffer`` uint8, ``offsets`` N + 1 int64)."""

    def __init__(self, buffer: np.ndarray, offsets: np.ndarray, labels: np.ndarray, shapes: np.ndarray,
                 variable: bool) -> None:
        super().__init__(labels, shapes, variable)
        self.buffer = buffer
        self.offsets = offsets


def encode_batch(images: Any, labels: Any) -> EncodedRecords:
    """Check a batch and pack it into records (the imgconv record format).

    See :func:`imgconv.stores.batch.check_batch` for the accepted forms.
    Returns :class:`EncodedRecords`. Raises StoreArgumentError for a bad batch.
    """
    batch = check_batch(images, labels)
    packed = record.pack_records(batch.images, batch.labels)
    return EncodedRecords(packed.buffer, packed.offsets, batch.labels, batch.shapes(), batch.variable)


def value_with_table(buffer: np.ndarray, offsets: np.ndarray) -> bytes:
    """Records ``buffer`` (offsets from 0) prefixed with the offset table of a varying-size value."""
    n = len(offsets) - 1
    head = TABLE_HEAD.size + 8 * n
    table = np.asarray(offsets[:-1], dtype="<u8") + head
    return TABLE_HEAD.pack(n, 0) + table.tobytes() + buffer.tobytes()


def value_offsets(value: Any, k: int) -> Optional[np.ndarray]:
    """The record offsets of a varying-size ``value`` of ``k`` records, or None when its table is not that."""
    if len(value) < TABLE_HEAD.size + 8 * k or TABLE_HEAD.unpack_from(value)[0] != k:
        return None
    return np.frombuffer(value, "<u8", count=k, offset=TABLE_HEAD.size).astype(np.int64)


def first_records(value: bytes, n: int, shape: StoreShape) -> Tuple[np.ndarray, np.ndarray]:
    """``(buffer, offsets)`` of the first ``n`` records of a chunk ``value``, offsets from 0."""
    data = np.frombuffer(value, np.uint8)
    if shape != VARIABLE:
        size = record.record_size(shape)
        return data[: n * size].copy(), np.arange(n + 1, dtype=np.int64) * size
    k = TABLE_HEAD.unpack_from(value)[0]
    table = np.frombuffer(value, "<u8", count=k, offset=TABLE_HEAD.size).astype(np.int64)
    head = TABLE_HEAD.size + 8 * k
    end = int(table[n]) if n < k else len(value)
    offsets = np.concatenate([table[:n], [end]]) - head
    return data[head:end].copy(), offsets


def detect(path: str) -> bool:
    """True when ``path`` is a directory holding ``data.mdb``."""
    return os.path.isfile(os.path.join(path, "data.mdb"))  # true only inside a directory
