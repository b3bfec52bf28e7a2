"""What every source is: a dataset read as a stream of ``(images, labels)`` batches.

A source holds a path and options, never open files or pixel data, so it
pickles in a few bytes (or, for an image folder, its list of file names) and
can be sent to a worker process, which opens the files it needs there. Files
open lazily, on the first batch.

Batches are ``(images, labels)``: ``images`` a C-contiguous uint8 array
(B, H, W, C), with C = 1 for grayscale, or a list of B (H, W, C) uint8 arrays
when the images differ in size; ``labels`` an int64 array (B,), -1 where an
image has no label. ``batches(batch_size, start, stop)`` covers image indices
``start <= i < stop`` in order, every batch holding ``batch_size`` images but
the last, so workers can split a dataset by index ranges. ``take(indices)``
reads scattered images (a shuffled conversion) as one batch, in the order
asked.
"""
from __future__ import annotations

import abc
import os
import warnings
from collections import namedtuple
from collections.abc import Iterator, Sequence
from typing import IO, Any, Callable, NamedTuple, Union

import numpy as np
import numpy.typing as npt

from .. import _validate
from .._platform import NotRegularFileError, open_regular_file
from ..errors import SkippedImageWarning, SourceError, SourceOptionError
from ..options import Option

# A batch: images (a uint8 (B, H, W, C) array, or a list of (H, W, C) arrays of
# varying sizes) and their int64 (B,) labels.
Images = Union[np.ndarray, list]
Batch = tuple[Images, np.ndarray]

SkippedFile = namedtuple("SkippedFile", "path reason")
SkippedFile.__doc__ = "A file a source skipped under ``on_error='skip'``: its path and why."

ON_ERROR = ("fail", "skip")
SPLITS = ("train", "test", "all")

# Shared by every source kind with a training and a test part (CIFAR, NumPy).
SPLIT = Option("split", default="train", choices=SPLITS, help="the part to read: train, test or all (train then test)")


class Source(abc.ABC):
    """Abstract base of every reader.

    Subclasses set ``description`` and implement :meth:`batches` and the
    ``length``, ``shape`` and ``label_names`` properties (computed lazily when
    costly); they may override ``_gather`` to make :meth:`take` read each
    file once. Attributes named in ``_TRANSIENT`` (open files, caches) are left
    out when the source is pickled. ``OPTIONS`` declares the keyword options
    the constructor takes (see :mod:`imgconv.options`); their defaults are
    the constructor's.
    """

    OPTIONS: tuple[Option, ...] = ()
    _TRANSIENT: tuple[str, ...] = ()

    @property
    @abc.abstractmethod
    def description(self) -> str:
        """One line saying what is read: kind, path, selection and size."""

    @property
    @abc.abstractmethod
    def length(self) -> int | None:
        """Number of images, or None when it cannot be known in advance."""

    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, int, int] | None:
        """(H, W, C) shared by every image, or None when the sizes vary."""

    @property
    def label_names(self) -> list[str] | None:
        """Class names indexed by label, or None when the dataset has none."""
        return None

    @property
    def length_hint(self) -> int | None:
        """The number of images expected before it is known, for a progress display; None without one.

        Costs no reading. A sequential source that learns its length as it
        streams (an archive) gives what it expects from the start and
        corrects it with what it reads; once :attr:`length` is known it is
        that. Not a promise: use :attr:`length` for planning.
        """
        return None

    @property
    def heavy_decoding(self) -> bool:
        """Whether reading an image is CPU work worth a worker process (decoding compressed files,
        resizing), rather than a pass at memory speed (copying arrays, checking checksums), which
        costs less than sending the batch to a worker and back. False here."""
        return False

    @property
    def sequential(self) -> bool:
        """True when reading a subrange first costs a pass over the data before it.

        A compressed archive is such a source: gzip cannot seek. A converter
        then reads it once, in order, in one process, and gives its workers
        only the encoding, instead of having every worker decompress the
        archive again for its own range.
        """
        return False

    @abc.abstractmethod
    def batches(self, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[Batch]:
        """Yield ``(images, labels)`` for images ``start <= i < stop`` (``stop=None``: to the end).

        Every batch holds ``batch_size`` images except the last. Raises
        ValueError for a bad batch size or range and SourceError for data that
        cannot be read.
        """

    def stream(self, batch_size: int, limit: int | None = None) -> Iterator[Batch]:
        """Yield ``(images, labels)`` from the first image on, in order: ``limit`` images at most.

        The same batches as ``batches(batch_size, 0, limit)``, but the source
        need not know its length first: a sequential source (an archive)
        reads itself once and learns its length and label names on the way,
        so after a stream that reached the end they cost nothing more.
        Raises ValueError for a bad batch size or limit and SourceError for
        data that cannot be read.
        """
        check_stream_arguments(batch_size, limit)
        length = self.length
        stop = limit if length is None else (length if limit is None else min(limit, length))
        return self.batches(batch_size, 0, stop)

    def take(self, indices: npt.ArrayLike) -> Batch:
        """The images at ``indices`` (any order, repeats allowed) and their labels, as one batch.

        Returns ``(images, labels)`` in the order asked, like a batch from
        :meth:`batches`; a shuffled conversion reads its tasks this way. Each
        file is read once per call, however scattered the indices. Under
        ``on_error="skip"`` (folders) images that cannot be read are left
        out (a folder source's ``last_kept`` then says which). Raises
        ValueError for an index out of range and SourceError for unreadable
        data.
        """
        images, labels, _ = self._take(indices)
        return images, labels

    def _take(self, indices):
        """:meth:`take`, also returning ``kept``: a bool array over ``indices``, True for those returned."""
        indices = self._check_indices(indices)
        if indices.size == 0:
            shape = self.shape
            empty: Images = np.empty((0, *shape), np.uint8) if shape is not None else []
            return empty, np.zeros(0, np.int64), np.zeros(0, bool)
        unique, inverse = np.unique(indices, return_inverse=True)
        images, labels, kept = self._gather(unique)
        # Position of each kept unique index among the images _gather returned.
        position = np.cumsum(kept) - 1
        asked_kept = kept[inverse]
        wanted = position[inverse[asked_kept]]
        if isinstance(images, np.ndarray):
            return np.ascontiguousarray(images[wanted]), labels[wanted], asked_kept
        return [images[i] for i in wanted], labels[wanted], asked_kept

    def _gather(self, unique):
        """Read the images at the sorted, distinct ``unique`` indices.

        Returns ``(images, labels, kept)``, ``kept`` a bool array over
        ``unique`` marking the images returned (all, unless a source skips
        bad files, which must then override this). This default reads each
        run of consecutive indices with :meth:`batches`.
        """
        runs = np.split(unique, np.flatnonzero(np.diff(unique) != 1) + 1) if unique.size else []
        parts = [batch for run in runs for batch in self.batches(run.size, int(run[0]), int(run[-1]) + 1)]
        return _join(parts), _join_labels(parts), np.ones(unique.size, bool)

    def _check_indices(self, indices):
        length = self.length
        where = "a source of unknown length" if length is None else f"0..{length - 1}"
        return _validate.int64_indices(indices, length, negative=False, error=ValueError, type_error=ValueError,
                                       out_of_range=f"is outside {where} of {self.description}")

    def input_files(self) -> Iterator[str]:
        """The paths of the files this source reads, in the order it reads them, without reading any.

        A resumed conversion checks that none of them changed (see
        :mod:`imgconv.resume.inputs`), so this names the files actually read,
        not merely the path given. This default: ``self.path`` itself when
        it is a file, else every regular file below it in sorted order
        (symbolic links to folders not followed); nothing for a source
        without a ``path``. Sources reading a selection of what is there
        (a folder's images, a CIFAR split) say exactly which.
        """
        path = getattr(self, "path", None)
        if path is None:
            return
        path = os.fspath(path)
        if not os.path.isdir(path):
            yield path
            return
        for top, folders, files in os.walk(path):
            folders.sort()
            for name in sorted(files):
                yield os.path.join(top, name)

    def image_nbytes(self, indices: np.ndarray) -> np.ndarray | None:
        """The bytes each image at ``indices`` takes decoded (H x W x C), as int64; None when unknown.

        What a conversion plans its batches by, so that a batch in flight
        holds a bounded number of bytes whatever the images' sizes. Must not
        decode: this default answers from :attr:`shape`, and None when the
        sizes vary (a source of varying sizes says them from its headers).
        """
        shape = self.shape
        if shape is None:
            return None
        return np.full(len(indices), int(np.prod(shape)), np.int64)

    def close(self) -> None:  # noqa: B027 - a default that does nothing, for sources that keep nothing
        """Let go of the open files and caches a source keeps between calls (none here).

        The source stays usable: what it needs is reopened on the next read.
        Pickling a source leaves them behind too.
        """

    def __len__(self) -> int:
        length = self.length
        if length is None:
            raise TypeError(f"the number of images of {self.description} is not known in advance")
        return length

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.description}>"

    def __getstate__(self):
        state = self.__dict__.copy()
        for name in self._TRANSIENT:
            state.pop(name, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        for name in self._TRANSIENT:
            self.__dict__.setdefault(name, None)

    def _check_range(self, batch_size, start, stop):
        """Validate the arguments of :meth:`batches`; returns ``(start, stop)`` with stop resolved."""
        _validate.positive_int("batch_size", batch_size)
        length = self.length
        start = _validate.non_negative_int("start", start)
        if stop is None:
            if length is None:
                raise ValueError(f"stop is required: the length of {self.description} is unknown")
            stop = length
        stop = _validate.integer("stop", stop, minimum=start)
        if length is not None and stop > length:
            raise ValueError(f"stop {stop} is past the end of {self.description}")
        return start, stop


def check_stream_arguments(batch_size: Any, limit: Any) -> None:
    """Validate the arguments of :meth:`Source.stream` (ValueError)."""
    _validate.positive_int("batch_size", batch_size)
    _validate.optional_non_negative_int("limit", limit)


class BatchCutter:
    """Cuts parts of a dataset arriving one after another into batches of ``batch_size`` images.

    Parts are ``(rows, labels)`` in the source's own layout; ``transform(rows,
    out)`` writes rows as images of ``shape`` into ``out`` (for CIFAR, CHW
    rows to HWC). Batches come out exactly as :meth:`Source.batches` cuts
    them: ``batch_size`` images each but the last, ``limit`` images in all
    (None: every image). Used by sources that stream.
    """

    def __init__(self, batch_size: int, limit: int | None, transform: Callable[[np.ndarray, np.ndarray], Any],
                 shape: tuple[int, ...]) -> None:
        self.batch_size = batch_size
        self.remaining = limit
        self.transform = transform
        self.shape = shape
        self._images: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._filled = 0

    @property
    def full(self) -> bool:
        """True once ``limit`` images have been taken."""
        return self.remaining == 0

    def add(self, rows: np.ndarray, labels: np.ndarray) -> Iterator[Batch]:
        """Take one part; yield every batch it completes."""
        position = 0
        while position < len(labels) and not self.full:
            if self._images is None or self._labels is None:
                size = self.batch_size if self.remaining is None else min(self.batch_size, self.remaining)
                self._images = np.empty((size, *self.shape), np.uint8)
                self._labels = np.empty(size, np.int64)
            images, batch_labels = self._images, self._labels
            take = min(len(labels) - position, len(batch_labels) - self._filled)
            span = slice(self._filled, self._filled + take)
            self.transform(rows[position : position + take], images[span])
            batch_labels[span] = labels[position : position + take]
            position += take
            self._filled += take
            if self.remaining is not None:
                self.remaining -= take
            if self._filled == len(batch_labels):
                yield self._take_batch()

    def finish(self) -> Iterator[Batch]:
        """Yield the last, short batch, if any images are left."""
        if self._filled:
            yield self._take_batch()

    def _take_batch(self):
        assert self._images is not None and self._labels is not None  # a batch is being filled
        batch = self._images[: self._filled], self._labels[: self._filled]
        self._images = self._labels = None
        self._filled = 0
        return batch


def _join(parts):
    """Concatenate the image parts of batches: one array, or one list when the shapes vary."""
    images = [p[0] for p in parts]
    if images and all(isinstance(i, np.ndarray) for i in images):
        return np.concatenate(images)
    return [image for part in images for image in part]


def _join_labels(parts):
    return np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """Raise SourceOptionError unless ``value`` is one of ``choices`` (option validation)."""
    return _validate.choice(name, value, choices, error=SourceOptionError)


def plan_segments(counts: Sequence[int], start: int, stop: int,
                  batch_size: int) -> Iterator[tuple[int, list[tuple[int, int, int, int]]]]:
    """Split images ``start..stop`` of parts holding ``counts`` images into batches.

    Yields, per batch, ``(size, segments)`` with ``segments`` a list of
    ``(part, lo, hi, offset)``: images ``lo..hi`` of part ``part`` go to rows
    ``offset..offset + hi - lo`` of the batch. Parts are files (CIFAR
    batches, NumPy arrays) read one after another as one index space.
    """
    bounds = np.concatenate([[0], np.cumsum(np.asarray(counts, np.int64))])
    for first in range(start, stop, batch_size):
        last = min(first + batch_size, stop)
        segments = []
        part = int(np.searchsorted(bounds, first, side="right")) - 1
        position = first
        while position < last:
            part_end = int(bounds[part + 1])
            hi = min(last, part_end)
            if hi > position:
                base = int(bounds[part])
                segments.append((part, position - base, hi - base, position - first))
            position = max(position, hi)
            part += 1
        yield last - first, segments


def group_by_part(counts: Sequence[int], unique: np.ndarray) -> Iterator[tuple[int, slice, np.ndarray]]:
    """Group sorted, distinct image indices by the part (of ``counts`` images each) holding them.

    Yields ``(part, out, local)``: ``local`` the indices within the part, and
    ``out`` the slice of ``unique`` they came from (contiguous, as ``unique``
    is sorted).
    """
    bounds = np.concatenate([[0], np.cumsum(np.asarray(counts, np.int64))])
    parts = np.searchsorted(bounds, unique, side="right") - 1
    for part in np.unique(parts):
        where = np.flatnonzero(parts == part)
        yield int(part), slice(int(where[0]), int(where[-1]) + 1), unique[where] - bounds[part]


def warn_skipped(skipped: Sequence[SkippedFile], description: str) -> None:
    """Issue one SkippedImageWarning naming the files in ``skipped`` (a list of SkippedFile)."""
    if not skipped:
        return
    shown = "; ".join(f"{s.path} ({s.reason})" for s in skipped[:10])
    more = f"; and {len(skipped) - 10} more" if len(skipped) > 10 else ""
    warnings.warn(
        f"{description}: skipped {len(skipped)} unreadable file(s): {shown}{more}",
        SkippedImageWarning,
        stacklevel=3,
    )


def open_input(path: str, what: str) -> IO[bytes]:
    """The input file at ``path`` open for reading (close it); SourceError when it is not a regular file.

    A FIFO, socket or device is refused by name ("x.csv: a FIFO (named
    pipe), not a labels CSV", ``what`` saying what was expected) without
    being opened, so it never blocks a read. Other failures raise OSError.
    """
    try:
        return open_regular_file(path)
    except NotRegularFileError as exc:
        raise SourceError(f"{path}: {exc.kind}, not {what}") from None


def read_input(path: str, what: str, limit: int) -> bytes:
    """The whole of the regular file at ``path``, which may hold at most ``limit`` bytes.

    A larger file is refused (SourceError naming it and both sizes) before
    a byte of it is read; so is anything but a regular file (see
    :func:`open_input`). Other failures raise OSError.
    """
    with open_input(path, what) as f:
        size = os.fstat(f.fileno()).st_size
        check_input_size(path, what, size, limit)
        data = f.read(size + 1)  # one more: a file that grew since is refused, not read on without bound
    if len(data) > size:
        raise SourceError(f"{path}: grew while it was read (from {size:,} bytes)")
    return data


class SizeLimit(NamedTuple):
    """The most bytes an input file may hold, and what it is, as messages say it ("a CIFAR-10 python batch")."""

    bytes: int
    what: str


def check_input_size(where: str, what: str, size: int, limit: int) -> None:
    """SourceError when ``size``, the bytes of the input at ``where``, is more than ``what`` can hold (``limit``)."""
    if size > limit:
        raise SourceError(
            f"{where}: {size:,} bytes, more than {what} can hold ({limit:,}); refused without reading it"
        )
