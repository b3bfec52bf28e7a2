"""Writing an LMDB store (the layout is in :mod:`imgconv.stores.lmdb.layout`).

Records are packed by the workers (``encode_batch``) at positions 0 .. N-1 of
their batch; this writer, which alone knows where a batch lands, moves them to
their indices in the store (a change of their checksums only,
:func:`imgconv.record.reposition`), groups them
into whole chunks of K records and commits the chunks in transactions of
16 MiB, never per batch, so the file does not depend on how the images were
split into batches. LMDB does not sync per transaction: a background
:class:`_Flusher` writes committed pages to disk while the next ones are
packed, and the writer syncs the rest before the rename (unless
``durable=False``: then nothing is synced, as LMDB's own ``sync=False``).
"""
import errno
import os
import threading
from typing import Any, Dict, List, Mapping, Optional, Tuple

import lmdb
import numpy as np

from ... import _platform, _validate, record
from ...errors import RecordError, StoreError, StoreOptionError
from ..batch import VARIABLE, StoreShape
from ..metadata import Metadata, dump_metadata
from ..writer import Writer
from .layout import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MAX_RECORDS_OPTION,
    METADATA_KEY,
    EncodedRecords,
    chunk_key,
    default_records_per_value,
    encode_batch,
    first_records,
    record_span,
    record_version,
    value_offsets,
    value_with_table,
)

INITIAL_MAP_SIZE = 64 * 1024 * 1024
# Chunks are committed in transactions of whole values, closed once they
# hold this many bytes, never per batch: the file then does not depend on how
# the images were split into batches.
TXN_BYTES = 16 * 1024 * 1024


class LmdbWriter(Writer):
    """Writes an LMDB store (see :mod:`imgconv.stores.lmdb.layout` for the layout).

    Options: ``records_per_value`` (K; by default about 192 KiB per value
    for a store of one shape, 16 for varying sizes) and ``map_size`` (initial
    map size; it grows as needed, so MDB_MAP_FULL never reaches the caller).
    Resumable: committed transactions survive the death of the process.
    """

    format_name = FORMAT_NAME
    format_version = FORMAT_VERSION

    def __init__(self, path: Any, *, records_per_value: Optional[int] = None, map_size: int = INITIAL_MAP_SIZE,
                 **common: Any) -> None:
        super().__init__(path, **common)
        how: Dict[str, Any] = {"error": StoreOptionError, "where": f"{self.path}: "}
        if records_per_value is not None:
            records_per_value = _validate.integer("records_per_value", records_per_value, minimum=1,
                                                  maximum=MAX_RECORDS_OPTION, **how)
        self.records_per_value = records_per_value
        self.options = {"records_per_value": records_per_value}
        self.map_size = max(_validate.positive_int("map_size", map_size, **how), 1 << 20)
        self._env: Any = None
        self._flusher: Optional[_Flusher] = None
        self._chunk = 0
        self._pending: List[Tuple[np.ndarray, np.ndarray]] = []  # (buffer, offsets from 0) of a chunk begun
        self._pending_count = 0
        self._ready: List[Any] = []  # whole chunks waiting for their transaction
        self._ready_bytes = 0

    def encoder(self) -> Any:
        """The picklable encode step: :func:`~imgconv.stores.lmdb.layout.encode_batch`."""
        return encode_batch

    def _start(self):
        os.mkdir(self.temporary)
        # LMDB does not sync per transaction: a background flusher (below)
        # writes committed pages to disk while the next ones are packed, and
        # _finish syncs the rest before the rename. A crash before then
        # leaves only the temporary directory. Not durable: nothing synced.
        try:
            self._env = lmdb.open(
                self.temporary, map_size=self.map_size, subdir=True, sync=False, metasync=False,
                readahead=False, max_dbs=0,
            )
        except lmdb.Error as exc:
            raise StoreError(f"{self.path}: cannot create the LMDB database: {exc}") from None
        self._flusher = _Flusher(os.path.join(self.temporary, "data.mdb")) if self.durable else None

    def _write(self, encoded: EncodedRecords) -> None:
        k = self._records_per_value()
        buffer, offsets = encoded.buffer, encoded.offsets
        if not buffer.flags.writeable:
            buffer = buffer.copy()
        record.reposition(record.PackedRecords(buffer, offsets), 0, self.count)
        n = len(offsets) - 1
        first = 0
        if self._pending_count:
            # Continue the chunk begun by earlier batches. Its parts are kept
            # apart and joined once, when the chunk is whole.
            first = min(k - self._pending_count, n)
            self._pending.append((buffer[offsets[0] : offsets[first]].copy(), offsets[: first + 1] - offsets[0]))
            self._pending_count += first
            if self._pending_count < k:
                return
            self._add_value(self._pending_value())
        whole = (n - first) // k
        for q in range(whole):
            self._add_value(self._value(buffer, offsets, first + q * k, first + (q + 1) * k))
        rest = first + whole * k
        if rest < n:
            self._pending = [(buffer[offsets[rest] :].copy(), offsets[rest:] - offsets[rest])]
            self._pending_count = n - rest

    def _pending_value(self):
        """The value of the records waiting in ``_pending``, which is emptied."""
        buffers = [b for b, _ in self._pending]
        starts = np.cumsum([0] + [b.size for b in buffers])
        offsets = np.concatenate([o[:-1] + start for (_, o), start in zip(self._pending, starts)] + [starts[-1:]])
        self._pending, self._pending_count = [], 0
        buffer = np.concatenate(buffers) if len(buffers) > 1 else buffers[0]
        return self._value(buffer, offsets, 0, len(offsets) - 1)

    def _add_value(self, value):
        self._ready.append(value)
        self._ready_bytes += len(value)
        if self._ready_bytes >= TXN_BYTES:
            self._put(self._ready)
            self._ready, self._ready_bytes = [], 0

    def _value(self, buffer, offsets, first, stop):
        data = buffer[offsets[first] : offsets[stop]]
        if self.shape == VARIABLE:
            return value_with_table(data, offsets[first : stop + 1] - offsets[first])
        return data

    def _put(self, values, extra=(), flush=True):
        """Put ``values`` as the next chunks (and ``extra`` key/values) in one transaction;
        with ``flush``, have the flusher write it to disk meanwhile."""
        needed = sum(len(v) for v in values) + sum(len(v) for _, v in extra)
        try:
            self._reserve(needed)
            while True:
                try:
                    with self._env.begin(write=True) as txn:
                        for q, value in enumerate(values):
                            # append=True: keys arrive in sorted order, so LMDB
                            # appends to the last leaf instead of searching.
                            txn.put(chunk_key(self._chunk + q), value, append=True)
                        for key, value in extra:
                            txn.put(key, value)
                    break
                except lmdb.MapFullError:
                    self._grow(2 * self._env.info()["map_size"])
        except lmdb.Error as exc:
            raise StoreError(f"{self.path}: LMDB failed while writing: {exc}{_space_note(self.temporary)}") from None
        self._chunk += len(values)
        if flush and self._flusher is not None:
            self._flusher.request()

    def _reserve(self, needed):
        info = self._env.info()
        used = (info["last_pgno"] + 1) * 4096
        # Values take whole pages plus tree pages; a quarter of slack covers both.
        want = used + needed + needed // 4 + (1 << 20)
        if want > info["map_size"]:
            self._grow(max(want, 2 * info["map_size"]))

    def _grow(self, size):
        try:
            self._env.set_mapsize(size)
        except lmdb.Error as exc:
            raise StoreError(f"{self.path}: cannot grow the LMDB map to {size} bytes: {exc}") from None

    def _shape(self) -> StoreShape:
        assert self.shape is not None, "the shape is known once an image was written or a resume reopened"
        return self.shape

    def _records_per_value(self) -> int:
        if self.records_per_value is None:
            self.records_per_value = default_records_per_value(self._shape())
        return self.records_per_value

    def format_metadata(self) -> dict:
        """K, the record format version and the key and value layout."""
        return {
            "records_per_value": self._records_per_value(),
            "record_version": record_version(FORMAT_VERSION),
            "key": ">Q chunk number",
            "value": "offset table + records" if self.shape == VARIABLE else "records",
        }

    def _finish(self, meta: Metadata) -> None:
        last = self._ready
        if self._pending_count:
            last.append(self._pending_value())
        self._ready, self._ready_bytes = [], 0
        try:
            # Synced here, not by the flusher: a store of one transaction starts no thread.
            self._put(last, extra=[(METADATA_KEY, dump_metadata(meta))], flush=False)
            if self._flusher is not None:
                self._flusher.stop()
                self._env.sync(True)
        except (lmdb.Error, OSError) as exc:
            raise StoreError(f"{self.path}: LMDB failed while finishing the store: {exc}") from None
        finally:
            self._abort()

    def _abort(self) -> None:
        if self._flusher is not None:
            try:
                self._flusher.stop(check=False)
            except OSError:
                pass
            self._flusher = None
        env, self._env = self._env, None
        if env is not None:
            try:
                env.close()
            except lmdb.Error:
                pass

    # Resumable -------------------------------------------------------------------
    # Committed transactions survive the death of the process (LMDB is
    # copy-on-write), so the output holds every chunk committed before a kill;
    # those chunks are checked record by record before they are trusted.

    def _durable_count(self) -> int:
        return self._chunk * (self.records_per_value or 0)

    def _reopen(self, state: Mapping[str, Any]) -> int:
        if state.get("records_per_value"):
            self.records_per_value = int(state["records_per_value"])
        data = os.path.join(self.temporary, "data.mdb")
        try:
            self._env = lmdb.open(self.temporary, map_size=max(self.map_size, 2 * os.path.getsize(data)), subdir=True,
                                  sync=False, metasync=False, readahead=False, max_dbs=0)
            self._flusher = _Flusher(data) if self.durable else None
            if self.records_per_value is None:
                return 0
            chunks = 0
            with self._env.begin(buffers=True) as txn:
                for key, value in txn.cursor():
                    if bytes(key) != chunk_key(chunks) or not self._chunk_intact(bytes(value), chunks):
                        break
                    chunks += 1
        except lmdb.Error as exc:
            raise StoreError(f"LMDB cannot open it: {exc}") from None
        return chunks * self.records_per_value

    def _chunk_intact(self, value: bytes, chunk: int) -> bool:
        """Whether ``value`` holds chunk ``chunk`` whole: records that decode with their checksums at their indices."""
        k = self._records_per_value()
        shape = self._shape()
        if shape == VARIABLE:
            bounds = value_offsets(value, k)
            if bounds is None:
                return False
            spans = [record_span(bounds, slot) for slot in range(k)]
        else:
            size = record.record_size(shape)
            if len(value) != k * size:
                return False
            spans = [(slot * size, (slot + 1) * size) for slot in range(k)]
        try:
            for slot, span in enumerate(spans):
                if span is None:
                    return False
                image, _ = record.unpack_record(value, span[0], position=chunk * k + slot,
                                                version=record_version(FORMAT_VERSION))
                if (shape != VARIABLE and image.shape != shape) or \
                        span[0] + record.HEADER_SIZE + image.nbytes != span[1]:
                    return False
        except RecordError:
            return False
        return True

    def _suspend(self) -> int:
        # Commit the whole chunks waiting for their transaction, so that a
        # resume keeps them; the records of an unfinished chunk are lost.
        try:
            if self._env is not None and self._ready:
                self._put(self._ready)
                self._ready, self._ready_bytes = [], 0
        finally:
            self._abort()
        return self._chunk * (self.records_per_value or 0)

    def _truncate(self, count: int) -> None:
        keep, rest = divmod(count, self._records_per_value())
        try:
            with self._env.begin(write=True) as txn:
                if rest:
                    # The chunk the cut falls in goes back to pending records.
                    self._pending = [first_records(bytes(txn.get(chunk_key(keep))), rest, self._shape())]
                    self._pending_count = rest
                cursor = txn.cursor()
                later = list(cursor.iternext(values=False)) if cursor.set_range(chunk_key(keep)) else []
                for key in later:
                    txn.delete(bytes(key))
        except lmdb.Error as exc:
            raise StoreError(f"LMDB failed while cutting it back: {exc}") from None
        self._chunk = keep


def _space_note(path: str) -> str:
    """" (No space left on device: N bytes free)" when the filesystem of ``path`` is full, else ""."""
    free = _platform.free_bytes(path)
    return f" ({os.strerror(errno.ENOSPC)}: {free} bytes free)" if free is not None and free < (1 << 20) else ""



class _Flusher:
    """Flushes a file to disk in a background thread, overlapping the disk
    writes with the packing and putting of the next values (``fdatasync``
    releases the GIL). Requests made while a flush runs merge into one."""

    def __init__(self, path: str) -> None:
        self._fd: Optional[int] = os.open(path, os.O_RDONLY)
        self._wanted = threading.Event()
        self._stopping = False
        self._error: Optional[OSError] = None
        # Started by the first request: a writer reopened to resume, before
        # the converter forks its workers, then has no thread at the fork.
        self._thread: Optional[threading.Thread] = None

    def request(self) -> None:
        """Ask for a flush of what has been written so far."""
        if self._thread is None and self._fd is not None:
            self._thread = threading.Thread(target=self._run, args=(self._fd,), name="imgconv-lmdb-flush",
                                            daemon=True)
            self._thread.start()
        self._wanted.set()

    def _run(self, fd: int) -> None:
        # fd stays open while the thread runs: stop() joins the thread before closing it.
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._stopping:
                return
            try:
                _platform.fdatasync(fd)
            except OSError as exc:
                self._error = exc
                return

    def stop(self, check: bool = True) -> None:
        """Stop the thread; with ``check``, raise the OSError a flush met."""
        if self._fd is None:
            return
        self._stopping = True
        self._wanted.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        os.close(self._fd)
        self._fd = None
        if check and self._error is not None:
            raise self._error


