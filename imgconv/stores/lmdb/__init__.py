"""LMDB stores: runs of consecutive records per value, chunk numbers as keys.

:mod:`.layout` is the layout (and the pure ``encode_batch`` workers run),
:mod:`.writer` writes a store, :mod:`.reader` reads one, and :mod:`.pagecheck`
checks a file's page structure before liblmdb is let near it.
"""
from .layout import (
                     FORMAT_NAME,
                     FORMAT_VERSION,
                     METADATA_KEY,
                     VARIABLE_RECORDS_PER_VALUE,
                     EncodedRecords,
                     chunk_key,
                     detect,
                     encode_batch,
                     records_per_value_for,
)
from .reader import LmdbReader
from .writer import LmdbWriter

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "METADATA_KEY",
    "VARIABLE_RECORDS_PER_VALUE",
    "EncodedRecords",
    "LmdbReader",
    "LmdbWriter",
    "chunk_key",
    "detect",
    "encode_batch",
    "records_per_value_for",
]
