"""Planning a conversion: tasks, the jobs that carry them to workers, and the job's fingerprint.

A planned source (random access) is cut into tasks of ``batch_size`` images,
in order or, when shuffling, in a seeded permutation; each worker reads its
own task from the source. A sequential source (a compressed archive) is read
here, once, in order; its batches become tasks as they arrive and workers only
encode them. A job is a task and the function a worker runs for it, called
as ``function(context, *args)`` with the run's
:class:`~imgconv.pipeline.engine.WorkerContext`.
"""
from collections import namedtuple
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

import numpy as np

Task = namedtuple("Task", "number start stop indices")
Task.__doc__ = """One unit of work: images ``start <= i < stop`` of the source in order, or,
when shuffling, the source images ``indices`` (in output order)."""

Job = namedtuple("Job", "task function args")
Job.__doc__ = """A task and what a worker does for it: ``function(context, *args)``, a picklable
module-level function; its result travels back to the parent with the task."""


def plan_tasks(count: int, batch_size: int, shuffle: bool = False, seed: int = 0, start: int = 0) -> List[Task]:
    """Split ``count`` images into tasks of ``batch_size``; with ``shuffle``, a seeded permutation.

    ``start`` skips the first images (of the permutation when shuffling):
    what a resumed conversion has already written.
    """
    order = np.random.default_rng(seed).permutation(count) if shuffle else None
    tasks = []
    for number, first in enumerate(range(start, count, batch_size)):
        stop = min(first + batch_size, count)
        tasks.append(Task(number, first, stop, None if order is None else order[first:stop]))
    return tasks


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
                  function: Any = encode_only) -> Iterator[Job]:
    """One job per batch of a sequential source, read here once and in order.

    A compressed archive cannot be split into ranges without decompressing
    it up to each; so the parent streams it (without even counting its images
    first), tasks are numbered as batches arrive, and workers only encode.
    Images before ``first`` (a resumed conversion's) are read and dropped.
    """
    start = 0
    for number, (images, labels) in enumerate(source.stream(batch_size, limit)):
        if start + len(labels) <= first:
            start += len(labels)  # written before the conversion was interrupted
            continue
        if start < first:
            images, labels = images[first - start :], labels[first - start :]
            start = first
        task = Task(number, start, start + len(labels), None)
        start = task.stop
        yield Job(task, function, (images, labels))


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
