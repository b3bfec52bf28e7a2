"""Chunked HDF5 stores: plain HDF5 that h5py alone can read.

:mod:`.layout` is the layout (and the pure ``encode_batch`` workers run),
:mod:`.writer` writes a store, :mod:`.reader` reads one, :mod:`.direct` reads
uncompressed chunks straight from the file, and :mod:`.unfinished` reopens
the file a killed writer left.
"""
from .layout import COMPRESSIONS, FORMAT_NAME, FORMAT_VERSION, SIGNATURE, EncodedArrays, detect, encode_batch
from .reader import Hdf5Reader
from .writer import Hdf5Writer

__all__ = [
    "COMPRESSIONS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "SIGNATURE",
    "EncodedArrays",
    "Hdf5Reader",
    "Hdf5Writer",
    "detect",
    "encode_batch",
]
