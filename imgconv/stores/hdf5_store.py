"""Chunked HDF5 store: plain HDF5 that h5py alone can read.

Layout of one file (FORMAT.md, "Stores", is the full specification):

* images of one shape: ``/images`` (N, H, W, C) uint8, chunked along N
  (``chunk_images`` images per chunk), growable (``maxshape`` (None, H, W, C));
* images of varying shapes: ``/pixels`` 1-D uint8 holding every image's
  (H, W, C) pixels back to back, ``/offsets`` (N,) int64 start of each image
  in ``/pixels``, ``/shapes`` (N, 3) int64 (H, W, C);
* ``/labels`` (N,) int64;
* ``/crc32c`` (N,) uint32: the CRC32C of each image's pixel bytes (in
  (H, W, C) C order) continued over its label (8 bytes, little-endian
  int64), checked on every read, since HDF5 keeps no checksums of its own
  unless asked (format version 1 covered the pixels only);
* the metadata as attributes of the root group (``imgconv_format`` = "hdf5",
  ``imgconv_format_version``, ``count``, ``shape``, ...), written last: a file
  without them is not a finished store.

Optional compression (``compression="gzip"`` with ``compression_level``, or
"lzf") applies to the pixel dataset; it is off by default.
"""
import ctypes
import json
import os
import re
import threading
from concurrent.futures import wait

import h5py
import numpy as np

from .. import kernels
from ..errors import StoreError, StoreOptionError
from .base import (VARIABLE, EncodedBatch, Reader, Writer, check_batch, check_metadata, image_checksums,
                   split_for_threads, thread_pool)

FORMAT_NAME = "hdf5"
# Version 2: /crc32c covers the label too (version 1: the pixels only).
FORMAT_VERSION = 2
SIGNATURE = b"\x89HDF\r\n\x1a\n"
COMPRESSIONS = (None, "gzip", "lzf")
# Automatic chunk size: about this many bytes per chunk (64 CIFAR images).
# FORMAT.md has the measurements behind it.
CHUNK_TARGET_BYTES = 192 * 1024
# /images grows, and labels are written, in steps of this many bytes of
# images (whole chunks), so the sequence of HDF5 calls, and hence the file,
# does not depend on batch sizes.
WRITE_UNIT_BYTES = 4 * 1024 * 1024
PIXEL_CHUNK_BYTES = 256 * 1024
LABEL_CHUNK = 1024
DEFAULT_CACHE_BYTES = 16 * 1024 * 1024


class EncodedArrays(EncodedBatch):
    """A batch as contiguous arrays: ``images`` (N, H, W, C), or for varying
    sizes ``pixels`` (every image's bytes back to back) with ``shapes``."""

    def __init__(self, images, pixels, labels, shapes, variable, checksums):
        super().__init__(labels, shapes, variable)
        self.images = images
        self.pixels = pixels
        self.checksums = checksums


def encode_batch(images, labels):
    """Check a batch and lay it out as the contiguous arrays the HDF5 datasets take.

    Returns :class:`EncodedArrays`. Raises StoreError for a bad batch.
    """
    batch = check_batch(images, labels)
    checksums = image_checksums(batch.images, batch.labels)
    if not batch.variable:
        return EncodedArrays(batch.images, None, batch.labels, batch.shapes(), False, checksums)
    pixels = np.concatenate([image.reshape(-1) for image in batch.images]) if batch.images else np.empty(0, np.uint8)
    return EncodedArrays(None, pixels, batch.labels, batch.shapes(), True, checksums)


def _attr_value(value):
    if value is None:
        return None
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return np.array(value, dtype=h5py.string_dtype())
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) for v in value):
        return np.array(value, dtype=np.int64)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


class Hdf5Writer(Writer):
    """Writes a chunked HDF5 store (see the module docstring for the layout).

    Options: ``chunk_images`` (images per chunk; by default about 48 KiB of
    pixels per chunk, 16 CIFAR images: see FORMAT.md for the measurements),
    ``compression`` (None, "gzip", "lzf") and ``compression_level`` (gzip
    0..9, default 4).
    """

    format_name = FORMAT_NAME
    format_version = FORMAT_VERSION

    def __init__(self, path, *, chunk_images=None, compression=None, compression_level=None, **common):
        super().__init__(path, **common)
        if compression not in COMPRESSIONS:
            raise StoreOptionError(f"{self.path}: compression must be one of {COMPRESSIONS}, got {compression!r}",
                                   ("compression",))
        if compression_level is not None and compression != "gzip":
            raise StoreOptionError(f"{self.path}: compression_level applies to compression='gzip' only",
                                   ("compression_level", "compression"))
        if compression_level is not None and not 0 <= int(compression_level) <= 9:
            raise StoreOptionError(f"{self.path}: compression_level is 0..9, got {compression_level}",
                                   ("compression_level",))
        if chunk_images is not None and not 1 <= int(chunk_images) <= 1 << 20:
            raise StoreOptionError(f"{self.path}: chunk_images must be 1 .. 1048576, got {chunk_images}",
                                   ("chunk_images",))
        self.chunk_images = None if chunk_images is None else int(chunk_images)
        self.compression = compression
        self.compression_level = (4 if compression_level is None else int(compression_level)) if compression == "gzip" else None
        self._file = None
        self._datasets = {}
        self._carry = []  # images of the chunk being filled, copied (fewer than a chunk)
        self._images_written = 0  # /images holds this many (ahead of the labels by less than a unit)
        self._pending_labels = []  # (labels, checksums) not yet written: fewer than a unit past _written
        self._written = 0
        self._pixels_written = 0
        self._flushed = 0
        self._given_options = {"chunk_images": self.chunk_images, "compression": self.compression,
                               "compression_level": self.compression_level}

    def encoder(self):
        """The picklable encode step: :func:`encode_batch`."""
        return encode_batch

    def _filters(self):
        return {"compression": self.compression, "compression_opts": self.compression_level}

    def _start(self):
        try:
            # v110: the extensible-array chunk index (faster appends and
            # lookups than the v1 B-tree), readable by HDF5 1.10 and later.
            self._file = h5py.File(self.temporary, "w", libver=("v110", "v110"))
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot create the HDF5 file: {exc}") from None
        f = self._file
        f.create_dataset("labels", (0,), np.int64, maxshape=(None,), chunks=(LABEL_CHUNK,))
        f.create_dataset("crc32c", (0,), np.uint32, maxshape=(None,), chunks=(LABEL_CHUNK,))
        if self.shape == VARIABLE:
            f.create_dataset("pixels", (0,), np.uint8, maxshape=(None,), chunks=(PIXEL_CHUNK_BYTES,), **self._filters())
            f.create_dataset("offsets", (0,), np.int64, maxshape=(None,), chunks=(LABEL_CHUNK,))
            f.create_dataset("shapes", (0, 3), np.int64, maxshape=(None, 3), chunks=(LABEL_CHUNK, 3))
            self._unit = 1
        else:
            if self.chunk_images is None:
                self.chunk_images = max(1, round(CHUNK_TARGET_BYTES / int(np.prod(self.shape))))
            chunks = (self.chunk_images, *self.shape)
            f.create_dataset("images", (0, *self.shape), np.uint8, maxshape=(None, *self.shape), chunks=chunks,
                             **self._filters())
        self._set_unit()
        # One handle per dataset for the whole write: h5py opens a new HDF5
        # object on every f[name], and closing one flushes it (a failure there
        # could only be reported as "Exception ignored").
        self._datasets = {name: f[name] for name in f}

    def _set_unit(self):
        if self.shape == VARIABLE:
            self._unit = 1
        else:
            per_image = int(np.prod(self.shape))
            self._unit = self.chunk_images * max(1, WRITE_UNIT_BYTES // (per_image * self.chunk_images))

    def _write(self, encoded):
        try:
            self._write_batch(encoded)
        except (OSError, RuntimeError, ValueError) as exc:
            # h5py reports a full disk or a failed write as OSError or RuntimeError.
            self._discard_output()
            raise StoreError(f"{self.path}: writing the HDF5 file failed: {_one_line(exc)}") from None

    def _write_batch(self, encoded):
        if self.shape == VARIABLE:
            self._write_variable(encoded)
            return
        images = encoded.images if not encoded.variable else encoded.pixels.reshape(len(encoded), *self.shape)
        # Labels are small: copied, as they wait for their unit. Images go out
        # chunk by chunk as they come; only the start of an unfinished chunk
        # waits (copied: the caller may refill its arrays once append returns).
        self._pending_labels.append((encoded.labels.copy(), encoded.checksums.copy()))
        carried = sum(len(part) for part in self._carry)
        position = 0
        while position < len(images):
            chunk_end = (self._images_written // self.chunk_images + 1) * self.chunk_images
            take = min(chunk_end - self._images_written - carried, len(images) - position)
            part = images[position : position + take]
            position += take
            if carried + take < chunk_end - self._images_written:
                self._carry.append(part.copy())
                carried += take
                continue
            self._write_chunk(np.concatenate([*self._carry, part]) if self._carry else part)
            self._carry, carried = [], 0
            self._write_labels(final=False)

    def _write_chunk(self, images):
        """Write the images of one chunk (or, at the end or after a resume, part of one) at ``_images_written``."""
        start, stop = self._images_written, self._images_written + len(images)
        ds = self._datasets["images"]
        if ds.shape[0] < stop:
            # Grown a write unit at a time (the sequence of calls, and so the
            # file, does not depend on batch sizes); cut to size at the end.
            ds.resize(-(-stop // self._unit) * self._unit, axis=0)
        if self.compression is None and start % self.chunk_images == 0 and len(images) == self.chunk_images:
            # A whole chunk goes to the file as it is, past h5py's selection
            # machinery and HDF5's chunk cache (a third of the time of a slice
            # assignment for CIFAR images).
            ds.id.write_direct_chunk((start, 0, 0, 0), np.ascontiguousarray(images))
        else:
            ds[start:stop] = images
        self._images_written = stop

    def _write_labels(self, final):
        """Append the labels and checksums of every whole unit of images written (all of them when ``final``)."""
        end = self._images_written if final else self._images_written // self._unit * self._unit
        if end <= self._written or not self._pending_labels:
            return
        labels, checksums = (np.concatenate(column) for column in zip(*self._pending_labels))
        count = end - self._written
        self._append("labels", labels[:count], self._written)
        self._append("crc32c", checksums[:count], self._written)
        self._pending_labels = [(labels[count:], checksums[count:])] if count < len(labels) else []
        self._written = end

    def _finish_images(self):
        """Write the last, partial chunk and the labels left, and cut /images to the images written."""
        if self._carry:
            self._write_chunk(np.concatenate(self._carry))
            self._carry = []
        self._write_labels(final=True)
        self._datasets["images"].resize(self._written, axis=0)

    def _append(self, name, data, start):
        ds = self._datasets[name]
        ds.resize(start + len(data), axis=0)
        ds[start : start + len(data)] = data

    def _write_variable(self, encoded):
        pixels = encoded.pixels if encoded.variable else encoded.images.reshape(-1)
        sizes = np.prod(encoded.shapes, axis=1)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) + self._pixels_written
        # Variable-size data is written as it comes: chunk alignment cannot be
        # kept across images of different sizes anyway.
        self._append("pixels", pixels, self._pixels_written)
        self._append("offsets", offsets, self._written)
        self._append("shapes", encoded.shapes, self._written)
        self._append("labels", encoded.labels, self._written)
        self._append("crc32c", encoded.checksums, self._written)
        self._pixels_written += int(sizes.sum())
        self._written += len(encoded)

    def _format_metadata(self):
        extra = {"compression": self.compression, "compression_level": self.compression_level}
        if self.shape != VARIABLE:
            extra["chunk_images"] = self.chunk_images
        return extra

    def _finish(self, meta):
        try:
            if self.shape != VARIABLE:
                self._finish_images()
            for key, value in meta.items():
                value = _attr_value(value)
                if value is not None:
                    self._file.attrs[_ATTR_NAMES.get(key, key)] = value
            self._file.flush()
            self._datasets = {}
            self._file.close()
        except (OSError, ValueError, RuntimeError) as exc:
            # The file is left open: the caller aborts, and _abort closes it.
            self._discard_output()
            raise StoreError(f"{self.path}: writing the HDF5 file failed: {_one_line(exc)}") from None
        self._file = None

    def _discard_output(self):
        # After a failed write the output is discarded. Emptying it at once
        # gives back its space, so that HDF5, which flushes its caches when
        # it closes a dataset or the file, can still do so on a full disk: an
        # object HDF5 failed to close stays open in the library and crashes
        # the process at exit.
        if self._file is not None:
            try:
                os.truncate(self.temporary, 0)
            except OSError:
                pass

    def _abort(self):
        self._discard_output()
        f, self._file = self._file, None
        self._datasets = {}
        if f is None:
            return
        for _ in range(2):
            try:
                f.close()
                return
            except (OSError, ValueError, RuntimeError):
                continue


    # resuming -------------------------------------------------------------------
    # HDF5 keeps no journal: a killed writer can leave the file in any state.
    # At each checkpoint the file is flushed (HDF5 then holds a consistent
    # picture of what was written); on resume every image kept is read back
    # and checked against its CRC32C, and a file HDF5 cannot open is
    # discarded (the converter starts over and says why).

    def _options_fingerprint(self):
        return dict(self._given_options)

    def _apply_format_state(self, state):
        if state.get("chunk_images"):
            self.chunk_images = int(state["chunk_images"])

    def _checkpoint(self):
        if self._file is not None and self._written != self._flushed:
            try:
                self._file.flush()
            except (OSError, RuntimeError) as exc:
                raise StoreError(f"{self.path}: writing the HDF5 file failed: {_one_line(exc)}") from None
            self._flushed = self._written

    def _stored(self):
        return self._flushed

    def _reopen(self):
        self._file = _open_unfinished(self.temporary)
        try:
            self._datasets = {name: self._file[name] for name in self._file}
            wanted = {"labels", "crc32c"} | ({"pixels", "offsets", "shapes"} if self.shape == VARIABLE else {"images"})
            if set(self._datasets) != wanted:
                raise StoreError(f"it holds the datasets {sorted(self._datasets)}, expected {sorted(wanted)}")
            self._set_unit()
            count = min(len(ds) for name, ds in self._datasets.items() if name != "pixels")
            return self._intact_prefix(count)
        except (OSError, KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise StoreError(f"HDF5 cannot read it: {exc}") from None

    def _intact_prefix(self, count):
        """How many of the first ``count`` images match their checksums, in order."""
        d = self._datasets
        for start in range(0, count, 4096):
            stop = min(start + 4096, count)
            labels, stored = d["labels"][start:stop], d["crc32c"][start:stop]
            if self.shape == VARIABLE:
                offsets, shapes = d["offsets"][start:stop], d["shapes"][start:stop]
                ends = offsets + np.prod(shapes, axis=1)
                if len(ends) and (offsets.min() < 0 or ends.max() > len(d["pixels"])):
                    return start
                pixels = d["pixels"][int(offsets[0]) : int(ends[-1])] if len(ends) else np.empty(0, np.uint8)
                images = [pixels[o - offsets[0] : e - offsets[0]].reshape(tuple(s))
                          for o, e, s in zip(offsets, ends, shapes)]
            else:
                images = d["images"][start:stop]
            wrong = np.flatnonzero(image_checksums(images, labels) != stored)
            if wrong.size:
                return start + int(wrong[0])
        return count

    def _truncate(self, count):
        d = self._datasets
        for name, ds in d.items():
            if name != "pixels":
                ds.resize(count, axis=0)
        if self.shape == VARIABLE:
            end = int(d["offsets"][count - 1] + np.prod(d["shapes"][count - 1])) if count else 0
            d["pixels"].resize(end, axis=0)
            self._pixels_written = end
        self._file.flush()
        self._written = self._flushed = self._images_written = count
        self._carry, self._pending_labels = [], []

    def _suspend(self):
        # Unlike _abort, keep what is in the file: close it, which flushes it.
        f, self._file = self._file, None
        self._datasets = {}
        if f is not None:
            try:
                f.close()
            except (OSError, ValueError, RuntimeError):
                return 0
        return self._written


def _one_line(exc):
    """An HDF5 error as one line: the system's reason when HDF5 quotes one (its text spans lines)."""
    text = " ".join(str(exc).split())
    reason = re.search(r"error message = '([^']*)'", text)
    return f"{text.split(' (')[0]} ({reason.group(1)})" if reason else text


_LIBRARY = []


def _hdf5_library():
    """The HDF5 C library h5py uses (through its extension module), or None."""
    if not _LIBRARY:
        try:
            library = ctypes.CDLL(h5py.h5f.__file__)
            library.H5Pset.argtypes = (ctypes.c_int64, ctypes.c_char_p, ctypes.c_void_p)
            library.H5Pexist.argtypes = (ctypes.c_int64, ctypes.c_char_p)
        except (OSError, AttributeError):
            library = None
        _LIBRARY.append(library)
    return _LIBRARY[0]


def _open_unfinished(path):
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


# Metadata keys whose attribute names say they belong to imgconv.
_ATTR_NAMES = {"format": "imgconv_format", "format_version": "imgconv_format_version"}
_KEY_NAMES = {v: k for k, v in _ATTR_NAMES.items()}


def _read_attr(value):
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, str):
        if value[:1] in "[{":
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                return value
        return value
    if isinstance(value, np.ndarray):
        return [_read_attr(v) for v in value.tolist()]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


class Hdf5Reader(Reader):
    """Reads an HDF5 store. Option ``cache_bytes``: h5py's chunk cache (default 16 MiB)."""

    format_name = FORMAT_NAME

    def _open_handles(self):
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
        self._labels = None
        self._checksums = None
        self._tables = None
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
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot open: {exc}") from None
        try:
            f = h5py.File(self.path, "r", rdcc_nbytes=cache, rdcc_nslots=10007)
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"{self.path}: cannot open as HDF5 (truncated or corrupt?): {exc}") from None
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
            raise StoreError(f"{self.path}: an HDF5 file without imgconv metadata (not an imgconv store, or unfinished)")
        meta = {_KEY_NAMES.get(k, k): _read_attr(v) for k, v in f.attrs.items()}
        meta = check_metadata(meta, self.path, FORMAT_NAME, FORMAT_VERSION)
        n = meta["count"]
        names = ("pixels", "offsets", "shapes", "labels") if meta["shape"] == VARIABLE else ("images", "labels")
        for name in names:
            if name not in f or not isinstance(f[name], h5py.Dataset):
                raise StoreError(f"{self.path}: the dataset /{name} is missing")
        if meta["shape"] != VARIABLE:
            images = f["images"]
            if images.shape != (n, *meta["shape"]) or images.dtype != np.uint8:
                raise StoreError(
                    f"{self.path}: /images is {images.shape} {images.dtype}, the metadata says {n} images of {meta['shape']}"
                )
            self._images = images
        else:
            self._pixels, self._offsets, self._shapes = f["pixels"], f["offsets"], f["shapes"]
            if self._offsets.shape != (n,) or self._shapes.shape != (n, 3):
                raise StoreError(f"{self.path}: /offsets or /shapes do not hold {n} entries")
        if f["labels"].shape != (n,):
            raise StoreError(f"{self.path}: /labels holds {f['labels'].shape} entries, the metadata says {n}")
        if "crc32c" in f and f["crc32c"].shape != (n,):
            raise StoreError(f"{self.path}: /crc32c holds {f['crc32c'].shape} entries, the metadata says {n}")
        return meta

    def _close_handles(self):
        f, self._file = getattr(self, "_file", None), None
        fd, self._fd = getattr(self, "_fd", None), None
        self._direct_reader = None
        if fd is not None:
            os.close(fd)
        if f is not None:
            f.close()

    def _forget_handles(self):
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

    def labels(self):
        """All labels as an (N,) int64 array (read once, then kept)."""
        self._ensure_open()
        if self._labels is None:
            self._labels = self._guard(lambda: self._file["labels"][...].astype(np.int64, copy=False), "labels")
        return self._labels

    def checksums(self):
        """The stored checksum of every image (read once, then kept), or None for a file without them.

        Format version 2 and later: CRC32C of the pixels continued over the
        label (:func:`imgconv.stores.base.image_checksums`); version 1: of the pixels only.
        """
        self._ensure_open()
        if self._checksums is None and "crc32c" in self._file:
            self._checksums = self._guard(lambda: self._file["crc32c"][...], "/crc32c")
        return self._checksums

    def _checksums_cover_labels(self):
        return self.metadata["format_version"] >= 2

    def shapes(self):
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
            self._guard(lambda: self._images.read_direct(into, np.s_[first : first + b - a], np.s_[a:b]),
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
        """The :class:`_DirectChunks` reader for this process, or None when h5py must decode."""
        if self._direct_reader is None:
            with self._direct_lock:
                if self._fd is None:
                    self._direct_reader = False
                elif self._direct_reader is None:
                    try:
                        built = _DirectChunks.build(self.path, self._fd, self._images, self.shape)
                        self._direct_reader = built or False
                    except (OSError, KeyError, ValueError, RuntimeError) as exc:
                        raise StoreError(f"{self.path}: cannot read the chunk index of /images (corrupt file?): "
                                         f"{exc}") from None
        return self._direct_reader or None

    def _read_variable(self, indices):
        if self._tables is None:
            # Offsets and shapes (16 + 24 bytes per image) are read once per process.
            self._tables = (self._guard(lambda: self._offsets[...], "/offsets"),
                            self._guard(lambda: self._shapes[...], "/shapes"))
        offset_table, shape_table = self._tables
        images = []
        for i in indices.tolist():
            shape = tuple(int(v) for v in shape_table[i])
            start = int(offset_table[i])
            size = shape[0] * shape[1] * shape[2]
            flat = self._guard(lambda: self._pixels[start : start + size], f"image {i}")
            if flat.size != size:
                raise StoreError(f"{self.path}: image {i} runs past the end of /pixels: the file is corrupt")
            images.append(flat.reshape(shape))
        return images, self.labels()[indices]


class _DirectChunks:
    """Reads images of an unfiltered chunked dataset straight from the file.

    An uncompressed chunk is stored as its (k, H, W, C) array in C order at a
    file offset HDF5 reports (``chunk_iter``), so image i lies at
    ``chunk_offset[i // k] + (i % k) * image_bytes``. Reading there with
    ``preadv`` skips h5py's selection machinery: a single image costs one
    system call, and a full read copies whole runs of adjacent chunks at once.
    Only used when every chunk is allocated and inside the file, so it returns
    exactly what h5py would.
    """

    def __init__(self, path, fd, offsets, per_chunk, image_bytes):
        self.path = path
        self.fd = fd  # owned by the reader
        self.offsets = offsets
        self.k = per_chunk
        self.image_bytes = image_bytes

    @classmethod
    def build(cls, path, fd, images, shape):
        """A reader for ``images`` through ``fd`` (the file h5py has open); None when the layout forbids it."""
        dcpl = images.id.get_create_plist()
        if images.chunks is None or dcpl.get_nfilters() != 0 or images.chunks[1:] != tuple(shape):
            return None
        k = images.chunks[0]
        count = images.shape[0]
        n_chunks = -(-count // k)
        offsets = np.full(n_chunks, -1, np.int64)
        image_bytes = int(np.prod(shape))

        def visit(info):
            offsets[info.chunk_offset[0] // k] = info.byte_offset

        try:
            images.id.chunk_iter(visit)
        except (AttributeError, RuntimeError, OSError):
            return None  # an HDF5 library without H5Dchunk_iter: h5py reads instead
        size = os.fstat(fd).st_size
        if n_chunks and (offsets.min() < 0 or offsets.max() + k * image_bytes > size):
            return None  # missing or out-of-file chunks: let HDF5 report or fill them
        return cls(path, fd, offsets, k, image_bytes)

    def _read(self, view, offset, what):
        done = 0
        while done < len(view):
            got = os.preadv(self.fd, [view[done:]], offset + done)
            if got <= 0:
                raise StoreError(f"{self.path}: {what} ends early at byte {offset + done}: the file is truncated")
            done += got

    def read_image(self, i, out):
        """Read image ``i`` into ``out`` (an (H, W, C) uint8 array)."""
        offset = int(self.offsets[i // self.k]) + (i % self.k) * self.image_bytes
        self._read(memoryview(out).cast("B"), offset, f"image {i}")

    def read_range(self, start, stop, out):
        """Read images ``start .. stop - 1`` into ``out``, one read per run of adjacent chunks."""
        flat = memoryview(out.reshape(-1))
        first = start // self.k
        offsets = self.offsets[first : (stop - 1) // self.k + 1]
        chunk_bytes = self.k * self.image_bytes
        breaks = np.flatnonzero(np.diff(offsets) != chunk_bytes) + 1
        for a, b in zip(np.concatenate([[0], breaks]).tolist(), np.concatenate([breaks, [offsets.size]]).tolist()):
            lo = max(start, (first + a) * self.k)
            hi = min(stop, (first + b) * self.k)
            offset = int(offsets[a]) + (lo - (first + a) * self.k) * self.image_bytes
            self._read(flat[(lo - start) * self.image_bytes : (hi - start) * self.image_bytes], offset,
                       f"images {lo}..{hi - 1}")


def detect(path):
    """True when ``path`` is a file with the HDF5 signature at 0, 512, 1024, 2048, ... (after a user block)."""
    if not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            at = 0
            while at + len(SIGNATURE) <= size:
                f.seek(at)
                if f.read(len(SIGNATURE)) == SIGNATURE:
                    return True
                at = 512 if at == 0 else 2 * at
    except OSError:
        return False
    return False
