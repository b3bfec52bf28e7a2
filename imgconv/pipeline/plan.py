"""Planning a conversion: tasks, the jobs that carry them to workers, and the job's fingerprint.

A planned source (random access) is cut into tasks of at most
``batch_size`` images and ``batch_bytes`` bytes of decoded pixels, in order
or, when shuffling, in a seeded permutation; each worker reads its own task
from the source. The bytes of each image come from the source without
decoding (its shape, or its images' headers: ``Source.image_nbytes``), so a
batch in flight is bounded in memory whatever the images' sizes: 1,024
thumbnails or one photo. A sequential source (a compressed archive) is read
here, once, in order; its batches become tasks as they arrive, cut to the
same bounds, and workers only encode them. A job is a task and the function
a worker runs for it, called as ``function(context, *args)`` with the run's
:class:`~imgconv.pipeline.engine.WorkerContext`. Where tasks are cut never
changes the output: the stores' layouts do not depend on it.
"""
from collections import namedtuple
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np

# The decoded pixels a batch in flight may hold by default: tens of MB, so that
# a batch still holds 1,024 images up to 100x100 RGB and one 6-megapixel photo
# is a batch of its own.
DEFAULT_BATCH_BYTES = 32 * 1024 * 1024

Task = namedtuple("Task", "number start stop indices")
Task.__doc__ = """One unit of work: images ``start <= i < stop`` of the source in order, or,
when shuffling, the source images ``indices`` (in output order)."""

Job = namedtuple("Job", "task function args")
Job.__doc__ = """A task and what a worker does for it: ``function(context, *args)``, a picklable
module-level function; its result travels back to the parent with the task."""

# The decoded bytes of every image: one figure for all, an int64 array by image index, or None (unknown).
Sizes = Union[int, np.ndarray, None]


def plan_tasks(count: int, batch_size: int, shuffle: bool = False, seed: int = 0, start: int = 0, *,
               nbytes: Sizes = None, batch_bytes: Optional[int] = None) -> List[Task]:
    """Split ``count`` images into tasks of at most ``batch_size`` images and ``batch_bytes`` bytes.

    With ``shuffle``, the images are taken in a seeded permutation. ``start``
    skips the first images (of the permutation when shuffling): what a
    resumed conversion has already written. ``nbytes`` gives each image's
    decoded size (see :func:`image_sizes`); without it, or without
    ``batch_bytes``, tasks are cut by count alone. A task holds at least one
    image, so an image larger than ``batch_bytes`` is a task of its own.
    """
    order = np.random.default_rng(seed).permutation(count) if shuffle else None
    if isinstance(nbytes, np.ndarray):
        nbytes = nbytes[:count] if order is None else nbytes[order]
    tasks = []
    for number, (first, stop) in enumerate(_cuts(count, batch_size, start, nbytes, batch_bytes)):
        tasks.append(Task(number, first, stop, None if order is None else order[first:stop]))
    return tasks


def images_per_batch(image_bytes: int, batch_size: int, batch_bytes: Optional[int]) -> int:
    """The images of ``image_bytes`` each a batch holds: ``batch_size`` at most, ``batch_bytes`` bytes, 1 at least."""
    if batch_bytes is None:
        return batch_size
    return max(1, min(batch_size, batch_bytes // max(1, image_bytes)))


def _cuts(count: int, batch_size: int, start: int, nbytes: Sizes,
          batch_bytes: Optional[int]) -> Iterator[Tuple[int, int]]:
    """``(first, stop)`` of each task from ``start`` on; ``nbytes`` as an array is in output order."""
    if not isinstance(nbytes, np.ndarray):
        step = batch_size if nbytes is None else images_per_batch(nbytes, batch_size, batch_bytes)
        for first in range(start, count, step):
            yield first, min(first + step, count)
        return
    if batch_bytes is None:
        yield from _cuts(count, batch_size, start, None, None)
        return
    # Greedy: each task takes images while their sum stays within batch_bytes.
    total = np.cumsum(nbytes[start:count], dtype=np.int64)
    first = 0
    while first < len(total):
        before = total[first - 1] if first else 0
        stop = int(np.searchsorted(total, before + batch_bytes, side="right"))
        stop = min(max(stop, first + 1), first + batch_size)
        yield start + first, start + stop
        first = stop


def image_sizes(source: Any, count: int) -> Sizes:
    """The decoded bytes of the first ``count`` images of ``source``, read without decoding (None: unknown).

    One figure when the images share a shape; else what the source says
    from its headers (:meth:`~imgconv.sources.Source.image_nbytes`).
    """
    shape = source.shape
    if shape is not None:
        return int(np.prod(shape))
    return source.image_nbytes(np.arange(count, dtype=np.int64))


def read_task(source: Any, task: Task) -> Tuple[Any, np.ndarray]:
    """The images and labels of one task, in output order."""
    if task.indices is None:
        return next(source.batches(task.stop - task.start, task.start, task.stop))
    return source.take(task.indices)


def read_and_encode(context: Any, task: Task) -> Tuple[Any, List[Any]]:
    """A worker's job for a planned task: read, transform and encode it; returns ``(encoded, skipped)``."""
    source = context.source
    skipped_before = len(getattr(source, "skipped", ()))
    images, labels = read_task(source, task)
    encoded = context.encoder(images, labels)
    return encoded, list(getattr(source, "skipped", ())[skipped_before:])


def encode_only(context: Any, images: Any, labels: np.ndarray) -> Tuple[Any, List[Any]]:
    """A worker's job for a streamed batch the parent has read: encode it; returns ``(encoded, [])``."""
    return context.encoder(images, labels), []


def planned_jobs(tasks: Iterable[Task], function: Any = read_and_encode) -> Iterator[Job]:
    """One job per planned task, in task order: each worker reads its own range with ``function``."""
    for task in tasks:
        yield Job(task, function, (task,))


def streamed_jobs(source: Any, batch_size: int, limit: Optional[int], first: int = 0,
                  function: Any = encode_only, batch_bytes: Optional[int] = None) -> Iterator[Job]:
    """One job per batch of a sequential source, read here once and in order.

    A compressed archive cannot be split into ranges without decompressing
    it up to each; so the parent streams it (without even counting its images
    first), tasks are numbered as batches arrive, and workers only encode.
    Batches hold ``batch_size`` images and ``batch_bytes`` bytes at most (the
    source is asked for batches that fit when its images share a shape, and
    what arrives is cut to fit in any case). Images before ``first`` (a
    resumed conversion's) are read and dropped.
    """
    shape = source.shape
    asked = batch_size if shape is None else images_per_batch(int(np.prod(shape)), batch_size, batch_bytes)
    start = number = 0
    for images, labels in source.stream(asked, limit):
        if start + len(labels) <= first:
            start += len(labels)  # written before the conversion was interrupted
            continue
        if start < first:
            images, labels = images[first - start :], labels[first - start :]
            start = first
        for piece_images, piece_labels in _pieces(images, labels, batch_bytes):
            task = Task(number, start, start + len(piece_labels), None)
            number, start = number + 1, task.stop
            yield Job(task, function, (piece_images, piece_labels))


def stream_batches(source: Any, batch_size: int, limit: Optional[int],
                   batch_bytes: Optional[int]) -> Iterator[Tuple[Any, np.ndarray]]:
    """The batches of ``source.stream(...)`` cut to ``batch_size`` images and ``batch_bytes`` bytes at most.

    As :func:`streamed_jobs` cuts them, for a writer reading a stream itself (a shard's).
    """
    shape = source.shape
    asked = batch_size if shape is None else images_per_batch(int(np.prod(shape)), batch_size, batch_bytes)
    for images, labels in source.stream(asked, limit):
        yield from _pieces(images, labels, batch_bytes)


def _pieces(images: Any, labels: np.ndarray, batch_bytes: Optional[int]) -> Iterator[Tuple[Any, np.ndarray]]:
    """``(images, labels)`` cut into consecutive pieces of ``batch_bytes`` bytes at most (one image at least)."""
    if batch_bytes is None or len(labels) == 0:
        yield images, labels
        return
    sizes = np.full(len(labels), images[0].nbytes, np.int64) if isinstance(images, np.ndarray) else \
        np.array([image.nbytes for image in images], np.int64)
    for first, stop in _cuts(len(labels), len(labels), 0, sizes, batch_bytes):
        yield images[first:stop], labels[first:stop]


def job_fingerprint(src: Any, images: Optional[int], shuffle: bool, seed: int, source_options: Mapping[str, Any],
                    streamed: bool = False) -> Dict[str, Any]:
    """What makes two conversions the same job (JSON-ready): a resume must match it exactly.

    ``src`` is the opened source, ``images`` the number to convert (the
    limit, for a stream). The source is identified by its description; the
    files it reads are fingerprinted apart (:mod:`imgconv.resume.inputs`).
    A streamed source (an archive) is not counted for this: the archive's
    fingerprint says enough.
    """
    return {
        "source": src.description, "images": images,
        "source_length": None if streamed else src.length,
        "shuffle": bool(shuffle), "seed": int(seed) if shuffle else None,
        "source_options": {name: repr(value) for name, value in sorted(source_options.items())},
    }
