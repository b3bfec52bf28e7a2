"""The Reader base class: a finished store, read-only, from any process.

Subclasses (one per format) open their handles lazily and implement a few
reads on checked indices; this class checks the indices and ``out=``
arrays, verifies pixels and labels against the store's checksums, and
reopens the handles in a process other than the one that opened them.
"""
import abc
import operator
import os
from typing import Any, Iterator, List, Optional, Tuple, Union

import numpy as np

from .. import _validate, kernels
from ..checksum import image_checksum, image_checksums
from ..errors import StoreArgumentError, StoreError, StoreIndexError
from .batch import VARIABLE, StoreShape, shape_text
from .metadata import Metadata

Images = Union[np.ndarray, List[np.ndarray]]

ReadResult = Tuple[Images, np.ndarray]


class Reader(abc.ABC):
    """A finished store, read-only: ``len``, ``store[i]``, ``read_batch``, ``batches``.

    Handles (LMDB environment, HDF5 file) are opened lazily and reopened in a
    process other than the one that opened them, so a store opened before
    ``fork`` works in DataLoader-style workers; pickling keeps only the path
    and the options (for spawn-based workers). Subclasses implement
    ``_open_handles`` (returns the metadata), ``_close_handles``,
    ``_read_one(i)``, ``_read_many(indices, out)`` and optionally
    ``_read_range(start, stop, out)`` on checked indices (``out`` is a checked
    array to fill, or None).
    """

    format_name: str = ""

    def __init__(self, path: Union[str, "os.PathLike[str]"], **options: Any) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self._options = options
        self._pid: Optional[int] = None  # the process the handles belong to
        self._one_check: Any = None  # what store[i] checks against, once known (see _verify_one)
        self.metadata: Metadata = {}
        self._ensure_open()

    # public API -----------------------------------------------------------

    @property
    def shape(self) -> StoreShape:
        """(H, W, C) of every image, or "variable"."""
        return self.metadata["shape"]

    @property
    def variable(self) -> bool:
        """True when the images have varying sizes (``read_batch`` returns a list)."""
        return self.shape == VARIABLE

    @property
    def label_names(self) -> Optional[List[str]]:
        """The label names given when the store was written, or None."""
        return self.metadata.get("label_names")

    def __len__(self) -> int:
        return self.metadata["count"]

    def __getitem__(self, index: int) -> Tuple[np.ndarray, int]:
        """``(image (H, W, C) uint8, label int)`` of image ``index``; StoreIndexError when out of range."""
        i = self._check_index(index)
        if self._pid != os.getpid():
            self._ensure_open()
        return self._read_one_checked(i)

    def read_batch(self, indices: Any, out: Optional[np.ndarray] = None) -> ReadResult:
        """``(images, labels)`` for ``indices`` in the order given (repeats allowed).

        ``images`` is an (N, H, W, C) uint8 array, or a list of (H, W, C)
        arrays for a store of varying sizes; ``labels`` is (N,) int64.
        ``out``, a writeable C-contiguous (N, H, W, C) uint8 array, receives
        the images instead of a new array (reusing memory saves the cost of
        faulting in fresh pages, which is a large part of a full read).
        Raises StoreIndexError (an IndexError) for an index out of range, TypeError
        for indices that are not integers, StoreArgumentError (a ValueError)
        for an unfit ``out``, StoreError for a damaged store.
        """
        idx = self._check_indices(indices)
        self._ensure_open()
        out = self._check_out(out, idx.size)
        if idx.size == 0:
            return self._empty() if out is None else (out, np.empty(0, np.int64))
        return self._read_many_checked(idx, out)

    def batches(self, batch_size: int = 1024, start: int = 0, stop: Optional[int] = None) -> Iterator[ReadResult]:
        """Yield ``(images, labels)`` of consecutive images in order, ``batch_size`` at a time.

        From image ``start`` up to ``stop`` (default and at most the end).
        Raises ValueError for a ``batch_size`` < 1 and StoreIndexError unless
        0 <= start <= stop; both are checked at the call, not at the first batch.
        """
        batch_size = _validate.positive_int("batch_size", batch_size)
        n = len(self)
        start = operator.index(start)
        stop = n if stop is None else min(operator.index(stop), n)
        if not 0 <= start <= stop:
            raise StoreIndexError(f"{self.path}: batches(start={start}, stop={stop}) is not a range within 0 .. {n}")
        return self._batches(batch_size, start, stop)

    def _batches(self, batch_size, start, stop):
        for first in range(start, stop, batch_size):
            self._ensure_open()
            last = min(first + batch_size, stop)
            yield self._read_range_checked(first, last, None)

    def read_all(self, out: Optional[np.ndarray] = None) -> ReadResult:
        """Every image and label: ``read_batch(range(len(self)), out)`` done the fastest way."""
        self._ensure_open()
        out = self._check_out(out, len(self))
        if len(self) == 0:
            return self._empty() if out is None else (out, np.empty(0, np.int64))
        return self._read_range_checked(0, len(self), out)

    def labels(self) -> np.ndarray:
        """All labels as an (N,) int64 array, in image order."""
        parts = [labels for _, labels in self.batches(4096)]
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def shapes(self) -> np.ndarray:
        """The (H, W, C) of every image as an (N, 3) int64 array."""
        if not self.variable:
            return np.tile(np.array(self.shape, np.int64), (len(self), 1))
        shapes = [image.shape for images, _ in self.batches(1024) for image in images]
        return np.array(shapes, np.int64).reshape(-1, 3)

    def checksums(self) -> Optional[np.ndarray]:
        """The per-image checksums kept by the store (see :func:`image_checksums`), or None.

        None when the format checks its own records as it reads them (LMDB)
        or keeps no checksums (a classic PNG folder).
        """
        return None

    @property
    def checked(self) -> bool:
        """Whether the store keeps a checksum of every image, checked on every read (unless ``verify=False``)."""
        return self.checksums() is not None

    @property
    def positions_checked(self) -> bool:
        """Whether every image is checked at its index: a checksum that covers the position, so that
        an image found where another belongs (a damaged index, table or file name) is refused.

        True for stores of the current format versions; False for older
        versions, and for stores without checksums.
        """
        return self.checked and self._checksum_version() >= 3

    def check_layout(self) -> List[str]:
        """Store-wide problems (missing or extra parts) as a list of sentences; empty when sound."""
        return []

    def _read_range_checked(self, start, stop, out):
        """Images ``start .. stop - 1`` read (``_read_range``) and checked against their checksums.

        A format may do both at once, in threads.
        """
        return self._verified(np.arange(start, stop), self._read_range(start, stop, out))

    def _read_many_checked(self, indices, out):
        """Images ``indices`` read (``_read_many``) and checked against their checksums.

        A format may do both at once.
        """
        return self._verified(indices, self._read_many(indices, out))

    def _verified(self, indices, result):
        self._verify_pixels(indices, result[0], result[1])
        return result

    def _read_one_checked(self, i: int) -> Tuple[np.ndarray, int]:
        """``store[i]`` on a checked index, the handles open: :meth:`_read_one`, then :meth:`_verify_one`.

        The hot path of random access: one image, so no index or label
        arrays are built for the check. A format whose reads check
        themselves (LMDB's records) overrides it with one step.
        """
        image, label = self._read_one(i)
        label = int(label)
        self._verify_one(i, image, label)
        return image, label

    def _verify_one(self, i: int, image: np.ndarray, label: int) -> None:
        """:meth:`_verify_pixels` for the one image ``i``."""
        check = self._checks()
        if not check:
            return
        stored, version = check
        if version >= 3:
            computed = image_checksum(image, label, i)
        elif version == 2:
            computed = image_checksum(image, label)
        else:
            computed = kernels.crc32c(np.ascontiguousarray(image))
        if computed != stored[i]:
            raise StoreError(self._mismatch(i, version))

    def _checks(self):
        """:meth:`_prepare_one_check`, found once per opening."""
        check = self._one_check
        if check is None:
            check = self._one_check = self._prepare_one_check()
        return check

    def _prepare_one_check(self):
        """What :meth:`_verify_one` checks against, found once per opening: ``(checksums,
        version)`` (see :meth:`_checksum_version`), or False when nothing is to be checked."""
        if not self._options.get("verify", True):
            return False
        stored = self.checksums()
        return False if stored is None else (stored, self._checksum_version())

    def _verify_pixels(self, indices, images, labels):
        """Raise StoreError for an image whose pixels or label do not match the store's checksum."""
        if not self._options.get("verify", True):
            return
        stored = self.checksums()
        if stored is None or len(indices) == 0:
            return
        version = self._checksum_version()
        if version >= 3:
            computed = image_checksums(images, labels, indices)
        elif version == 2:
            computed = image_checksums(images, labels)
        else:
            computed = kernels.crc32c_images(images)
        wrong = np.flatnonzero(computed != stored[indices])
        if wrong.size:
            raise StoreError(self._mismatch(int(indices[wrong[0]]), version))

    def _mismatch(self, i: int, version: int) -> str:
        covered = "pixels, label or position" if version >= 3 else "pixels or label" if version == 2 else "pixels"
        return f"{self.path}: image {i} does not match its stored checksum ({covered}): the store is corrupt"

    def _checksum_version(self) -> int:
        """What :meth:`checksums` cover (:mod:`imgconv.checksum`): 3 the pixels, label and position,
        2 the pixels and label, 1 the pixels only; a format's store versions name them so."""
        return 3

    def __iter__(self) -> Iterator[Tuple[np.ndarray, int]]:
        for images, labels in self.batches():
            for image, label in zip(images, labels):
                yield image, int(label)

    def close(self) -> None:
        """Close the handles of this process; the store reopens them when used again."""
        if getattr(self, "_pid", None) == os.getpid():
            self._close_handles()
        self._pid = None
        self._one_check = None

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass  # at interpreter exit the modules close() needs may be gone

    def __getstate__(self):
        return {"path": self.path, "options": self._options}

    def __setstate__(self, state):
        type(self).__init__(self, state["path"], **state["options"])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path!r}: {len(self)} images of {shape_text(self.shape)}>"

    # helpers ---------------------------------------------------------------

    def _ensure_open(self):
        pid = os.getpid()
        if self._pid == pid:
            return
        if self._pid is not None:
            # Opened in another process (we are a forked child): never touch
            # those handles here, open our own.
            self._forget_handles()
        self._one_check = None
        self.metadata = self._open_handles()
        self._pid = pid

    def _check_index(self, index: Any) -> int:
        try:
            return _validate.index(index, len(self))
        except IndexError:  # the message is made only then: store[i] is a hot path
            raise StoreIndexError(self._out_of_range(index)) from None

    def _check_indices(self, indices: Any) -> np.ndarray:
        return _validate.int64_indices(indices, len(self), negative=True, flatten=True, error=StoreIndexError,
                                       where=f"{self.path}: ",
                                       out_of_range=f"is out of range for a store of {len(self)} images")

    def _out_of_range(self, index: Any) -> str:
        return f"{self.path}: index {index} is out of range for a store of {len(self)} images"

    def _check_out(self, out, n):
        if out is None:
            return None
        if self.variable:
            raise StoreArgumentError(
                f"{self.path}: out= needs a store of one image shape, this one has varying sizes")
        want = (n, *self.shape)
        if not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.shape != want:
            got = f"{out.shape} {out.dtype}" if isinstance(out, np.ndarray) else type(out).__name__
            raise StoreArgumentError(f"{self.path}: out must be a uint8 array of shape {want}, got {got}")
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise StoreArgumentError(f"{self.path}: out must be a writeable C-contiguous array")
        return out

    def _empty(self):
        labels = np.empty(0, np.int64)
        if self.variable:
            return [], labels
        return np.empty((0, *self.shape), np.uint8), labels

    def _read_range(self, start, stop, out):
        return self._read_many(np.arange(start, stop, dtype=np.int64), out)

    def _forget_handles(self) -> None:  # noqa: B027 - optional hook
        """Drop handles inherited over fork without using them."""

    @abc.abstractmethod
    def _open_handles(self) -> Metadata:
        """Open this process's handles; returns the checked metadata."""

    @abc.abstractmethod
    def _close_handles(self) -> None:
        """Close this process's handles."""

    @abc.abstractmethod
    def _read_one(self, i: int) -> Tuple[np.ndarray, int]:
        """``(image, label)`` of the checked index ``i``."""

    @abc.abstractmethod
    def _read_many(self, indices: np.ndarray, out: Optional[np.ndarray]) -> ReadResult:
        """``(images, labels)`` of the checked ``indices``, into ``out`` when given."""
