"""Reading images of an unfiltered chunked HDF5 dataset straight from the file (``preadv``)."""
import h5py
import numpy as np

from ... import _platform
from ...errors import StoreError


class DirectChunks:
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
