"""Reopening the HDF5 file a killed writer left, to continue it.

HDF5 marks a file open for writing in its superblock and refuses to open it
again until the mark is cleared (by ``h5clear``, or by the file access
property ``clear_status_flags`` that h5clear sets). h5py offers no way to set
that property, so it is set here through the HDF5 library h5py is linked to,
with ctypes. This depends on the library exporting ``H5Pset`` and
``H5Pexist`` (h5py's wheels do) and on the property's name; it was tested
with h5py 3.16.0 and the HDF5 2.0.0 it bundles (RELIABILITY.md's kill runs).
Where it fails the resume layer discards the file and starts over, saying
why.
"""
import ctypes
import functools
import os
from typing import Any, Optional

import h5py

from ...errors import StoreError


@functools.cache
def _hdf5_library() -> Optional[Any]:
    """The HDF5 C library h5py uses (through its extension module), or None."""
    try:
        library = ctypes.CDLL(h5py.h5f.__file__)
        library.H5Pset.argtypes = (ctypes.c_int64, ctypes.c_char_p, ctypes.c_void_p)
        library.H5Pexist.argtypes = (ctypes.c_int64, ctypes.c_char_p)
    except (OSError, AttributeError):
        return None
    return library


def open_unfinished(path: str) -> h5py.File:
    """Open the HDF5 file a killed writer left at ``path``, read-write.

    HDF5 marks a file open for writing in its superblock and refuses to
    open it again until the mark is cleared (by ``h5clear``, or by the file
    access property ``clear_status_flags`` that h5clear sets, set here
    through the library h5py is linked to). Raises StoreError when that is
    not possible or the file does not open.
    """
    library = _hdf5_library()
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_V110, h5py.h5f.LIBVER_V110)  # as the writer opened it
    flag = ctypes.c_bool(True)
    if (library is None or library.H5Pexist(fapl.id, b"clear_status_flags") <= 0
            or library.H5Pset(fapl.id, b"clear_status_flags", ctypes.byref(flag)) < 0):
        raise StoreError("this HDF5 library offers no way to reopen a file a killed writer left")
    try:
        return h5py.File(h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDWR, fapl=fapl))
    except (OSError, ValueError, RuntimeError) as exc:
        raise StoreError(f"HDF5 cannot open it: {exc}") from None
