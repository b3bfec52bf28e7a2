"""imgconv stores as sources: convert one store into another, or read one through the pool.

Any store :func:`imgconv.open` reads (an imgconv PNG folder, LMDB or HDF5, a
sharded dataset, or a classic ``0.png ... N-1.png`` folder) is a source with random access: a
range or any list of indices is one ``read_batch``. Checked first in the
registry, so a PNG folder written by imgconv is read as a store (with its
labels and checksums), not as a folder of loose images.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from .. import stores
from ..datasets import manifest as dataset
from ..errors import StoreError, UnknownFormatError
from ..stores.reader import Reader
from .base import Batch, Source


def detect(path: str) -> bool:
    """True when ``path`` holds a store :func:`imgconv.open` can read, or a sharded dataset (finished
    or not: an unfinished one is then refused with its own message, not read as a folder of images)."""
    if dataset.is_dataset(path) or dataset.unfinished_shards(path):
        return True
    try:
        stores.detect_format(path)
    except (UnknownFormatError, StoreError):
        return False
    return True


class StoreSource(Source):
    """The images of an imgconv store, in order; ``take`` is a random-access read.

    The store is opened lazily in each process (a store pickles as its path).
    Raises StoreError for a store that cannot be read.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = path
        self._store = stores.open(path)

    @property
    def description(self) -> str:
        """The store's format, path and number of images."""
        return f"{self._store.format_name} store {self._store.path} ({len(self._store)} images)"

    @property
    def length(self) -> int:
        """The number of images in the store."""
        return len(self._store)

    @property
    def shape(self) -> tuple[int, int, int] | None:
        """The store's image shape, None for a store of varying sizes."""
        shape = self._store.shape
        return None if isinstance(shape, str) else (int(shape[0]), int(shape[1]), int(shape[2]))

    @property
    def heavy_decoding(self) -> bool:
        """True for a PNG folder, whose images are decoded; LMDB and HDF5 are read at memory speed."""
        return self._store.format_name == "png"

    @property
    def label_names(self) -> list[str] | None:
        """The class names the store keeps, or None."""
        return self._store.label_names

    def image_nbytes(self, indices: np.ndarray) -> np.ndarray | None:
        """Decoded bytes of the images at ``indices`` (see :meth:`Source.image_nbytes`).

        A store of varying sizes answers when its format keeps the shapes
        apart from the pixels (HDF5's ``/shapes``); None when finding them
        would read every image.
        """
        if not self._store.variable:
            return super().image_nbytes(indices)
        if type(self._store).shapes is Reader.shapes:
            return None
        return np.prod(self._store.shapes()[np.asarray(indices, np.int64)], axis=1).astype(np.int64)

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[Batch]:
        """Consecutive images of the store, ``batch_size`` at a time (see :meth:`Source.batches`)."""
        start, stop = self._check_range(batch_size, start, stop)
        for first in range(start, stop, batch_size):
            yield self._store.read_batch(np.arange(first, min(first + batch_size, stop)))

    def take(self, indices: npt.ArrayLike) -> Batch:
        """The images at ``indices`` (any order, repeats allowed) in one read."""
        return self._store.read_batch(np.asarray(indices, np.int64))

    def image_shapes(self) -> np.ndarray:
        """The (H, W, C) of every image as an (N, 3) int64 array (see :meth:`imgconv.stores.Reader.shapes`)."""
        return self._store.shapes()
