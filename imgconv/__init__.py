"""imgconv: store image datasets once as PNG folders, LMDB or HDF5, and read them fast."""
from ._version import __version__
from .errors import ExtensionMissingError, ImgconvError, RecordError
from .kernels import BACKEND, chw_to_hwc, chw_to_hwc_into, crc32c
from .record import PackedRecords, pack_records, read_header, unpack_record, unpack_records

__all__ = [
    "BACKEND",
    "ExtensionMissingError",
    "ImgconvError",
    "PackedRecords",
    "RecordError",
    "__version__",
    "chw_to_hwc",
    "chw_to_hwc_into",
    "crc32c",
    "pack_records",
    "read_header",
    "unpack_record",
    "unpack_records",
]
