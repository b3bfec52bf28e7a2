"""imgconv: store image datasets once as PNG folders, LMDB or HDF5, and read them fast.

The whole workflow is a handful of functions:

* :func:`convert` a dataset (CIFAR, an image folder, NumPy files, a store)
  into a store, and :func:`load` one into memory, both through a pool of
  worker processes;
* :func:`create` a store and write it batch by batch; :func:`open` one to read;
* :func:`open_source` a dataset to read it batch by batch;
* :func:`verify` a store (every checksum) and get the :func:`info` about one;

and the errors they raise (:mod:`imgconv.errors` states the rule). Two
sub-modules are documented interfaces of their own: :mod:`imgconv.kernels`
(the compiled kernels and their NumPy twins: CHW to HWC, CRC32C) and
:mod:`imgconv.record` (the binary record format, packing and unpacking).
"""
from typing import Any

from . import kernels, record, sample  # noqa: F401 - documented sub-modules, and imgconv.sample's old users
from ._moved import forward
from ._version import __version__
from .convert import ConvertResult, convert
from .errors import (
    ConversionError,
    ExtensionMissingError,
    ImgconvError,
    Interrupted,
    RecordError,
    SkippedImageWarning,
    SourceError,
    StoreArgumentError,
    StoreError,
    StoreIndexError,
    UnknownFormatError,
    UnsafePickleError,
    WorkerDied,
)
from .load import load
from .sources import open_source
from .stores import create, open  # noqa: A004 - imgconv.open is the public name
from .verify import VerifyReport, info, verify

__all__ = [
    "ConversionError",
    "ConvertResult",
    "ExtensionMissingError",
    "ImgconvError",
    "Interrupted",
    "RecordError",
    "SkippedImageWarning",
    "SourceError",
    "StoreArgumentError",
    "StoreError",
    "StoreIndexError",
    "UnknownFormatError",
    "UnsafePickleError",
    "VerifyReport",
    "WorkerDied",
    "__version__",
    "convert",
    "create",
    "info",
    "load",
    "open",
    "open_source",
    "verify",
]

# Names the top level exported before it was made small: they still work, with a
# DeprecationWarning naming their home.
__getattr__: Any = forward(__name__, {
    "BACKEND": "imgconv.kernels", "chw_to_hwc": "imgconv.kernels", "chw_to_hwc_into": "imgconv.kernels",
    "crc32c": "imgconv.kernels",
    "PackedRecords": "imgconv.record", "pack_records": "imgconv.record", "read_header": "imgconv.record",
    "unpack_record": "imgconv.record", "unpack_records": "imgconv.record",
    "generate_sample": "imgconv.sample", "write_sample": "imgconv.sample",
    "Source": "imgconv.sources",
})
