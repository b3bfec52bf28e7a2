"""The storage methods the harness compares, and their registry.

A :class:`Method` stores a set of images at a path, reads them all back, and
opens the store for random reads. The harness times these, on the same images
in the same process, and checks every read against the images written.
``METHODS`` is the registry, in the order the harness runs and prints them
(each baseline before the methods measured against it);
:func:`register_method` adds one (see :mod:`imgconv.bench` for the plug-in
contract).

imgconv's methods are what the package offers a user: a PNG folder written by
``imgconv.convert`` and read by ``imgconv.load`` through a pool of worker
processes (PNG encoding and decoding is the CPU work a second core takes);
LMDB and HDF5 written with ``imgconv.create`` in batches of 1,024 and read with
``imgconv.open(...).read_all()`` in the calling process: the library's API
for images already in memory. The classic methods are in
:mod:`imgconv.bench.classic`, done the plain way; each is the ``baseline`` of
imgconv's method of the same format.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Protocol, Sequence, Tuple

import numpy as np

import imgconv

from ..errors import BenchCheckError
from . import classic

WRITE_BATCH = 1024


class Environment(NamedTuple):
    """What the methods need besides the images: the ``workers`` of imgconv's PNG pool, and
    ``npz``, a stored ``.npz`` of the whole image set (images and labels) that
    ``imgconv.convert`` reads the images from."""

    workers: int
    npz: Optional[str]


class Reader(Protocol):
    """A store opened for random reads, as ``Method.open_reader`` returns it."""

    def read_one(self, index: int) -> Tuple[np.ndarray, int]:
        """``(image, label)`` of image ``index``."""

    def read_batch(self, indices: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
        """``(images, labels)`` of ``indices``."""

    def close(self) -> None:
        """Release what the reader holds open."""


StoreFn = Callable[[str, np.ndarray, np.ndarray, Environment], None]
StoreOneFn = Callable[[str, np.ndarray, np.ndarray], None]
ReadAllFn = Callable[[str, int, Environment], Tuple[np.ndarray, np.ndarray]]
OpenReaderFn = Callable[[str, int], Reader]


@dataclass(frozen=True)
class Method:
    """One storage method, self-describing.

    ``name`` as given to ``--methods``; ``format`` what it writes ("png",
    "lmdb", "hdf5", or a peer's own); ``family`` who made it ("classic",
    "imgconv", "peer", ...); ``title`` says what it does; ``label`` names it
    in the table's first column ("PNG", "LitData"); ``suffix`` ends its paths.

    Capabilities, each optional (an experiment runs a method only when the
    method has what the experiment ``needs``):
    ``store(path, images, labels, env)`` writes a new store (``env`` is the
    :class:`Environment`); ``store_one(path, images, labels)`` writes a store
    of one image the way a user storing one image would; ``read_all(path,
    count, env) -> (images, labels)`` reads it all back; ``open_reader(path,
    count)`` returns a :class:`Reader`; ``extras`` holds capabilities of
    plug-in experiments by name.

    ``baseline`` names the method this one's ratios are against (its rows get
    ``speedup`` = baseline time / this method's time, round by round).
    ``requires`` lists the modules it imports (it is skipped with a one-line
    reason, saying ``install``, when one is missing); ``probe()``, when given,
    runs once before a run that chose the method, after ``requires`` is found:
    it imports what the method measures and returns why it cannot run here
    (a broken install), or None. ``group`` makes it opt-in (``--methods
    GROUP`` or the ``--GROUP`` flag); ``versions()`` returns the versions of
    what it measures, recorded in results.json; ``doc`` names the
    documentation the method follows (recorded there too).
    """

    name: str
    format: str
    family: str
    title: str
    label: str
    store: Optional[StoreFn] = None
    read_all: Optional[ReadAllFn] = None
    open_reader: Optional[OpenReaderFn] = None
    store_one: Optional[StoreOneFn] = None
    suffix: str = ""
    baseline: Optional[str] = None
    requires: Tuple[str, ...] = ()
    install: str = ""
    group: Optional[str] = None
    versions: Optional[Callable[[], Mapping[str, Optional[str]]]] = None
    extras: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    probe: Optional[Callable[[], Optional[str]]] = None
    doc: str = ""

    @property
    def default(self) -> bool:
        """True when the method runs without being asked for (it belongs to no opt-in group)."""
        return self.group is None

    def capability(self, name: str) -> Optional[Callable[..., Any]]:
        """The callable ``name`` (a field such as ``read_all``, or one of ``extras``), or None."""
        found = getattr(self, name, None) if name in _CAPABILITIES else None
        return found if found is not None else self.extras.get(name)

    def supports(self, needs: Iterable[str]) -> bool:
        """True when the method has every capability of ``needs``."""
        return all(self.capability(name) is not None for name in needs)

    def skip_reason(self) -> Optional[str]:
        """Why the method cannot run here (a required module is missing, or its ``probe`` says why), or None."""
        return missing_modules(self.requires, self.install) or (self.probe() if self.probe is not None else None)


_CAPABILITIES = ("store", "read_all", "open_reader", "store_one")


def missing_modules(modules: Iterable[str], install: str = "") -> Optional[str]:
    """'NAME is not installed (INSTALL)' for the first of ``modules`` that cannot be imported, else None."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed" + (f" ({install})" if install else "")
    return None


# --------------------------------------------------------------------------- classic


def _classic_png_store(path: str, images: np.ndarray, labels: np.ndarray, env: Optional[Environment] = None) -> None:
    os.mkdir(path)
    classic.store_png_files(path, images, labels)


def _classic_png_read(path: str, count: int, env: Optional[Environment] = None) -> Tuple[np.ndarray, np.ndarray]:
    return classic.read_png_files(path, count)


def _classic_lmdb_store(path: str, images: np.ndarray, labels: np.ndarray, env: Optional[Environment] = None) -> None:
    classic.store_lmdb_pickles(path, images, labels)


def _classic_lmdb_read(path: str, count: int, env: Optional[Environment] = None) -> Tuple[np.ndarray, np.ndarray]:
    return classic.read_lmdb_pickles(path, count)


def _classic_hdf5_store(path: str, images: np.ndarray, labels: np.ndarray, env: Optional[Environment] = None) -> None:
    classic.store_hdf5_contiguous(path, images, labels)


def _classic_hdf5_read(path: str, count: int, env: Optional[Environment] = None) -> Tuple[np.ndarray, np.ndarray]:
    return classic.read_hdf5_contiguous(path)


class ClassicReader:
    """A classic store opened for random reads (``reader_class`` from :mod:`classic`), batch by loop."""

    def __init__(self, reader_class: Callable[[str, int], Any], path: str, count: int):
        self._reader = reader_class(path, count)

    def read_one(self, index: int) -> Tuple[np.ndarray, int]:
        """``(image, label)`` of image ``index``."""
        return self._reader.read_one(index)

    def read_batch(self, indices: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
        """``(images, labels)`` for ``indices``, one lookup per index."""
        return classic.read_batch(self._reader, indices)

    def close(self) -> None:
        """Close what the classic reader holds open."""
        self._reader.close()


def _classic_opener(reader_class: Callable[[str, int], Any]) -> OpenReaderFn:
    return lambda path, count: ClassicReader(reader_class, path, count)


# --------------------------------------------------------------------------- imgconv


def _imgconv_write(fmt: str, durable: bool = True) -> Callable[..., None]:
    def store(path: str, images: np.ndarray, labels: np.ndarray, env: Optional[Environment] = None) -> None:
        with imgconv.create(path, fmt, durable=durable) as writer:
            for start in range(0, len(images), WRITE_BATCH):
                writer.append(images[start : start + WRITE_BATCH], labels[start : start + WRITE_BATCH])

    return store


def _imgconv_png_convert(durable: bool = True) -> StoreFn:
    def store(path: str, images: np.ndarray, labels: np.ndarray, env: Environment) -> None:
        imgconv.convert(env.npz, path, format="png", limit=len(images), workers=env.workers,
                        store_options=None if durable else {"durable": False})

    return store


def _one_size(got: Tuple[Any, np.ndarray], path: str) -> Tuple[np.ndarray, np.ndarray]:
    """``got`` as arrays: images of several sizes (a list) are not what the harness wrote, and fail the run."""
    images, labels = got
    if not isinstance(images, np.ndarray):
        raise BenchCheckError(f"{path}: read back as images of several sizes, one size was written: the run fails")
    return images, labels


def _imgconv_png_read(path: str, count: int, env: Environment) -> Tuple[np.ndarray, np.ndarray]:
    return _one_size(imgconv.load(path, workers=env.workers), path)


def _imgconv_read_all(path: str, count: int, env: Optional[Environment] = None) -> Tuple[np.ndarray, np.ndarray]:
    with imgconv.open(path) as store:
        return _one_size(store.read_all(), path)


class StoreReader:
    """An imgconv store opened for random reads: ``store[i]`` and ``store.read_batch``."""

    def __init__(self, path: str, count: int):
        self._path = path
        self._store = imgconv.open(path)

    def read_one(self, index: int) -> Tuple[np.ndarray, int]:
        """``(image, label)`` of image ``index``."""
        return self._store[index]

    def read_batch(self, indices: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
        """``(images, labels)`` for ``indices`` in one call."""
        return _one_size(self._store.read_batch(indices), self._path)

    def close(self) -> None:
        """Close the store."""
        self._store.close()


METHODS: Dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add ``method`` to ``METHODS`` (after those registered before it); returns it.

    Raises ValueError for a name already registered or a ``baseline`` that is
    not (a baseline registers first, so that it runs first).
    """
    if method.name in METHODS:
        raise ValueError(f"a bench method named {method.name!r} is already registered")
    if method.baseline is not None and method.baseline not in METHODS:
        raise ValueError(f"{method.name}: its baseline {method.baseline!r} is not a registered method")
    METHODS[method.name] = method
    return method


def method_groups() -> Dict[str, List[str]]:
    """The names ``--methods`` accepts for several methods at once.

    "all" (every method that runs by default), each family of those
    ("classic", "imgconv"), and each opt-in ``group`` ("peers").
    """
    default = [m for m in METHODS.values() if m.default]
    groups = {"all": [m.name for m in default]}
    for method in default:
        groups.setdefault(method.family, []).append(method.name)
    for method in METHODS.values():
        if method.group is not None:
            groups.setdefault(method.group, []).append(method.name)
    return groups


for _method in [
    Method("classic-png", "png", "classic", "Image.save / Image.open per file, one labels CSV", "PNG",
           store=_classic_png_store, store_one=_classic_png_store, read_all=_classic_png_read,
           open_reader=_classic_opener(classic.PngFilesReader)),
    Method("png", "png", "imgconv", "imgconv.convert / imgconv.load through the worker pool", "PNG",
           store=_imgconv_png_convert(), store_one=_imgconv_write("png"), read_all=_imgconv_png_read,
           open_reader=StoreReader, baseline="classic-png"),
    Method("classic-lmdb", "lmdb", "classic", "a pickled object per key, one transaction", "LMDB", suffix=".lmdb",
           store=_classic_lmdb_store, store_one=_classic_lmdb_store, read_all=_classic_lmdb_read,
           open_reader=_classic_opener(classic.LmdbPicklesReader)),
    Method("lmdb", "lmdb", "imgconv", "imgconv.create in batches / open().read_all()", "LMDB", suffix=".lmdb",
           store=_imgconv_write("lmdb"), store_one=_imgconv_write("lmdb"), read_all=_imgconv_read_all,
           open_reader=StoreReader, baseline="classic-lmdb"),
    Method("classic-hdf5", "hdf5", "classic", "one create_dataset of the whole array, big-endian uint8", "HDF5",
           suffix=".h5", store=_classic_hdf5_store, store_one=_classic_hdf5_store, read_all=_classic_hdf5_read,
           open_reader=_classic_opener(classic.Hdf5ContiguousReader)),
    Method("hdf5", "hdf5", "imgconv", "imgconv.create in batches (chunked) / open().read_all()", "HDF5", suffix=".h5",
           store=_imgconv_write("hdf5"), store_one=_imgconv_write("hdf5"), read_all=_imgconv_read_all,
           open_reader=StoreReader, baseline="classic-hdf5"),
]:
    register_method(_method)

# The writes again without syncing to disk (durable=False, --no-sync): what the guarantee costs, beside it.
for _method in [
    Method("png-nosync", "png", "imgconv", "imgconv.convert / imgconv.create, durable=False (no sync)",
           "PNG, no sync", store=_imgconv_png_convert(durable=False), store_one=_imgconv_write("png", durable=False),
           baseline="classic-png"),
    Method("lmdb-nosync", "lmdb", "imgconv", "imgconv.create in batches, durable=False (no sync)", "LMDB, no sync",
           suffix=".lmdb", store=_imgconv_write("lmdb", durable=False), store_one=_imgconv_write("lmdb", durable=False),
           baseline="classic-lmdb"),
    Method("hdf5-nosync", "hdf5", "imgconv", "imgconv.create in batches, durable=False (no sync)", "HDF5, no sync",
           suffix=".h5", store=_imgconv_write("hdf5", durable=False), store_one=_imgconv_write("hdf5", durable=False),
           baseline="classic-hdf5"),
]:
    register_method(_method)


def same_data(got: Tuple[Any, Any], images: np.ndarray, labels: np.ndarray) -> bool:
    """True when ``got`` (images, labels) holds exactly ``images`` and ``labels``, the images of their dtype."""
    got_images, got_labels = got
    return (isinstance(got_images, np.ndarray) and got_images.shape == images.shape
            and got_images.dtype == images.dtype
            and np.array_equal(got_images, images) and np.array_equal(np.asarray(got_labels), labels))
