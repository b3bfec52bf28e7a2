"""CifarSource: CIFAR-10 and CIFAR-100, python or binary, by index range or as one stream."""
from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from ... import kernels
from ...errors import SourceError, SourceOptionError
from ...options import Option
from ..archive import DECODE_ERRORS, Directory, OrderedMembers
from ..base import (
    SPLIT,
    SPLITS,
    Batch,
    BatchCutter,
    Source,
    check_choice,
    check_stream_arguments,
    group_by_part,
    plan_segments,
)
from . import parse
from .detect import detect
from .layouts import CHANNELS, HEIGHT, LABEL_KINDS, LAYOUTS, WIDTH

Arrays = tuple[np.ndarray, np.ndarray]

LABEL_KIND = Option("label_kind", default="fine", choices=LABEL_KINDS, help="fine or coarse labels of CIFAR-100")


class CifarSource(Source):
    """CIFAR-10 or CIFAR-100, python or binary, from a directory or a tar archive.

    Arguments: ``path`` (batch directory, its parent, or the archive);
    ``split`` "train" (default), "test" or "all" (train then test);
    ``label_kind`` "fine" (default) or "coarse", CIFAR-100 only.

    Batches are uint8 (B, 32, 32, 3) arrays with int64 labels, in the
    official order: the training batches in order, then the test batch. The
    number of images is known from the file sizes for binary batches and by
    loading each batch once for python ones (done on first need, and kept
    when the source is pickled, so workers do not count again). Between
    calls a source keeps the open archive and the last batches loaded (at
    most ``CACHED_BATCHES``), so successive ``batches``/``take`` calls in one
    process do not start over; pickling leaves them behind and :meth:`close`
    lets them go. Raises SourceError for a missing, truncated or
    inconsistent batch, UnsafePickleError for a pickle that asks for code.
    """

    OPTIONS = (SPLIT, LABEL_KIND)
    _TRANSIENT = ("_cache", "_streamed")
    CACHED_BATCHES = 2

    def __init__(self, path: str | os.PathLike[str], *, split: str = SPLIT.default,
                 label_kind: str = LABEL_KIND.default) -> None:
        self.path = os.fspath(path)
        found = detect(self.path)
        if found is None:
            looked = ", ".join(layout.dirname for layout in LAYOUTS)
            raise SourceError(f"{self.path}: no CIFAR batches found (looked for {looked})")
        self.layout, self.container = found
        self.split = check_choice("split", split, SPLITS)
        self.label_kind = check_choice("label_kind", label_kind, LABEL_KINDS)
        if label_kind != LABEL_KIND.default and not self.layout.cifar100:
            raise SourceOptionError(
                f"label_kind={label_kind!r} applies to CIFAR-100; {self.path} holds CIFAR-10", ("label_kind",)
            )
        self._counts: list[int] | None = None
        self._label_names: list[str] | None = None
        self._names_known = False
        self._cache: dict[int, Arrays] | None = None  # {part: (rows, labels)} of python batches, oldest first
        self._streamed: dict[str, int] | None = None  # images of each batch file a stream has read so far

    @property
    def sequential(self) -> bool:
        """True for a tar archive (see :attr:`Source.sequential`)."""
        return self.container.sequential

    def _batch_names(self) -> tuple[str, ...]:
        return self.layout.batch_names(self.split)

    def _plan(self) -> list[int]:
        """Count the images of each selected batch (once), checking that every batch is there."""
        if self._counts is None:
            names = self._batch_names()
            if self.layout.kind == "binary":
                self._require(names, [n for n in names if not self.container.has(n)])
                counts = [parse.binary_count(self.container, n, self.layout) for n in names]
            else:
                counts = self._count_python(names)
            if not self._names_known:
                self._label_names = parse.read_label_names(self.container, self.layout, self.label_kind)
                self._names_known = True
            self._counts = counts
            self.container.close()
        return self._counts

    def _require(self, names: tuple[str, ...], missing: list[str]) -> None:
        if missing:
            expected = ", ".join(self.layout.train + self.layout.test)
            raise SourceError(
                f"{self.container.where(missing[0])}: missing; {self.layout.name} batches for split "
                f"{self.split!r} need {', '.join(names)} (the full set: {expected})"
            )

    def _count_python(self, names: tuple[str, ...]) -> list[int]:
        # One pass in container order: a tar.gz is read once, not once per batch.
        found = {}
        try:
            for name, data in self.container.read_ahead(names):
                where = self.container.where(name)
                rows, _ = parse.parse_python_batch(data, where, self.layout, self.label_kind)
                found[name] = rows.shape[0]
        except DECODE_ERRORS as exc:
            raise SourceError(f"{self.path}: cannot read ({exc})") from None
        self._require(names, [n for n in names if n not in found])
        return [found[n] for n in names]

    def _python_rows(self, index: int, name: str) -> Arrays:
        if self._cache is None:
            self._cache = {}
        if index not in self._cache:
            while len(self._cache) >= self.CACHED_BATCHES:  # let the oldest go before loading the next
                del self._cache[next(iter(self._cache))]
            self._cache[index] = parse.python_batch(self.container, name, self.layout, self.label_kind)
        return self._cache[index]

    def input_files(self) -> Iterator[str]:
        """The archive; or, from a directory, the split's batch files in order and the meta file.

        The files actually read, wherever the path given pointed (the batch
        directory or its parent).
        """
        if not isinstance(self.container, Directory):
            yield self.container.path
            return
        for name in (*self._batch_names(), self.layout.meta_name(self.label_kind)):
            if self.container.has(name):
                yield self.container.where(name)

    def close(self) -> None:
        """Close the archive and drop the batches kept in memory; the source stays usable."""
        self._cache = None
        self.container.close()

    @property
    def description(self) -> str:
        """The layout, where it is, the split (and label kind) and, once known, the number of images."""
        kind = f", {self.label_kind} labels" if self.layout.cifar100 else ""
        # An archive is not read just to say how many images it holds; once read, it says.
        count = "" if self.sequential and self._counts is None else f", {self.length} images"
        return f"{self.layout.name} batches at {self.container.location} ({self.split}{kind}{count})"

    @property
    def length(self) -> int:
        """The number of images of the split (counting them first if need be)."""
        return int(sum(self._plan()))

    @property
    def length_hint(self) -> int | None:
        """The images of the split before an archive is read: the official counts (50,000 / 10,000).

        While a stream reads the archive, the batch files read so far count
        as they are and the others are expected in the same proportion to
        the official counts (a sample written with another count is
        foreseen from its first batch file); exact once every file is read.
        None for a directory (its :attr:`length` costs little or nothing).
        """
        if self._counts is not None:
            return int(sum(self._counts))
        if not self.sequential:
            return None
        official = self.layout.official_counts()
        read = self._streamed or {}
        scale = sum(read.values()) / sum(official[name] for name in read) if read else 1.0
        return int(sum(read.get(name, round(official[name] * scale)) for name in self._batch_names()))

    @property
    def shape(self) -> tuple[int, int, int]:
        """(32, 32, 3)."""
        return (HEIGHT, WIDTH, CHANNELS)

    @property
    def label_names(self) -> list[str] | None:
        """The class names of the label kind, from the layout's meta file (None without one)."""
        if not self._names_known:
            self._plan()
        return self._label_names

    def stream(self, batch_size: int, limit: int | None = None) -> Iterator[Batch]:
        """Batches from the first image on, as :meth:`Source.stream`; an archive is read once.

        From a tar archive, members are read in one pass in archive order,
        inflated by a thread while the batches before are converted; a batch
        file that arrives before its turn waits on disk (the official
        archives do not keep batch order). The image count and label names
        are learnt on the way, so no counting pass comes first. Raises
        SourceError as :meth:`batches`.
        """
        if not self.sequential or self._counts is not None:
            return super().stream(batch_size, limit)
        check_stream_arguments(batch_size, limit)
        return self._stream_archive(batch_size, limit)

    def _stream_archive(self, batch_size: int, limit: int | None) -> Iterator[Batch]:
        names = self._batch_names()
        meta = self.layout.meta_name(self.label_kind)
        counts = []
        label_names, meta_seen = None, False
        cutter = BatchCutter(batch_size, limit, kernels.chw_to_hwc_into, (HEIGHT, WIDTH, CHANNELS))
        self._streamed = {}
        with OrderedMembers(self.container, names, anytime={meta}) as members:
            if cutter.full:
                members.drop_order()  # limit=0: the label names alone
            for name, data in members:
                where = self.container.where(name)
                if name == meta:
                    label_names, meta_seen = parse.parse_label_names(data, where, self.layout, self.label_kind), True
                else:
                    rows, labels = parse.decode_batch(data, where, self.layout, self.label_kind)
                    del data
                    counts.append(rows.shape[0])
                    self._streamed[name] = rows.shape[0]  # before its images go out: length_hint knows them
                    yield from cutter.add(rows, labels)
                if cutter.full:
                    members.drop_order()  # the images asked for are out
                    if meta_seen:
                        break  # and the label names known
        if not cutter.full:
            self._require(names, members.missing)
            self._counts = counts
        self._label_names, self._names_known = label_names, True
        yield from cutter.finish()

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[Batch]:
        """Yield uint8 (B, 32, 32, 3) images and int64 (B,) labels for images ``start..stop``.

        See :meth:`Source.batches`. Raises SourceError for unreadable batches.
        """
        start, stop = self._check_range(batch_size, start, stop)
        return self._iterate(batch_size, start, stop)

    def _iterate(self, batch_size: int, start: int, stop: int) -> Iterator[Arrays]:
        names = self._batch_names()
        try:
            for size, segments in plan_segments(self._plan(), start, stop, batch_size):
                images = np.empty((size, HEIGHT, WIDTH, CHANNELS), np.uint8)
                labels = np.empty(size, np.int64)
                for part, lo, hi, offset in segments:
                    rows, part_labels = self._segment(part, names[part], lo, hi)
                    kernels.chw_to_hwc_into(rows, images[offset : offset + hi - lo])
                    labels[offset : offset + hi - lo] = part_labels
                yield images, labels
        except DECODE_ERRORS as exc:
            raise SourceError(f"{self.path}: cannot read ({exc})") from None

    def _gather(self, unique: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Indices are sorted, so each batch file is read once, for the span its indices cover.
        names = self._batch_names()
        images = np.empty((unique.size, HEIGHT, WIDTH, CHANNELS), np.uint8)
        labels = np.empty(unique.size, np.int64)
        groups = list(group_by_part(self._plan(), unique))
        # Batches still in memory first, so they are used before loading others pushes them out.
        groups.sort(key=lambda group: group[0] not in (self._cache or {}))
        try:
            for part, out, local in groups:
                lo, hi = int(local[0]), int(local[-1]) + 1
                rows, part_labels = self._segment(part, names[part], lo, hi)
                kernels.chw_to_hwc_into(np.ascontiguousarray(rows[local - lo]), images[out])
                labels[out] = part_labels[local - lo]
        except DECODE_ERRORS as exc:
            raise SourceError(f"{self.path}: cannot read ({exc})") from None
        return images, labels, np.ones(unique.size, bool)

    def _segment(self, part: int, name: str, lo: int, hi: int) -> Arrays:
        if self.layout.kind == "binary":
            return parse.binary_records(self.container, name, self.layout, self.label_kind, lo, hi)
        rows, labels = self._python_rows(part, name)
        if hi > rows.shape[0]:
            assert self._counts is not None
            raise SourceError(
                f"{self.container.where(name)}: holds {rows.shape[0]} images now, "
                f"{self._counts[part]} when first counted"
            )
        return rows[lo:hi], labels[lo:hi]
