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
* each record is bound to the index of its image (format version 2: record
  version 2, whose checksum ends with the index): a record read for another
  image fails its check, whatever moved it there (a damaged key, page
  pointer or offset table). Stores of format version 1 hold version 1
  records, which are read without that check;
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
# Version 2: records bound to their index (record version 2); version 1: records of version 1.
FORMAT_VERSION = 2
METADATA_KEY = b"imgconv.metadata"
KEY_STRUCT = struct.Struct(">Q")
TABLE_HEAD = struct.Struct("<II")

# Value size the automatic records_per_value aims at; see FORMAT.md for the
# measurements (CIFAR: 64 records of 3,104 bytes = 194 KiB).
TARGET_VALUE_BYTES = 192 * 1024
MAX_RECORDS_PER_VALUE = 4096
MAX_RECORDS_OPTION = 1 << 20  # the largest records_per_value a writer accepts, and a reader
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


def record_version(format_version: int) -> int:
    """The record version of the records in a store of ``format_version``."""
    return 2 if format_version >= 2 else 1


class EncodedRecords(EncodedBatch):
    """A batch packed into records (``buffer`` uint8, ``offsets`` N + 1 int64).

    The records are version 2 records at positions 0 .. N-1: the writer moves
    them to their indices in the store (:func:`imgconv.record.reposition`).
    """

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
    packed = record.pack_records(batch.images, batch.labels, positions=0)
    return EncodedRecords(packed.buffer, packed.offsets, batch.labels, batch.shapes(), batch.variable)


def value_with_table(buffer: np.ndarray, offsets: np.ndarray) -> bytes:
    """Records ``buffer`` (offsets from 0) prefixed with the offset table of a varying-size value."""
    n = len(offsets) - 1
    head = TABLE_HEAD.size + 8 * n
    table = np.asarray(offsets[:-1], dtype="<u8") + head
    return TABLE_HEAD.pack(n, 0) + table.tobytes() + buffer.tobytes()


def value_offsets(value: Any, k: int) -> Optional[np.ndarray]:
    """The k + 1 record boundaries of a varying-size ``value`` of ``k`` records, or None when its table is not that.

    Entry s is where the table says record s starts, entry k the end of the
    value. The table must say k records and its reserved word must be 0;
    each entry is checked when its record is read (:func:`record_span`), so
    that a damaged entry fails the records it bounds, not the whole value.
    k is at most the metadata's records_per_value, which the reader checked
    against the value sizes.
    """
    head = TABLE_HEAD.size + 8 * k
    if len(value) < head or TABLE_HEAD.unpack_from(value) != (k, 0):
        return None
    bounds = np.empty(k + 1, np.int64)
    bounds[:k] = np.frombuffer(value, "<u8", count=k, offset=TABLE_HEAD.size).astype(np.int64)  # past 2**63: < 0
    bounds[k] = len(value)
    return bounds


def record_span(bounds: np.ndarray, slot: int) -> Optional[Tuple[int, int]]:
    """``(start, end)`` of the record at ``slot`` by the table ``bounds``, or None when they cannot hold one.

    A record starts after the table and ends where the next one starts (or
    at the end of the value); it holds a header and at least one pixel.
    """
    head = TABLE_HEAD.size + 8 * (len(bounds) - 1)
    start, end = int(bounds[slot]), int(bounds[slot + 1])
    if not head <= start <= end - record.HEADER_SIZE - 1:
        return None
    return start, end


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
    """True when ``path`` is a directory holding ``data.mdb`` (of any kind: the reader refuses one that is
    not a regular file by name)."""
    return os.path.isdir(path) and os.path.lexists(os.path.join(path, "data.mdb"))
