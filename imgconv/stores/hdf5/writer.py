"""Writing an HDF5 store (the layout is in :mod:`imgconv.stores.hdf5.layout`).

Images go to the file chunk by chunk as they come (whole uncompressed
chunks directly, past h5py's selection machinery); ``/images`` grows, and
labels and checksums are written, a write unit (4 MiB of images) at a time,
so the sequence of HDF5 calls, and hence the file, does not depend on batch
sizes. HDF5 keeps no journal: a resumed writer reopens the file with
:func:`~imgconv.stores.hdf5.unfinished.open_unfinished` and trusts only the
images that match their checksums.
"""
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import h5py
import numpy as np

from ... import _validate
from ...checksum import bind_positions, image_checksums
from ...errors import StoreError, StoreOptionError
from ..batch import VARIABLE, Shape
from ..metadata import Metadata
from ..writer import Writer
from . import lowlevel
from .layout import (
    ATTR_NAMES,
    CHUNK_TARGET_BYTES,
    COMPRESSIONS,
    FORMAT_NAME,
    FORMAT_VERSION,
    LABEL_CHUNK,
    PIXEL_CHUNK_BYTES,
    attr_value,
    encode_batch,
)
from .unfinished import open_unfinished

# /images grows, and labels are written, in steps of this many bytes of
# images (whole chunks), so the sequence of HDF5 calls, and hence the file,
# does not depend on batch sizes.
WRITE_UNIT_BYTES = 4 * 1024 * 1024
MAX_CHUNK_IMAGES = 1 << 20  # the largest chunk_images accepted


class Hdf5Writer(Writer):
    """Writes a chunked HDF5 store (see :mod:`imgconv.stores.hdf5.layout` for the layout).

    Options: ``chunk_images`` (images per chunk; by default about 192 KiB of
    pixels per chunk, 64 CIFAR images: see FORMAT.md for the measurements),
    ``compression`` (None, "gzip", "lzf") and ``compression_level`` (gzip
    0..9, default 4). Resumable from its last flushed write unit.
    """

    format_name = FORMAT_NAME
    format_version = FORMAT_VERSION

    def __init__(self, path: Any, *, chunk_images: Optional[int] = None, compression: Optional[str] = None,
                 compression_level: Optional[int] = None, **common: Any) -> None:
        super().__init__(path, **common)
        how: Dict[str, Any] = {"error": StoreOptionError, "where": f"{self.path}: "}
        _validate.choice("compression", compression, COMPRESSIONS, **how)
        if compression_level is not None:
            if compression != "gzip":
                raise StoreOptionError(f"{self.path}: compression_level applies to compression='gzip' only "
                                       f"(compression is {compression!r})", ("compression_level", "compression"))
            compression_level = _validate.integer("compression_level", compression_level, minimum=0, maximum=9, **how)
        if chunk_images is not None:
            chunk_images = _validate.integer("chunk_images", chunk_images, minimum=1, maximum=MAX_CHUNK_IMAGES, **how)
        self.chunk_images = chunk_images
        self.compression = compression
        if compression == "gzip" and compression_level is None:
            compression_level = 4
        self.compression_level = compression_level
        self._file: Any = None
        self._datasets: Dict[str, Any] = {}
        self._carry: List[np.ndarray] = []  # images of the chunk being filled, copied (fewer than a chunk)
        self._images_written = 0  # /images holds this many (ahead of the labels by less than a unit)
        self._images_extent = 0  # the length of /images (grown a write unit at a time)
        # (labels, checksums) not yet written: fewer than a unit past _written
        self._pending_labels: List[Tuple[np.ndarray, np.ndarray]] = []
        self._written = 0
        self._pixels_written = 0
        self._flushed = 0
        self.options = {"chunk_images": self.chunk_images, "compression": self.compression,
                        "compression_level": self.compression_level}

    def encoder(self) -> Any:
        """The picklable encode step: :func:`~imgconv.stores.hdf5.layout.encode_batch`."""
        return encode_batch

    def _start(self):
        # Through h5py's low-level API (the same HDF5 calls as its File and
        # create_dataset, without their Python): most of the cost of a small store.
        try:
            # v110: the extensible-array chunk index (faster appends and
            # lookups than the v1 B-tree), readable by HDF5 1.10 and later.
            self._file = lowlevel.create_file(self.temporary, (h5py.h5f.LIBVER_V110, h5py.h5f.LIBVER_V110))
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot create the HDF5 file: {exc}") from None
        f = self._file
        self._images_extent = 0
        filters = (self.compression, self.compression_level)
        # One handle per dataset for the whole write: closing one flushes it
        # (a failure there could only be reported as "Exception ignored").
        d = self._datasets = {}
        d["labels"] = lowlevel.create_dataset(f, "labels", (0,), np.int64, (None,), (LABEL_CHUNK,))
        d["crc32c"] = lowlevel.create_dataset(f, "crc32c", (0,), np.uint32, (None,), (LABEL_CHUNK,))
        if self.shape == VARIABLE:
            d["pixels"] = lowlevel.create_dataset(f, "pixels", (0,), np.uint8, (None,), (PIXEL_CHUNK_BYTES,), *filters)
            d["offsets"] = lowlevel.create_dataset(f, "offsets", (0,), np.int64, (None,), (LABEL_CHUNK,))
            d["shapes"] = lowlevel.create_dataset(f, "shapes", (0, 3), np.int64, (None, 3), (LABEL_CHUNK, 3))
            self._unit = 1
        else:
            shape = self._image_shape()
            if self.chunk_images is None:
                self.chunk_images = max(1, round(CHUNK_TARGET_BYTES / int(np.prod(shape))))
            chunks = (self.chunk_images, *shape)
            d["images"] = lowlevel.create_dataset(f, "images", (0, *shape), np.uint8, (None, *shape),
                                                  chunks, *filters)
        self._set_unit()
        # Opened afresh in name order, as the writer always has: HDF5 lays out
        # its metadata in the order the objects are opened, and so the files
        # stay byte for byte what earlier versions wrote.
        for dataset in d.values():
            dataset.close()
        self._datasets = {name: lowlevel.open_dataset(f, name) for name in sorted(d)}

    def _set_unit(self):
        if self.shape == VARIABLE:
            self._unit = 1
        else:
            per_image, chunk = int(np.prod(self._image_shape())), self._chunk_images()
            self._unit = chunk * max(1, WRITE_UNIT_BYTES // (per_image * chunk))

    def _image_shape(self) -> Shape:
        """The (H, W, C) of the images, for a store of one image shape once it is known."""
        shape = self.shape
        assert shape is not None and shape != VARIABLE, "a fixed shape is known before images of it are written"
        return shape

    def _chunk_images(self) -> int:
        """Images per chunk, for a store of one image shape once started or reopened."""
        assert self.chunk_images is not None, "_start or _reopen sets chunk_images before images are written"
        return self.chunk_images

    def _write(self, encoded):
        # The workers' checksums end with the labels; the images' indices are known here.
        checksums = bind_positions(encoded.checksums, self.count)
        try:
            self._write_batch(encoded, checksums)
        except (OSError, RuntimeError, ValueError) as exc:
            # h5py reports a full disk or a failed write as OSError or RuntimeError.
            self._discard_output()
            raise StoreError(f"{self.path}: writing the HDF5 file failed: {_one_line(exc)}") from None

    def _write_batch(self, encoded, checksums):
        if self.shape == VARIABLE:
            self._write_variable(encoded, checksums)
            return
        images = (encoded.images if not encoded.variable
                  else encoded.pixels.reshape(len(encoded), *self._image_shape()))
        chunk = self._chunk_images()
        # Labels are small: copied, as they wait for their unit. Images go out
        # chunk by chunk as they come; only the start of an unfinished chunk
        # waits (copied: the caller may refill its arrays once append returns).
        self._pending_labels.append((encoded.labels.copy(), checksums))
        carried = sum(len(part) for part in self._carry)
        position = 0
        while position < len(images):
            chunk_end = (self._images_written // chunk + 1) * chunk
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
        if self._images_extent < stop:
            # Grown a write unit at a time (the sequence of calls, and so the
            # file, does not depend on batch sizes); cut to size at the end.
            self._images_extent = -(-stop // self._unit) * self._unit
            lowlevel.resize(ds, self._images_extent)
        chunk = self._chunk_images()
        if self.compression is None and start % chunk == 0 and len(images) == chunk:
            # A whole chunk goes to the file as it is, past h5py's selection
            # machinery and HDF5's chunk cache (a third of the time of a slice
            # assignment for CIFAR images).
            ds.write_direct_chunk((start, 0, 0, 0), np.ascontiguousarray(images))
        else:
            lowlevel.write_rows(ds, start, images)
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
        lowlevel.resize(self._datasets["images"], self._written)

    def _append(self, name, data, start):
        ds = self._datasets[name]
        lowlevel.resize(ds, start + len(data))
        lowlevel.write_rows(ds, start, data)

    def _write_variable(self, encoded, checksums):
        pixels = encoded.pixels if encoded.variable else encoded.images.reshape(-1)
        sizes = np.prod(encoded.shapes, axis=1)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) + self._pixels_written
        # Variable-size data is written as it comes: chunk alignment cannot be
        # kept across images of different sizes anyway.
        self._append("pixels", pixels, self._pixels_written)
        self._append("offsets", offsets, self._written)
        self._append("shapes", encoded.shapes, self._written)
        self._append("labels", encoded.labels, self._written)
        self._append("crc32c", checksums, self._written)
        self._pixels_written += int(sizes.sum())
        self._written += len(encoded)

    def format_metadata(self) -> dict:
        """The chunk size (one image shape) and the compression."""
        extra = {"compression": self.compression, "compression_level": self.compression_level}
        if self.shape != VARIABLE:
            extra["chunk_images"] = self.chunk_images
        return extra

    def _finish(self, meta: Metadata) -> None:
        try:
            if self.shape != VARIABLE:
                self._finish_images()
            for key, value in meta.items():
                value = attr_value(value)
                if value is not None:
                    lowlevel.write_attribute(self._file, ATTR_NAMES.get(key, key), value)
            h5py.h5f.flush(self._file)
            self._datasets = {}
            lowlevel.close_file(self._file)
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

    def _abort(self) -> None:
        self._discard_output()
        f, self._file = self._file, None
        self._datasets = {}
        if f is None:
            return
        for _ in range(2):
            try:
                lowlevel.close_file(f)
                return
            except (OSError, ValueError, RuntimeError):
                continue

    # Resumable -------------------------------------------------------------------
    # HDF5 keeps no journal: a killed writer can leave the file in any state.
    # At each checkpoint the file is flushed (HDF5 then holds a consistent
    # picture of what was written); on resume every image kept is read back
    # and checked against its CRC32C, and a file HDF5 cannot open is
    # discarded (the converter starts over and says why).

    def _durable_count(self) -> int:
        if self._file is not None and self._written != self._flushed:
            try:
                h5py.h5f.flush(self._file)
            except (OSError, RuntimeError) as exc:
                raise StoreError(f"{self.path}: writing the HDF5 file failed: {_one_line(exc)}") from None
            self._flushed = self._written
        return self._flushed

    def _reopen(self, state: Mapping[str, Any]) -> int:
        if state.get("chunk_images"):
            self.chunk_images = int(state["chunk_images"])
        self._file = open_unfinished(self.temporary).id
        try:
            found = h5py.Group(self._file)
            self._datasets = {name: found[name].id for name in found}
            wanted = {"labels", "crc32c"} | ({"pixels", "offsets", "shapes"} if self.shape == VARIABLE else {"images"})
            if set(self._datasets) != wanted:
                raise StoreError(f"it holds the datasets {sorted(self._datasets)}, expected {sorted(wanted)}")
            self._set_unit()
            count = min(ds.shape[0] for name, ds in self._datasets.items() if name != "pixels")
            if "images" in self._datasets:
                self._images_extent = self._datasets["images"].shape[0]
            return self._intact_prefix(count)
        except (OSError, KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise StoreError(f"HDF5 cannot read it: {exc}") from None

    def _intact_prefix(self, count: int) -> int:
        """How many of the first ``count`` images match their checksums, in order."""
        d = {name: h5py.Dataset(dsid) for name, dsid in self._datasets.items()}
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
            wrong = np.flatnonzero(image_checksums(images, labels, np.arange(start, stop)) != stored)
            if wrong.size:
                return start + int(wrong[0])
        return count

    def _truncate(self, count: int) -> None:
        d = {name: h5py.Dataset(dsid) for name, dsid in self._datasets.items()}
        for name, ds in d.items():
            if name != "pixels":
                ds.resize(count, axis=0)
        if "images" in d:
            self._images_extent = count
        if self.shape == VARIABLE:
            end = int(d["offsets"][count - 1] + np.prod(d["shapes"][count - 1])) if count else 0
            d["pixels"].resize(end, axis=0)
            self._pixels_written = end
        h5py.h5f.flush(self._file)
        self._written = self._flushed = self._images_written = count
        self._carry, self._pending_labels = [], []

    def _suspend(self) -> int:
        # Unlike _abort, keep what is in the file: close it, which flushes it.
        f, self._file = self._file, None
        self._datasets = {}
        if f is not None:
            try:
                lowlevel.close_file(f)
            except (OSError, ValueError, RuntimeError):
                return 0
        return self._written


def _one_line(exc: BaseException) -> str:
    """An HDF5 error as one line: the system's reason when HDF5 quotes one (its text spans lines)."""
    text = " ".join(str(exc).split())
    reason = re.search(r"error message = '([^']*)'", text)
    return f"{text.split(' (')[0]} ({reason.group(1)})" if reason else text
