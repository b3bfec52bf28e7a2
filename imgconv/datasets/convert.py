"""convert() into a sharded dataset: plan the shards, write them here or on a cluster, commit the manifest.

:func:`convert_sharded` is what :func:`imgconv.convert` does with
``shard_size`` or ``engine="dask"``. The shards come from the plan
(:mod:`.plan`), so every engine writes the same bytes:

* **here** (``engine="local"``): the pipeline of a single store
  (:mod:`imgconv.pipeline`), its tasks cut at shard boundaries, and this
  process writes the shards one after another as results arrive in order,
  closing each (atomically) when the next begins. A stream (an archive) is
  read here once and cut as it comes.
* **on a cluster** (``engine="dask"``): one task per shard
  (:func:`~.output.write_shard`): a worker reads the shard's images from the
  source (which must be on storage every worker sees), encodes and writes the
  shard itself, and reports its progress; this process journals each shard
  as it finishes and writes the manifest. A source only this process can
  read in parts (a single archive, read as one stream) is converted here when
  encoding is light (LMDB, HDF5: the trip to the workers would cost more
  than the work) and streamed to the workers shard by shard when it is heavy
  (PNG); BENCHMARKS.md ("Scaling") gives the costs behind the choice.
"""
import json
import os
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

from .. import _platform, kernels, overlap, stores
from ..errors import ConversionError, Interrupted, OptionError, SourceError, WorkerDied, kept_for_resume
from ..pipeline.engine import WorkerContext, local_engine, workers_worth_starting
from ..pipeline.plan import Job, Task, encode_only, job_fingerprint, stream_batches
from ..resume.inputs import InputFiles
from ..sources import Source
from ..sources.base import SkippedFile
from .output import (
    DatasetOutput,
    ShardDone,
    ShardSpec,
    journal_header,
    shard_done,
    write_shard,
    write_shard_from_batches,
)
from .plan import (
    DEFAULT_SHARD_SIZE,
    SHARD_SIZE,
    Plan,
    Shard,
    ShardSize,
    parse_shard_size,
    plan_shards,
    shard_parts,
)

ENGINES = ("local", "dask")


def sharded_options() -> Tuple[Any, ...]:
    """The options of :func:`imgconv.convert` for sharded datasets and engines, declared once."""
    from ..pipeline.dask_engine import ENGINE, SCHEDULER

    return (SHARD_SIZE, ENGINE, SCHEDULER)


def convert_sharded(source: Any, dest: Any, *, format: str, workers: int, batch_size: int, limit: Optional[int],
                    shuffle: bool, seed: int, overwrite: bool, resume: bool, progress: Any,
                    store_options: Optional[Dict[str, Any]], shard_size: Any, engine: str, client: Any,
                    scheduler: Optional[str], source_options: Dict[str, Any], open_source: Any,
                    batch_bytes: Optional[int] = None, stall_seconds: Optional[float] = None) -> Any:
    """Convert ``source`` into the sharded dataset ``dest`` (see :func:`imgconv.convert` and the module docstring).

    ``open_source(source, source_options)`` opens the source (a path with
    its options, or a Source as it is). Returns a
    :class:`~imgconv.convert.ConvertResult`.
    """
    from ..convert import ConvertResult

    started = time.perf_counter()
    size = None if shard_size is None else parse_shard_size(shard_size)
    _check_engine(engine, client, scheduler)
    src = open_source(source, source_options)
    output: Optional[DatasetOutput] = None
    try:
        overlap.check_files(src.input_files(), dest)
        inputs = InputFiles.of(src.input_files())
        run = _ShardedRun(src, dest, size, batch_size, limit, shuffle, seed, format, store_options or {},
                          batch_bytes)
        output = DatasetOutput(dest, format, overwrite, durable=bool((store_options or {}).get("durable", True)))
        output.begin(run.header(source_options, inputs), resume, run.expected, inputs)
        spec = run.spec(output.directory)
        if engine == "dask":
            from ..pipeline.dask_engine import connect

            with connect(client, scheduler, workers) as cluster:
                run.on_cluster(cluster, output, spec, progress)
        else:
            run.locally(output, spec, workers, progress, stall_seconds)
        run.finish(output)
    except (Interrupted, WorkerDied) as exc:
        raise _kept_for_resume(exc, output) from None
    except BaseException:
        if output is not None:
            output.abort()
        raise
    finally:
        if src is not source:
            src.close()
    entries = output.done.values()
    skipped = [SkippedFile(*item) for entry in sorted(output.done.items()) for item in entry[1]["skipped"]]
    return ConvertResult(output.path, format, sum(e["count"] for e in entries), time.perf_counter() - started,
                         _platform.disk_usage(output.path).data_bytes, skipped, run.resumed, output.restart_reason)


def _check_engine(engine: str, client: Any, scheduler: Optional[str]) -> None:
    if engine not in ENGINES:
        raise OptionError(f"engine={engine!r} is not one of {', '.join(ENGINES)}", ("engine",))
    if engine == "local" and (client is not None or scheduler is not None):
        given = "client" if client is not None else "scheduler"
        raise OptionError(f"{given} applies to engine='dask'; pass engine='dask' to use the cluster",
                          ("engine", given))
    if engine == "dask":
        from ..pipeline.dask_engine import require_distributed

        require_distributed()  # before anything is read or written


class _ShardedRun:
    """One sharded conversion: the plan, the shards kept and done, and how they are written."""

    def __init__(self, src: Source, dest: Any, size: Optional[ShardSize], batch_size: int, limit: Optional[int],
                 shuffle: bool, seed: int, format_name: str, store_options: Dict[str, Any],
                 batch_bytes: Optional[int] = None) -> None:
        self.src = src
        self.members: Any = getattr(src, "members", None)
        self.size = DEFAULT_SHARD_SIZE if size is None else size
        self.batch_size = batch_size
        self.batch_bytes = batch_bytes
        self.limit = limit
        self.shuffle = shuffle
        self.seed = seed
        # A single archive is read once, in order, without counting it first; its
        # shards are cut as it comes. Several inputs are cut input by input.
        self.streamed = src.sequential and not shuffle and self.members is None
        self.plan: Plan = plan_shards(src, self.size, limit, shuffle, seed, self.streamed)
        shape = src.shape
        self.shape = stores.VARIABLE if shape is None else shape
        self.description = src.description
        # Label names cost a pass over an archive before it is streamed: shards of a stream
        # (and the inputs that are archives) take them as they are learnt.
        self.label_names = None if src.sequential and not shuffle else src.label_names
        self.format_name = format_name
        self.store_options = store_options
        # A writer never begun: it checks the options and says what the format makes of them.
        template = stores.create(dest, format_name, overwrite=True, shape=self.shape, **store_options)
        template.abort()
        self.options = template.options
        self.format_version = template.format_version
        self.heavy_encoding = template.heavy_encoding
        self.encoder = template.encoder()
        self.shard_size = self.size.as_json()
        self.resumed = 0
        self.kept: Dict[int, Any] = {}

    # planning ----------------------------------------------------------------

    def header(self, source_options: Dict[str, Any], inputs: InputFiles) -> Dict[str, Any]:
        """The journal header: the job (with the fingerprint of its input files), the format and options, the plan."""
        if self.plan.shards is None:
            plan: Dict[str, Any] = {"per_shard": self.plan.per_shard}
        else:
            cuts = [[s.start, s.stop, s.member] for s in self.plan.shards]
            text = json.dumps(cuts, separators=(",", ":")).encode()
            plan = {"shards": len(cuts), "crc32c": int(kernels.crc32c(text))}
        job = job_fingerprint(self.src, self.plan.total if self.plan.total is not None else self.limit,
                              self.shuffle, self.seed, source_options, self.streamed)
        job["inputs"] = inputs.summary()
        return journal_header(format_name=self.format_name, format_version=self.format_version,
                              options=self.options, shape=self.shape, shard_size=self.shard_size, plan=plan, job=job)

    def expected(self, number: Any) -> Optional[Shard]:
        """The shard the plan has under ``number`` (None: none such)."""
        if not isinstance(number, int) or number < 0:
            return None
        if self.plan.shards is None:
            n = self.plan.per_shard
            return Shard(number, number * n, (number + 1) * n)
        return self.plan.shards[number] if number < len(self.plan.shards) else None

    def spec(self, directory: str) -> ShardSpec:
        """What every shard's writer is given."""
        return ShardSpec(directory, self.format_name, self.store_options, self.shape, self.label_names,
                         self.description, self.batch_size, self.batch_bytes)

    def _todo(self, output: DatasetOutput) -> List[Shard]:
        self.kept = dict(output.done)
        self.resumed = sum(entry["count"] for entry in self.kept.values())
        return [shard for shard in self.plan.shards or () if shard.number not in self.kept]

    # writing here --------------------------------------------------------------

    def locally(self, output: DatasetOutput, spec: ShardSpec, workers: int, progress: Any,
                stall_seconds: Optional[float] = None) -> None:
        """Write the shards in this process, the pipeline's workers reading and encoding for it (reported
        when they return nothing for ``stall_seconds``)."""
        todo = self._todo(output)
        counter = _Progress(progress, self._total(), self.resumed)
        routes: Dict[int, Shard] = {}
        if self.plan.shards is None:
            jobs = self._stream_jobs(routes, self.plan.per_shard)
            workers = workers_worth_starting(workers, None, self.heavy_encoding)
        else:
            jobs = self._planned_jobs(todo, routes)
            # Workers read the shards not streamed here: worth it where decoding them or encoding is CPU work.
            reads = any(not self._streams(shard) for shard in todo)
            tasks = sum(-(-(shard.size or self.batch_size) // self.batch_size) for shard in todo)  # at least
            workers = workers_worth_starting(workers, tasks, self.heavy_encoding or (reads and self.src.heavy_decoding))
        writing = _ShardWriting(output, spec, self.src, counter)
        context = WorkerContext(self.src, self.encoder)
        results = local_engine(workers, stall_seconds=stall_seconds).run(context, jobs,
                                                                         f"converting {self.description}")
        try:
            for task, (encoded, skipped) in results:
                writing.write(routes.pop(task.number), encoded, skipped)
            writing.close_current()
        finally:
            results.close()
            writing.abort()

    def _streams(self, shard: Shard) -> bool:
        member = self.src if shard.member is None else self.members[shard.member]
        return shard.indices is None and (shard.stop is None or (member.sequential and shard.start == 0))

    def _planned_jobs(self, todo: List[Shard], routes: Dict[int, Shard]) -> Iterator[Job]:
        number = 0
        for shard in todo:
            if self._streams(shard):
                member = self.src if shard.member is None else self.members[shard.member]
                for images, labels in stream_batches(member, self.batch_size, shard.stop, self.batch_bytes):
                    routes[number] = shard
                    yield Job(Task(number, 0, len(labels), None), encode_only, (images, labels))
                    number += 1
                continue
            for first, last in shard_parts(self.src, shard, self.batch_size, self.batch_bytes):
                routes[number] = shard
                yield Job(Task(number, shard.start + first, shard.start + last, None), read_part, (shard, first, last))
                number += 1

    def _stream_jobs(self, routes: Dict[int, Shard], per_shard: int) -> Iterator[Job]:
        """Jobs of a single stream read here, cut at shard boundaries; the shards kept are passed over."""
        number = 0
        batches = stream_batches(self.src, self.batch_size, self.limit, self.batch_bytes)
        for shard, images, labels in self._stream_pieces(per_shard, batches):
            routes[number] = shard
            yield Job(Task(number, 0, len(labels), None), encode_only, (images, labels))
            number += 1

    def _stream_pieces(self, per_shard: int, batches: Iterator[Any]) -> Iterator[Tuple[Shard, Any, Any]]:
        position = 0
        for images, labels in batches:
            offset = 0
            while offset < len(labels):
                k = (position + offset) // per_shard
                end = min(len(labels), (k + 1) * per_shard - position)
                if k not in self.kept:
                    yield Shard(k, k * per_shard, (k + 1) * per_shard), images[offset:end], labels[offset:end]
                offset = end
            position += len(labels)

    def _total(self) -> Optional[int]:
        if self.plan.total is not None:
            return self.plan.total
        hint = self.src.length_hint
        return None if hint is None else hint if self.limit is None else min(hint, self.limit)

    # writing on a cluster --------------------------------------------------------

    def on_cluster(self, client: Any, output: DatasetOutput, spec: ShardSpec, progress: Any) -> None:
        """Write the shards on the cluster of ``client``, one task per shard (see the module docstring)."""
        from ..pipeline.dask_engine import DaskEngine, missing_paths

        streamed_here = self.plan.shards is None
        if streamed_here and not self.heavy_encoding:
            # Packing records is cheaper than the trip to a worker: the stream is converted here.
            return self.locally(output, spec, 0, progress)
        paths = [output.directory] + ([] if streamed_here else _source_paths(self.src))
        unseen = missing_paths(client, paths)
        if unseen:
            worker, missing = next(iter(unseen.items()))
            raise ConversionError(
                f"the Dask worker {worker} cannot see {missing[0]}: a conversion on a cluster writes the dataset "
                "(and reads the source, unless it is a single archive) on storage every worker sees, such as a "
                f"shared filesystem mounted at the same path everywhere ({len(unseen)} worker(s) lack it)")
        todo = self._todo(output)
        counter = _Progress(progress, self._total(), self.resumed)
        shards: Dict[int, Shard] = {}
        if streamed_here:
            jobs = self._batch_jobs(shards)
            window = max(1, sum(client.nthreads().values())) + 1  # each job carries its images
        else:
            jobs = iter([Job(Task(s.number, s.start, s.start + (s.size or 0), None), write_shard, (s,))
                         for s in todo])
            shards = {s.number: s for s in todo}
            window = None
        engine = DaskEngine(client, window=window, ordered=False, on_progress=counter.running)
        context = WorkerContext(None if streamed_here else self.src, self.encoder, spec)
        for task, done in engine.run(context, jobs, f"converting {self.description} on the cluster"):
            output.record(done, shards.pop(task.number))
            counter.finished(done.number, done.count)

    def _batch_jobs(self, shards: Dict[int, Shard]) -> Iterator[Job]:
        """Jobs of a single stream read here, one per shard, each carrying the shard's images."""
        gathered: List[Tuple[Any, Any]] = []
        current: Optional[Shard] = None
        batches = stream_batches(self.src, self.batch_size, self.limit, self.batch_bytes)
        for shard, images, labels in self._stream_pieces(self.plan.per_shard, batches):
            if current is not None and shard.number != current.number:
                shards[current.number] = current
                yield Job(Task(current.number, current.start, current.start, None), write_shard_from_batches,
                          (current, gathered))
                gathered = []
            current = shard
            gathered.append((images, labels))
        if current is not None:
            shards[current.number] = current
            yield Job(Task(current.number, current.start, current.start, None), write_shard_from_batches,
                      (current, gathered))

    # the end ------------------------------------------------------------------

    def finish(self, output: DatasetOutput) -> None:
        """Write the manifest and put the dataset in place."""
        if not output.done:  # a stream of no images at all: one empty shard
            output.record(_empty_shard(self.spec(output.directory)), Shard(0, 0, 0))
        output.finish(shape=self.shape, label_names=self._final_label_names(output), source=self.src.description,
                      options=self.options, shard_size=self.shard_size, format_version=self.format_version)

    def _final_label_names(self, output: DatasetOutput) -> Any:
        if self.label_names is not None:
            return self.label_names
        if self.members is None:
            return self.src.label_names  # a stream that was read: known by now
        found = {json.dumps(entry.get("label_names")) for entry in output.done.values()}
        if len(found) > 1:
            raise SourceError(f"{self.description}: the inputs have different label names "
                              f"({'; '.join(sorted(found))}); convert them separately")
        return json.loads(found.pop())


class _ShardWriting:
    """This process writing shards in order as the pipeline's results arrive: one writer open at a time."""

    def __init__(self, output: DatasetOutput, spec: ShardSpec, src: Source, counter: "_Progress") -> None:
        self.output = output
        self.spec = spec
        self.src = src
        self.counter = counter
        self.shard: Optional[Shard] = None
        self.writer: Any = None
        self.skipped: List[Tuple[str, ...]] = []

    def write(self, shard: Shard, encoded: Any, skipped: List[Any]) -> None:
        if self.shard is None or shard.number != self.shard.number:
            self.close_current()
            self.shard, self.writer, self.skipped = shard, self.spec.create_writer(shard), []
        if encoded is not None:
            self.writer.write_encoded(encoded)
        self.skipped.extend(tuple(map(str, item)) for item in skipped)
        self.counter.running(shard.number, self.writer.count)

    def close_current(self) -> None:
        if self.shard is None:
            return
        shard, writer = self.shard, self.writer
        members = getattr(self.src, "members", None)
        self.spec.describe(writer, shard, None if shard.member is None or members is None else members[shard.member])
        writer.close()
        self.shard = self.writer = None
        done = shard_done(self.spec, shard.number, self.skipped)
        self.output.record(done, shard)
        self.counter.finished(shard.number, done.count)

    def abort(self) -> None:
        if self.writer is not None and not self.writer.closed:
            self.writer.abort()


class _Progress:
    """The images done across shards: those kept, those finished, and the latest of each running one."""

    def __init__(self, callback: Any, total: Optional[int], kept: int) -> None:
        self.callback = callback
        self.total = total
        self.base = kept
        self.running_counts: Dict[int, int] = {}
        if callback is not None and kept:
            callback(kept, total)

    def running(self, key: int, done: int) -> None:
        self.running_counts[key] = done
        self._say()

    def finished(self, key: int, count: int) -> None:
        self.running_counts.pop(key, None)
        self.base += count
        self._say()

    def _say(self) -> None:
        if self.callback is not None:
            self.callback(self.base + sum(self.running_counts.values()), self.total)


def read_part(context: WorkerContext, shard: Shard, first: int, last: int) -> Tuple[Any, List[Any]]:
    """A worker's job for part ``first .. last - 1`` of a shard: read, transform and encode it.

    Returns ``(encoded, skipped)``; ``encoded`` is None for a shard with no images.
    """
    source = context.source
    reader = source if shard.member is None else source.members[shard.member]
    if last <= first:
        return None, []
    skipped_before = len(getattr(reader, "skipped", ()))
    if shard.indices is not None:
        images, labels = reader.take(shard.indices[first:last])
    else:
        images, labels = next(reader.batches(last - first, shard.start + first, shard.start + last))
    encoded = context.encoder(images, labels)
    return encoded, list(getattr(reader, "skipped", ())[skipped_before:])


def _empty_shard(spec: ShardSpec) -> ShardDone:
    writer = spec.create_writer(Shard(0, 0, 0))
    writer.close()
    return shard_done(spec, 0, [])


def _source_paths(src: Any) -> List[str]:
    """The paths workers read the source from (none for a Source given as an object without one)."""
    paths = getattr(src, "paths", None)
    if paths is None:
        path = getattr(src, "path", None)
        paths = [] if path is None else [path]
    return [os.path.abspath(os.fspath(p)) for p in paths]


def _kept_for_resume(exc: BaseException, output: Optional[DatasetOutput]) -> BaseException:
    """The error to raise for an interruption, after keeping the shards done for a resume."""
    kept = 0 if output is None else output.suspend()
    return kept_for_resume(exc, "" if not kept or output is None else
                           f"the {kept} shard(s) done are kept in {output.partial.path}: run the same conversion "
                           "with resume=True to write only the others")
