"""imgconv: store image datasets once as PNG folders, LMDB or HDF5, and read them fast."""
from ._version import __version__
from .convert import ConversionError, ConvertResult, Interrupted, convert, load
from .errors import (
    ExtensionMissingError,
    ImgconvError,
    RecordError,
    SourceError,
    StoreError,
    UnknownFormatError,
    UnsafePickleError,
)
from .kernels import BACKEND, chw_to_hwc, chw_to_hwc_into, crc32c
from .record import PackedRecords, pack_records, read_header, unpack_record, unpack_records
from .sample import generate_sample, write_sample
from .sources import SkippedImageWarning, Source, open_source
from .stores import StoreIndexError, create, open  # noqa: A004 - imgconv.open is the public name

__all__ = [
    "BACKEND",
    "ConversionError",
    "ConvertResult",
    "Interrupted",
    "ExtensionMissingError",
    "ImgconvError",
    "PackedRecords",
    "RecordError",
    "SkippedImageWarning",
    "Source",
    "SourceError",
    "StoreError",
    "StoreIndexError",
    "UnknownFormatError",
    "UnsafePickleError",
    "__version__",
    "chw_to_hwc",
    "chw_to_hwc_into",
    "convert",
    "crc32c",
    "create",
    "generate_sample",
    "load",
    "open",
    "open_source",
    "pack_records",
    "read_header",
    "unpack_record",
    "unpack_records",
    "write_sample",
]
