"""convert(): open the source -> plan -> engine -> the one writer -> commit.

The parent process plans the work as tasks (ranges of image indices, or index
lists when shuffling; :mod:`imgconv.pipeline.plan`), hands them to an engine
(this process or a pool of worker processes; :mod:`imgconv.pipeline.pool`),
and is the only writer: workers read their range from the source, transform
it (decode, resize, CHW to HWC: the source's work) and encode it for the store
(PNG encoding, record packing: the store's ``encoder()``), and send back
finished payloads, which the parent writes in task order. At most
``2 * workers`` tasks are in flight, so memory stays flat whatever the dataset
size, and the output does not depend on the number of workers or the order
they finish in.

On any failure nothing is left at the destination: the writer aborts,
removing its partial output. On an interruption (a signal, a killed worker)
the resume layer (:mod:`imgconv.resume`) keeps the batches written so far
beside the destination instead: after every batch it records a checkpoint
(images in the store, source position reached), and a run with
``resume=True`` of the same job (same source, size, time and options) cuts
the output back to its last checkpoint safely on disk and plans the remaining
tasks from that source position on.
"""
import time
from collections import namedtuple
from contextlib import closing
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from . import _platform, _validate, overlap, stores
from .errors import ConversionError, Interrupted, SourceError, WorkerDied, kept_for_resume
from .load import DEFAULT_BATCH_SIZE, load
from .pipeline.engine import WorkerContext, default_workers, local_engine, workers_worth_starting
from .pipeline.plan import (
    DEFAULT_BATCH_BYTES,
    Job,
    image_sizes,
    job_fingerprint,
    plan_tasks,
    planned_jobs,
    streamed_jobs,
)
from .pipeline.pool import signals_deferred
from .resume import ResumeSession
from .resume.inputs import InputFiles
from .sources import Source, open_source
from .sources.base import SkippedFile

# Old import locations of names that moved: imgconv.errors, imgconv.load, imgconv.pipeline.
__all__ = ["ConversionError", "ConvertResult", "DEFAULT_BATCH_SIZE", "Interrupted", "WorkerDied", "convert",
           "default_workers", "load", "plan_tasks"]

ConvertResult = namedtuple("ConvertResult", "path format count seconds bytes skipped resumed restart_reason",
                           defaults=(0, None))
ConvertResult.__doc__ = """What :func:`convert` did: the store's ``path`` and ``format``, the
``count`` of images written, wall ``seconds``, ``bytes`` of data written (the
sum of the store's file sizes), the ``skipped`` input files (path, reason)
under ``on_error="skip"``, how many images were ``resumed`` (kept from an
interrupted conversion), and the ``restart_reason`` when ``resume=True`` found
a partial output it could not continue (None otherwise)."""

Progress = Callable[[int, Optional[int]], None]

Batches = namedtuple("Batches", "images bytes")
Batches.__doc__ = "How large a batch in flight may be: ``images`` at most, ``bytes`` of decoded pixels at most."


def convert(source: Any, dest: Any, *, format: Optional[str] = None, workers: Optional[int] = None,
            batch_size: int = DEFAULT_BATCH_SIZE, batch_bytes: int = DEFAULT_BATCH_BYTES, limit: Optional[int] = None,
            shuffle: bool = False, seed: int = 0, overwrite: bool = False, resume: bool = False,
            progress: Optional[Progress] = None, store_options: Optional[Dict[str, Any]] = None,
            stall_seconds: Optional[float] = None, shard_size: Any = None, engine: str = "local",
            client: Any = None, scheduler: Optional[str] = None, **source_options: Any) -> ConvertResult:
    """Convert a dataset into a store, streaming batches through a pool of worker processes.

    ``source`` is a path (opened with :func:`imgconv.open_source` and
    ``source_options``: ``split``, ``mode``, ``resize``, ``resize_policy``,
    ``on_error``, ...) or a :class:`~imgconv.sources.Source`. ``dest`` is the
    store to write; ``format`` ("png", "lmdb", "hdf5") defaults to what its
    suffix says (UnknownFormatError for a suffix no format has).
    ``workers`` processes do the CPU work (default: one per CPU; 0 runs
    everything in this process): at most that many, and none where there is
    no CPU work worth a process (a source read at memory speed, such as
    NumPy files or an LMDB or HDF5 store, into an LMDB or HDF5 store).
    Workers take batches of at most
    ``batch_size`` images holding at most ``batch_bytes`` bytes of decoded
    pixels (default 32 MiB; at least one image), sized from the images'
    shapes or headers before decoding, so that memory in flight is bounded
    in bytes whatever the images' sizes (see RELIABILITY.md, "Memory").
    ``limit`` caps the number of images;
    ``shuffle`` writes them in a permutation drawn from ``seed``.
    ``store_options`` go to the store's writer (e.g. ``compress_level``,
    ``chunk_images``, ``compression``). ``progress(done, total)`` is called
    after every batch written; ``total`` is the number of images to write,
    or for a compressed archive (converted in one pass, without counting
    first) the number it expects (see ``Source.length_hint``: exact for
    the official CIFAR archives, corrected as the archive is read), or None
    when nothing is expected. When the workers return nothing for
    ``stall_seconds`` (default 300) while batches are in flight (a worker
    stopped with SIGSTOP, a hung disk), a
    :class:`~imgconv.errors.StalledWorkersWarning` names each worker and its
    state; the conversion goes on.

    The output is the same whatever ``workers``, ``batch_size`` and ``batch_bytes``. On any
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

    ``shard_size`` (a number of images, or of bytes of pixels such as
    ``"256MB"``) writes a sharded dataset instead: a directory of stores of
    the format, and a manifest ``dataset.json`` written last
    (:mod:`imgconv.datasets`); ``resume=True`` then keeps the shards an
    interrupted run finished and writes the others. ``engine="dask"``
    writes one on a ``dask.distributed`` cluster, one task per shard: the
    ``client`` given, or one connected to the ``scheduler`` address, or a
    ``LocalCluster`` of ``workers`` processes (``pip install "imgconv[dask]"``).
    The shards are the same bytes whatever the engine and the workers.

    Returns a :class:`ConvertResult`. Raises ValueError/TypeError for bad
    arguments (OverlapError, a ValueError, when ``dest`` is the source,
    holds it or a file it reads, or lies inside it: checked with symbolic
    links resolved, before anything is written, whatever ``overwrite``
    says), SourceError/StoreError for bad input or output,
    ConversionError when a worker fails (WorkerDied when it dies),
    Interrupted on SIGINT/SIGTERM.
    """
    started = time.perf_counter()
    workers = default_workers() if workers is None else _validate.non_negative_int("workers", workers)
    batch_size = _validate.positive_int("batch_size", batch_size)
    batch_bytes = _validate.positive_int("batch_bytes", batch_bytes)
    limit = _validate.optional_non_negative_int("limit", limit)
    if stall_seconds is not None:
        stall_seconds = _validate.positive_number("stall_seconds", stall_seconds)
    format = stores.format_for_path(dest) if format is None else format  # a mistyped suffix fails before any reading
    overlap.check_paths(overlap.source_path(source), dest)
    if shard_size is not None or engine != "local" or client is not None or scheduler is not None:
        from .datasets.convert import convert_sharded

        return convert_sharded(source, dest, format=format, workers=workers, batch_size=batch_size, limit=limit,
                               shuffle=shuffle, seed=seed, overwrite=overwrite, resume=resume, progress=progress,
                               store_options=store_options, shard_size=shard_size, engine=engine, client=client,
                               scheduler=scheduler, source_options=source_options, open_source=_open,
                               batch_bytes=batch_bytes, stall_seconds=stall_seconds)
    src = _open(source, source_options)
    session = None
    try:
        overlap.check_files(src.input_files(), dest)
        inputs = InputFiles.of(src.input_files())
        run = _Run(src, Batches(batch_size, batch_bytes), limit, shuffle, seed, stall_seconds)
        session = ResumeSession(run.create_writer(dest, format, overwrite, store_options),
                                job_fingerprint(src, run.images, shuffle, seed, source_options, run.streamed), inputs)
        session.begin(resume=resume)
        skipped = run.write(session, workers, progress)
        with signals_deferred():
            # Every image is written: a Ctrl-C now lets the commit finish rather than lose the store.
            session.writer.close()
    except (Interrupted, WorkerDied) as exc:
        raise _kept_for_resume(exc, session) from None
    finally:
        if session is not None and not session.writer.closed:
            session.writer.abort()
        if src is not source:
            src.close()  # opened here: let go of its archive and cached batches now
    writer = session.writer
    return ConvertResult(writer.path, writer.format_name, writer.count, time.perf_counter() - started,
                         _platform.disk_usage(writer.path).data_bytes, skipped, session.resumed,
                         session.restart_reason)


class _Run:
    """One conversion's plan: streamed or planned, how many images, and the jobs from a position on."""

    def __init__(self, src: Source, batches: "Batches", limit: Optional[int], shuffle: bool, seed: int,
                 stall_seconds: Optional[float] = None) -> None:
        self.src = src
        self.batches = batches
        self.stall_seconds = stall_seconds
        self.limit = limit
        self.shuffle = shuffle
        self.seed = seed
        # A streamed source is not counted first; it learns its length and
        # label names as it goes, and the writer takes them at the end.
        self.streamed = src.sequential and not shuffle
        self.total = None if self.streamed else _count(src, limit)
        self.images = limit if self.streamed else self.total  # what the job fingerprint says

    def create_writer(self, dest: Any, format: Optional[str], overwrite: bool,
                      store_options: Optional[Dict[str, Any]]) -> stores.Writer:
        """The store's writer, told what the source says of itself (shape computed once, here)."""
        shape = self.src.shape  # workers inherit it instead of each scanning
        return stores.create(dest, format, overwrite=overwrite,
                             label_names=None if self.streamed else self.src.label_names,
                             source=self.src.description, shape=stores.VARIABLE if shape is None else shape,
                             **(store_options or {}))

    def write(self, session: ResumeSession, workers: int, progress: Optional[Progress]) -> List[SkippedFile]:
        """Run the jobs from the session's position on and write their results; returns the files skipped."""
        writer = session.writer
        jobs, workers = self._jobs(session.position, workers, writer.heavy_encoding)
        skipped = [SkippedFile(*entry) for entry in session.earlier_skipped]
        if progress is not None and session.position:
            progress(session.position, self._expected_total())
        context = WorkerContext(self.src, writer.encoder())
        # closing(): a failure here (say, in the writer) ends the workers at once,
        # not whenever the suspended generator is collected.
        engine = local_engine(workers, stall_seconds=self.stall_seconds)
        with closing(engine.run(context, jobs, f"converting {self.src.description}")) as results:
            for task, (encoded, task_skipped) in results:
                writer.write_encoded(encoded)
                session.checkpoint(task.stop, task_skipped)
                skipped.extend(task_skipped)
                if progress is not None:
                    progress(task.stop, self._expected_total())
        if self.streamed:
            # Now with the label names and the image count the stream learnt.
            writer.describe(label_names=self.src.label_names, source=self.src.description)
        return skipped

    def _expected_total(self) -> Optional[int]:
        """The total for progress: the count planned, or what a streamed source expects (capped by the limit)."""
        if self.total is not None:
            return self.total
        hint = self.src.length_hint
        return None if hint is None else hint if self.limit is None else min(hint, self.limit)

    def _jobs(self, position: int, workers: int, heavy_encoding: bool) -> Tuple[Iterator[Job], int]:
        """The jobs from source ``position`` on, and the workers worth starting for them."""
        if self.streamed:
            # This process reads and decodes the archive (its read-ahead
            # thread inflates it on another core): workers would only encode,
            # which pays for the trip to them only when encoding is heavy.
            jobs = streamed_jobs(self.src, self.batches.images, self.limit, first=position,
                                 batch_bytes=self.batches.bytes)
            return jobs, workers_worth_starting(workers, None, heavy_encoding)
        assert self.total is not None
        tasks = plan_tasks(self.total, self.batches.images, self.shuffle, self.seed, start=position,
                           nbytes=image_sizes(self.src, self.total), batch_bytes=self.batches.bytes)
        # Workers where decoding the source or encoding the store is CPU work (see workers_worth_starting).
        return planned_jobs(tasks), workers_worth_starting(workers, len(tasks),
                                                           self.src.heavy_decoding or heavy_encoding)


def _open(source: Any, source_options: Dict[str, Any]) -> Source:
    if isinstance(source, Source):
        if source_options:
            raise TypeError(f"source options {sorted(source_options)} apply only when source is a path")
        return source
    return open_source(source, **source_options)


def _count(source: Source, limit: Optional[int]) -> int:
    length = source.length
    if length is None:
        raise SourceError(f"{source.description}: the number of images is unknown, so the work cannot be planned")
    return length if limit is None else min(length, limit)


def _kept_for_resume(exc: BaseException, session: Optional[ResumeSession]) -> BaseException:
    """The error to raise for an interruption, after keeping what was written for a resume."""
    kept = 0 if session is None else session.suspend()
    return kept_for_resume(exc, "" if not kept or session is None else
                           f"the {kept} images done are kept in {session.partial_path}: "
                           "run the same conversion with resume=True to continue")
