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
pool, which the parent sees at once (never a hang); a worker whose parent
dies (even by SIGKILL) ends itself at once. On any failure or interruption
the pool is torn down and nothing is left at the destination: the writer
aborts (removing its partial output) or, when the conversion was
interrupted (a signal, a killed worker), suspends, keeping the batches
written so far beside the destination for ``resume=True``.

Resuming: after every batch the writer records a checkpoint (images in the
store, source position reached). A resumed conversion asks the writer to
reopen the partial output, cut it back to its last checkpoint that is safely
on disk, and plans the remaining tasks from that source position on; the
job fingerprint (source, its size and modification time, the options)
must match, so only the same conversion is ever continued.
"""
import ctypes
import glob
import math
import mmap
import multiprocessing
import os
import pickle
import shutil
import signal
import sys
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
from .sources.base import SkippedFile
from .verify import disk_usage

DEFAULT_BATCH_SIZE = 1024

ConvertResult = namedtuple("ConvertResult", "path format count seconds bytes skipped resumed restart_reason",
                           defaults=(0, None))
ConvertResult.__doc__ = """What :func:`convert` did: the store's ``path`` and ``format``, the
``count`` of images written, wall ``seconds``, ``bytes`` on disk, the
``skipped`` input files (path, reason) under ``on_error="skip"``, how many
images were ``resumed`` (kept from an interrupted conversion), and the
``restart_reason`` when ``resume=True`` found a partial output it could not
continue (None otherwise)."""

Task = namedtuple("Task", "number start stop indices")
Task.__doc__ = """One unit of work: images ``start <= i < stop`` of the source in order, or,
when shuffling, the source images ``indices`` (in output order)."""


class ConversionError(ImgconvError):
    """A conversion failed in a worker or in the pool; the message says where and why."""


class WorkerDied(ConversionError):
    """A worker process died (killed, out of memory); the work done so far can be resumed."""


class Interrupted(ImgconvError):
    """The conversion was stopped by a signal (SIGINT or SIGTERM); ``signum`` says which."""

    def __init__(self, signum, detail="nothing was written at the destination"):
        super().__init__(f"interrupted by {signal.Signals(signum).name}; {detail}")
        self.signum = signum


def default_workers():
    """The number of worker processes used by default: the CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def plan_tasks(count, batch_size, shuffle=False, seed=0, start=0):
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


# --------------------------------------------------------------------------- workers

# Set once per worker process by _init_worker, so tasks carry only indices.
_WORKER = {}


def _init_worker(source, encoder, handoff, parent):
    # Ctrl-C reaches the whole process group; the parent alone decides what
    # happens, and it stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent(parent)
    _WORKER["source"] = source
    _WORKER["encoder"] = encoder
    _WORKER["handoff"] = handoff
    _WORKER["sent"] = 0


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent):
    """End this worker as soon as the process ``parent`` dies, however it dies.

    A worker of a parent killed by SIGKILL would otherwise wait on the task
    queue forever: it holds the queue's write end itself, so it never sees
    end-of-file. On Linux the kernel sends SIGKILL when the parent goes
    (PR_SET_PDEATHSIG; strictly, when the parent's thread that forked us
    ends: the executor forks from the thread that submits, the main one);
    elsewhere a thread watches the parent's pid.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    else:
        armed = False
    if os.getppid() != parent:
        os._exit(1)  # the parent died before the signal was armed
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent,), name="imgconv-parent-watch", daemon=True).start()


def _watch_parent(parent):
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(1)


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


def _planned_jobs(tasks):
    """``(task, function, args)`` per planned task, in task order: each worker reads its own range."""
    for task in tasks:
        yield task, read_and_encode, (task,)


def _streamed_jobs(source, batch_size, limit, first=0):
    """``(task, function, args)`` per batch of a sequential source, read here once and in order.

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
        yield task, encode_only, (images, labels)


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


def _start_method():
    # fork starts workers in milliseconds and shares the parent's imports
    # (and load()'s shared output); the parent holds no threads when it
    # forks, and no open store except, when resuming, the writer's own
    # output, which workers never touch.
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def _start_pool(workers, source, encoder, handoff):
    context = multiprocessing.get_context(_start_method())
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker,
        initargs=(source, encoder, handoff, os.getpid()),
    )
    # A forking pool starts all its workers at the first submit: do it now,
    # before a streaming source starts its read-ahead thread, so no worker is
    # forked from a parent with a thread in the middle of its work.
    pool.submit(os.getpid)
    return pool


HANDOFF_PREFIX = "imgconv-results-"


def _make_handoff():
    """A private (mode 0700) directory for the workers' results (see _in_worker), named after this process."""
    return tempfile.mkdtemp(prefix=f"{HANDOFF_PREFIX}{os.getpid()}-")


def _remove_stale_handoffs():
    """Remove the hand-off directories of conversions killed by SIGKILL (their process is gone)."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), HANDOFF_PREFIX + "*-*")):
        pid = os.path.basename(path)[len(HANDOFF_PREFIX):].split("-")[0]
        try:
            if not pid.isdigit() or os.stat(path).st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue


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


def _pipeline(src, encoder, jobs, workers, what):
    """Yield ``(task, (result, skipped))`` in task order, from a pool or this process.

    ``jobs`` come from :func:`_planned_jobs` or :func:`_streamed_jobs`;
    ``workers=0`` runs them here. Owns the pool and the signal handling: on
    leaving (normally, by an exception, or when the caller stops iterating)
    the workers are gone. Raises Interrupted on SIGINT/SIGTERM and
    ConversionError when a worker dies; ``what`` says what was being done,
    for that message.
    """
    pool = None
    handoff = None
    stop = _StopOnSignal()
    try:
        with stop:
            _remove_stale_handoffs()
            if workers == 0:
                results = _results_in_process(src, encoder, jobs)
            else:
                handoff = _make_handoff()
                pool = stop.pool = _start_pool(workers, src, encoder, handoff)
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
        raise WorkerDied(f"{what}: a worker process died unexpectedly ({exc})") from None
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


def _check_limit(limit):
    """Raise ValueError unless ``limit`` is None or a non-negative int."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative integer, got {limit!r}")


def _count(source, limit):
    _check_limit(limit)
    length = source.length
    if length is None:
        raise ImgconvError(f"{source.description}: the number of images is unknown, so the work cannot be planned")
    return length if limit is None else min(length, limit)


def _expected_total(src, limit):
    """The total a streamed source expects (its length hint, capped by ``limit``), for progress; None when unknown."""
    hint = src.length_hint
    return None if hint is None else hint if limit is None else min(hint, limit)


def _check_positive(name, value, allow_zero=False):
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _fingerprint(source, src, total, shuffle, seed, source_options, streamed=False):
    """What makes two conversions the same job (JSON-ready): a resume must match it exactly.

    The source is identified by its description and, for a path, its size
    and modification time (a folder's: files added or removed change it).
    A streamed source (an archive) is not counted for this: its size and
    time say enough.
    """
    found = None
    if not isinstance(source, Source):
        try:
            st = os.stat(source)
            found = [st.st_size if not os.path.isdir(source) else None, st.st_mtime_ns]
        except OSError:
            found = None
    return {
        "source": src.description, "source_stat": found, "images": total, "source_length": None if streamed else src.length,
        "shuffle": bool(shuffle), "seed": int(seed) if shuffle else None,
        "source_options": {name: repr(value) for name, value in sorted(source_options.items())},
    }


def convert(source, dest, *, format=None, workers=None, batch_size=DEFAULT_BATCH_SIZE, limit=None,
            shuffle=False, seed=0, overwrite=False, resume=False, progress=None, store_options=None,
            **source_options):
    """Convert a dataset into a store, streaming batches through a pool of worker processes.

    ``source`` is a path (opened with :func:`imgconv.open_source` and
    ``source_options``: ``split``, ``mode``, ``resize``, ``resize_policy``,
    ``on_error``, ...) or a :class:`~imgconv.sources.Source`. ``dest`` is the
    store to write; ``format`` ("png", "lmdb", "hdf5") defaults to what its
    suffix says (UnknownFormatError for a suffix no format has).
    ``workers`` processes do the CPU work (default: one per CPU; 0 runs
    everything in this process). ``limit`` caps the number of images;
    ``shuffle`` writes them in a permutation drawn from ``seed``.
    ``store_options`` go to the store's writer (e.g. ``compress_level``,
    ``chunk_images``, ``compression``). ``progress(done, total)`` is called
    after every batch written; ``total`` is the number of images to write,
    or for a compressed archive (converted in one pass, without counting
    first) the number it expects (see ``Source.length_hint``: exact for
    the official CIFAR archives, corrected as the archive is read), or None
    when nothing is expected.

    The output is the same whatever ``workers`` and ``batch_size``. On any
    error or interruption nothing is left at ``dest``. An interrupted
    conversion (SIGINT, SIGTERM, a killed worker, or the converter killed)
    leaves the batches it wrote in ``.NAME.imgconv-partial`` beside ``dest``;
    ``resume=True`` continues it (same source and options required; the
    result equals an uninterrupted conversion image for image, and byte for
    byte for a PNG folder). Without ``resume`` such output is an error
    unless ``overwrite=True``, which discards it; an unusable one (say, an
    HDF5 file HDF5 cannot reopen) is discarded and the conversion starts
    over, saying why in the result's ``restart_reason``. Other failures
    (bad input, disk full) remove the partial output.

    Returns a :class:`ConvertResult`. Raises SourceError/StoreError for bad
    input or output, ConversionError when a worker fails (WorkerDied when it
    dies), Interrupted on SIGINT/SIGTERM.
    """
    started = time.perf_counter()
    workers = default_workers() if workers is None else _check_positive("workers", workers, allow_zero=True)
    batch_size = _check_positive("batch_size", batch_size)
    format = stores.format_for_path(dest) if format is None else format  # a mistyped suffix fails before any reading
    src = _open(source, source_options)
    streamed = src.sequential and not shuffle
    writer = None
    try:
        # A streamed source is not counted first; it learns its length and
        # label names as it goes, and the writer takes them at the end.
        if streamed:
            _check_limit(limit)
            total = None
        else:
            total = _count(src, limit)
        shape = src.shape  # computed here once, so workers inherit it instead of each scanning
        writer = stores.create(dest, format, overwrite=overwrite, label_names=None if streamed else src.label_names,
                               source=src.description, shape=stores.VARIABLE if shape is None else shape,
                               job=_fingerprint(source, src, limit if streamed else total, shuffle, seed,
                                                source_options, streamed),
                               **(store_options or {}))
        writer.begin(resume=resume)
        if streamed:
            jobs = _streamed_jobs(src, batch_size, limit, first=writer.position)
            # This process reads and decodes the archive (its read-ahead
            # thread inflates it on another core): workers would only encode,
            # which pays for the trip to them only when encoding is heavy.
            workers = workers if writer.heavy_encoding else 0
        else:
            tasks = plan_tasks(total, batch_size, shuffle, seed, start=writer.position)
            jobs, workers = _planned_jobs(tasks), (0 if len(tasks) <= 1 else min(workers, len(tasks)))
        skipped = [SkippedFile(*entry) for entry in writer.earlier_skipped]
        done = writer.position
        if progress is not None and done:
            progress(done, total if total is not None else _expected_total(src, limit))
        what = f"converting {src.description}"
        # closing(): a failure here (say, in the writer) ends the pool at once,
        # not whenever the suspended generator is collected.
        with closing(_pipeline(src, writer.encoder(), jobs, workers, what)) as results:
            for task, (encoded, task_skipped) in results:
                writer.write_encoded(encoded)
                writer.checkpoint(task.stop, task_skipped)
                skipped.extend(task_skipped)
                done = task.stop
                if progress is not None:
                    progress(done, total if total is not None else _expected_total(src, limit))
        if streamed:
            writer.label_names = src.label_names
            writer.source = src.description  # now with the image count the stream learnt
        writer.close()
    except (Interrupted, WorkerDied) as exc:
        raise _kept_for_resume(exc, writer) from None
    finally:
        if writer is not None and not writer.closed:
            writer.abort()
        if src is not source:
            src.close()  # opened here: let go of its archive and cached batches now
    path = writer.path
    return ConvertResult(path, writer.format_name, writer.count, time.perf_counter() - started,
                         disk_usage(path), skipped, writer.resumed, writer.restart_reason)


def _kept_for_resume(exc, writer):
    """The error to raise for an interruption, after keeping what was written for a resume."""
    kept = 0 if writer is None else writer.suspend()
    if kept:
        detail = (f"nothing was written at the destination; the {kept} images done are kept in "
                  f"{writer.partial.path}: run the same conversion with resume=True to continue")
    else:
        detail = "nothing was written at the destination"
    if isinstance(exc, Interrupted):
        return Interrupted(exc.signum, detail)
    return WorkerDied(f"{exc}; {detail}")


def _as_is(images, labels):
    """The identity "encoder" of :func:`load`: workers send decoded batches back."""
    return images, labels


# load()'s output array in shared memory, set in the parent before a forking
# pool starts so that its workers inherit it and write their images there.
_SHARED_OUTPUT = {}


def _shared_array(shape):
    """A zeroed uint8 array of ``shape`` in anonymous shared memory (seen by forked children)."""
    size = math.prod(shape)
    buffer = mmap.mmap(-1, max(size, 1), flags=mmap.MAP_SHARED)
    return np.frombuffer(buffer, np.uint8, size).reshape(shape)


def read_into_shared(source, encoder, task):
    """Read one task in a worker and write its images into load()'s shared output; returns ``(labels, skipped)``.

    Rows ``task.start...`` of the output are this task's whatever other tasks
    hold, so workers write side by side; only the labels travel back.
    """
    skipped_before = len(getattr(source, "skipped", ()))
    images, labels = _read_task(source, task)
    _SHARED_OUTPUT["images"][task.start : task.start + len(labels)] = images
    return labels, list(getattr(source, "skipped", ())[skipped_before:])


def load(path, *, workers=None, batch_size=DEFAULT_BATCH_SIZE, **source_options):
    """Read a whole dataset or store into memory, decoding in a pool of worker processes.

    ``path`` is anything :func:`imgconv.open_source` reads (a PNG folder is
    where the pool pays: decoding is the work). Returns ``(images, labels)``:
    an (N, H, W, C) uint8 array, or a list for images of varying sizes, and
    (N,) int64 labels, in the source's order. ``workers=0`` reads in this
    process. Workers write images of one size straight into the returned
    array (shared memory), so nothing is copied through the parent. Raises
    like :func:`convert`.
    """
    workers = default_workers() if workers is None else _check_positive("workers", workers, allow_zero=True)
    batch_size = _check_positive("batch_size", batch_size)
    src = open_source(path, **source_options)
    total = _count(src, None)
    tasks = plan_tasks(total, batch_size)
    shape = src.shape
    # An archive is read by this process anyway (see _streamed_jobs): workers would only copy.
    workers = 0 if len(tasks) <= 1 or src.sequential else min(workers, len(tasks))
    shared = workers > 0 and shape is not None and _start_method() == "fork"
    if shared:
        images = _SHARED_OUTPUT["images"] = _shared_array((total, *shape))
        jobs = ((task, read_into_shared, (task,)) for task in tasks)
    else:
        images = [] if shape is None else np.empty((total, *shape), np.uint8)
        jobs = _streamed_jobs(src, batch_size, None) if src.sequential else _planned_jobs(tasks)
    labels = np.empty(total, np.int64)
    count = 0  # under on_error="skip" a batch may hold fewer images than its task
    pipeline = _pipeline(src, _as_is, jobs, workers, f"reading {src.description}")
    try:
        with closing(src), closing(pipeline) as results:
            for task, (result, _) in results:
                batch_labels = result if shared else result[1]
                n = len(batch_labels)
                if shared:
                    if count != task.start:  # images skipped before: close the gap
                        images[count : count + n] = images[task.start : task.start + n]
                elif shape is None:
                    images.extend(result[0])
                else:
                    images[count : count + n] = result[0]
                labels[count : count + n] = batch_labels
                count += n
    finally:
        _SHARED_OUTPUT.clear()
    return (images if shape is None else images[:count]), labels[:count]
