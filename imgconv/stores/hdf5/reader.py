"""Reading an HDF5 store: through h5py, or (an uncompressed store of one image shape) straight
from the file at the offsets HDF5 reports (:mod:`imgconv.stores.hdf5.direct`); large reads are
split over threads, each reading and checking its part.

The store is opened through h5py's low-level API (:mod:`imgconv.stores.hdf5.lowlevel`), and what
opening it checks (the metadata, the chunk index of direct reads) is kept per file for the life of
the process: a store is immutable once written, and one opened again and again (a Dataset opening
it per item, to be safe across fork) is then opened at little more than HDF5's own cost. A file
is the same while its device, inode, size, modification and change times are; any write to it
changes the last, which no program can set.

Before any data is read the file's datasets are checked to be what imgconv
writes (:mod:`imgconv.stores.hdf5.structure`: no links, external storage,
virtual datasets or foreign filters), and their sizes against the metadata.
A store without its ``/crc32c`` checksums is refused unless the reader is
given ``allow_unchecked=True``, and never for the current format version,
which always has them.
"""
import copy
import os
import threading
from concurrent.futures import wait
from typing import Any, Dict, Optional, Tuple

import h5py
import numpy as np

from ... import _platform
from ...errors import StoreError
from ..batch import VARIABLE
from ..metadata import Metadata, check_metadata
from ..read_pool import split_for_threads, thread_pool
from ..reader import Reader
from . import lowlevel
from .direct import DirectChunks
from .layout import FORMAT_NAME, FORMAT_VERSION, KEY_NAMES
from .structure import check_datasets, has_member

DEFAULT_CACHE_BYTES = 16 * 1024 * 1024

FileKey = Tuple[int, int, int, int, int]


class _Checked:
    """What opening one file found, kept for the next opening of the same file in this process:
    its checked metadata and, once built, its direct-read layout (``False``: none)."""

    __slots__ = ("metadata", "direct")

    def __init__(self, metadata: Metadata) -> None:
        self.metadata = metadata
        self.direct: Any = None


# Files found sound in this process, by (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns).
_CHECKED: Dict[FileKey, _Checked] = {}
_MAX_REMEMBERED = 4096


def _file_key(st: os.stat_result) -> FileKey:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def forget_checked_files() -> None:
    """Forget which files were found sound: the next opening of every store checks it again."""
    _CHECKED.clear()


class Hdf5Reader(Reader):
    """Reads an HDF5 store.

    Options: ``cache_bytes``, h5py's chunk cache (default 16 MiB);
    ``allow_unchecked`` (default False): read a store of an older format
    version that has no ``/crc32c`` checksums, unchecked (a store of the
    current version without them is refused whatever this says);
    ``verify`` (default True): check every image against its checksum.
    """

    format_name = FORMAT_NAME

    def _open_handles(self) -> Metadata:
        cache = int(self._options.get("cache_bytes", DEFAULT_CACHE_BYTES))
        for _ in range(3):
            fid, fd, key = self._open_file(cache)
            if fid is not None:
                break
            # The store was replaced between the two opens: open both again.
        else:
            raise StoreError(f"{self.path}: the file keeps changing while being opened (replaced again and again?)")
        try:
            meta, datasets, checked = self._load(fid, key)
        except BaseException as exc:
            lowlevel.close_file(fid)
            if fd is not None:
                os.close(fd)
            if isinstance(exc, (OSError, KeyError, ValueError, RuntimeError, TypeError)):
                raise StoreError(f"{self.path}: cannot read the HDF5 structure (corrupt file?): {exc}") from None
            raise
        self._fid = fid
        self._fd = fd
        self._datasets = datasets  # low-level ids, by name
        self._wrapped: Dict[str, h5py.Dataset] = {}  # high-level Datasets, made when a read needs one
        self._checked = checked
        self._labels: Optional[np.ndarray] = None
        self._checksums = None
        self._tables: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]] = None
        self._direct_reader: Any = None  # None: not built yet; False: none (h5py decodes); else DirectChunks
        self._direct_lock = threading.Lock()
        return meta

    def _open_file(self, cache):
        """HDF5's handle (a low-level FileID) and a descriptor of the same file for direct reads.

        Returns (fid, fd, key), with fd None when h5py's driver does not tell
        its descriptor (then no direct reads), or (None, None, None) when
        the path changed between the two opens; ``key`` identifies the file
        (None when unknown). Direct reads use chunk offsets h5py reports, so
        they must read the very file h5py opened, not whatever is at the path
        later (a store replaced with overwrite=True).
        """
        try:
            fd = _platform.open_regular(self.path)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot open: {exc}") from None
        try:
            fid = lowlevel.open_file(self.path, cache)
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"{self.path}: cannot open as HDF5 (truncated or corrupt?): {exc}") from None
        if not _platform.CAN_PREAD:
            os.close(fd)
            return fid, None, None  # no reads at an offset here: h5py reads everything
        try:
            theirs = os.fstat(fid.get_vfd_handle())
            ours = os.fstat(fd)
        except (OSError, ValueError, TypeError, AttributeError):
            os.close(fd)
            return fid, None, None
        if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino):
            lowlevel.close_file(fid)
            os.close(fd)
            return None, None, None
        return fid, fd, _file_key(ours)

    def _load(self, fid, key):
        """The checked metadata, the datasets (low-level ids by name) and the file's :class:`_Checked`."""
        checked = None if key is None else _CHECKED.get(key)
        if checked is not None:
            meta = copy.deepcopy(checked.metadata)  # the caller may change its copy
        else:
            attrs = lowlevel.read_attributes(fid)
            if attrs.get("imgconv_format") is None:
                raise StoreError(
                    f"{self.path}: an HDF5 file without imgconv metadata (not an imgconv store, or unfinished)")
            meta = check_metadata({KEY_NAMES.get(k, k): v for k, v in attrs.items()}, self.path, FORMAT_NAME,
                                  FORMAT_VERSION)
        n = meta["count"]
        names = ["pixels", "offsets", "shapes", "labels"] if meta["shape"] == VARIABLE else ["images", "labels"]
        if has_member(fid, "crc32c"):
            names.append("crc32c")
        elif meta["format_version"] >= FORMAT_VERSION or not self._options.get("allow_unchecked", False):
            raise StoreError(
                f"{self.path}: the store has no /crc32c checksums"
                + (f": every store of format version {FORMAT_VERSION} has them, the file is damaged or crafted"
                   if meta["format_version"] >= FORMAT_VERSION else
                   f" (format version {meta['format_version']}); to read it unchecked anyway, open it with "
                   "imgconv.open(path, allow_unchecked=True)"))
        datasets: Dict[str, Any] = check_datasets(fid, self.path, names)
        sizes = {"images": (n, *meta["shape"]) if meta["shape"] != VARIABLE else None, "labels": (n,),
                 "crc32c": (n,), "offsets": (n,), "shapes": (n, 3)}
        for name, ds in datasets.items():
            if sizes.get(name) is not None and ds.shape != sizes[name]:
                raise StoreError(f"{self.path}: /{name} has shape {ds.shape}, the metadata says {sizes[name]} "
                                 f"({n} images)")
        if meta["shape"] == VARIABLE and len(datasets["pixels"].shape) != 1:
            raise StoreError(f"{self.path}: /pixels has shape {datasets['pixels'].shape}, not one dimension")
        if checked is None:
            checked = _Checked(copy.deepcopy(meta))
            if key is not None:
                if len(_CHECKED) >= _MAX_REMEMBERED:
                    _CHECKED.clear()
                _CHECKED[key] = checked
        return meta, datasets, checked

    def _close_handles(self) -> None:
        fid, self._fid = getattr(self, "_fid", None), None
        fd, self._fd = getattr(self, "_fd", None), None
        self._datasets, self._wrapped = {}, {}
        self._direct_reader = None
        if fd is not None:
            os.close(fd)
        if fid is not None:
            lowlevel.close_file(fid)

    def _forget_handles(self) -> None:
        # The parent's HDF5 file id is not used in the child. Its descriptor
        # is a plain copy the child owns: closing it here leaks nothing and
        # does not touch the parent's.
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fid = None
        self._datasets, self._wrapped = {}, {}
        self._direct_reader = None

    def _dataset(self, name: str) -> h5py.Dataset:
        """The high-level h5py Dataset ``name`` (for reads through HDF5's selections), made once per opening."""
        wrapped = self._wrapped.get(name)
        if wrapped is None:
            wrapped = self._wrapped[name] = h5py.Dataset(self._datasets[name])
        return wrapped

    def labels(self) -> np.ndarray:
        """All labels as an (N,) int64 array (read once, then kept)."""
        self._ensure_open()
        return self._loaded_labels()

    def _loaded_labels(self) -> np.ndarray:
        """:meth:`labels` with the handles known to be open."""
        if self._labels is None:
            self._labels = self._guard(lambda: lowlevel.read_whole(self._datasets["labels"], np.int64), "labels")
        assert self._labels is not None
        return self._labels

    def checksums(self) -> Optional[np.ndarray]:
        """The stored checksum of every image (read once, then kept), or None for a file without them.

        Format version 3: CRC32C of the pixels continued over the label and
        the image's index (:func:`imgconv.checksum.image_checksums`); version
        2: over the label only; version 1: of the pixels only.
        """
        self._ensure_open()
        if self._checksums is None and "crc32c" in self._datasets:
            self._checksums = self._guard(lambda: lowlevel.read_whole(self._datasets["crc32c"], np.uint32), "/crc32c")
        return self._checksums

    def _checksum_version(self):
        return min(self.metadata["format_version"], 3)

    def shapes(self) -> np.ndarray:
        """The (H, W, C) of every image as an (N, 3) int64 array."""
        if not self.variable:
            return super().shapes()
        self._ensure_open()
        return self._guard(lambda: lowlevel.read_whole(self._datasets["shapes"], np.int64), "/shapes")

    def _guard(self, read, what):
        try:
            return read()
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise StoreError(f"{self.path}: reading {what} failed (truncated or corrupt file?): {exc}") from None

    def _read_one(self, i):
        if self.variable:
            images, labels = self._read_variable(np.array([i]))
            return images[0], labels[0]
        direct = self._direct()
        if direct is not None:
            image = np.empty(self._image_shape(), np.uint8)
            direct.read_image(i, image)
            return image, self._loaded_labels()[i]
        return self._guard(lambda: self._dataset("images")[i], f"image {i}"), self._loaded_labels()[i]

    def _read_many(self, indices, out):
        if self.variable:
            return self._read_variable(indices)
        if out is None:
            out = np.empty((indices.size, *self.shape), np.uint8)
        direct = self._direct()
        if direct is not None:
            self._gather(direct, indices, out)
            return out, self._loaded_labels()[indices]
        distinct, inverse = np.unique(indices, return_inverse=True)
        into = out if distinct.size == indices.size else np.empty((distinct.size, *self.shape), np.uint8)
        # h5py wants increasing indices: read the distinct ones, runs of
        # consecutive indices as one slab each, then put them in order.
        breaks = np.flatnonzero(np.diff(distinct) != 1) + 1
        for a, b in zip(np.concatenate([[0], breaks]).tolist(), np.concatenate([breaks, [distinct.size]]).tolist()):
            first = int(distinct[a])
            source, target = np.s_[first : first + b - a], np.s_[a:b]
            self._guard(lambda source=source, target=target: self._dataset("images").read_direct(into, source, target),
                        f"images {first}..{first + b - a - 1}")
        if into is not out or not np.array_equal(distinct, indices):
            np.take(into, inverse.reshape(-1), axis=0, out=out)
        return out, self.labels()[indices]

    def _read_range(self, start, stop, out):
        if self.variable:
            return self._read_variable(np.arange(start, stop))
        if out is None:
            out = np.empty((stop - start, *self.shape), np.uint8)
        direct = self._direct()
        if direct is not None:
            direct.read_range(start, stop, out)
        else:
            self._guard(lambda: self._dataset("images").read_direct(out, np.s_[start:stop]),
                        f"images {start}..{stop - 1}")
        return out, self.labels()[start:stop].copy()

    def _read_many_checked(self, indices, out):
        # A random batch of a directly readable store: copied from the map of
        # the file with each image's checksum (imgconv.checksum) computed as
        # it is copied: its pixels' CRC32C continued over its label and index.
        direct = None if self.variable else self._direct()
        check = self._checks()
        if direct is None or not check:
            return super()._read_many_checked(indices, out)
        stored, version = check
        if out is None:
            out = np.empty((indices.size, *self.shape), np.uint8)
        labels = self._loaded_labels()[indices]
        crcs = np.empty(indices.size, np.uint32)
        tails = np.stack([labels, indices], axis=1) if version >= 3 else labels[:, None] if version == 2 else None
        self._gather(direct, indices, out, crcs, tails)
        wrong = np.flatnonzero(crcs != stored[indices])
        if wrong.size:
            raise StoreError(self._mismatch(int(indices[wrong[0]]), version))
        return out, labels

    def _gather(self, direct, indices, out, crcs=None, tails=None):
        """:meth:`DirectChunks.gather` of ``indices``, split over threads for a large read."""
        parts = split_for_threads(indices.size, direct.image_bytes)
        if len(parts) == 1:
            direct.gather(indices, out, crcs, tails)
            return
        futures = [thread_pool().submit(direct.gather, indices[a:b], out[a:b], None if crcs is None else crcs[a:b],
                                        None if tails is None else tails[a:b]) for a, b in parts]
        wait(futures)
        for future in futures:
            future.result()  # the first part's error first

    def _read_range_checked(self, start, stop, out):
        # A large direct read is split over threads, each reading its part
        # and checking its checksums: preadv and CRC32C run without the GIL.
        direct = None if self.variable else self._direct()
        image_bytes = 0 if direct is None else int(np.prod(self._image_shape()))
        parts = [(0, stop - start)] if direct is None else split_for_threads(stop - start, image_bytes)
        if len(parts) == 1:
            return super()._read_range_checked(start, stop, out)
        assert direct is not None  # split over threads only for direct reads
        if out is None:
            out = np.empty((stop - start, *self._image_shape()), np.uint8)
        labels = self.labels()[start:stop].copy()
        self.checksums()  # loaded here, once, not by each thread

        def read_part(a, b):
            direct.read_range(start + a, start + b, out[a:b])
            self._verify_pixels(np.arange(start + a, start + b), out[a:b], labels[a:b])

        futures = [thread_pool().submit(read_part, a, b) for a, b in parts]
        wait(futures)
        for future in futures:
            future.result()  # the first part's error first: it names the lowest bad image
        return out, labels

    def _image_shape(self) -> Tuple[int, int, int]:
        """(H, W, C) of the images of a store of one image shape (asked only there)."""
        shape = self.shape
        assert shape != VARIABLE, "a store of varying image sizes has no one image shape"
        return shape

    def _direct(self):
        """The :class:`DirectChunks` reader for this process, or None when h5py must decode."""
        if self._direct_reader is None:
            with self._direct_lock:
                if self._fd is None:
                    self._direct_reader = False
                elif self._direct_reader is None:
                    self._direct_reader = self._build_direct() or False
        return self._direct_reader or None

    def _build_direct(self):
        """A :class:`DirectChunks` on this opening's descriptor, from the chunk index of /images
        (read once per file: kept with what else was found when it was opened)."""
        checked = self._checked
        if checked.direct is None:
            try:
                layout = DirectChunks.layout(self._datasets["images"], self.shape, os.fstat(self._fd).st_size)
            except (OSError, KeyError, ValueError, RuntimeError) as exc:
                raise StoreError(f"{self.path}: cannot read the chunk index of /images (corrupt file?): "
                                 f"{exc}") from None
            checked.direct = layout or False
        return DirectChunks(self.path, self._fd, *checked.direct) if checked.direct else None

    def _read_variable(self, indices):
        if self._tables is None:
            # Offsets and shapes (16 + 24 bytes per image) are read, and checked, once per process.
            offsets = self._guard(lambda: lowlevel.read_whole(self._datasets["offsets"], np.int64), "/offsets")
            shapes = self._guard(lambda: lowlevel.read_whole(self._datasets["shapes"], np.int64), "/shapes")
            self._tables = (offsets, shapes, _sound_entries(offsets, shapes, self._datasets["pixels"].shape[0]))
        offset_table, shape_table, sound = self._tables
        pixels = self._dataset("pixels")
        images = []
        for i in indices.tolist():
            if not sound[i]:
                raise StoreError(f"{self.path}: image {i}: its entries in /offsets and /shapes do not fit between "
                                 "its neighbours' (the offset table is corrupt)")
            shape = tuple(int(v) for v in shape_table[i])
            start = int(offset_table[i])
            size = shape[0] * shape[1] * shape[2]
            flat = self._guard(lambda start=start, size=size: pixels[start : start + size], f"image {i}")
            if flat.size != size:
                raise StoreError(f"{self.path}: image {i} runs past the end of /pixels: the file is corrupt")
            images.append(flat.reshape(shape))
        return images, self.labels()[indices]


def _sound_entries(offsets: np.ndarray, shapes: np.ndarray, total: int) -> np.ndarray:
    """Which images' table entries agree with their neighbours': a bool per image.

    The writer lays the images back to back from 0, so image i must start
    where image i - 1 ends and end where image i + 1 starts (the last at the
    end of /pixels). A damaged offset fails the two images it separates, a
    damaged shape its own image, and the others still read.
    """
    n = len(offsets)
    if shapes.shape != (n, 3):
        return np.zeros(n, bool)
    dims_ok = ((shapes >= 1) & (shapes <= 0xFFFFFFFF)).all(axis=1)
    # Sizes past /pixels are wrong anyway: computed in float first so that no product can wrap around.
    dims_ok &= np.prod(shapes.astype(np.float64), axis=1) <= total
    sizes = np.where(dims_ok, np.prod(np.where(dims_ok[:, None], shapes, 0), axis=1), -1)
    ends = np.concatenate([offsets[1:], [total]]).astype(np.int64)
    sound = dims_ok & (offsets >= 0) & (offsets + sizes == ends) & (ends <= total)
    if n:
        sound[0] &= offsets[0] == 0
    return sound
