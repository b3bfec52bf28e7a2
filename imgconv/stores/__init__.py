"""Stores: PNG folders, LMDB and chunked HDF5 behind one interface.

``create(path, format=None, ...)`` returns a writer (a context manager with
``append(images, labels)`` and ``close()``); ``open(path)`` detects the format
and returns a reader with ``len``, ``store[i]``, ``read_batch(indices)``,
``batches(batch_size)`` and ``metadata``. ``FORMATS`` is the registry.

What every format shares, one module each: :mod:`.batch` (batch checks),
:mod:`.metadata` (metadata and its checksum), :mod:`.partial` (the locked
partial output), :mod:`.atomic` (the rename into place), :mod:`.writer` and
:mod:`.reader` (the base classes), :mod:`.read_pool` (threads of large reads).
The formats: :mod:`.png_folder`, :mod:`.lmdb`, :mod:`.hdf5`.
"""
import os
import stat
from collections import namedtuple
from typing import Any, Optional, Sequence

from .. import _platform
from ..errors import (
    StoreError,
    StoreIndexError,  # noqa: F401 - its old import location
    UnknownFormatError,
)
from ..options import Option, whole_number
from . import hdf5, lmdb, png_folder
from .batch import VARIABLE, EncodedBatch, check_batch
from .reader import Reader
from .writer import Writer, WriterState

StoreFormat = namedtuple("StoreFormat", "name writer reader encode_batch detect suffixes options", defaults=((),))
StoreFormat.__doc__ = """One registered format: its writer and reader classes, its pure
``encode_batch``, ``detect(path) -> bool`` by content, the path suffixes
that select it in :func:`create`, and the ``options`` its writer takes,
declared once (see :mod:`imgconv.options`; the command line's flags come
from them)."""

# The options every format's writer takes (the Writer base class's), declared once.
WRITER_OPTIONS = (
    Option("durable", type=bool, default=True, flag="--no-sync",
           help="do not sync the store to disk before it is renamed into place: faster, most for small stores; "
                "a crash of the machine (not of the process) may then lose it or leave it damaged"),
)
# The writers' options, declared once; each writer checks the values itself.
PNG_OPTIONS = (
    Option("compress_level", type=whole_number(0, 9), default=png_folder.DEFAULT_COMPRESS_LEVEL, flag="--png-level",
           metavar="0..9", help="the zlib level of the files"),
)
LMDB_OPTIONS = (
    Option("records_per_value", type=whole_number(1, 1 << 20), flag="--lmdb-records-per-value", metavar="K",
           help="images per value (default: about 192 KiB of pixels per value, 16 images when the sizes "
                "vary)"),
    Option("map_size", type=whole_number(1), default=lmdb.writer.INITIAL_MAP_SIZE, cli=False,
           help="the initial map size in bytes; it grows as needed"),
)
HDF5_OPTIONS = (
    Option("chunk_images", type=whole_number(1, 1 << 20), flag="--hdf5-chunk", metavar="N",
           help="images per chunk (default: about 192 KiB of pixels per chunk)"),
    Option("compression", choices=tuple(c for c in hdf5.COMPRESSIONS if c is not None),
           flag="--hdf5-compression", help="the compression filter (default: none)"),
    Option("compression_level", type=whole_number(0, 9), flag="--hdf5-level", metavar="0..9",
           help="the gzip level (default 4)"),
)

FORMATS = {
    "lmdb": StoreFormat("lmdb", lmdb.LmdbWriter, lmdb.LmdbReader, lmdb.encode_batch, lmdb.detect, (".lmdb",),
                        LMDB_OPTIONS),
    "hdf5": StoreFormat("hdf5", hdf5.Hdf5Writer, hdf5.Hdf5Reader, hdf5.encode_batch, hdf5.detect, (".h5", ".hdf5"),
                        HDF5_OPTIONS),
    "png": StoreFormat("png", png_folder.PngFolderWriter, png_folder.PngFolderReader, png_folder.encode_batch,
                       png_folder.detect, (), PNG_OPTIONS),
}
DEFAULT_FORMAT = "png"


def format_for_path(path: Any) -> str:
    """The format :func:`create` picks for ``path`` by its suffix.

    ``.lmdb`` is LMDB, ``.h5``/``.hdf5`` HDF5, and a name with no suffix or
    ending in "/" a PNG folder. Any other suffix (a typo such as ``.lmbd``,
    or ``.txt``) raises UnknownFormatError naming it and the known ones:
    pass the format explicitly to write such a name.
    """
    text = os.fspath(path)
    if text.endswith(("/", os.sep)):
        return DEFAULT_FORMAT
    suffix = os.path.splitext(text)[1].lower()
    if not suffix:
        return DEFAULT_FORMAT
    for spec in FORMATS.values():
        if suffix in spec.suffixes:
            return spec.name
    known = "; ".join(f"{spec.name}: {', '.join(spec.suffixes)}" for spec in FORMATS.values() if spec.suffixes)
    raise UnknownFormatError(
        f"{text}: unknown store suffix {suffix!r} ({known}; a {DEFAULT_FORMAT} folder: no suffix or a trailing /); "
        f"to write this name anyway, pass format=NAME ({', '.join(FORMATS)})"
    )


def get_format(name: str) -> StoreFormat:
    """The registered :class:`StoreFormat` called ``name``; UnknownFormatError otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        raise UnknownFormatError(f"unknown store format {name!r}; known: {', '.join(sorted(FORMATS))}") from None


def create(path: Any, format: Optional[str] = None, *, overwrite: bool = False,
           label_names: Optional[Sequence[str]] = None, source: Optional[str] = None, shape: Any = None,
           durable: bool = True, **format_options: Any) -> Writer:
    """A writer for a new store at ``path``.

    ``format`` is "png", "lmdb" or "hdf5"; by default the suffix decides
    (``.lmdb``, ``.h5``/``.hdf5``, none or a trailing "/" for a PNG folder;
    see :func:`format_for_path`). The output is
    written under a temporary name beside ``path`` and renamed into place by
    ``close()``; an existing ``path`` is replaced only with ``overwrite=True``.
    ``label_names`` and ``source`` go into the metadata; ``shape`` fixes the
    image shape up front ((H, W), (H, W, C) or "variable"; by default the
    first batch decides: an array fixes the shape, a list means varying
    sizes). ``durable=False`` skips syncing the store to disk before the
    rename (an LMDB's data, the directory entry): faster, and safe against
    the death of the process but not of the machine (LMDB's own
    ``sync=False``). ``format_options`` are the format's own (see its writer class).
    Raises UnknownFormatError for an unknown format or suffix, StoreError when the
    target exists or cannot be written, TypeError for an unknown option,
    StoreArgumentError (a ValueError) for a bad option value.
    """
    spec = get_format(format if format is not None else format_for_path(path))
    return spec.writer(path, overwrite=overwrite, label_names=label_names, source=source, shape=shape,
                       durable=durable, **format_options)


def detect_format(path: Any) -> str:
    """The name of the format of the store at ``path``, detected by content.

    Raises UnknownFormatError naming the path and what was found there.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise StoreError(f"{path}: no such file or directory")
    refuse_special(path)
    for spec in FORMATS.values():
        if spec.detect(path):
            return spec.name
    if not os.path.exists(path):
        raise StoreError(f"{path}: no such file or directory")
    raise UnknownFormatError(f"{path}: not an imgconv store: {_describe(path)}")


def open(path: Any, format: Optional[str] = None, **options: Any) -> Reader:  # noqa: A001 - the public name
    """Open the store at ``path`` for reading; the format is detected unless given.

    A sharded dataset (a directory with ``dataset.json``, see
    :mod:`imgconv.datasets`) opens as one store over all its shards.
    ``options`` go to the format's reader (e.g. ``readahead`` for LMDB,
    ``cache_bytes`` for HDF5). Raises UnknownFormatError when ``path`` is not a
    store and StoreError when it is damaged or unfinished.
    """
    if format is not None:
        refuse_special(os.fspath(path))

    from ..datasets import manifest as dataset  # the dataset builds on this package: imported when used

    if dataset.is_dataset(path):
        return _open_dataset(path, format, options)
    dataset.refuse_unfinished(path)
    spec = get_format(format if format is not None else detect_format(path))
    return spec.reader(path, **options)


def refuse_special(path: str) -> None:
    """Raise StoreError when ``path`` is a FIFO, socket or device: no store, and opening one may wait forever."""
    special = _platform.special_file(path)
    if special is not None:
        raise StoreError(f"{path}: {special}, not a store (imgconv stores are regular files and directories)")


def _open_dataset(path: Any, format: Optional[str], options: Any) -> Reader:
    """A sharded dataset (:mod:`imgconv.datasets`) opened as one store; ``format`` must be its shards'."""
    from ..datasets.reader import DatasetReader

    reader = DatasetReader(path, **options)
    if format is not None and format != reader.format_name:
        get_format(format)
        raise StoreError(f"{reader.path}: a sharded dataset of {reader.format_name} shards, not {format}")
    return reader


def _describe(path):
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"a path that cannot be examined ({exc})"
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return f"{_platform.file_kind(mode)}, not a file or directory a store can be (not opened)"
    if os.path.isdir(path):
        try:
            names = sorted(os.listdir(path))
        except OSError as exc:
            return f"a directory that cannot be listed ({exc})"
        if not names:
            return "an empty directory"
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        return (f"a directory of {len(names)} entries ({shown}) with no manifest.json, "
                "no dataset.json, no data.mdb and no 0.png plus labels CSV")
    try:
        # Never a FIFO, socket or device: opening one to quote its first bytes would block, or worse.
        with _platform.open_regular_file(path) as f:
            head = f.read(8)
            size = os.fstat(f.fileno()).st_size
    except _platform.NotRegularFileError as exc:
        return exc.kind
    except OSError as exc:
        return f"a file that cannot be read ({exc})"
    return f"a file of {size} bytes starting {head!r}, not an HDF5 file"


__all__ = [
    "FORMATS",
    "VARIABLE",
    "WRITER_OPTIONS",
    "EncodedBatch",
    "Reader",
    "StoreFormat",
    "StoreIndexError",
    "Writer",
    "WriterState",
    "check_batch",
    "create",
    "detect_format",
    "format_for_path",
    "get_format",
    "open",
]
