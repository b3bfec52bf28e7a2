"""The fixed costs of an HDF5 store through h5py's low-level API: open, attributes, datasets.

h5py's high-level objects (``File``, ``Dataset``, ``AttributeManager``) spend
tens of microseconds of Python on every call, and opening a store for one
image makes a few dozen of them: reading the metadata alone (one attribute per
field) cost more than a whole classic ``h5py`` read of one image. The same
HDF5 operations through ``h5py.h5f``, ``h5d`` and ``h5a`` cost a fraction
(BENCHMARKS.md, "Fixed costs"); the files are the same. High-level objects are
still made where they pay: wrapped around these ids, on the paths that read
through HDF5's selections.
"""
from typing import Any, Dict, Optional, Tuple

import h5py
import numpy as np

from ... import _platform
from .layout import read_attr

# One file access property list per chunk-cache size, made once per process.
_FAPLS: _platform.PerProcess[Dict[int, Any]] = _platform.PerProcess(dict)


def _file_access(cache_bytes: int) -> Any:
    fapls = _FAPLS.get()
    fapl = fapls.get(cache_bytes)
    if fapl is None:
        fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
        settings = list(fapl.get_cache())
        settings[1], settings[2] = 10007, cache_bytes  # chunk slots (a prime), bytes
        fapl.set_cache(*settings)
        fapls[cache_bytes] = fapl
    return fapl


def open_file(path: str, cache_bytes: int) -> Any:
    """The file at ``path`` opened read-only (an ``h5py.h5f.FileID``) with a chunk cache of ``cache_bytes``.

    Raises what h5py raises: OSError for a file HDF5 cannot open.
    """
    return h5py.h5f.open(path.encode("utf-8", "surrogateescape"), h5py.h5f.ACC_RDONLY,
                         fapl=_file_access(cache_bytes))


def close_file(fid: Any) -> None:
    """Close every object opened through ``fid``, then the file (what ``h5py.File.close`` does)."""
    if fid.valid:
        fid._close_open_objects(h5py.h5f.OBJ_LOCAL | ~h5py.h5f.OBJ_FILE)
        fid._close_open_objects(h5py.h5f.OBJ_LOCAL | h5py.h5f.OBJ_FILE)
        fid.close()


def read_attributes(oid: Any) -> Dict[str, Any]:
    """Every attribute of the object ``oid`` (a low-level id), by name, as :func:`read_attr` gives it."""
    found = {}
    for k in range(h5py.h5a.get_num_attrs(oid)):
        attr = h5py.h5a.open(oid, index=k)
        shape, dtype = attr.shape, attr.dtype
        if shape is None:  # a null dataspace: no value, as h5py's attrs say
            value: Any = h5py.Empty(dtype)
        else:
            array = np.empty(shape, dtype)
            attr.read(array)
            value = array[()] if array.ndim == 0 else array
        found[attr.name.decode("utf-8", "surrogateescape")] = read_attr(value)
    return found


def open_dataset(oid: Any, name: str) -> Optional[Any]:
    """The dataset ``name`` in the group ``oid`` (an ``h5py.h5d.DatasetID``), or None when there
    is no such name or it is not a dataset. What HDF5 cannot open (a damaged object header)
    raises, as h5py does (KeyError, OSError)."""
    key = name.encode("utf-8")
    try:
        return h5py.h5d.open(oid, key)
    except KeyError:
        if key not in oid:
            return None
        found = h5py.h5o.open(oid, key)  # raises again for an object HDF5 cannot open
    return found if isinstance(found, h5py.h5d.DatasetID) else None


def read_whole(dataset: Any, dtype: Any) -> np.ndarray:
    """The whole of a dataset (``h5py.h5d.DatasetID``) as an array of ``dtype`` (HDF5 converts)."""
    out = np.empty(dataset.shape, dtype)
    if out.size:
        dataset.read(h5py.h5s.ALL, h5py.h5s.ALL, out)
    return out


# --------------------------------------------------------------------------- writing
# Each function makes the HDF5 calls h5py's high-level method of the same purpose
# makes (h5py 3: File(path, "w", libver=...), create_dataset, resize, slice
# assignment, attrs[name] = value), so the files are the same, byte for byte.


# Property lists, types and dataspaces are only read by the calls they are given
# to (HDF5 copies them): made once per process and reused, they cost a store
# nothing. A handful of keys (one per image shape and option set).
_REUSED: _platform.PerProcess[Dict[Any, Any]] = _platform.PerProcess(dict)
_MAX_REUSED = 256


def _reused(key: Any, make: Any) -> Any:
    reused = _REUSED.get()
    found = reused.get(key)
    if found is None:
        if len(reused) >= _MAX_REUSED:
            reused.clear()
        found = reused[key] = make()
    return found


def _file_create_lists(libver: Any) -> Tuple[Any, Any]:
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(*libver)
    fapl.set_alignment(1, 1)
    fcpl = h5py.h5p.create(h5py.h5p.FILE_CREATE)
    fcpl.set_obj_track_times(False)
    return fapl, fcpl


def create_file(path: str, libver: Any) -> Any:
    """A new file at ``path`` (truncated if it exists) with the library version bounds ``libver``
    (a pair of ``h5py.h5f.LIBVER_*``); an ``h5py.h5f.FileID``. Raises OSError as h5py does."""
    fapl, fcpl = _reused(("file", tuple(libver)), lambda: _file_create_lists(libver))
    return h5py.h5f.create(path.encode("utf-8", "surrogateescape"), h5py.h5f.ACC_TRUNC, fapl=fapl, fcpl=fcpl)


def _dataset_create_list(chunks: Tuple[int, ...], compression: Optional[str], compression_opts: Optional[int]) -> Any:
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_chunk(chunks)
    if compression == "gzip":
        dcpl.set_deflate(compression_opts)
    elif compression == "lzf":
        dcpl.set_filter(h5py.h5z.FILTER_LZF, h5py.h5z.FLAG_OPTIONAL)
    elif compression is not None:
        raise ValueError(f"unknown compression {compression!r}")
    dcpl.set_obj_track_times(False)
    dcpl.set_attr_creation_order(0)
    return dcpl


def _type(dtype: np.dtype, logical: bool) -> Any:
    # Object arrays here are h5py's variable-length strings (their dtype's metadata says which kind).
    key = ("type", dtype.str, h5py.check_string_dtype(dtype) if dtype.kind == "O" else None, logical)
    return _reused(key, lambda: h5py.h5t.py_create(dtype, logical=logical))


def _space(shape: Tuple[int, ...], maxshape: Optional[Tuple[int, ...]] = None) -> Any:
    return _reused(("space", shape, maxshape), lambda: h5py.h5s.create_simple(shape, maxshape))


def create_dataset(oid: Any, name: str, shape: Tuple[int, ...], dtype: Any, maxshape: Tuple[Optional[int], ...],
                   chunks: Tuple[int, ...], compression: Optional[str] = None,
                   compression_opts: Optional[int] = None) -> Any:
    """A new chunked dataset ``name`` in the group ``oid`` (an ``h5py.h5d.DatasetID``); ``compression``
    None, "gzip" (level ``compression_opts``) or "lzf"."""
    dcpl = _reused(("dcpl", chunks, compression, compression_opts),
                   lambda: _dataset_create_list(chunks, compression, compression_opts))
    space = _space(shape, tuple(h5py.h5s.UNLIMITED if m is None else m for m in maxshape))
    return h5py.h5d.create(oid, name.encode("utf-8"), _type(np.dtype(dtype), True), space, dcpl=dcpl)


def resize(dataset: Any, length: int) -> None:
    """Make the first axis of ``dataset`` (an ``h5py.h5d.DatasetID``) ``length`` long."""
    dataset.set_extent((length, *dataset.shape[1:]))


def write_rows(dataset: Any, start: int, data: np.ndarray) -> None:
    """Write ``data`` to rows ``start .. start + len(data) - 1`` of ``dataset`` (within its extent)."""
    data = np.ascontiguousarray(data)
    if not len(data):
        return
    file_space = dataset.get_space()
    file_space.select_hyperslab((start,) + (0,) * (data.ndim - 1), data.shape)
    dataset.write(_space(data.shape), file_space, data)


def write_attribute(oid: Any, name: str, value: Any) -> None:
    """Attach the attribute ``name`` = ``value`` (as ``h5py``'s ``attrs[name] = value`` stores it) to ``oid``,
    an object that has no attribute of that name yet."""
    # As h5py sees the value: a str is a variable-length UTF-8 string, anything else an array of its kind.
    data = np.array(value, dtype=h5py.string_dtype()) if isinstance(value, str) else np.asarray(value)
    attr = h5py.h5a.create(oid, name.encode("utf-8"), _type(data.dtype, True), _space(data.shape))
    try:
        attr.write(data, mtype=_type(data.dtype, False))
    finally:
        attr.close()
