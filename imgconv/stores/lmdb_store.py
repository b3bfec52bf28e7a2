"""LMDB store: runs of consecutive records per value, chunk numbers as keys.

Layout (FORMAT.md, "Stores", is the full specification): a directory
``name.lmdb/`` holding ``data.mdb`` (and the ``lock.mdb`` LMDB made while
writing; readers do not need it). In the main database

* key ``struct.pack(">Q", c)`` (8 bytes, big-endian, so keys sort in image
  order) holds chunk ``c``: the records of images ``c*K .. c*K + K - 1``
  (fewer in the last chunk), K = ``records_per_value`` in the metadata
  (by default about 192 KiB of records for one image shape, 16 for varying sizes);
* a store of one image shape lays the records back to back; a store of
  varying shapes starts each value with a table: u32 n, u32 0, then n u64
  record offsets from the start of the value;
* key ``b"imgconv.metadata"`` holds the metadata as UTF-8 JSON. It is 16 bytes,
  so it cannot collide with an 8-byte chunk key, and it is written last: a
  database without it is not a finished store.

Why runs of records: one small record per value puts every value on its own
4 KiB overflow page (disk 1.3x the pixels); runs of K records per value fill
their pages and turn a full read into a scan of a few thousand values, while a
single image is still one lookup and one record decode.
"""
import itertools
import os
import struct
import threading
from concurrent.futures import wait

import lmdb
import numpy as np

from .. import kernels, record
from ..errors import RecordError, StoreError, StoreOptionError
from .lmdb_check import check_lmdb_file
from .base import (VARIABLE, EncodedBatch, Reader, Writer, check_batch, dump_metadata, load_metadata, shape_text,
                   split_for_threads, thread_pool)

FORMAT_NAME = "lmdb"
FORMAT_VERSION = 1
METADATA_KEY = b"imgconv.metadata"
KEY_STRUCT = struct.Struct(">Q")
TABLE_HEAD = struct.Struct("<II")

# Value size the automatic records_per_value aims at; see FORMAT.md for the
# measurements (CIFAR: 64 records of 3,104 bytes = 194 KiB).
TARGET_VALUE_BYTES = 192 * 1024
MAX_RECORDS_PER_VALUE = 4096
# K of a store of varying sizes: the first image says nothing about the next
# ones (a 1x1 first image would give K = 4096 and values without bound), so K
# is fixed and small; a value of 16 CIFAR-size images is about 48 KiB.
VARIABLE_RECORDS_PER_VALUE = 16
INITIAL_MAP_SIZE = 64 * 1024 * 1024
# Chunks are committed in transactions of whole values, closed once they
# hold this many bytes, never per batch: the file then does not depend on how
# the images were split into batches.
TXN_BYTES = 16 * 1024 * 1024
_ZERO = np.zeros(1, np.int64)


def chunk_key(chunk):
    """The LMDB key of chunk number ``chunk``."""
    return KEY_STRUCT.pack(chunk)


def records_per_value_for(record_bytes):
    """The automatic K for records of ``record_bytes``: about 192 KiB per value, at least 1."""
    return int(min(MAX_RECORDS_PER_VALUE, max(1, round(TARGET_VALUE_BYTES / record_bytes))))


class EncodedRecords(EncodedBatch):
    """A batch packed into records (``buffer`` uint8, ``offsets`` N + 1 int64)."""

    def __init__(self, buffer, offsets, labels, shapes, variable):
        super().__init__(labels, shapes, variable)
        self.buffer = buffer
        self.offsets = offsets


def encode_batch(images, labels):
    """Check a batch and pack it into records (the imgconv record format).

    See :func:`imgconv.stores.base.check_batch` for the accepted forms.
    Returns :class:`EncodedRecords`. Raises StoreError for a bad batch.
    """
    batch = check_batch(images, labels)
    packed = record.pack_records(batch.images, batch.labels)
    return EncodedRecords(packed.buffer, packed.offsets, batch.labels, batch.shapes(), batch.variable)


def _value_with_table(buffer, offsets):
    """Records ``buffer`` (offsets from 0) prefixed with the offset table of a varying-size value."""
    n = len(offsets) - 1
    head = TABLE_HEAD.size + 8 * n
    table = np.asarray(offsets[:-1], dtype="<u8") + head
    return TABLE_HEAD.pack(n, 0) + table.tobytes() + buffer.tobytes()


class LmdbWriter(Writer):
    """Writes an LMDB store (see the module docstring for the layout).

    Options: ``records_per_value`` (K; by default about 192 KiB per value
    for a store of one shape, 16 for varying sizes) and ``map_size`` (initial map size; it grows
    as needed, so MDB_MAP_FULL never reaches the caller).
    """

    format_name = FORMAT_NAME
    format_version = FORMAT_VERSION

    def __init__(self, path, *, records_per_value=None, map_size=INITIAL_MAP_SIZE, **common):
        super().__init__(path, **common)
        if records_per_value is not None and not 1 <= int(records_per_value) <= 1 << 20:
            raise StoreOptionError(f"{self.path}: records_per_value must be 1 .. 1048576, got {records_per_value}",
                                   ("records_per_value",))
        self.records_per_value = None if records_per_value is None else int(records_per_value)
        self._given_options = {"records_per_value": self.records_per_value}
        self.map_size = max(int(map_size), 1 << 20)
        self._env = None
        self._flusher = None
        self._chunk = 0
        self._pending = []  # (buffer, offsets from 0) of records begun but not yet a whole chunk
        self._pending_count = 0
        self._ready = []  # whole chunks waiting for their transaction
        self._ready_bytes = 0

    def encoder(self):
        """The picklable encode step: :func:`encode_batch`."""
        return encode_batch

    def _start(self):
        os.mkdir(self.temporary)
        # LMDB does not sync per transaction: a background flusher (below)
        # writes committed pages to disk while the next ones are packed, and
        # _finish syncs the rest before the rename. A crash before then
        # leaves only the temporary directory.
        try:
            self._env = lmdb.open(
                self.temporary, map_size=self.map_size, subdir=True, sync=False, metasync=False,
                readahead=False, max_dbs=0,
            )
        except lmdb.Error as exc:
            raise StoreError(f"{self.path}: cannot create the LMDB database: {exc}") from None
        self._flusher = _Flusher(os.path.join(self.temporary, "data.mdb"))

    def _write(self, encoded):
        if self.records_per_value is None:
            self.records_per_value = (VARIABLE_RECORDS_PER_VALUE if self.shape == VARIABLE
                                      else records_per_value_for(int(encoded.offsets[1])))
        k = self.records_per_value
        buffer, offsets = encoded.buffer, encoded.offsets
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
            return _value_with_table(data, offsets[first : stop + 1] - offsets[first])
        return data

    def _put(self, values, extra=()):
        """Put ``values`` as the next chunks (and ``extra`` key/values) in one transaction."""
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

    def _format_metadata(self):
        if self.records_per_value is None:
            self.records_per_value = (VARIABLE_RECORDS_PER_VALUE if self.shape == VARIABLE
                                      else records_per_value_for(record.record_size(self.shape)))
        return {
            "records_per_value": self.records_per_value,
            "record_version": record.VERSION,
            "key": ">Q chunk number",
            "value": "offset table + records" if self.shape == VARIABLE else "records",
        }

    def _finish(self, meta):
        last = self._ready
        if self._pending_count:
            last.append(self._pending_value())
        self._ready, self._ready_bytes = [], 0
        try:
            self._put(last, extra=[(METADATA_KEY, dump_metadata(meta))])
            self._flusher.stop()
            self._env.sync(True)
        except (lmdb.Error, OSError) as exc:
            raise StoreError(f"{self.path}: LMDB failed while finishing the store: {exc}") from None
        finally:
            self._abort()

    def _abort(self):
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


    # resuming -------------------------------------------------------------------
    # Committed transactions survive the death of the process (LMDB is
    # copy-on-write), so the output holds every chunk committed before a kill;
    # those chunks are checked record by record before they are trusted.

    def _options_fingerprint(self):
        return dict(self._given_options)

    def _apply_format_state(self, state):
        if state.get("records_per_value"):
            self.records_per_value = int(state["records_per_value"])

    def _reopen(self):
        data = os.path.join(self.temporary, "data.mdb")
        try:
            self._env = lmdb.open(self.temporary, map_size=max(self.map_size, 2 * os.path.getsize(data)), subdir=True,
                                  sync=False, metasync=False, readahead=False, max_dbs=0)
            self._flusher = _Flusher(data)
            if self.records_per_value is None:
                return 0
            chunks = 0
            with self._env.begin(buffers=True) as txn:
                for key, value in txn.cursor():
                    if bytes(key) != chunk_key(chunks) or not self._chunk_intact(bytes(value)):
                        break
                    chunks += 1
        except lmdb.Error as exc:
            raise StoreError(f"LMDB cannot open it: {exc}") from None
        return chunks * self.records_per_value

    def _chunk_intact(self, value):
        """Whether ``value`` holds a whole chunk of records that decode with their checksums."""
        k = self.records_per_value
        try:
            if self.shape == VARIABLE:
                if len(value) < TABLE_HEAD.size + 8 * k or TABLE_HEAD.unpack_from(value)[0] != k:
                    return False
                offsets = np.frombuffer(value, "<u8", count=k, offset=TABLE_HEAD.size).tolist()
            else:
                size = record.record_size(self.shape)
                if len(value) != k * size:
                    return False
                offsets = range(0, k * size, size)
            for offset in offsets:
                image, _ = record.unpack_record(value, int(offset))
                if self.shape != VARIABLE and image.shape != tuple(self.shape):
                    return False
        except RecordError:
            return False
        return True

    def _stored(self):
        return self._chunk * (self.records_per_value or 0)

    def _suspend(self):
        # Commit the whole chunks waiting for their transaction, so that a
        # resume keeps them; the records of an unfinished chunk are lost.
        try:
            if self._env is not None and self._ready:
                self._put(self._ready)
                self._ready, self._ready_bytes = [], 0
        finally:
            self._abort()
        return self._chunk * (self.records_per_value or 0)

    def _truncate(self, count):
        keep, rest = divmod(count, self.records_per_value)
        try:
            with self._env.begin(write=True) as txn:
                if rest:
                    # The chunk the cut falls in goes back to pending records.
                    self._pending = [_first_records(bytes(txn.get(chunk_key(keep))), rest, self.shape)]
                    self._pending_count = rest
                cursor = txn.cursor()
                later = list(cursor.iternext(values=False)) if cursor.set_range(chunk_key(keep)) else []
                for key in later:
                    txn.delete(bytes(key))
        except lmdb.Error as exc:
            raise StoreError(f"LMDB failed while cutting it back: {exc}") from None
        self._chunk = keep


def _space_note(path):
    """" (No space left on device: N bytes free)" when the filesystem of ``path`` is full, else ""."""
    try:
        st = os.statvfs(path)
    except OSError:
        return ""
    return f" ({os.strerror(28)}: {st.f_bavail * st.f_frsize} bytes free)" if st.f_bavail * st.f_frsize < (1 << 20) else ""


def _first_records(value, n, shape):
    """``(buffer, offsets)`` of the first ``n`` records of a chunk ``value``, offsets from 0."""
    data = np.frombuffer(value, np.uint8)
    if shape != VARIABLE:
        size = record.record_size(shape)
        return data[: n * size].copy(), np.arange(n + 1, dtype=np.int64) * size
    k = TABLE_HEAD.unpack_from(value)[0]
    table = np.frombuffer(value, "<u8", count=k, offset=TABLE_HEAD.size).astype(np.int64)
    head = TABLE_HEAD.size + 8 * k
    end = int(table[n]) if n < k else len(value)
    offsets = np.concatenate([table[:n], [end]]) - head
    return data[head:end].copy(), offsets


class _Flusher:
    """Flushes a file to disk in a background thread, overlapping the disk
    writes with the packing and putting of the next values (``fdatasync``
    releases the GIL). Requests made while a flush runs merge into one."""

    def __init__(self, path):
        self._fd = os.open(path, os.O_RDONLY)
        self._wanted = threading.Event()
        self._stopping = False
        self._error = None
        # Started by the first request: a writer reopened to resume, before
        # the converter forks its workers, then has no thread at the fork.
        self._thread = None

    def request(self):
        """Ask for a flush of what has been written so far."""
        if self._thread is None and self._fd is not None:
            self._thread = threading.Thread(target=self._run, name="imgconv-lmdb-flush", daemon=True)
            self._thread.start()
        self._wanted.set()

    def _run(self):
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._stopping:
                return
            try:
                os.fdatasync(self._fd)
            except OSError as exc:
                self._error = exc
                return

    def stop(self, check=True):
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


class LmdbReader(Reader):
    """Reads an LMDB store read-only.

    Options: ``readahead`` (default False): let the OS read ahead around
    each page touched; off suits random access to stores larger than memory
    (FORMAT.md has the measurements). LMDB allows one environment per file
    and process, so readers of one store in one process share the setting
    of the first. ``verify`` (default True): check each
    record's CRC32C; False skips it (headers and bounds are still checked).
    """

    format_name = FORMAT_NAME

    def _open_handles(self):
        data = os.path.join(self.path, "data.mdb")
        if not os.path.isfile(data):
            raise StoreError(f"{self.path}: not an imgconv LMDB store (no data.mdb inside)")
        # liblmdb trusts the file: a damaged page could make it read past the end (SIGBUS).
        check_lmdb_file(data, self.path)
        env = _shared_env(self.path, bool(self._options.get("readahead", False)))
        try:
            meta = self._load(env, data)
        except lmdb.Error as exc:
            _release_env(env)
            raise StoreError(f"{self.path}: corrupt LMDB database: {exc}") from None
        except BaseException:
            _release_env(env)
            raise
        self._env = env
        return meta

    def _load(self, env, data):
        _check_not_truncated(env, data, self.path)
        try:
            with env.begin() as txn:
                raw = txn.get(METADATA_KEY)
        except lmdb.Error as exc:
            raise StoreError(f"{self.path}: corrupt LMDB database: {exc}") from None
        if raw is None:
            raise StoreError(f"{self.path}: LMDB database without imgconv metadata (not an imgconv store, or unfinished)")
        meta = load_metadata(raw, self.path, FORMAT_NAME, FORMAT_VERSION)
        k = meta.get("records_per_value")
        if not isinstance(k, int) or k < 1:
            raise StoreError(f"{self.path}: invalid records_per_value {k!r} in the metadata")
        self._k = k
        self._verify = bool(self._options.get("verify", True))
        if meta["shape"] != VARIABLE:
            self._record_size = record.record_size(meta["shape"])
            self._expected = record._expected_header(meta["shape"], np.uint8)
            self._payload = int(np.prod(meta["shape"]))
            self._slot_offsets = [np.array([j * self._record_size], np.int64) for j in range(k)]
            self._kernel = kernels.implementation()
        return meta

    def _close_handles(self):
        env, self._env = getattr(self, "_env", None), None
        if env is not None:
            _release_env(env)

    def _forget_handles(self):
        # The environment belongs to the parent; LMDB forbids using it after fork.
        self._env = None

    # reading ----------------------------------------------------------------

    def _value(self, txn, chunk):
        value = txn.get(chunk_key(chunk))
        if value is None:
            raise StoreError(f"{self.path}: chunk {chunk} (key {chunk_key(chunk).hex()}) is missing: the store is corrupt")
        return value

    def _chunk_len(self, chunk):
        return min(self._k, len(self) - chunk * self._k)

    def _offsets(self, value, chunk, slots):
        """Start of the records at ``slots`` (int64 array or scalar) within chunk ``chunk``'s ``value``."""
        if self.shape != VARIABLE:
            return slots * self._record_size
        n = self._chunk_len(chunk)
        data = memoryview(value)
        if len(data) < TABLE_HEAD.size + 8 * n or TABLE_HEAD.unpack_from(data)[0] != n:
            raise StoreError(f"{self.path}: chunk {chunk} has a corrupt offset table")
        table = np.frombuffer(data, "<u8", count=n, offset=TABLE_HEAD.size)
        return table[slots].astype(np.int64)

    def _read_one(self, i):
        try:
            return self._read_one_in_txn(i)
        except lmdb.Error as exc:
            raise self._lmdb_error(exc, f"image {i}") from None

    def _read_many(self, indices, out):
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

    def _read_one_in_txn(self, i):
        chunk, slot = divmod(i, self._k)
        with self._env.begin(buffers=True) as txn:
            value = self._value(txn, chunk)
            if self.shape != VARIABLE:
                return self._read_one_fixed(value, i, slot)
            try:
                return record.unpack_record(value, int(self._offsets(value, chunk, slot)), verify=self._verify)
            except RecordError as exc:
                raise StoreError(f"{self.path}: image {i} (chunk {chunk}): {exc}") from None

    def _read_one_fixed(self, value, i, slot):
        # The single-image hot path: the header is compared with the expected
        # one in compiled code, skipping record.unpack_records' argument
        # normalisation, which would double the cost of a 3 KB read. LMDB's
        # buffers are already contiguous unsigned-byte memoryviews.
        pixels = np.empty((1, self._payload), np.uint8)
        label = np.empty(1, np.int64)
        offsets = self._slot_offsets[slot]
        bad, _ = self._kernel.unpack_records([value], _ZERO, offsets, self._expected, pixels, label, self._verify)
        if bad >= 0:
            raise self._first_bad([value], [0], offsets, np.array([i]))
        return pixels.reshape(self.shape), label[0]

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
        payloads = out.reshape(n, self._payload)
        # The compiled gather is called directly: the buffers are LMDB's
        # read-only map, which no writeable ``out`` can overlap, and
        # record.unpack_records' per-buffer normalisation cost 15 ms of CPU
        # per 100,000 CIFAR images, a third of a whole read. Large reads are split over threads (the
        # kernel runs without the GIL: copy, checksum and the page faults of
        # a fresh ``out`` all scale).
        parts = split_for_threads(n, self._record_size)
        args = (values, sources, offsets, self._expected, payloads, labels, self._verify)
        if len(parts) == 1:
            bad = [_gather_part(*args, 0, n)]
        else:
            futures = [thread_pool().submit(_gather_part, *args, a, b) for a, b in parts]
            # Every thread must be done before the caller leaves the
            # transaction, whose buffers they read, even when one failed.
            wait(futures)
            bad = [future.result() for future in futures]
        if any(b >= 0 for b in bad):
            raise self._first_bad(values, sources, offsets, indices)
        return out, labels

    def _gather_variable(self, values, distinct, sources, slots, indices):
        tables = [self._offsets(v, int(c), np.arange(self._chunk_len(int(c)))) for v, c in zip(values, distinct)]
        images, labels = [], np.empty(indices.size, np.int64)
        for n, (s, slot) in enumerate(zip(sources, slots)):
            try:
                image, labels[n] = record.unpack_record(values[s], int(tables[s][slot]), verify=self._verify)
            except RecordError as exc:
                raise StoreError(f"{self.path}: image {indices[n]} (chunk {distinct[s]}): {exc}") from None
            images.append(image)
        return images, labels

    def _first_bad(self, values, sources, offsets, indices):
        """The StoreError for the first record of a failed gather, found one by one (error path only)."""
        for n, (s, offset) in enumerate(zip(sources, offsets)):
            try:
                image, _ = record.unpack_record(values[s], int(offset))
            except RecordError as exc:
                return StoreError(f"{self.path}: image {indices[n]} (chunk {indices[n] // self._k}): {exc}")
            if image.shape != self.shape:
                return StoreError(
                    f"{self.path}: image {indices[n]} is {shape_text(image.shape)}, "
                    f"the metadata says {shape_text(self.shape)}: the store is corrupt"
                )
        return StoreError(f"{self.path}: the records of this batch do not decode")


# LMDB allows one Environment per database file per process, so readers of
# the same store share it: {(st_dev, st_ino) of data.mdb: [env, users]}, for
# this process only. Keyed by file, not path: a store replaced at the same
# path (overwrite=True) is a new file and gets a new environment.
_ENVS = {}
_ENVS_PID = [os.getpid()]
_ENVS_LOCK = threading.Lock()


def _new_envs_lock():
    # A child forked while another thread held the lock must not inherit it held.
    global _ENVS_LOCK
    _ENVS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_envs_lock)


def _shared_env(path, readahead):
    """The environment of the store at ``path`` for this process, shared by its readers.

    LMDB allows one environment per file per process, so a reader asking for
    another ``readahead`` than the one that opened the file shares that one's
    setting (readahead is advice to the OS about cold reads, never about results).
    """
    with _ENVS_LOCK:
        return _shared_env_locked(path, readahead)


def _shared_env_locked(path, readahead):
    if _ENVS_PID[0] != os.getpid():
        # A forked child inherits the parent's environments: it must not use
        # them, and py-lmdb refuses a second one for the same path while they
        # exist. Closing them here only unmaps this process's copy and closes
        # its descriptors: they are read-only and lock-free, so no lock or
        # reader slot is shared with the parent.
        for env, _ in _ENVS.values():
            env.close()
        _ENVS.clear()
        _ENVS_PID[0] = os.getpid()
    key = _file_key(path)
    entry = _ENVS.get(key)
    if entry is None:
        try:
            # readonly + lock=False is safe because an imgconv store is
            # immutable once renamed into place: no writer ever opens it
            # again, so readers need no reader table. It also lets stores on
            # read-only media and any number of concurrent readers work.
            env = lmdb.open(path, readonly=True, lock=False, subdir=True, max_dbs=0, readahead=readahead)
        except lmdb.Error as exc:
            raise StoreError(f"{path}: not a readable LMDB database: {exc}") from None
        entry = _ENVS[key] = [env, 0]
    entry[1] += 1
    return entry[0]


def _release_env(env):
    with _ENVS_LOCK:
        _release_env_locked(env)


def _release_env_locked(env):
    if _ENVS_PID[0] != os.getpid():
        return
    for key, entry in list(_ENVS.items()):
        if entry[0] is env:
            entry[1] -= 1
            if entry[1] <= 0:
                del _ENVS[key]
                env.close()
            return


def _file_key(path):
    data = os.path.join(path, "data.mdb")
    try:
        st = os.stat(data)
    except OSError as exc:
        raise StoreError(f"{path}: cannot read data.mdb: {exc}") from None
    return st.st_dev, st.st_ino


def _gather_part(values, sources, offsets, expected, payloads, labels, verify, a, b):
    """Gather records ``a .. b - 1`` with the compiled (or NumPy) kernel; -1, or the first bad one's position."""
    if a == b:
        return -1
    bad, _ = kernels.implementation().unpack_records(values, sources[a:b], offsets[a:b], expected, payloads[a:b],
                                                     labels[a:b], verify)
    return bad if bad < 0 else a + bad


def _check_not_truncated(env, data, path):
    # A truncated data.mdb would be mapped past its end and reading there
    # kills the process with SIGBUS; refuse it up front instead.
    need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    have = os.path.getsize(data)
    if have < need:
        raise StoreError(f"{path}: data.mdb is truncated: {have} bytes, the database needs {need}")


def detect(path):
    """True when ``path`` is a directory holding ``data.mdb``."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "data.mdb"))

