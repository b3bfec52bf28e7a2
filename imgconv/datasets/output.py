"""A sharded dataset being written: the locked partial output, its journal, the shards, the manifest.

The dataset grows where a store does (:mod:`imgconv.stores.partial`):
``.{name}.imgconv-partial/`` beside its path, locked by the converter (the
driver, on a cluster), holds ``journal.jsonl`` and the dataset directory
``{name}/``. Each shard is written by an ordinary store writer into that
directory, atomically (its own partial output, then a rename), by whichever
process converts it: the converter itself, or a worker on any machine that
sees the directory. A shard written again (a task retried after its worker
died) replaces the earlier one whole. The journal gets one line per shard
finished (its count, bytes, metadata checksum, the files it skipped); when
every shard is there, the manifest is written into the dataset directory
and the directory renamed into place (:func:`imgconv.stores.atomic.commit`):
nothing is at the path until the dataset is whole.

An interrupted conversion leaves the partial output with its journal; a
run with ``resume=True`` of the same job keeps the shards the journal lists
(each checked: it opens, its metadata checksum, count and size agree) and
writes only the others.
"""
import os
from collections import namedtuple
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from .. import _platform, stores
from .._version import __version__
from ..errors import StoreError
from ..resume.inputs import InputFiles
from ..resume.journal import JOURNAL_VERSION, Journal
from ..resume.session import what_differs
from ..stores.atomic import check_target, commit
from ..stores.batch import VARIABLE, StoreShape
from ..stores.metadata import METADATA_CHECKSUM
from ..stores.partial import PARTIAL_SUFFIX, PartialOutput, remove_finished_partial
from .manifest import ShardEntry, make_manifest, shard_name, write_manifest
from .plan import Shard, shard_batches

ShardDone = namedtuple("ShardDone", "number name count bytes metadata_crc32c skipped label_names")
ShardDone.__doc__ = """A shard written: its ``number`` and file ``name``, its image ``count``, its
size in ``bytes``, the CRC32C of its metadata, the files it ``skipped`` (a list
of (path, reason)) and the ``label_names`` it holds."""

# How long a shard's writer waits for the lock of its partial output held by another
# process: a task of an interrupted run, still finishing the same shard on a worker.
LOCK_WAIT_SECONDS = 120.0


class ShardSpec:
    """Everything a worker needs to write any shard of one dataset (picklable, a few hundred bytes).

    ``directory`` is the dataset directory being built; shards are written
    by the store ``format`` with the writer ``options``, all with the same
    ``shape`` (an (H, W, C) or VARIABLE), ``label_names`` and a source
    description made from ``source``; a worker reads a shard in batches of
    ``batch_size`` images and ``batch_bytes`` bytes of decoded pixels at most.
    """

    def __init__(self, directory: str, format_name: str, options: Mapping[str, Any], shape: StoreShape,
                 label_names: Optional[List[str]], source: str, batch_size: int,
                 batch_bytes: Optional[int] = None) -> None:
        self.directory = directory
        self.format_name = format_name
        self.options = dict(options)
        self.shape = shape
        self.label_names = label_names
        self.source = source
        self.batch_size = batch_size
        self.batch_bytes = batch_bytes
        spec = stores.get_format(format_name)
        self.suffix = spec.suffixes[0] if spec.suffixes else ""

    def name(self, number: int) -> str:
        """The file name of shard ``number``."""
        return shard_name(number, self.suffix)

    def path(self, number: int) -> str:
        """The path of shard ``number``."""
        return os.path.join(self.directory, self.name(number))

    def create_writer(self, shard: Shard, label_names: Any = None) -> stores.Writer:
        """A writer of ``shard``, replacing any earlier copy of it (a shard is rewritten whole).

        Waits up to :data:`LOCK_WAIT_SECONDS` for another process still
        writing the same shard (a task of an interrupted run).
        """
        names = self.label_names if label_names is None else label_names
        where = f"images {shard.start}..{'end' if shard.stop is None else shard.stop - 1}"
        if shard.member is not None:
            where = f"input {shard.member}, {where}"
        elif shard.indices is not None:
            where = f"{shard.size} images of the permutation from position {shard.start}"
        writer = stores.create(self.path(shard.number), self.format_name, overwrite=True, label_names=names,
                               source=f"{self.source} [shard {shard.number}: {where}]", shape=self.shape,
                               **self.options)
        _lock_waiting(writer)
        return writer

    def describe(self, writer: stores.Writer, shard: Shard, member: Any) -> None:
        """Give ``writer``, about to close, the label names of its input when the dataset has none yet.

        The inputs of a source of several inputs may be archives, which learn
        their label names as they are read: by a shard's end its input has.
        """
        if self.label_names is None and shard.member is not None and member is not None:
            writer.describe(label_names=member.label_names)


def _lock_waiting(writer: stores.Writer) -> None:
    """Lock ``writer``'s partial output, waiting a while for another process holding it."""
    import time

    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        try:
            writer.begin()
            return
        except StoreError as exc:
            if "another process" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def write_shard(context: Any, shard: Shard) -> ShardDone:
    """A job converting one shard whole: read its images from ``context.source``, encode, write, commit.

    ``context.output`` is the :class:`ShardSpec`. Runs wherever the engine
    puts it (a Dask worker); reports the images written as it goes
    (:func:`imgconv.pipeline.progress.report`).
    """
    from ..pipeline.progress import report

    spec: ShardSpec = context.output
    source = context.source
    return _write_batches(spec, shard, source, shard_batches(source, shard, spec.batch_size, spec.batch_bytes),
                          report)


def write_shard_from_batches(context: Any, shard: Shard, batches: List[Tuple[Any, Any]]) -> ShardDone:
    """A job writing one shard from batches the driver read (a stream only the driver can read)."""
    from ..pipeline.progress import report

    return _write_batches(context.output, shard, None, iter(batches), report)


def _write_batches(spec: ShardSpec, shard: Shard, source: Any, batches: Iterable[Tuple[Any, Any]],
                   report: Any) -> ShardDone:
    member = source if source is None or shard.member is None else source.members[shard.member]
    skipped_before = len(getattr(member, "skipped", ()))
    writer = spec.create_writer(shard)
    try:
        encoder = writer.encoder()
        for images, labels in batches:
            writer.write_encoded(encoder(images, labels))
            report(shard.number, writer.count)
        spec.describe(writer, shard, member)
        writer.close()
    finally:
        if not writer.closed:
            writer.abort()
    skipped = [tuple(map(str, s)) for s in getattr(member, "skipped", ())[skipped_before:]]
    return shard_done(spec, shard.number, skipped)


def shard_done(spec: ShardSpec, number: int, skipped: List[Tuple[str, ...]]) -> ShardDone:
    """The facts of the finished shard ``number``, read back from it (it opens on its own)."""
    path = spec.path(number)
    with stores.open(path, spec.format_name) as reader:
        count, checksum, names = len(reader), reader.metadata.get(METADATA_CHECKSUM), reader.label_names
    return ShardDone(number, spec.name(number), count, _platform.disk_usage(path).data_bytes, int(checksum or 0),
                     skipped, names)


class DatasetOutput:
    """The partial output of one sharded dataset, held by its converter (see the module docstring).

    ``begin(header, resume)`` locks it and keeps or discards what an
    earlier run left; ``record(done)`` journals a finished shard; ``finish``
    writes the manifest and renames the dataset into place; ``suspend``
    keeps the work for a resume, ``abort`` removes it.
    """

    def __init__(self, path: Any, format_name: str, overwrite: bool, durable: bool = True) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.durable = durable  # False: the manifest and the rename into place are not synced, like the shards
        stores.get_format(format_name)
        remove_finished_partial(self.path)
        check_target(self.path, overwrite)
        self.format_name = format_name
        self.overwrite = overwrite
        self.partial = PartialOutput(self.path)
        self.directory = self.partial.store
        self.journal = Journal(self.partial.path)
        self.restart_reason: Optional[str] = None
        self.done: Dict[int, Dict[str, Any]] = {}  # journal entries of the shards finished, by number
        self._prepared = False
        self._closed = False

    def begin(self, header: Dict[str, Any], resume: bool, expected: Any,
              inputs: Optional[InputFiles] = None) -> Dict[int, Dict[str, Any]]:
        """Lock the partial output; keep (``resume``) or discard what an earlier run of the job left.

        ``expected(number)`` is the :class:`Shard` the plan has under that
        number (None when it has none); ``inputs`` the fingerprint of the
        files the source reads (kept beside the journal, so that a resume
        refused because they changed names them). Returns the journal entries of the
        shards kept, by number. Raises StoreError when another process writes
        the dataset, when ``resume`` meets another job (unless overwriting),
        and when an earlier run of this job left shards and neither
        ``resume`` nor overwriting says what to do with them.
        """
        self.partial.acquire()
        try:
            old_header, entries = self.journal.read()
            kept: Dict[int, Dict[str, Any]] = {}
            if resume and old_header is not None:
                kept = self._continue(old_header, header, entries, expected, inputs)
            elif old_header == header and entries and os.path.isdir(self.directory) and not self.overwrite:
                raise StoreError(
                    f"{self.path}: an interrupted conversion left {len(entries)} finished shard(s) in "
                    f"{self.partial.path}; pass resume=True to continue it, or overwrite=True to discard it and "
                    "start over")
            if not kept:
                self.partial.clear()
                os.mkdir(self.directory)
            else:
                self._remove_strays(kept)
            self.journal.start(header, list(kept.values()))
            if inputs is not None:
                inputs.save(self.partial.path)
        except OSError as exc:
            self.partial.release()
            raise StoreError(f"{self.path}: cannot prepare the partial output {self.partial.path}: {exc}") from None
        except BaseException:
            self.partial.release()
            raise
        self._prepared = True
        self.done = dict(kept)
        return kept

    def record(self, done: ShardDone, shard: Shard) -> None:
        """Journal the finished shard ``done`` (planned as ``shard``)."""
        entry = {**shard.identity(), "count": int(done.count), "position": int(done.number), "name": done.name,
                 "bytes": int(done.bytes), METADATA_CHECKSUM: int(done.metadata_crc32c),
                 "skipped": [list(item) for item in done.skipped], "label_names": done.label_names}
        try:
            self.journal.append(entry)
        except OSError as exc:
            raise StoreError(f"{self.path}: writing the journal failed: {exc}") from None
        self.done[done.number] = entry

    def finish(self, *, shape: StoreShape, label_names: Any, source: str, options: Dict[str, Any],
               shard_size: Dict[str, int], format_version: int) -> Dict[str, Any]:
        """Write the manifest of the shards done (in order) and rename the dataset into place."""
        entries = [ShardEntry(e["name"], e["count"], e["bytes"], e[METADATA_CHECKSUM])
                   for _, e in sorted(self.done.items())]
        manifest = make_manifest(format_name=self.format_name, format_version=format_version, shape=shape,
                                 label_names=label_names, source=source, options=options, shard_size=shard_size,
                                 shards=entries)
        try:
            write_manifest(self.directory, manifest, sync=self.durable)
            commit(self.directory, self.path, self.overwrite, sync=self.durable)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot finish the dataset: {exc}") from None
        self._closed = True
        self.partial.remove()
        return manifest

    def suspend(self) -> int:
        """Keep the partial output for a resume (drop the lock); returns the shards it keeps."""
        if self._closed:
            return 0
        self._closed = True
        if not self.done:
            self._remove()
            return 0
        self.partial.release()
        return len(self.done)

    def abort(self) -> None:
        """Remove the partial output (when this converter prepared it); the path is left untouched."""
        if self._closed:
            return
        self._closed = True
        if self._prepared:
            self._remove()
        else:
            self.partial.release()

    # helpers ---------------------------------------------------------------

    def _remove(self) -> None:
        self.partial.remove()

    def _continue(self, old: Dict[str, Any], header: Dict[str, Any], entries: List[Dict[str, Any]],
                  expected: Any, inputs: Optional[InputFiles]) -> Dict[int, Dict[str, Any]]:
        if old != header:
            if self.overwrite:
                return {}
            raise StoreError(f"{self.path}: cannot resume: {what_differs(old, header, inputs, self.partial.path)}; "
                             "pass overwrite=True to discard it and start over")
        kept: Dict[int, Dict[str, Any]] = {}
        for entry in entries:
            shard = expected(entry.get("shard"))
            if shard is not None and _same_shard(entry, shard) and self._intact(entry):
                kept[shard.number] = entry
        if entries and not kept:
            self.restart_reason = (f"none of the {len(entries)} shard(s) in {self.partial.path} could be kept "
                                   "(missing or changed); started over")
        return kept

    def _intact(self, entry: Dict[str, Any]) -> bool:
        """Whether a journalled shard is still what the journal says (opens; checksum, count, bytes)."""
        path = os.path.join(self.directory, str(entry.get("name")))
        try:
            with stores.open(path, self.format_name) as reader:
                same = (reader.metadata.get(METADATA_CHECKSUM) == entry.get(METADATA_CHECKSUM)
                        and len(reader) == entry.get("count"))
        except (StoreError, OSError, ValueError):
            return False
        return same and _platform.disk_usage(path).data_bytes == entry.get("bytes")

    def _remove_strays(self, kept: Dict[int, Dict[str, Any]]) -> None:
        """Remove what is in the dataset directory besides the shards kept (shards to write again)."""
        keep = {entry["name"] for entry in kept.values()}
        for name in os.listdir(self.directory):
            # A shard's partial output is its writer's (perhaps a task of the interrupted run, still
            # working): the next writer of that shard takes it over under its lock.
            if name not in keep and not name.endswith(PARTIAL_SUFFIX):
                _platform.remove_path(os.path.join(self.directory, name))


def _same_shard(entry: Dict[str, Any], shard: Shard) -> bool:
    return all(entry.get(key) == value for key, value in shard.identity().items())


def journal_header(*, format_name: str, format_version: int, options: Dict[str, Any], shape: Optional[StoreShape],
                   shard_size: Dict[str, int], plan: Dict[str, Any], job: Mapping[str, Any]) -> Dict[str, Any]:
    """The journal header of a sharded conversion: what must match for a resume to keep its shards."""
    import json

    header = {
        "journal": JOURNAL_VERSION, "kind": "sharded dataset", "format": format_name,
        "format_version": format_version, "imgconv_version": __version__, "options": options,
        "shape": None if shape is None else (VARIABLE if shape == VARIABLE else list(shape)),
        "shard_size": shard_size, "plan": plan, "job": job,
    }
    return json.loads(json.dumps(header, sort_keys=True))  # as it reads back: tuples become lists
