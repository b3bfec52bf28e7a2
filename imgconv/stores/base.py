"""The old home of what every store shares, now split one concept per module.

Kept so that imports written against it keep working; each name warns
(DeprecationWarning) and says where it lives now.
"""
from .._moved import forward

_BATCH = "imgconv.stores.batch"
_METADATA = "imgconv.stores.metadata"
_ATOMIC = "imgconv.stores.atomic"
_PARTIAL = "imgconv.stores.partial"
_READ_POOL = "imgconv.stores.read_pool"

__getattr__ = forward(__name__, {
    "VARIABLE": _BATCH, "Batch": _BATCH, "EncodedBatch": _BATCH, "check_batch": _BATCH, "shape_text": _BATCH,
    "image_checksums": "imgconv.checksum",
    "PARALLEL_MIN_BYTES": _READ_POOL, "thread_pool": _READ_POOL, "read_threads": _READ_POOL,
    "split_for_threads": _READ_POOL,
    "METADATA_CHECKSUM": _METADATA, "make_metadata": _METADATA, "metadata_checksum": _METADATA,
    "dump_metadata": _METADATA, "load_metadata": _METADATA, "check_metadata": _METADATA,
    "temporary_sibling": _ATOMIC, "check_target": _ATOMIC, "commit": _ATOMIC,
    "remove_path": "imgconv._platform",
    "PARTIAL_SUFFIX": _PARTIAL, "partial_path": _PARTIAL, "PartialOutput": _PARTIAL,
    "JOURNAL": "imgconv.resume.journal", "JOURNAL_VERSION": "imgconv.resume.journal",
    "Writer": "imgconv.stores.writer", "Reader": "imgconv.stores.reader", "StoreIndexError": "imgconv.errors",
})
