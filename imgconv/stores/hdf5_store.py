"""The old home of the HDF5 store, now the package :mod:`imgconv.stores.hdf5`.

Kept so that imports written against it keep working; each name warns
(DeprecationWarning) and says where it lives now.
"""
from .._moved import forward

_LAYOUT = "imgconv.stores.hdf5.layout"
_WRITER = "imgconv.stores.hdf5.writer"

__getattr__ = forward(__name__, {
    **{name: _LAYOUT for name in ("FORMAT_NAME", "FORMAT_VERSION", "SIGNATURE", "COMPRESSIONS", "CHUNK_TARGET_BYTES",
                                  "PIXEL_CHUNK_BYTES", "LABEL_CHUNK", "EncodedArrays", "encode_batch", "detect")},
    "WRITE_UNIT_BYTES": _WRITER, "Hdf5Writer": _WRITER,
    "DEFAULT_CACHE_BYTES": "imgconv.stores.hdf5.reader", "Hdf5Reader": "imgconv.stores.hdf5.reader",
})
