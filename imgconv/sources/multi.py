"""Several inputs read as one dataset: a list of paths, or a glob, of archives, folders, arrays or stores.

Each input is opened on its own (:func:`imgconv.open_source`, with the same
options) and the dataset is their images one input after another. The
inputs are the natural partitions of a sharded conversion: a worker reads
an input of its own, and a shard never spans two (see
:mod:`imgconv.datasets.plan`). Every input must give images of the same
shape (or every one varying sizes) and the same label names.
"""
from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import numpy as np

from ..errors import SourceError
from .base import (
    Batch,
    BatchCutter,
    SkippedFile,
    Source,
    _join,
    _join_labels,
    check_stream_arguments,
    group_by_part,
    plan_segments,
)

GLOB_CHARACTERS = "*?["


def is_pattern(path: Any) -> bool:
    """True for a string with glob characters that names no existing file itself."""
    return isinstance(path, str) and any(c in path for c in GLOB_CHARACTERS) and not os.path.exists(path)


def expand(paths: Any) -> list[str]:
    """The inputs ``paths`` names: a glob pattern's matches (sorted), or each path of a list, in order.

    Raises SourceError for a pattern matching nothing and for an empty list.
    """
    if isinstance(paths, (str, bytes, os.PathLike)):
        pattern = os.fsdecode(paths)
        found = sorted(glob.glob(pattern))
        if not found:
            raise SourceError(f"{pattern}: no file or directory matches this pattern")
        return found
    listed = [os.fsdecode(p) for p in paths]
    if not listed:
        raise SourceError("an empty list of inputs: nothing to read")
    found = []
    for path in listed:
        found.extend(expand(path) if is_pattern(path) else [path])
    return found


class MultiSource(Source):
    """The images of several inputs, one after another (see the module docstring).

    ``members`` are the inputs as sources, ``paths`` their paths. The
    source is sequential (read as one stream) when an input is (an archive);
    its length, when needed, counts each input.
    """

    def __init__(self, paths: Sequence[str], opener: Callable[..., Source], **options: Any) -> None:
        self.paths = list(paths)
        self.members = [opener(path, **options) for path in self.paths]
        shapes = {member.shape for member in self.members if not member.sequential}
        if len(shapes) > 1:
            shown = " and ".join(sorted("varying sizes" if s is None else "x".join(map(str, s)) for s in shapes))
            raise SourceError(f"{self.description}: the inputs hold images of different shapes ({shown}); "
                              "convert them separately or resize them to one size")

    @property
    def description(self) -> str:
        """How many inputs, and the first one's description."""
        first = self.members[0].description
        more = f" and {len(self.members) - 1} more" if len(self.members) > 1 else ""
        return f"{len(self.members)} inputs: {first}{more}"

    @property
    def sequential(self) -> bool:
        """True when an input is read as a stream (an archive)."""
        return any(member.sequential for member in self.members)

    @property
    def length(self) -> int | None:
        """The images of every input (counting an archive reads it)."""
        return _total([member.length for member in self.members])

    @property
    def length_hint(self) -> int | None:
        """The images expected before the archives are read, when every input says."""
        return _total([member.length_hint if member.sequential else member.length for member in self.members])

    def _counts(self) -> list[int]:
        counts = []
        for member in self.members:
            length = member.length
            if length is None:
                raise SourceError(f"{member.description}: the number of images is unknown")
            counts.append(length)
        return counts

    @property
    def shape(self) -> tuple[int, int, int] | None:
        """The shape every input's images share, or None."""
        shapes = {member.shape for member in self.members}
        return shapes.pop() if len(shapes) == 1 else None

    @property
    def label_names(self) -> list[str] | None:
        """The label names every input has; SourceError when two inputs differ."""
        found = [(path, member.label_names) for path, member in zip(self.paths, self.members)]
        first_path, first = found[0]
        for path, names in found[1:]:
            if names != first:
                raise SourceError(f"{path} and {first_path} have different label names ({names} and {first}): "
                                  "their labels mean different things; convert them separately")
        return first

    @property
    def skipped(self) -> list[SkippedFile]:
        """The files the inputs skipped in this process (``on_error="skip"``)."""
        return [item for member in self.members for item in getattr(member, "skipped", ())]

    def input_files(self) -> Iterator[str]:
        """The files each input reads, input by input (see :meth:`Source.input_files`)."""
        for member in self.members:
            yield from member.input_files()

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[Batch]:
        """Images ``start .. stop - 1`` across the inputs (see :meth:`Source.batches`)."""
        start, stop = self._check_range(batch_size, start, stop)
        return self._iterate(batch_size, start, stop)

    def _iterate(self, batch_size: int, start: int, stop: int) -> Iterator[Batch]:
        counts = self._counts()
        for _size, segments in plan_segments(counts, start, stop, batch_size):
            parts = [next(self.members[m].batches(hi - lo, lo, hi)) for m, lo, hi, _ in segments]
            yield _join(parts), _join_labels(parts)

    def stream(self, batch_size: int, limit: int | None = None) -> Iterator[Batch]:
        """The inputs' images in order, each input read once (an archive as a stream)."""
        check_stream_arguments(batch_size, limit)
        return self._stream(batch_size, limit)

    def _stream(self, batch_size: int, limit: int | None) -> Iterator[Batch]:
        shape = self.shape
        if shape is None:  # images of varying sizes: batches as they come, no fixed array to fill
            left = limit
            for member in self.members:
                if left == 0:
                    return
                for images, labels in member.stream(batch_size, left):
                    if left is not None:
                        left -= len(labels)
                    yield images, labels
            return
        cutter = BatchCutter(batch_size, limit, _copy_into, shape)
        for member in self.members:
            if cutter.full:
                break
            for images, labels in member.stream(batch_size, cutter.remaining):
                yield from cutter.add(np.asarray(images), labels)
        yield from cutter.finish()

    def _gather(self, unique: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray]:
        counts = self._counts()
        images: list[Any] = []
        labels = []
        kept = np.ones(unique.size, bool)
        for m, out, local in group_by_part(counts, unique):
            member = self.members[m]
            part, part_labels = member.take(local)
            member_kept = getattr(member, "last_kept", None)
            if member_kept is not None:
                kept[out] = member_kept
            images.append(part)
            labels.append(part_labels)
        parts = list(zip(images, labels))
        return _join(parts), _join_labels(parts), kept

    def close(self) -> None:
        """Close every input's files."""
        for member in self.members:
            member.close()


def _total(counts: list[int | None]) -> int | None:
    known = [n for n in counts if n is not None]
    return None if len(known) < len(counts) else int(sum(known))


def _copy_into(rows: np.ndarray, out: np.ndarray) -> None:
    out[...] = rows
