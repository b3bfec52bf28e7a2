"""Reading an LMDB store: one shared read-only environment per file and process, records gathered
straight from LMDB's map by the compiled kernel, large reads split over threads; random reads of
a store of one image shape in one kernel call over data.mdb mapped once more
(:mod:`imgconv.stores.lmdb.mapped`).

Before liblmdb maps a file, its page structure and keys are checked
(:mod:`imgconv.stores.lmdb.pagecheck`): liblmdb trusts the file, and a damaged
page could make it read past the end of the map (SIGBUS) or find another
value than the one asked for. What the check found is then compared with the
metadata (number of chunks, value sizes), so that a count or
``records_per_value`` the data does not bear out is refused at open. Each
record is checked at its image's index (format version 2): a record read
for another image fails its checksum.
"""
import functools
import itertools
import os
import stat
from concurrent.futures import wait
from typing import Any, Callable, Dict, List, Optional, Tuple

import lmdb
import numpy as np

from ... import _platform, kernels, record
from ...errors import RecordError, StoreError
from ..batch import VARIABLE, shape_text
from ..metadata import Metadata, load_metadata
from ..read_pool import split_for_threads, thread_pool
from ..reader import Reader
from .layout import (
    FORMAT_NAME,
    FORMAT_VERSION,
    KEY_STRUCT,
    MAX_RECORDS_OPTION,
    METADATA_KEY,
    TABLE_HEAD,
    chunk_key,
    record_span,
    record_version,
    value_offsets,
)
from .mapped import MappedValues, map_values
from .pagecheck import Summary, check_lmdb_file

_KEY_PACK = KEY_STRUCT.pack  # chunk_key without the call


class LmdbReader(Reader):
    """Reads an LMDB store read-only (see :mod:`imgconv.stores.lmdb.layout` for the layout).

    Options: ``readahead`` (default False): let the OS read ahead around
    each page touched; off suits random access to stores larger than memory
    (FORMAT.md has the measurements). LMDB allows one environment per file
    and process, so readers of one store in one process share the setting
    of the first (and so does the map random batches are read from, see
    :mod:`.mapped`). ``verify`` (default True): check each
    record's CRC32C, and so its index; False skips it (headers, bounds and
    the keys are still checked).
    """

    format_name = FORMAT_NAME

    def _open_handles(self) -> Metadata:
        data = os.path.join(self.path, "data.mdb")
        try:
            st = os.stat(data)  # one stat for the checks below: a store is opened again and again
        except OSError:
            st = None
        if st is None and not os.path.lexists(data):
            raise StoreError(f"{self.path}: not an imgconv LMDB store (no data.mdb inside)")
        # liblmdb trusts the file: a damaged page could make it read past the end (SIGBUS),
        # a damaged key or page number another value than the one asked for. A data.mdb that is
        # not a regular file is refused by name there, unopened.
        regular = st is not None and stat.S_ISREG(st.st_mode)
        found = check_lmdb_file(data, self.path, st if regular else None)
        assert st is not None
        self._file_key = (st.st_dev, st.st_ino)
        env = _shared_env(self.path, bool(self._options.get("readahead", False)), self._file_key)
        try:
            meta = self._load(env, st.st_size, found)
        except lmdb.Error as exc:
            _release_env(env)
            raise StoreError(f"{self.path}: corrupt LMDB database: {exc}") from None
        except BaseException:
            _release_env(env)
            raise
        self._env = env
        self._value_starts = found.starts
        self._mapped: Any = None  # MappedValues, False (none), or None: not looked for yet
        return meta

    def _load(self, env, size, found: Summary):
        _check_not_truncated(env, size, self.path)
        try:
            with env.begin() as txn:
                raw = txn.get(METADATA_KEY)
        except lmdb.Error as exc:
            raise StoreError(f"{self.path}: corrupt LMDB database: {exc}") from None
        if raw is None:
            raise StoreError(
                f"{self.path}: LMDB database without imgconv metadata (not an imgconv store, or unfinished)")
        meta = load_metadata(raw, self.path, FORMAT_NAME, FORMAT_VERSION)
        k = meta.get("records_per_value")
        if not isinstance(k, int) or not 1 <= k <= MAX_RECORDS_OPTION:
            raise StoreError(f"{self.path}: invalid records_per_value {k!r} in the metadata "
                             f"(1 .. {MAX_RECORDS_OPTION})")
        self._k = k
        self._verify = bool(self._options.get("verify", True))
        self._record_version = record_version(meta["format_version"])
        if meta.get("record_version", self._record_version) != self._record_version:
            raise StoreError(f"{self.path}: the metadata says records of version {meta['record_version']!r} in a "
                             f"store of format version {meta['format_version']}, whose records are version "
                             f"{self._record_version}")
        self._records = None
        if meta["shape"] != VARIABLE:
            try:
                self._records = _gather(meta["shape"], self._verify, kernels.implementation(), self._record_version)
            except (TypeError, ValueError) as exc:
                raise StoreError(f"{self.path}: invalid shape {meta['shape']!r} in the metadata: {exc}") from None
            self._record_size = self._records.record_size
        _check_against_data(self.path, meta, found)
        return meta

    @property
    def checked(self) -> bool:
        """True: every record carries its CRC32C (pixels, label and shape), checked on every read."""
        return True

    @property
    def positions_checked(self) -> bool:
        """Whether each record is checked at its image's index (format version 2 and later)."""
        self._ensure_open()
        return self._record_version >= 2

    def _close_handles(self) -> None:
        self._mapped = None
        env, self._env = getattr(self, "_env", None), None
        if env is not None:
            _release_env(env)

    def _forget_handles(self) -> None:
        # The environment belongs to the parent; LMDB forbids using it after fork.
        self._env = None
        self._mapped = None

    # reading ----------------------------------------------------------------

    def _value(self, txn, chunk):
        value = txn.get(chunk_key(chunk))
        if value is None:
            raise StoreError(
                f"{self.path}: chunk {chunk} (key {chunk_key(chunk).hex()}) is missing: the store is corrupt")
        return value

    def _chunk_len(self, chunk):
        return min(self._k, len(self) - chunk * self._k)

    def _bounds(self, value, chunk):
        """The record boundaries of the varying-size value of chunk ``chunk`` (see ``value_offsets``)."""
        bounds = value_offsets(memoryview(value), self._chunk_len(chunk))
        if bounds is None:
            raise StoreError(f"{self.path}: chunk {chunk} has a corrupt offset table")
        return bounds

    def _read_varying(self, value, bounds, i, chunk):
        """Image ``i`` (``(image, label)``) from the varying-size ``value`` of its chunk, with ``bounds``."""
        slot = i - chunk * self._k
        span = record_span(bounds, slot)
        if span is None:
            raise StoreError(f"{self.path}: image {i} in chunk {chunk}: the offset table of the value puts its "
                             f"record at bytes {bounds[slot]}..{bounds[slot + 1]} of {bounds[-1]}: the table is "
                             "corrupt")
        try:
            image, label = record.unpack_record(value, span[0], verify=self._verify, position=i,
                                                version=self._record_version)
        except RecordError as exc:
            raise StoreError(f"{self.path}: image {i} in chunk {chunk}: {exc}") from None
        if span[0] + record.HEADER_SIZE + image.nbytes != span[1]:
            raise StoreError(f"{self.path}: image {i} in chunk {chunk}: its record does not end where the offset "
                             "table starts the next one: the table is corrupt")
        return image, label

    def _read_one(self, i):
        try:
            return self._read_one_in_txn(i)
        except lmdb.Error as exc:
            raise self._lmdb_error(exc, f"image {i}") from None

    def _read_one_checked(self, i):
        # store[i]: the record's own CRC32C is checked as it is decoded, so
        # there is nothing left for the base class to check; one step, no
        # layers (the hot path of a Dataset's __getitem__).
        records = self._records
        if records is None:
            return super()._read_one_checked(i)
        chunk, slot = divmod(i, self._k)
        mapped = self._mapped
        if mapped:
            # The map a batch read found: no LMDB lookup. A bad record is
            # read again below, where it is named as it always was.
            try:
                return records.one(mapped.data, int(mapped.starts[chunk]) + slot * self._record_size, i)
            except RecordError:
                pass
        try:
            with self._env.begin(buffers=True) as txn:
                value = txn.get(_KEY_PACK(chunk))
                if value is None:
                    self._value(txn, chunk)  # raises: the chunk is missing
                offset = slot * self._record_size
                try:
                    return records.one(value, offset, i)
                except RecordError:
                    raise self._first_bad([value], [0], [offset], np.array([i])) from None
        except lmdb.Error as exc:
            raise self._lmdb_error(exc, f"image {i}") from None

    def _read_many(self, indices, out):
        mapped = self._mapped_values()
        if mapped is not None:
            result = self._gather_mapped(mapped, indices, out)
            if result is not None:
                return result
            # A bad record: read the batch again value by value, which names it as it always has.
        try:
            return self._read_many_in_txn(indices, out)
        except lmdb.Error as exc:
            raise self._lmdb_error(exc, f"{indices.size} images") from None

    def _read_range(self, start, stop, out):
        try:
            return self._read_range_in_txn(start, stop, out)
        except lmdb.Error as exc:
            raise self._lmdb_error(exc, f"images {start}..{stop - 1}") from None

    def _lmdb_error(self, exc, what):
        return StoreError(f"{self.path}: reading {what} failed, the LMDB database is corrupt: {exc}")

    def _mapped_values(self) -> Optional[MappedValues]:
        """This process's :class:`MappedValues` of the store, or None for a store without (see
        :mod:`.mapped`); found on the first read that wants it, then shared with the environment."""
        mapped = self._mapped
        if mapped is None:
            mapped = False
            if self._records is not None:
                try:
                    mapped = _shared_mapped(self._env, os.path.join(self.path, "data.mdb"), self._file_key,
                                            self._value_starts, len(self), self._k, self._record_size,
                                            bool(self._options.get("readahead", False))) or False
                except lmdb.Error as exc:
                    raise self._lmdb_error(exc, "the chunks' values") from None
                except OSError as exc:
                    raise StoreError(f"{self.path}: cannot map data.mdb: {exc}") from None
            self._mapped = mapped
        return mapped or None

    def _gather_mapped(self, mapped: MappedValues, indices, out):
        """``(out, labels)`` of ``indices`` gathered from the map in one kernel call (threads for a
        large read); None when a record is bad."""
        n = indices.size
        if out is None:
            out = np.empty((n, *self.shape), np.uint8)
        labels = np.empty(n, np.int64)
        buffers, sources, offsets = [mapped.data], np.zeros(n, np.int64), mapped.offsets(indices)
        bad = _run_parts(n, self._record_size, _gather_part, self._records, buffers, sources, offsets, out, labels,
                         indices)
        return None if any(b >= 0 for b in bad) else (out, labels)

    def _read_one_in_txn(self, i):
        chunk, slot = divmod(i, self._k)
        with self._env.begin(buffers=True) as txn:
            value = self._value(txn, chunk)
            if self.shape != VARIABLE:
                return self._read_one_fixed(value, i, slot)
            return self._read_varying(value, self._bounds(value, chunk), i, chunk)

    def _read_one_fixed(self, value, i, slot):
        offset = slot * self._record_size
        records = self._records
        assert records is not None  # a store of one image shape
        try:
            return records.one(value, offset, i)
        except RecordError:
            raise self._first_bad([value], [0], [offset], np.array([i])) from None

    def _read_many_in_txn(self, indices, out):
        distinct, sources = np.unique(indices // self._k, return_inverse=True)
        with self._env.begin(buffers=True) as txn:
            # Buffers point into the map: valid only inside this transaction.
            values = [self._value(txn, int(c)) for c in distinct]
            return self._gather(values, distinct, sources.reshape(-1), indices, out)

    def _read_range_in_txn(self, start, stop, out):
        first, last = start // self._k, (stop - 1) // self._k
        with self._env.begin(buffers=True) as txn:
            values = self._scan(txn, first, last - first + 1)
            indices = np.arange(start, stop, dtype=np.int64)
            distinct = np.arange(first, last + 1, dtype=np.int64)
            return self._gather(values, distinct, indices // self._k - first, indices, out)

    def _scan(self, txn, first, count):
        """The values of chunks ``first .. first + count - 1``, by one cursor scan (keys sort in chunk order)."""
        cursor = txn.cursor()
        items = list(itertools.islice(cursor.iternext(), count)) if cursor.set_key(chunk_key(first)) else []
        # One comparison of all keys at once instead of one per value.
        expected = np.arange(first, first + count, dtype=">u8").tobytes()
        if len(items) != count or b"".join(key for key, _ in items) != expected:
            present = itertools.takewhile(lambda pair: bytes(pair[0][0]) == chunk_key(pair[1]),
                                          zip(items, itertools.count(first)))
            self._value(txn, first + sum(1 for _ in present))  # raises: that chunk is missing
        return [value for _, value in items]

    def _gather(self, values, distinct, sources, indices, out):
        slots = indices % self._k
        if self.shape == VARIABLE:
            return self._gather_variable(values, distinct, sources, slots, indices)
        n = indices.size
        if out is None:
            out = np.empty((n, *self.shape), np.uint8)
        labels = np.empty(n, np.int64)
        offsets = slots * self._record_size
        # record.Gather, not record.unpack_records: the buffers are LMDB's
        # read-only map, which no writeable ``out`` can overlap, and
        # unpack_records' per-buffer checks cost 15 ms of CPU per 100,000
        # CIFAR images, a third of a whole read. Large reads are split over threads (the
        # kernel runs without the GIL: copy, checksum and the page faults of
        # a fresh ``out`` all scale).
        bad = _run_parts(n, self._record_size, _gather_part, self._records, values, sources, offsets, out, labels,
                         indices)
        if any(b >= 0 for b in bad):
            raise self._first_bad(values, sources, offsets, indices)
        return out, labels

    def _gather_variable(self, values, distinct, sources, slots, indices):
        tables = [self._bounds(v, int(c)) for v, c in zip(values, distinct)]
        images, labels = [], np.empty(indices.size, np.int64)
        for n, (s, i) in enumerate(zip(sources.tolist(), indices.tolist())):
            image, labels[n] = self._read_varying(values[s], tables[s], i, int(distinct[s]))
            images.append(image)
        return images, labels

    def _first_bad(self, values, sources, offsets, indices):
        """The StoreError for the first record of a failed gather, found one by one (error path only)."""
        for n, (s, offset) in enumerate(zip(sources, offsets)):
            try:
                image, _ = record.unpack_record(values[s], int(offset), position=int(indices[n]),
                                                version=self._record_version)
            except RecordError as exc:
                return StoreError(f"{self.path}: image {indices[n]} in chunk {indices[n] // self._k}: {exc}")
            if image.shape != self.shape:
                return StoreError(
                    f"{self.path}: image {indices[n]} is {shape_text(image.shape)}, "
                    f"the metadata says {shape_text(self.shape)}: the store is corrupt"
                )
        return StoreError(f"{self.path}: the records of this batch do not decode")



class _Environments:
    """This process's open environments: {(st_dev, st_ino) of data.mdb: [env, users, mapped]}.

    LMDB allows one Environment per database file per process, so readers of
    the same store share one. Keyed by file, not path: a store replaced at the
    same path (overwrite=True) is a new file and gets a new environment.
    ``mapped`` is the :class:`MappedValues` of the file, once found (False:
    none; None: not looked for yet).
    """

    def __init__(self) -> None:
        self.entries: Dict[Tuple[int, int], List[Any]] = {}
        self.lock = _platform.ForkSafeLock()

    def close_inherited(self) -> None:
        # A forked child inherits the parent's environments: it must not use
        # them, and py-lmdb refuses a second one for the same path while they
        # exist. Closing them here only unmaps this process's copy and closes
        # its descriptors: they are read-only and lock-free, so no lock or
        # reader slot is shared with the parent.
        for env, *_ in self.entries.values():
            env.close()
        self.entries.clear()


_ENVS = _platform.PerProcess(_Environments, discard=_Environments.close_inherited)


def _shared_env(path: str, readahead: bool, key: Tuple[int, int]) -> Any:
    """The environment of the store at ``path`` for this process, shared by its readers.

    ``key`` is (st_dev, st_ino) of its data.mdb. LMDB allows one environment
    per file per process, so a reader asking for another ``readahead`` than
    the one that opened the file shares that one's setting (readahead is
    advice to the OS about cold reads, never about results).
    """
    envs = _ENVS.get()
    with envs.lock:
        entry = envs.entries.get(key)
        if entry is None:
            try:
                # readonly + lock=False is safe because an imgconv store is
                # immutable once renamed into place: no writer ever opens it
                # again, so readers need no reader table. It also lets stores on
                # read-only media and any number of concurrent readers work.
                env = lmdb.open(path, readonly=True, lock=False, subdir=True, max_dbs=0, readahead=readahead)
            except lmdb.Error as exc:
                raise StoreError(f"{path}: not a readable LMDB database: {exc}") from None
            entry = envs.entries[key] = [env, 0, None]
        entry[1] += 1
        return entry[0]


def _release_env(env: Any) -> None:
    envs = _ENVS.peek()
    if envs is None:
        return  # opened by another process: never touched here
    with envs.lock:
        for key, entry in list(envs.entries.items()):
            if entry[0] is env:
                entry[1] -= 1
                if entry[1] <= 0:
                    del envs.entries[key]
                    env.close()
                return


@functools.lru_cache(maxsize=64)
def _gather(shape: Tuple[int, int, int], verify: bool, kernel: Any, version: int) -> record.Gather:
    """The record.Gather of ``shape`` and record ``version``, shared by the readers of this process (a
    Gather holds no mutable state); ``kernel``, the kernels in use, is part of the key: a switch of them
    is followed."""
    return record.Gather(shape, np.uint8, verify=verify, version=version)


def _run_parts(n: int, item_bytes: int, part: Callable[..., int], *args: Any) -> List[int]:
    """``part(*args, a, b)`` over the parts of ``0 .. n - 1`` that reading ``n`` items of
    ``item_bytes`` is split into, in the thread pool when more than one; their results in order."""
    parts = split_for_threads(n, item_bytes)
    if len(parts) == 1:
        return [part(*args, 0, n)]
    futures = [thread_pool().submit(part, *args, a, b) for a, b in parts]
    # Every thread must be done before the caller goes on (and leaves the
    # transaction whose buffers they read), even when one failed.
    wait(futures)
    return [future.result() for future in futures]


def _shared_mapped(env: Any, data_path: str, key: Tuple[int, int], starts: Any, count: int, k: int,
                   record_size: int, readahead: bool) -> Optional[MappedValues]:
    """The :class:`MappedValues` of ``env`` (see :func:`map_values`), found once per environment and
    kept with it: readers of one store in one process share it, as they share the environment."""
    envs = _ENVS.get()
    with envs.lock:
        entry = envs.entries.get(key)
        if entry is None or entry[0] is not env:
            return map_values(env, data_path, key, starts, count, k, record_size, readahead)
        if entry[2] is None:
            entry[2] = map_values(env, data_path, key, starts, count, k, record_size, readahead) or False
        return entry[2] or None


def _gather_part(records, values, sources, offsets, out, labels, indices, a, b):
    """Gather records ``a .. b - 1`` (one kernel call, without the GIL); -1, or ``a`` when one of them is bad."""
    try:
        records.into(values, sources[a:b], offsets[a:b], out[a:b], labels[a:b], indices[a:b])
    except RecordError:
        return a
    return -1


def _check_against_data(path: str, meta: Metadata, found: Summary) -> None:
    """Refuse metadata that the chunks :func:`check_lmdb_file` found do not bear out (count, K, value sizes)."""
    n, k = meta["count"], meta["records_per_value"]
    chunks = -(-n // k)
    if found.chunks != chunks:
        raise StoreError(f"{path}: the metadata says {n} images in chunks of {k} ({chunks} chunks), data.mdb "
                         f"holds {found.chunks} chunks: the store is corrupt")
    if not chunks:
        return
    last = n - (chunks - 1) * k  # images in the last chunk
    if meta["shape"] != VARIABLE:
        size = record.HEADER_SIZE + int(np.prod(meta["shape"], dtype=object))
        expected = f"chunks of {k} records of {size} bytes"
        sound = (chunks == 1 or found.smallest == found.largest == k * size) and found.last == last * size
    else:
        expected = f"chunks of {k} records, each value at least its offset table and records of one pixel"
        sound = (chunks == 1 or found.smallest >= _smallest_value(k)) and found.last >= _smallest_value(last)
    if not sound:
        sizes = (f"values of {found.smallest} .. {found.largest} bytes, the last of {found.last}" if chunks > 1
                 else f"one value of {found.last} bytes")
        raise StoreError(f"{path}: the metadata says {n} images in {expected}; data.mdb holds {sizes}: "
                         "the store is corrupt")


def _smallest_value(records: int) -> int:
    """The bytes of the smallest varying-size value of ``records`` records: the table, records of one pixel."""
    return TABLE_HEAD.size + records * (8 + record.HEADER_SIZE + 1)


def _check_not_truncated(env, have, path):
    # A truncated data.mdb would be mapped past its end and reading there
    # kills the process with SIGBUS; refuse it up front instead.
    need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    if have < need:
        raise StoreError(f"{path}: data.mdb is truncated: {have} bytes, the database needs {need}")


