"""load(): a whole dataset or store into memory, decoded by a pool of worker processes.

Workers of a forking pool write images of one size straight into the
returned array, which lives in anonymous shared memory set up before the pool
starts; only the labels travel back. Elsewhere (spawned workers, images of
varying sizes, a sequential source) results come back like a conversion's.
"""
import math
import mmap
from contextlib import closing
from typing import Any, List, Tuple, Union

import numpy as np

from . import _validate
from .errors import SourceError
from .pipeline.engine import WorkerContext, default_workers, local_engine, workers_worth_starting
from .pipeline.plan import (
    DEFAULT_BATCH_BYTES,
    Task,
    image_sizes,
    plan_tasks,
    planned_jobs,
    read_and_encode,
    read_task,
    streamed_jobs,
)
from .sources import open_source

DEFAULT_BATCH_SIZE = 1024

Images = Union[np.ndarray, List[np.ndarray]]


def load(path: Any, *, workers: Any = None, batch_size: int = DEFAULT_BATCH_SIZE,
         batch_bytes: int = DEFAULT_BATCH_BYTES, **source_options: Any) -> Tuple[Images, np.ndarray]:
    """Read a whole dataset or store into memory, decoding in a pool of worker processes.

    ``path`` is anything :func:`imgconv.open_source` reads (a PNG folder is
    where the pool pays: decoding is the work; a source read at memory speed,
    such as an LMDB or HDF5 store or NumPy files, is read in this process
    whatever ``workers`` allows). Returns ``(images, labels)``:
    an (N, H, W, C) uint8 array, or a list for images of varying sizes, and
    (N,) int64 labels, in the source's order. ``workers=0`` reads in this
    process. Workers write images of one size straight into the returned
    array (shared memory), so nothing is copied through the parent. Batches
    in flight hold at most ``batch_size`` images and ``batch_bytes`` bytes,
    as in :func:`imgconv.convert`. Raises like :func:`imgconv.convert`.
    """
    workers = default_workers() if workers is None else _validate.non_negative_int("workers", workers)
    batch_size = _validate.positive_int("batch_size", batch_size)
    batch_bytes = _validate.positive_int("batch_bytes", batch_bytes)
    src = open_source(path, **source_options)
    with closing(src):
        total = src.length
        if total is None:
            raise SourceError(f"{src.description}: the number of images is unknown, so the work cannot be planned")
        tasks = plan_tasks(total, batch_size, nbytes=image_sizes(src, total), batch_bytes=batch_bytes)
        # Workers only where reading is decoding; an archive is read by this
        # process anyway (a stream): workers would only copy.
        workers = workers_worth_starting(workers, len(tasks), src.heavy_decoding and not src.sequential)
        return _Loading(src, total, batch_size, workers, batch_bytes).run(tasks)


class _Loading:
    """One load(): where the images go, and how each batch's result lands there."""

    def __init__(self, src: Any, total: int, batch_size: int, workers: int, batch_bytes: int) -> None:
        self.src = src
        self.shape = src.shape
        self.engine = local_engine(workers)
        self.batch_size = batch_size
        self.batch_bytes = batch_bytes
        self.shared = workers > 0 and self.shape is not None and self.engine.shares_memory
        self.images: Any
        if self.shared:
            self.images = _shared_array((total, *self.shape))
        else:
            self.images = [] if self.shape is None else np.empty((total, *self.shape), np.uint8)
        self.labels = np.empty(total, np.int64)
        self.count = 0  # under on_error="skip" a batch may hold fewer images than its task

    def run(self, tasks: List[Task]) -> Tuple[Images, np.ndarray]:
        if self.shared:
            jobs = planned_jobs(tasks, read_into_shared)
        elif self.src.sequential:
            jobs = streamed_jobs(self.src, self.batch_size, None, batch_bytes=self.batch_bytes)
        else:
            jobs = planned_jobs(tasks, read_and_encode)
        context = WorkerContext(self.src, _as_is, self.images if self.shared else None)
        with closing(self.engine.run(context, jobs, f"reading {self.src.description}")) as results:
            for task, (result, _) in results:
                self._take(task, result)
        images = self.images if self.shape is None else self.images[: self.count]
        return images, self.labels[: self.count]

    def _take(self, task: Task, result: Any) -> None:
        labels = result if self.shared else result[1]
        n, at = len(labels), self.count
        if self.shared:
            if at != task.start:  # images skipped before: close the gap
                self.images[at : at + n] = self.images[task.start : task.start + n]
        elif self.shape is None:
            self.images.extend(result[0])
        else:
            self.images[at : at + n] = result[0]
        self.labels[at : at + n] = labels
        self.count += n


def _as_is(images: Any, labels: np.ndarray) -> Tuple[Any, np.ndarray]:
    """The identity "encoder" of :func:`load`: workers send decoded batches back."""
    return images, labels


def read_into_shared(context: WorkerContext, task: Task) -> Tuple[np.ndarray, List[Any]]:
    """Read one task in a worker and write its images into load()'s shared output; returns ``(labels, skipped)``.

    Rows ``task.start...`` of the output are this task's whatever other tasks
    hold, so workers write side by side; only the labels travel back.
    """
    source = context.source
    skipped_before = len(getattr(source, "skipped", ()))
    images, labels = read_task(source, task)
    context.output[task.start : task.start + len(labels)] = images
    return labels, list(getattr(source, "skipped", ())[skipped_before:])


def _shared_array(shape: Tuple[int, ...]) -> np.ndarray:
    """A zeroed uint8 array of ``shape`` in anonymous shared memory (seen by forked children)."""
    size = math.prod(shape)
    buffer = mmap.mmap(-1, max(size, 1), flags=mmap.MAP_SHARED)
    return np.frombuffer(buffer, np.uint8, size).reshape(shape)
