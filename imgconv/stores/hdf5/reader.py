"""Reading an HDF5 store: through h5py, or (an uncompressed store of one image shape) straight
from the file at the offsets HDF5 reports (:mod:`imgconv.stores.hdf5.direct`); large reads are
split over threads, each reading and checking its part.

Before any data is read the file's datasets are checked to be what imgconv
writes (:mod:`imgconv.stores.hdf5.structure`: no links, external storage,
virtual datasets or foreign filters), and their sizes against the metadata.
A store without its ``/crc32c`` checksums is refused unless the reader is
given ``allow_unchecked=True``, and never for the current format version,
which always has them.
"""
import os
import threading
from concurrent.futures import wait
from typing import Optional, Tuple

import h5py
import numpy as np

from ... import _platform
from ...errors import StoreError
from ..batch import VARIABLE
from ..metadata import Metadata, check_metadata
from ..read_pool import split_for_threads, thread_pool
from ..reader import Reader
from .direct import DirectChunks
from .layout import FORMAT_NAME, FORMAT_VERSION, KEY_NAMES, read_attr
from .structure import check_datasets, has_member

DEFAULT_CACHE_BYTES = 16 * 1024 * 1024


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
            f, fd = self._open_file(cache)
            if f is not None:
                break
            # The store was replaced between the two opens: open both again.
        else:
            raise StoreError(f"{self.path}: the file keeps changing while being opened (replaced again and again?)")
        try:
            meta = self._load(f)
        except BaseException as exc:
            f.close()
            if fd is not None:
                os.close(fd)
            if isinstance(exc, (OSError, KeyError, ValueError, RuntimeError, TypeError)):
                raise StoreError(f"{self.path}: cannot read the HDF5 structure (corrupt file?): {exc}") from None
            raise
        self._file = f
        self._fd = fd
        self._labels: Optional[np.ndarray] = None
        self._checksums = None
        self._tables: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]] = None
        self._direct_reader = None
        self._direct_lock = threading.Lock()
        return meta

    def _open_file(self, cache):
        """h5py's handle and a descriptor of the same file for direct reads.

        Returns (file, fd), with fd None when h5py's driver does not tell
        its descriptor (then no direct reads), or (None, None) when the path
        changed between the two opens. Direct reads use chunk offsets h5py
        reports, so they must read the very file h5py opened, not whatever is
        at the path later (a store replaced with overwrite=True).
        """
        try:
            fd = _platform.open_regular(self.path)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot open: {exc}") from None
        try:
            f = h5py.File(self.path, "r", rdcc_nbytes=cache, rdcc_nslots=10007)
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"{self.path}: cannot open as HDF5 (truncated or corrupt?): {exc}") from None
        if not _platform.CAN_PREAD:
            os.close(fd)
            return f, None  # no reads at an offset here: h5py reads everything
        try:
            theirs = os.fstat(f.id.get_vfd_handle())
            ours = os.fstat(fd)
        except (OSError, ValueError, TypeError, AttributeError):
            os.close(fd)
            return f, None
        if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino):
            f.close()
            os.close(fd)
            return None, None
        return f, fd

    def _load(self, f):
        if f.attrs.get("imgconv_format") is None:
            raise StoreError(
                f"{self.path}: an HDF5 file without imgconv metadata (not an imgconv store, or unfinished)")
        meta = {KEY_NAMES.get(k, k): read_attr(v) for k, v in f.attrs.items()}
        meta = check_metadata(meta, self.path, FORMAT_NAME, FORMAT_VERSION)
        n = meta["count"]
        names = ["pixels", "offsets", "shapes", "labels"] if meta["shape"] == VARIABLE else ["images", "labels"]
        self._has_checksums = has_member(f, "crc32c")
        if self._has_checksums:
            names.append("crc32c")
        elif meta["format_version"] >= FORMAT_VERSION or not self._options.get("allow_unchecked", False):
            raise StoreError(
                f"{self.path}: the store has no /crc32c checksums"
                + (f": every store of format version {FORMAT_VERSION} has them, the file is damaged or crafted"
                   if meta["format_version"] >= FORMAT_VERSION else
                   f" (format version {meta['format_version']}); to read it unchecked anyway, open it with "
                   "imgconv.open(path, allow_unchecked=True)"))
        datasets = check_datasets(f, self.path, names)
        sizes = {"images": (n, *meta["shape"]) if meta["shape"] != VARIABLE else None, "labels": (n,),
                 "crc32c": (n,), "offsets": (n,), "shapes": (n, 3)}
        for name, ds in datasets.items():
            if sizes.get(name) is not None and ds.shape != sizes[name]:
                raise StoreError(f"{self.path}: /{name} has shape {ds.shape}, the metadata says {sizes[name]} "
                                 f"({n} images)")
        if meta["shape"] != VARIABLE:
            self._images = datasets["images"]
        else:
            self._pixels, self._offsets, self._shapes = datasets["pixels"], datasets["offsets"], datasets["shapes"]
            if len(self._pixels.shape) != 1:
                raise StoreError(f"{self.path}: /pixels has shape {self._pixels.shape}, not one dimension")
        return meta

    def _close_handles(self) -> None:
        f, self._file = getattr(self, "_file", None), None
        fd, self._fd = getattr(self, "_fd", None), None
        self._direct_reader = None
        if fd is not None:
            os.close(fd)
        if f is not None:
            f.close()

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
        self._file = None
        self._direct_reader = None

    def labels(self) -> np.ndarray:
        """All labels as an (N,) int64 array (read once, then kept)."""
        self._ensure_open()
        if self._labels is None:
            self._labels = self._guard(lambda: self._file["labels"][...].astype(np.int64, copy=False), "labels")
        assert self._labels is not None
        return self._labels

    def checksums(self) -> Optional[np.ndarray]:
        """The stored checksum of every image (read once, then kept), or None for a file without them.

        Format version 3: CRC32C of the pixels continued over the label and
        the image's index (:func:`imgconv.checksum.image_checksums`); version
        2: over the label only; version 1: of the pixels only.
        """
        self._ensure_open()
        if self._checksums is None and self._has_checksums:
            self._checksums = self._guard(lambda: self._file["crc32c"][...], "/crc32c")
        return self._checksums

    def _checksum_version(self):
        return min(self.metadata["format_version"], 3)

    def shapes(self) -> np.ndarray:
        """The (H, W, C) of every image as an (N, 3) int64 array."""
        if not self.variable:
            return super().shapes()
        self._ensure_open()
        return self._guard(lambda: self._shapes[...].astype(np.int64), "/shapes")

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
            image = np.empty(self.shape, np.uint8)
            direct.read_image(i, image)
            return image, self.labels()[i]
        return self._guard(lambda: self._images[i], f"image {i}"), self.labels()[i]

    def _read_many(self, indices, out):
        if self.variable:
            return self._read_variable(indices)
        if out is None:
            out = np.empty((indices.size, *self.shape), np.uint8)
        direct = self._direct()
        if direct is not None:
            for n, i in enumerate(indices.tolist()):
                direct.read_image(i, out[n])
            return out, self.labels()[indices]
        distinct, inverse = np.unique(indices, return_inverse=True)
        into = out if distinct.size == indices.size else np.empty((distinct.size, *self.shape), np.uint8)
        # h5py wants increasing indices: read the distinct ones, runs of
        # consecutive indices as one slab each, then put them in order.
        breaks = np.flatnonzero(np.diff(distinct) != 1) + 1
        for a, b in zip(np.concatenate([[0], breaks]).tolist(), np.concatenate([breaks, [distinct.size]]).tolist()):
            first = int(distinct[a])
            self._guard(lambda first=first, a=a, b=b: self._images.read_direct(into, np.s_[first : first + b - a],
                                                                                np.s_[a:b]),
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
            self._guard(lambda: self._images.read_direct(out, np.s_[start:stop]), f"images {start}..{stop - 1}")
        return out, self.labels()[start:stop].copy()

    def _read_range_checked(self, start, stop, out):
        # A large direct read is split over threads, each reading its part
        # and checking its checksums: preadv and CRC32C run without the GIL.
        direct = None if self.variable else self._direct()
        parts = [(0, stop - start)] if direct is None else split_for_threads(stop - start, int(np.prod(self.shape)))
        if len(parts) == 1:
            return super()._read_range_checked(start, stop, out)
        if out is None:
            out = np.empty((stop - start, *self.shape), np.uint8)
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

    def _direct(self):
        """The :class:`DirectChunks` reader for this process, or None when h5py must decode."""
        if self._direct_reader is None:
            with self._direct_lock:
                if self._fd is None:
                    self._direct_reader = False
                elif self._direct_reader is None:
                    try:
                        built = DirectChunks.build(self.path, self._fd, self._images, self.shape)
                        self._direct_reader = built or False
                    except (OSError, KeyError, ValueError, RuntimeError) as exc:
                        raise StoreError(f"{self.path}: cannot read the chunk index of /images (corrupt file?): "
                                         f"{exc}") from None
        return self._direct_reader or None

    def _read_variable(self, indices):
        if self._tables is None:
            # Offsets and shapes (16 + 24 bytes per image) are read, and checked, once per process.
            offsets = self._guard(lambda: self._offsets[...].astype(np.int64), "/offsets")
            shapes = self._guard(lambda: self._shapes[...].astype(np.int64), "/shapes")
            self._tables = (offsets, shapes, _sound_entries(offsets, shapes, self._pixels.shape[0]))
        offset_table, shape_table, sound = self._tables
        images = []
        for i in indices.tolist():
            if not sound[i]:
                raise StoreError(f"{self.path}: image {i}: its entries in /offsets and /shapes do not fit between "
                                 "its neighbours' (the offset table is corrupt)")
            shape = tuple(int(v) for v in shape_table[i])
            start = int(offset_table[i])
            size = shape[0] * shape[1] * shape[2]
            flat = self._guard(lambda start=start, size=size: self._pixels[start : start + size], f"image {i}")
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
