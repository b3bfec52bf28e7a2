"""The conversion pipeline: plan -> pool -> store.

The parent process plans the work as tasks (ranges of image indices, or index
lists when shuffling), hands them to a pool of worker processes, and is the
only writer: workers read their range from the source, transform it (decode,
resize, CHW to HWC: the source's work) and encode it for the store (PNG
encoding, record packing: the store's ``encoder()``), and send back finished
payloads, which the parent writes in task order. At most ``2 * workers``
tasks are in flight, so memory stays flat whatever the dataset size, and the
output does not depend on the number of workers or the order they finish in.

Workers report, the parent decides: an exception in a worker comes back as
the task's result and stops the conversion; a worker that dies breaks the
pool, which the parent sees at once (never a hang). On any failure or
interruption the pool is torn down, the writer aborts (removing its temporary
output) and nothing is left at the destination.
"""
import multiprocessing
import os
import pickle
import shutil
import signal
import tempfile
import threading
import time
from collections import deque, namedtuple
from contextlib import closing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from . import stores
from .errors import ImgconvError
from .sources import Source, open_source
from .verify import disk_usage

DEFAULT_BATCH_SIZE = 1024

ConvertResult = namedtuple("ConvertResult", "path format count seconds bytes skipped")
ConvertResult.__doc__ = """What :func:`convert` did: the store's ``path`` and ``format``, the
``count`` of images written, wall ``seconds``, ``bytes`` on disk, and the
``skipped`` input files (path, reason) under ``on_error="skip"``."""

Task = namedtuple("Task", "number start stop indices")
Task.__doc__ = """One unit of work: images ``start <= i < stop`` of the source in order, or,
when shuffling, the source images ``indices`` (in output order)."""


class ConversionError(ImgconvError):
    """A conversion failed in a worker or in the pool; the message says where and why."""


class Interrupted(ImgconvError):
    """The conversion was stopped by a signal (SIGINT or SIGTERM); ``signum`` says which."""

    def __init__(self, signum):
        super().__init__(f"interrupted by {signal.Signals(signum).name}; nothing was written at the destination")
        self.signum = signum


def default_workers():
    """The number of worker processes used by default: the CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def plan_tasks(count, batch_size, shuffle=False, seed=0):
    """Split ``count`` images into tasks of ``batch_size``; with ``shuffle``, a seeded permutation."""
    order = np.random.default_rng(seed).permutation(count) if shuffle else None
    tasks = []
    for number, start in enumerate(range(0, count, batch_size)):
        stop = min(start + batch_size, count)
        tasks.append(Task(number, start, stop, None if order is None else order[start:stop]))
    return tasks


# --------------------------------------------------------------------------- workers

# Set once per worker process by _init_worker, so tasks carry only indices.
_WORKER = {}


def _init_worker(source, encoder, handoff):
    # Ctrl-C reaches the whole process group; the parent alone decides what
    # happens, and it stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _WORKER["source"] = source
    _WORKER["encoder"] = encoder
    _WORKER["handoff"] = handoff
    _WORKER["sent"] = 0


def _read_task(source, task):
    """The images and labels of one task, in output order."""
    if task.indices is None:
        return next(source.batches(task.stop - task.start, task.start, task.stop))
    return source.take(task.indices)


def read_and_encode(source, encoder, task):
    """Read, transform and encode one task; returns ``(encoded, skipped)``."""
    skipped_before = len(getattr(source, "skipped", ()))
    images, labels = _read_task(source, task)
    encoded = encoder(images, labels)
    skipped = list(getattr(source, "skipped", ())[skipped_before:])
    return encoded, skipped


def encode_only(source, encoder, images, labels):
    """Encode a batch the parent has read (sequential sources); returns ``(encoded, [])``."""
    return encoder(images, labels), []


def _in_worker(function, *args):
    """Run a job and hand its result over through a file; returns the file's path.

    A worker killed while it writes a large result into the pool's pipe
    leaves half a message there, and the executor then waits for the rest
    forever. A path is a message short enough to be written whole (pipe
    writes of up to PIPE_BUF bytes are atomic), so a killed worker can only
    break the pool, never hang it.
    """
    result = function(_WORKER["source"], _WORKER["encoder"], *args)
    _WORKER["sent"] += 1
    path = os.path.join(_WORKER["handoff"], f"{os.getpid()}-{_WORKER['sent']}.pickle")
    with open(path, "wb") as f:
        pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def _received(path):
    """The result a worker handed over at ``path`` (a file in this conversion's private directory)."""
    with open(path, "rb") as f:
        result = pickle.load(f)
    os.remove(path)
    return result


# --------------------------------------------------------------------------- the pipeline


def _jobs(source, tasks, batch_size):
    """``(task, function, args)`` per task, lazily, in task order.

    Normally a worker reads its own range. A sequential source (a compressed
    archive) is read here, once and in order, and workers only encode.
    """
    if source.sequential and tasks and tasks[0].indices is None:
        batches = source.batches(batch_size, 0, tasks[-1].stop)
        for task, (images, labels) in zip(tasks, batches):
            yield task, encode_only, (images, labels)
    else:
        for task in tasks:
            yield task, read_and_encode, (task,)


def _results_in_process(source, encoder, jobs):
    for task, function, args in jobs:
        yield task, function(source, encoder, *args)


def _results_from_pool(pool, jobs, window):
    """Job results in task order, with at most ``window`` jobs submitted ahead."""
    pending = deque()

    def submit_next():
        for task, function, args in jobs:
            pending.append((task, pool.submit(_in_worker, function, *args)))
            return True
        return False

    while len(pending) < window and submit_next():
        pass
    while pending:
        task, future = pending.popleft()
        result = _task_result(task, future)
        submit_next()
        yield task, result


def _task_result(task, future):
    """The result of ``future``; a worker's unexpected exception becomes one ConversionError."""
    try:
        path = future.result()
    except (ImgconvError, BrokenProcessPool):
        raise  # already says which file or record, or handled by convert()
    except Exception as exc:
        raise ConversionError(
            f"a worker failed on images {task.start}..{task.stop - 1}: {type(exc).__name__}: {exc}"
        ) from exc
    return _received(path)


def _start_pool(workers, source, encoder, handoff):
    methods = multiprocessing.get_all_start_methods()
    # fork starts workers in milliseconds and shares the parent's imports;
    # the parent holds no threads or open stores at this point.
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(source, encoder, handoff)
    )


def _pool_processes(pool):
    # The executor keeps its processes in a private mapping, dropped by
    # shutdown(). (Python 3.14 adds terminate_workers() for this.)
    return list((getattr(pool, "_processes", None) or {}).values())


def _stop_pool(pool):
    """Cancel queued tasks and end every worker now (they hold no state worth saving)."""
    processes = _pool_processes(pool)
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join()


class _StopOnSignal:
    """While converting, SIGINT and SIGTERM stop the conversion.

    The handler does not raise inside whatever the parent is doing (it may
    hold a lock of the pool's): it notes the signal and kills the workers,
    which breaks the pool at once; the parent then sees the note at its next
    step and raises :class:`Interrupted`. With no pool the handler raises
    directly.
    """

    def __init__(self):
        self.signum = None
        self.pool = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self  # signals are delivered to the main thread only
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum
        if self.pool is None:
            raise Interrupted(signum)
        for process in _pool_processes(self.pool):
            try:
                process.kill()
            except (OSError, ValueError):
                pass

    def check(self):
        """Raise :class:`Interrupted` if a signal has arrived."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False


def _pipeline(src, encoder, tasks, batch_size, workers, what):
    """Yield ``(task, (result, skipped))`` in task order, from a pool or this process.

    Owns the pool and the signal handling: on leaving (normally, by an
    exception, or when the caller stops iterating) the workers are gone.
    Raises Interrupted on SIGINT/SIGTERM and ConversionError when a worker
    dies; ``what`` says what was being done, for that message.
    """
    pool = None
    handoff = None
    stop = _StopOnSignal()
    try:
        with stop:
            jobs = _jobs(src, tasks, batch_size)
            if workers == 0 or len(tasks) <= 1:
                results = _results_in_process(src, encoder, jobs)
            else:
                # Private (mode 0700) directory for the workers' results; see _in_worker.
                handoff = tempfile.mkdtemp(prefix="imgconv-results-")
                pool = stop.pool = _start_pool(min(workers, len(tasks)), src, encoder, handoff)
                results = _results_from_pool(pool, jobs, 2 * workers)
            for item in results:
                stop.check()
                yield item
            stop.check()
            if pool is not None:
                stop.pool = None
                pool.shutdown(wait=True)
                pool = None
    except (BrokenProcessPool, ConversionError) as exc:
        stop.check()  # workers killed on purpose by a signal: that is the story
        if isinstance(exc, ConversionError):
            raise
        raise ConversionError(f"{what}: a worker process died unexpectedly ({exc})") from None
    finally:
        if pool is not None:
            _stop_pool(pool)
        if handoff is not None:
            shutil.rmtree(handoff, ignore_errors=True)


def _open(source, source_options):
    if isinstance(source, Source):
        if source_options:
            raise TypeError(f"source options {sorted(source_options)} apply only when source is a path")
        return source
    return open_source(source, **source_options)


def _count(source, limit):
    length = source.length
    if length is None:
        raise ImgconvError(f"{source.description}: the number of images is unknown, so the work cannot be planned")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be a non-negative integer, got {limit!r}")
        length = min(length, limit)
    return length


def _check_positive(name, value, allow_zero=False):
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def convert(source, dest, *, format=None, workers=None, batch_size=DEFAULT_BATCH_SIZE, limit=None,
            shuffle=False, seed=0, overwrite=False, progress=None, store_options=None, **source_options):
    """Convert a dataset into a store, streaming batches through a pool of worker processes.

    ``source`` is a path (opened with :func:`imgconv.open_source` and
    ``source_options``: ``split``, ``mode``, ``resize``, ``resize_policy``,
    ``on_error``, ...) or a :class:`~imgconv.sources.Source`. ``dest`` is the
    store to write; ``format`` ("png", "lmdb", "hdf5") defaults to what its
    suffix says. ``workers`` processes do the CPU work (default: one per CPU;
    0 runs everything in this process). ``limit`` caps the number of images;
    ``shuffle`` writes them in a permutation drawn from ``seed``.
    ``store_options`` go to the store's writer (e.g. ``compress_level``,
    ``chunk_images``, ``compression``). ``progress(done, total)`` is called
    after every batch written.

    The output is the same whatever ``workers`` and ``batch_size``. On any
    error or interruption nothing is left at ``dest``. Returns a
    :class:`ConvertResult`. Raises SourceError/StoreError for bad input or
    output, ConversionError when a worker fails or dies, Interrupted on
    SIGINT/SIGTERM.
    """
    started = time.perf_counter()
    workers = default_workers() if workers is None else _check_positive("workers", workers, allow_zero=True)
    batch_size = _check_positive("batch_size", batch_size)
    src = _open(source, source_options)
    total = _count(src, limit)
    tasks = plan_tasks(total, batch_size, shuffle, seed)
    shape = src.shape  # computed here once, so workers inherit it instead of each scanning
    writer = stores.create(dest, format, overwrite=overwrite, label_names=src.label_names, source=src.description,
                           shape=stores.VARIABLE if shape is None else shape, **(store_options or {}))
    skipped = []
    done = 0
    try:
        what = f"converting {src.description} (nothing was written to {dest})"
        # closing(): a failure here (say, in the writer) ends the pool at once,
        # not whenever the suspended generator is collected.
        with closing(_pipeline(src, writer.encoder(), tasks, batch_size, workers, what)) as results:
            for task, (encoded, task_skipped) in results:
                writer.write_encoded(encoded)
                skipped.extend(task_skipped)
                done += task.stop - task.start
                if progress is not None:
                    progress(done, total)
        writer.close()
    finally:
        if not writer.closed:
            writer.abort()
        if src is not source:
            src.close()  # opened here: let go of its archive and cached batches now
    path = writer.path
    return ConvertResult(path, writer.format_name, writer.count, time.perf_counter() - started,
                         disk_usage(path), skipped)


def _as_is(images, labels):
    """The identity "encoder" of :func:`load`: workers send decoded batches back."""
    return images, labels


def load(path, *, workers=None, batch_size=DEFAULT_BATCH_SIZE, **source_options):
    """Read a whole dataset or store into memory, decoding in a pool of worker processes.

    ``path`` is anything :func:`imgconv.open_source` reads (a PNG folder is
    where the pool pays: decoding is the work). Returns ``(images, labels)``:
    an (N, H, W, C) uint8 array, or a list for images of varying sizes, and
    (N,) int64 labels, in the source's order. ``workers=0`` reads in this
    process. Raises like :func:`convert`.
    """
    workers = default_workers() if workers is None else _check_positive("workers", workers, allow_zero=True)
    batch_size = _check_positive("batch_size", batch_size)
    src = open_source(path, **source_options)
    total = _count(src, None)
    tasks = plan_tasks(total, batch_size)
    shape = src.shape
    images = [] if shape is None else np.empty((total, *shape), np.uint8)
    labels = np.empty(total, np.int64)
    count = 0  # under on_error="skip" a batch may hold fewer images than its task
    pipeline = _pipeline(src, _as_is, tasks, batch_size, workers, f"reading {src.description}")
    with closing(src), closing(pipeline) as results:
        for _, ((batch, batch_labels), _) in results:
            if shape is None:
                images.extend(batch)
            else:
                images[count : count + len(batch_labels)] = batch
            labels[count : count + len(batch_labels)] = batch_labels
            count += len(batch_labels)
    return (images if shape is None else images[:count]), labels[:count]
