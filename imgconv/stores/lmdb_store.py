"""The old home of the LMDB store, now the package :mod:`imgconv.stores.lmdb`.

Kept so that imports written against it keep working; each name warns
(DeprecationWarning) and says where it lives now.
"""
from .._moved import forward

_LAYOUT = "imgconv.stores.lmdb.layout"
_WRITER = "imgconv.stores.lmdb.writer"

__getattr__ = forward(__name__, {
    **{name: _LAYOUT for name in ("FORMAT_NAME", "FORMAT_VERSION", "METADATA_KEY", "KEY_STRUCT", "TABLE_HEAD",
                                  "TARGET_VALUE_BYTES", "MAX_RECORDS_PER_VALUE", "VARIABLE_RECORDS_PER_VALUE",
                                  "EncodedRecords", "chunk_key", "records_per_value_for", "encode_batch", "detect")},
    "INITIAL_MAP_SIZE": _WRITER, "TXN_BYTES": _WRITER, "LmdbWriter": _WRITER,
    "LmdbReader": "imgconv.stores.lmdb.reader",
})
