"""Reading images of an unfiltered chunked HDF5 dataset straight from the file: ``preadv`` for runs
of images, a read-only map of the file for random batches and single images."""
import mmap
import os
from typing import Optional

import h5py
import numpy as np

from ... import _platform, kernels
from ...errors import StoreError


class DirectChunks:
    """Reads images of an unfiltered chunked dataset straight from the file.

    An uncompressed chunk is stored as its (k, H, W, C) array in C order at a
    file offset HDF5 reports (``chunk_iter``), so image i lies at
    ``chunk_offset[i // k] + (i % k) * image_bytes``. Reading there skips
    h5py's selection machinery. Only used when every chunk is allocated and
    inside the file, so it returns exactly what h5py would.

    A full read (:meth:`read_range`) copies whole runs of adjacent chunks
    with ``preadv``. A random batch (:meth:`gather`) is copied from a
    read-only map of the file in one kernel call, instead of a system call
    per image; one image (:meth:`read_image`) is a slice of the map. The map
    is made with this object, of the reader's descriptor while it is open,
    so of the very file HDF5 opened; a forked child's reader opens the file
    again and maps it again. Every image's bytes are checked to lie inside
    the map before they are copied, and the reader checks what was copied
    against the stored checksums (pixels, label and position), as it does
    every read. The map is a Python ``mmap`` that the arrays viewing it keep
    alive, so a reader closed while another thread gathers cannot unmap it
    under it.
    """

    def __init__(self, path, fd, offsets, per_chunk, image_bytes):
        self.path = path
        self.fd = fd  # owned by the reader
        self.offsets = offsets
        self.k = per_chunk
        self.image_bytes = image_bytes
        self.data = _map_file(path, fd)

    @staticmethod
    def layout(images, shape, file_size):
        """``(chunk offsets, images per chunk, bytes per image)`` of the dataset ``images`` (a
        low-level ``h5py.h5d.DatasetID``) in a file of ``file_size`` bytes; None when the layout
        forbids direct reads."""
        dcpl = images.get_create_plist()
        if dcpl.get_layout() != h5py.h5d.CHUNKED or dcpl.get_nfilters() != 0:
            return None
        chunks = dcpl.get_chunk()
        if chunks[1:] != tuple(shape):
            return None
        k = chunks[0]
        count = images.shape[0]
        n_chunks = -(-count // k)
        offsets = np.full(n_chunks, -1, np.int64)
        image_bytes = int(np.prod(shape))

        def visit(info):
            offsets[info.chunk_offset[0] // k] = info.byte_offset

        try:
            images.chunk_iter(visit)
        except (AttributeError, RuntimeError, OSError):
            return None  # an HDF5 library without H5Dchunk_iter: h5py reads instead
        if n_chunks and (offsets.min() < 0 or offsets.max() + k * image_bytes > file_size):
            return None  # missing or out-of-file chunks: let HDF5 report or fill them
        return offsets, k, image_bytes

    def _read(self, view, offset, what):
        got = _platform.pread_exact(self.fd, view, offset)
        if got < len(view):
            raise StoreError(f"{self.path}: {what} ends early at byte {offset + got}: the file is truncated")

    def read_image(self, i, out):
        """Copy image ``i`` into ``out`` (an (H, W, C) uint8 array) from the map of the file."""
        offset = int(self.offsets[i // self.k]) + (i % self.k) * self.image_bytes
        if offset + self.image_bytes > self.data.size:
            raise StoreError(f"{self.path}: image {i} ends early at byte {self.data.size}: the file is truncated")
        out.reshape(-1)[:] = self.data[offset : offset + self.image_bytes]

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

    def gather(self, indices: np.ndarray, out: np.ndarray, crcs: Optional[np.ndarray] = None,
               tails: Optional[np.ndarray] = None) -> None:
        """Copy images ``indices`` (int64) into ``out`` ((N, H, W, C) uint8) from the map of the file,
        in one kernel call without the GIL; with ``crcs`` ((N,) uint32) the CRC32C of each image's
        pixels too, continued over its row of ``tails`` (:func:`imgconv.kernels.gather_rows`).
        StoreError for an image that lies past the end of the file."""
        chunks, slots = np.divmod(indices, self.k)
        offsets = self.offsets[chunks]
        offsets += slots * self.image_bytes
        data = self.data
        bad = kernels.gather_rows(data, offsets, out.reshape(indices.size, self.image_bytes), crcs, tails)
        if bad >= 0:
            raise StoreError(f"{self.path}: image {indices[bad]} ends early at byte {data.size}: the file is "
                             "truncated")


def _map_file(path: str, fd: int) -> np.ndarray:
    """The file open at ``fd``, mapped read-only, as a uint8 array (the array keeps the map alive)."""
    try:
        size = os.fstat(fd).st_size
        mapping = mmap.mmap(fd, size, access=mmap.ACCESS_READ) if size else None
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: cannot map the file: {exc}") from None
    if mapping is None:
        return np.zeros(0, np.uint8)
    if hasattr(mapping, "madvise") and hasattr(mmap, "MADV_RANDOM"):
        mapping.madvise(mmap.MADV_RANDOM)  # random batches: no reading ahead around each image
    return np.frombuffer(mapping, np.uint8)
