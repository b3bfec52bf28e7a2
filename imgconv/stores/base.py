"""What every store shares: batch checks, metadata, atomic output, per-process handles.

A format module (``png_folder``, ``lmdb_store``, ``hdf5_store``) provides

* ``encode_batch(images, labels, **options)``: a pure, picklable function that
  checks a batch and turns it into the format's finished payload (records,
  PNG bytes, contiguous arrays). Worker processes call it; it touches no file.
* a :class:`Writer` subclass whose ``write_encoded`` stores such a payload and
  whose ``close`` writes the metadata and renames the output into place;
* a :class:`Reader` subclass.

Images are uint8 (N, H, W, C); a batch given as (N, H, W) is grayscale, C = 1.
A store holds either one fixed image shape (batches given as arrays) or varying
shapes ("variable": batches given as lists of (H, W, C) or (H, W) arrays).
"""
import abc
import ctypes
import errno
import fcntl
import json
import operator
import os
import secrets
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .._version import __version__
from .. import kernels
from ..errors import StoreError

VARIABLE = "variable"


class StoreIndexError(StoreError, IndexError):
    """An index outside ``0 .. len(store) - 1`` (negative indices count from the end)."""


# --------------------------------------------------------------------------- batches


class Batch:
    """A checked batch: ``images`` is an (N, H, W, C) uint8 array, or a list of
    (H, W, C) uint8 arrays when ``variable``; ``labels`` is (N,) int64."""

    __slots__ = ("images", "labels", "variable")

    def __init__(self, images, labels, variable):
        self.images = images
        self.labels = labels
        self.variable = variable

    def __len__(self):
        return len(self.labels)

    def shapes(self):
        """The (N, 3) int64 array of each image's (H, W, C)."""
        if not self.variable:
            return np.tile(np.asarray(self.images.shape[1:], np.int64), (len(self), 1))
        return np.array([image.shape for image in self.images], np.int64).reshape(-1, 3)


def _as_image(image, where):
    if not isinstance(image, np.ndarray):
        raise StoreError(f"{where}: an image must be a NumPy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise StoreError(f"{where}: images must be uint8, got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, np.newaxis]
    if image.ndim != 3 or 0 in image.shape:
        raise StoreError(f"{where}: an image must be (H, W) or (H, W, C) and non-empty, got shape {image.shape}")
    return np.ascontiguousarray(image)


def _as_labels(labels, n):
    if labels is None:
        return np.full(n, -1, np.int64)
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise StoreError(f"the batch has {n} images but labels of shape {labels.shape}")
    if labels.dtype.kind not in "iub":
        raise StoreError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.dtype.kind == "u" and labels.size and int(labels.max()) > np.iinfo(np.int64).max:
        raise StoreError("labels must fit in a signed 64-bit integer")
    return np.ascontiguousarray(labels, np.int64)


def check_batch(images, labels):
    """Check and normalise one batch; returns a :class:`Batch`.

    ``images`` is a uint8 array (N, H, W, C) or (N, H, W), or a list/tuple of
    uint8 arrays (H, W, C) or (H, W) (varying sizes). ``labels`` holds N
    integers, or None for "no label" (-1). Raises StoreError naming the problem.
    """
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise StoreError(f"images must be uint8, got dtype {images.dtype}")
        if images.ndim == 3:
            images = images[..., np.newaxis]
        if images.ndim != 4 or 0 in images.shape[1:]:
            raise StoreError(f"images must be (N, H, W, C) or (N, H, W), got shape {images.shape}")
        return Batch(np.ascontiguousarray(images), _as_labels(labels, images.shape[0]), False)
    if isinstance(images, (list, tuple)):
        checked = [_as_image(image, f"image {i} of the batch") for i, image in enumerate(images)]
        return Batch(checked, _as_labels(labels, len(checked)), True)
    raise StoreError(f"images must be a uint8 array or a list of arrays, got {type(images).__name__}")


class EncodedBatch:
    """What a format's ``encode_batch`` returns: finished payload plus what the writer checks.

    ``labels`` (N,) int64, ``shapes`` (N, 3) int64 (H, W, C) of each image,
    ``variable`` whether the images came as a list. Subclasses add the payload.
    Instances are plain data, picklable, so workers can send them to the writer.
    """

    def __init__(self, labels, shapes, variable):
        self.labels = labels
        self.shapes = shapes
        self.variable = variable

    def __len__(self):
        return len(self.labels)

    def shape_of_batch(self):
        """The (H, W, C) all images share, or None when they differ."""
        if len(self.shapes) == 0:
            return None
        first = self.shapes[0]
        if self.variable and not (self.shapes == first).all():
            return None
        return tuple(int(v) for v in first)


def shape_text(shape):
    """'32x32x3' for a shape, 'variable' for varying sizes."""
    return VARIABLE if shape == VARIABLE else "x".join(str(int(v)) for v in shape)


# --------------------------------------------------------------------------- checksums


def image_checksums(images, labels):
    """The per-image checksums HDF5 and PNG stores keep: a (N,) uint32 array.

    For each image, the CRC32C of its pixel bytes ((H, W, C) C order)
    continued over its label as 8 bytes, little-endian int64: that is
    ``crc32c(label_bytes, crc32c(pixels))``, so a changed label is caught like a
    changed pixel. ``images`` as for ``kernels.crc32c_images``; ``labels`` N integers.
    """
    labels = np.ascontiguousarray(labels, "<i8").reshape(-1)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if len(labels) <= _FEW:
        # A few images (store[i]): direct calls cost less than the table lookups.
        raw = labels.view(np.uint8)
        return np.array([kernels.crc32c(raw[8 * j : 8 * j + 8], kernels.crc32c(np.ascontiguousarray(image)))
                         for j, image in enumerate(images)], np.uint32)
    crcs = kernels.crc32c_images(images)
    # CRC32C is affine over GF(2): continuing a CRC c over 8 bytes b equals
    # K ^ A(c) ^ B(b) with A and B linear, so both are XORs of per-byte
    # tables (built once from kernels.crc32c): a vectorised continuation.
    const, by_crc_byte, by_label_byte = _continuation_tables()
    out = np.full(crcs.shape, const, np.uint32)
    for k in range(4):
        out ^= by_crc_byte[k][(crcs >> np.uint32(8 * k)) & np.uint32(0xFF)]
    label_bytes = labels.view(np.uint8).reshape(-1, 8)
    for j in range(8):
        out ^= by_label_byte[j][label_bytes[:, j]]
    return out


_TABLES = []
_FEW = 8


def _continuation_tables():
    if not _TABLES:
        zero = bytes(8)
        const = kernels.crc32c(zero, 0)
        by_crc_byte = np.array(
            [[kernels.crc32c(zero, v << (8 * k)) ^ const for v in range(256)] for k in range(4)], np.uint32
        )
        by_label_byte = np.array(
            [[kernels.crc32c(bytes(j) + bytes([v]) + bytes(7 - j), 0) ^ const for v in range(256)] for j in range(8)],
            np.uint32,
        )
        _TABLES.append((np.uint32(const), by_crc_byte, by_label_byte))
    return _TABLES[0]


# --------------------------------------------------------------------------- reading with threads

# Large reads are split over threads: the copies, checksums and page faults of
# a fresh output run without the GIL and scale with the cores.
PARALLEL_MIN_BYTES = 32 * 1024 * 1024
_POOL = [None, None]  # (pid, executor): threads do not survive fork


def thread_pool():
    """This process's pool of reader threads (one per CPU, at most 4), made on first use."""
    if _POOL[0] != os.getpid():
        _POOL[:] = [os.getpid(), ThreadPoolExecutor(max_workers=read_threads(), thread_name_prefix="imgconv-read")]
    return _POOL[1]


def read_threads():
    """How many threads a large read is split over: the CPUs this process may use, at most 4."""
    try:
        return max(1, min(4, len(os.sched_getaffinity(0))))
    except AttributeError:
        return max(1, min(4, os.cpu_count() or 1))


def split_for_threads(n, item_bytes):
    """Index ranges ``(a, b)`` covering ``0..n``: one per thread for reads of 32 MiB and more, else one."""
    threads = read_threads()
    if threads == 1 or n * item_bytes < PARALLEL_MIN_BYTES:
        return [(0, n)]
    bounds = np.linspace(0, n, threads + 1).astype(int).tolist()
    return list(zip(bounds[:-1], bounds[1:]))


# --------------------------------------------------------------------------- metadata


def make_metadata(format_name, format_version, count, shape, label_names, source, **extra):
    """The metadata every store writes with its data, as a JSON-ready dict."""
    meta = {
        "format": format_name,
        "format_version": int(format_version),
        "imgconv_version": __version__,
        "count": int(count),
        "shape": shape if shape == VARIABLE else [int(v) for v in shape],
        "dtype": "uint8",
        "label_names": None if label_names is None else [str(n) for n in label_names],
        "source": None if source is None else str(source),
    }
    meta.update(extra)
    meta[METADATA_CHECKSUM] = metadata_checksum(meta)
    return meta


# The CRC32C of the rest of the metadata: label names, shape and count are
# data too, and a flipped byte in them must not go unnoticed.
METADATA_CHECKSUM = "metadata_crc32c"


def metadata_checksum(meta):
    """CRC32C of ``meta`` without its checksum field, as compact JSON with sorted keys.

    Computed on what every format can say, so metadata read back from JSON
    or from HDF5 attributes gives the same number: tuples count as lists and
    a field set to None as one left out (HDF5 has no None attribute).
    """
    body = {key: list(value) if isinstance(value, tuple) else value
            for key, value in meta.items() if key != METADATA_CHECKSUM and value is not None}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return int(kernels.crc32c(text.encode("ascii")))


def dump_metadata(meta):
    """Metadata as UTF-8 JSON bytes (sorted keys, so equal metadata gives equal bytes)."""
    return json.dumps(meta, sort_keys=True, indent=1).encode("utf-8")


def load_metadata(data, path, format_name, known_version):
    """Parse and check metadata bytes written by :func:`dump_metadata`.

    Raises StoreError naming ``path`` when the JSON is malformed, belongs to
    another format, has a newer format version, or lacks a field.
    """
    try:
        meta = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"{path}: the store metadata is not valid JSON ({exc})") from None
    return check_metadata(meta, path, format_name, known_version)


def check_metadata(meta, path, format_name, known_version):
    """Check a metadata dict (see :func:`load_metadata`); returns it with ``shape`` as a tuple."""
    if not isinstance(meta, dict) or meta.get("format") != format_name:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise StoreError(f"{path}: metadata says format {found!r}, expected {format_name!r}")
    # Stores written before the checksum existed have none; every one since has.
    if METADATA_CHECKSUM in meta:
        try:
            intact = meta[METADATA_CHECKSUM] == metadata_checksum(meta)
        except (TypeError, ValueError):  # values JSON cannot hold: not what was written
            intact = False
        if not intact:
            raise StoreError(f"{path}: the store metadata is damaged (its CRC32C does not match its contents)")
    missing = [k for k in ("format_version", "count", "shape", "dtype") if k not in meta]
    if missing:
        raise StoreError(f"{path}: the store metadata lacks {', '.join(missing)}")
    if not isinstance(meta["format_version"], int) or meta["format_version"] > known_version:
        raise StoreError(
            f"{path}: {format_name} store format version {meta['format_version']!r}; "
            f"this imgconv ({__version__}) reads versions up to {known_version}"
        )
    if meta["dtype"] != "uint8":
        raise StoreError(f"{path}: images of dtype {meta['dtype']!r} are not supported")
    if not isinstance(meta["count"], int) or meta["count"] < 0:
        raise StoreError(f"{path}: invalid image count {meta['count']!r} in the metadata")
    shape = meta["shape"]
    if shape != VARIABLE:
        if not (isinstance(shape, (list, tuple)) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape)):
            raise StoreError(f"{path}: invalid image shape {shape!r} in the metadata")
        meta["shape"] = tuple(shape)
    meta.setdefault("label_names", None)
    meta.setdefault("source", None)
    return meta


# --------------------------------------------------------------------------- atomic output


def temporary_sibling(path):
    """A fresh hidden name beside ``path``: ``.{name}.tmp-{pid}-{random}``."""
    return os.path.join(
        os.path.dirname(path) or ".", f".{os.path.basename(path)}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    )


def remove_path(path):
    """Remove a file or a directory tree; a missing path is fine."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def check_target(path, overwrite):
    """Refuse an existing ``path`` unless ``overwrite``; check its directory exists."""
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        raise StoreError(f"{path}: cannot create a store there, directory {parent} does not exist")
    if os.path.lexists(path) and not overwrite:
        raise StoreError(f"{path}: already exists; to replace it, pass overwrite=True")


def commit(temporary, path, overwrite):
    """Move the finished ``temporary`` output to ``path``.

    An existing ``path`` is refused unless ``overwrite`` (it may have appeared
    while the store was written): StoreError, and the finished store stays at
    ``temporary``, named in the message. A file replaces the old one with one
    atomic rename. A directory is swapped with the old one in one step where
    the system can (``renameat2(RENAME_EXCHANGE)``); elsewhere the old one is
    renamed aside, the new one renamed in, and the old one put back if that
    fails or is interrupted. At every moment ``path`` is the old store or the
    new one; the old one is removed only once the new one is in place.
    """
    if os.path.lexists(path) and not overwrite:
        raise StoreError(f"{path}: already exists (it appeared while the store was written); "
                         f"the finished store is kept at {temporary}")
    try:
        if not os.path.lexists(path):
            _rename_no_replace(temporary, path)
        elif os.path.isdir(temporary) or (os.path.isdir(path) and not os.path.islink(path)):
            _swap_into_place(temporary, path)
        else:
            os.replace(temporary, path)
    except FileExistsError:
        raise StoreError(f"{path}: already exists (it appeared while the store was written); "
                         f"the finished store is kept at {temporary}") from None
    except OSError as exc:
        raise StoreError(f"{path}: cannot move the finished store into place ({exc}); "
                         f"it is kept at {temporary}") from None
    _fsync_directory(os.path.dirname(path) or ".")


def _rename_no_replace(source, target):
    # Never replace something that appeared at the target in the meantime.
    if _renameat2(source, target, _RENAME_NOREPLACE):
        return
    if os.path.isdir(source):
        os.rename(source, target)  # replaces at most an empty directory
        return
    try:
        os.link(source, target)  # refuses an existing target
    except FileExistsError:
        raise
    except OSError:
        os.rename(source, target)  # a filesystem without hard links
        return
    os.unlink(source)


def _swap_into_place(temporary, path):
    if _renameat2(temporary, path, _RENAME_EXCHANGE):
        remove_path(temporary)  # the old store, swapped out
        return
    old = temporary_sibling(path).replace(".tmp-", ".old-")
    os.rename(path, old)
    try:
        os.rename(temporary, path)
    except BaseException:
        # Put the old store back, whatever stopped the new one (even Ctrl-C).
        if not os.path.lexists(path):
            os.rename(old, path)
        raise
    remove_path(old)


_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100
_RENAMEAT2 = []


def _renameat2(source, target, flags):
    """Linux renameat2(); False when the system or filesystem does not offer it or ``flags``."""
    if not _RENAMEAT2:
        func = None
        if sys.platform.startswith("linux"):
            try:
                func = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
            except OSError:
                func = None
            if func is not None:
                func.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
                func.restype = ctypes.c_int
        _RENAMEAT2.append(func)
    func = _RENAMEAT2[0]
    if func is None:
        return False
    if func(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), target)


def _fsync_directory(directory):
    # Makes the rename itself durable; not possible on every platform/filesystem.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- partial output

PARTIAL_SUFFIX = ".imgconv-partial"
JOURNAL = "journal.jsonl"
JOURNAL_VERSION = 1


def partial_path(path):
    """The directory where the writer of ``path`` keeps its output until it is finished.

    ``.{name}.imgconv-partial`` beside ``path``: a fixed name, so that the
    next writer of ``path`` finds what an interrupted one left (to resume it
    or remove it). It holds the output under ``path``'s own name and a journal.
    """
    return os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}{PARTIAL_SUFFIX}")


class PartialOutput:
    """The partial-output directory of one target, locked by the writer that uses it.

    Its journal (JSON lines, appended with one ``write`` each, so a killed
    writer leaves at most one torn last line, which is ignored) starts with
    a header describing the job (format, options, the converter's source
    fingerprint) and then has one checkpoint per batch: the image ``count``
    the store had, the source ``position`` it corresponds to, the files
    skipped in that batch and the writer's ``state`` (choices made on the
    first write). The lock (``flock`` on the directory) is what keeps two
    writers of one target apart; the kernel drops it when its process dies.
    """

    def __init__(self, target):
        self.target = target
        self.path = partial_path(target)
        self.store = os.path.join(self.path, os.path.basename(target))
        self.journal = os.path.join(self.path, JOURNAL)
        self._fd = None
        self._journal_fd = None

    @property
    def locked(self):
        """True while this object holds the lock."""
        return self._fd is not None

    def acquire(self):
        """Create the directory if needed and lock it; StoreError if another process holds it."""
        while self._fd is None:
            try:
                os.mkdir(self.path)
            except FileExistsError:
                pass
            except OSError as exc:
                raise StoreError(f"{self.target}: cannot create {self.path}: {exc.strerror or exc}") from None
            try:
                fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            except FileNotFoundError:
                continue  # removed by the writer that just finished: create it again
            except OSError as exc:
                raise StoreError(f"{self.target}: cannot use {self.path}: {exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise StoreError(f"{self.target}: another process is writing this store "
                                 f"(its partial output {self.path} is locked)") from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
            else:
                os.close(fd)  # the directory was removed (and perhaps made again) meanwhile

    def release(self):
        """Close the journal and drop the lock (the directory stays)."""
        for name in ("_journal_fd", "_fd"):
            fd = getattr(self, name)
            setattr(self, name, None)
            if fd is not None:
                os.close(fd)

    def clear(self):
        """Empty the directory (locked by us) for a fresh start."""
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None
        for name in os.listdir(self.path):
            remove_path(os.path.join(self.path, name))

    def remove(self):
        """Remove the directory and drop the lock."""
        remove_path(self.path)
        self.release()

    def has_output(self):
        """True when an earlier writer left output here."""
        return os.path.lexists(self.store)

    def read_journal(self):
        """``(header, checkpoints)`` of the journal; ``(None, [])`` when there is none or its header is torn."""
        try:
            with open(self.journal, "rb") as f:
                lines = f.read().split(b"\n")
        except OSError:
            return None, []
        entries = []
        for line in lines:
            try:
                entries.append(json.loads(line.decode("utf-8")))
            except (UnicodeDecodeError, json.JSONDecodeError):
                break  # a torn last line (or garbage): nothing after it counts
        if not entries or not isinstance(entries[0], dict) or entries[0].get("journal") != JOURNAL_VERSION:
            return None, []
        checkpoints = [e for e in entries[1:] if isinstance(e, dict) and isinstance(e.get("count"), int)
                       and isinstance(e.get("position"), int)]
        return entries[0], checkpoints

    def start_journal(self, header, checkpoints=()):
        """Write a new journal: ``header`` then ``checkpoints`` (replacing any journal atomically)."""
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None
        data = b"".join(_journal_line(entry) for entry in [header, *checkpoints])
        temporary = self.journal + ".new"
        with open(temporary, "wb") as f:
            f.write(data)
        os.replace(temporary, self.journal)
        self._journal_fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND)

    def append(self, entry):
        """Append one checkpoint to the journal, in one write."""
        os.write(self._journal_fd, _journal_line(entry))


def _remove_finished_partial(path):
    """Remove a partial-output directory whose store is gone (a writer killed between its
    rename into place and the removal of the directory): it holds only a journal."""
    partial = PartialOutput(path)
    if not os.path.isdir(partial.path) or partial.has_output():
        return
    try:
        partial.acquire()
    except StoreError:
        return  # in use
    if partial.has_output():
        partial.release()
    else:
        partial.remove()


def _images_kept(checkpoints):
    """The images a resume should find in the output: the last checkpoint it had stored."""
    stored = checkpoints[-1].get("stored", checkpoints[-1]["count"]) if checkpoints else 0
    return max([c["count"] for c in checkpoints if c["count"] <= stored], default=0)


def _journal_line(entry):
    return json.dumps(entry, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n"


def _differences(old, new, prefix=""):
    """The keys (dotted) whose values differ between two JSON-like dicts."""
    names = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            names.extend(_differences(a, b, f"{prefix}{key}."))
        elif a != b:
            names.append(f"{prefix}{key}")
    return names


# --------------------------------------------------------------------------- writer


class Writer(abc.ABC):
    """Writes a store in batches, to a temporary name renamed into place by :meth:`close`.

    Use it as a context manager: leaving the block normally closes (finishes)
    the store; leaving it with an exception aborts and removes the temporary
    output, leaving nothing at ``path``.

    The output grows in a partial-output directory beside ``path`` (see
    :func:`partial_path`), locked while the writer works. A writer that was
    killed leaves it there; the next writer of ``path`` continues it when
    asked (``begin(resume=True)``), which needs the checkpoints a converter
    records with :meth:`checkpoint`, or removes it.

    Subclasses set ``format_name`` and implement ``_encode`` (the module's
    ``encode_batch`` with this writer's options), ``_start``, ``_write``,
    ``_finish`` (metadata dict in, output finished at ``self.temporary``) and
    ``_abort``; to be resumable, ``_options_fingerprint``, ``_reopen`` and
    ``_truncate`` (and ``_checkpoint``, ``_suspend``, ``_apply_format_state``
    where the format needs them).
    """

    format_name = None
    # Whether encode_batch is CPU work worth a worker process (PNG
    # compression) rather than a pass at memory speed (packing records,
    # checksums), which costs less than sending the batch to a worker.
    heavy_encoding = False

    def __init__(self, path, *, overwrite=False, label_names=None, source=None, shape=None, job=None):
        self.path = os.path.abspath(os.fspath(path))
        _remove_finished_partial(self.path)
        check_target(self.path, overwrite)
        self.overwrite = bool(overwrite)
        self.label_names = None if label_names is None else [str(n) for n in label_names]
        self.source = None if source is None else str(source)
        self.shape = _initial_shape(shape, self.path)
        self._header_shape = None if self.shape is None else (VARIABLE if self.shape == VARIABLE else list(self.shape))
        # What the caller says about the job (the converter: source and options), JSON-normalised.
        self.job = None if job is None else json.loads(json.dumps(job, sort_keys=True))
        self.count = 0
        self.partial = PartialOutput(self.path)
        self.temporary = self.partial.store
        self.resumed = 0  # images kept from an interrupted writer
        self.position = 0  # the source position those images came up to
        self.earlier_skipped = []  # (path, reason) skipped before that position
        self.restart_reason = None  # why a partial output could not be resumed, if so
        self.closed = False
        self._begun = False
        self._checkpoints = []  # image counts of the checkpoints recorded
        self._last_entry = None
        self._started = False
        self._failure = None  # why a write failed: the store can then only be aborted
        self._pid = os.getpid()

    # public API -----------------------------------------------------------

    def append(self, images, labels):
        """Check, encode and write one batch (see :func:`check_batch` for the forms).

        Raises StoreError naming the path when the batch disagrees with the
        store (image shape, fixed versus varying sizes, dtype, label count).
        """
        try:
            encoded = self.encode_batch(images, labels)
        except StoreError as exc:
            raise StoreError(f"{self.path}: {exc}") from None
        self.write_encoded(encoded)

    def encode_batch(self, images, labels):
        """This writer's pure encode step: ``encode_batch(images, labels, **options)`` of its format."""
        return self.encoder()(images, labels)

    @abc.abstractmethod
    def encoder(self):
        """A picklable callable ``(images, labels) -> encoded batch`` for worker processes."""

    def begin(self, resume=False):
        """Lock the partial output beside ``path``; continue or discard what an earlier writer left.

        The first write calls this if the caller did not. With ``resume``,
        the output of an interrupted writer with the same job and options is
        checked, cut back to its last checkpoint that is safely on disk, and
        continued: ``count`` (= ``resumed``), ``position`` and
        ``earlier_skipped`` then say where it stands. If that output cannot
        be reopened or verified, it is discarded and ``restart_reason`` says
        why. Returns the number of images kept.

        Raises StoreError when another process writes ``path``; when
        ``resume`` is asked for an earlier job that differs (naming what
        differs; with ``overwrite`` it is discarded instead); and when an
        earlier writer of the same job left images and neither ``resume`` nor
        ``overwrite`` says what to do with them.
        """
        self._check_open()
        if self._begun:
            return self.resumed
        self.partial.acquire()
        try:
            header, checkpoints = self.partial.read_journal()
            kept = _images_kept(checkpoints)
            worth_keeping = header == self._journal_header() and kept > 0 and self.partial.has_output()
            if resume and header is not None:
                self._resume(header, checkpoints)
            elif worth_keeping and not self.overwrite:
                raise StoreError(
                    f"{self.path}: an interrupted conversion left {kept} images in "
                    f"{self.partial.path}; pass resume=True to continue it, or overwrite=True to discard it and "
                    f"start over"
                )
            if not self._started:
                self.partial.clear()
                self.partial.start_journal(self._journal_header())
        except OSError as exc:
            # Writing the journal failed (a full disk, say): like any failed write, remove the output.
            self._abort()
            self.partial.remove()
            raise StoreError(f"{self.path}: cannot prepare the partial output {self.partial.path}: {exc}") from None
        except BaseException:
            self.partial.release()
            raise
        self._begun = True
        return self.resumed

    def checkpoint(self, position, skipped=()):
        """Record that the images written so far come from the source up to ``position``.

        A converter calls this after each batch; ``skipped`` lists the
        (path, reason) of the files that batch skipped. A later
        ``begin(resume=True)`` continues from the last checkpoint whose
        images are all safely in the output.
        """
        self._check_open()
        self._ensure_begun()
        try:
            self._checkpoint()
            state = {"shape": None}
            if self.shape is not None:  # the format's choices follow from the shape
                state = {"shape": VARIABLE if self.shape == VARIABLE else list(self.shape), **self._format_metadata()}
            entry = {"count": self.count, "stored": self._stored(), "position": int(position),
                     "skipped": [[str(part) for part in entry] for entry in skipped], "state": state}
            self.partial.append(entry)
            self._last_entry = entry
        except OSError as exc:
            self._failure = f"{self.path}: writing failed: {exc}"
            raise StoreError(self._failure) from None
        self._checkpoints.append(self.count)

    def _resume(self, header, checkpoints):
        """Continue the output an earlier writer left (see :meth:`begin`); sets ``_started`` when it does."""
        wanted = self._journal_header()
        if header != wanted:
            if self.overwrite:
                return
            raise StoreError(
                f"{self.path}: cannot resume: the interrupted conversion in {self.partial.path} was made with a "
                f"different {', '.join(_differences(header, wanted))}; pass overwrite=True to discard it and start "
                f"over"
            )
        if not self.partial.has_output() or _images_kept(checkpoints) == 0:
            return  # nothing ever reached the output: nothing to continue
        self._apply_state(checkpoints[-1].get("state") or {})
        try:
            durable = self._reopen()
            kept = [c for c in checkpoints if c["count"] <= durable]
            if kept:
                self._truncate(kept[-1]["count"])
        except (StoreError, OSError) as exc:
            self.restart_reason = f"the partial output {self.partial.store} cannot be continued ({exc}); started over"
            self._abort()
            return
        if not kept:
            self._abort()
            return
        self.partial.start_journal(header, kept)
        self.count = self.resumed = kept[-1]["count"]
        self._checkpoints = [c["count"] for c in kept]
        self.position = kept[-1]["position"]
        self.earlier_skipped = [tuple(entry) for c in kept for entry in c.get("skipped", [])]
        self._started = True

    def _journal_header(self):
        return {
            "journal": JOURNAL_VERSION, "format": self.format_name, "format_version": self.format_version,
            "imgconv_version": __version__, "label_names": self.label_names, "source": self.source,
            "shape": self._header_shape, "options": self._options_fingerprint(), "job": self.job,
        }

    def _apply_state(self, state):
        if state.get("shape") is not None:
            self.shape = _initial_shape(state["shape"], self.path)
        self._apply_format_state(state)

    def write_encoded(self, encoded):
        """Write a batch that the format's ``encode_batch`` produced, after the ones before it."""
        self._check_open()
        if len(encoded) == 0:
            return
        self._check_shape(encoded.variable, encoded.shape_of_batch())
        try:
            self._ensure_started()
            self._write(encoded)
        except StoreError as exc:
            self._failure = str(exc)
            raise
        except OSError as exc:
            self._failure = f"{self.path}: writing failed: {exc}"
            raise StoreError(self._failure) from None
        except BaseException:
            self._failure = f"{self.path}: a write was interrupted"
            raise
        self.count += len(encoded)

    def close(self):
        """Finish the store (metadata, index files) and rename it into place.

        Closing twice is harmless. An empty store (no batch appended) needs a
        fixed ``shape=`` given to the writer, else StoreError.
        """
        if self.closed:
            return
        try:
            if self._failure is not None:
                raise StoreError(f"{self._failure}; the store cannot be finished and was removed")
            if self.shape is None:
                raise StoreError(
                    f"{self.path}: no image was appended and no shape given; the store would have no image shape"
                )
            self._ensure_begun()
            try:
                self._ensure_started()
            except OSError as exc:
                raise StoreError(f"{self.path}: writing failed: {exc}") from None
            meta = make_metadata(
                self.format_name, self.format_version, self.count, self.shape, self.label_names, self.source,
                **self._format_metadata(),
            )
            self._finish(meta)
        except BaseException:
            self.abort()
            raise
        self.closed = True
        try:
            commit(self.temporary, self.path, self.overwrite)
        except StoreError as exc:
            # The finished store is kept where the message says; out of the
            # partial output, which the next writer of path would take over.
            kept = temporary_sibling(self.path)
            try:
                os.rename(self.temporary, kept)
            except OSError:
                self.partial.release()
                raise exc from None
            self.partial.remove()
            raise StoreError(str(exc).replace(self.temporary, kept)) from None
        except BaseException:
            self.partial.remove()  # interrupted: the target holds the old store or the new one
            raise
        self.partial.remove()

    def abort(self):
        """Stop writing and remove the partial output; ``path`` is left untouched."""
        if self.closed:
            return
        self.closed = True
        try:
            self._abort()
        finally:
            if self._begun:
                self.partial.remove()
            else:
                self.partial.release()  # begin() refused: what is there belongs to someone else

    def suspend(self):
        """Stop writing but keep the partial output, to be continued by ``begin(resume=True)``.

        For interruptions (a signal, a killed worker). Nothing is left at
        ``path``. Returns the number of images a resume will keep: those of
        the last checkpoint the output holds entirely. When that is none,
        there is nothing worth keeping, and this is :meth:`abort`.
        """
        if self.closed:
            return 0
        kept = 0
        if self._begun and self._failure is None:
            try:
                held = self._suspend()
                kept = max([c for c in self._checkpoints if c <= held], default=0)
                if kept and self._last_entry is not None:
                    # What _suspend stored beyond the last checkpoint's figure.
                    self.partial.append({**self._last_entry, "skipped": [], "stored": held})
            except (StoreError, OSError):
                kept = 0
        if not kept:
            self.abort()
            return 0
        self.closed = True
        self.partial.release()
        return kept

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    def __del__(self):
        # A writer dropped without close() must not leave temporary output behind.
        if getattr(self, "closed", True) is False and getattr(self, "_pid", None) == os.getpid():
            try:
                self.abort()
            except Exception:
                pass

    def __reduce__(self):
        raise TypeError(
            f"{type(self).__name__} cannot be pickled: the parent process is the only writer; "
            "send workers writer.encoder() and pass its results to write_encoded()"
        )

    # helpers for subclasses ------------------------------------------------

    def _check_open(self):
        if self.closed:
            raise StoreError(f"{self.path}: the writer is closed")
        if self._failure is not None:
            raise StoreError(f"{self._failure}; the store cannot be continued, only aborted")

    def _check_shape(self, variable, shape):
        if self.shape is None:
            self.shape = VARIABLE if variable else shape
            return
        if self.shape == VARIABLE:
            return
        if shape != self.shape:
            found = "images of varying sizes" if shape is None else f"images of {shape_text(shape)}"
            raise StoreError(f"{self.path}: the batch holds {found}, the store holds {shape_text(self.shape)} uint8 images")

    def _ensure_begun(self):
        if not self._begun:
            self.begin()

    def _ensure_started(self):
        self._ensure_begun()
        if not self._started:
            self._start()
            self._started = True

    def _format_metadata(self):
        return {}

    @abc.abstractmethod
    def _start(self):
        """Create the temporary output (called before the first write)."""

    @abc.abstractmethod
    def _write(self, encoded):
        """Write one encoded batch after the ones before it."""

    @abc.abstractmethod
    def _finish(self, meta):
        """Write the metadata and finish the output at ``self.temporary``."""

    def _abort(self):
        pass

    # resuming (see begin) ----------------------------------------------------

    def _options_fingerprint(self):
        """The options that shape the output, for the journal header (a JSON-ready dict)."""
        return {}

    def _apply_format_state(self, state):
        """Take over the choices an earlier writer made on its first write (``state`` of its checkpoints)."""

    def _reopen(self):
        """Open the partial output at ``self.temporary`` to continue it; returns how many of its
        images are verified intact. Raises StoreError (or OSError) when it cannot be continued."""
        raise StoreError(f"{self.format_name} output cannot be resumed")

    def _truncate(self, count):
        """Cut the reopened output back to its first ``count`` images and get ready to append."""
        raise StoreError(f"{self.format_name} output cannot be resumed")

    def _checkpoint(self):
        """Make what was written so far reopenable (called at every checkpoint)."""

    def _stored(self):
        """How many images the output holds in a form a resume can reopen (not waiting in memory)."""
        return self.count

    def _suspend(self):
        """Close the output, keeping what is in it (see :meth:`suspend`); returns how many images it holds."""
        self._abort()
        return self.count


def _initial_shape(shape, path):
    if shape is None or shape == VARIABLE:
        return shape
    try:
        shape = tuple(operator.index(v) for v in shape)
    except TypeError:
        raise StoreError(f"{path}: shape must be (H, W), (H, W, C) or 'variable', got {shape!r}") from None
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3 or min(shape) < 1:
        raise StoreError(f"{path}: shape must be (H, W), (H, W, C) or 'variable', got {shape!r}")
    return shape


# --------------------------------------------------------------------------- reader


class Reader(abc.ABC):
    """A finished store, read-only: ``len``, ``store[i]``, ``read_batch``, ``batches``.

    Handles (LMDB environment, HDF5 file) are opened lazily and reopened in a
    process other than the one that opened them, so a store opened before
    ``fork`` works in DataLoader-style workers; pickling keeps only the path
    and the options (for spawn-based workers). Subclasses implement
    ``_open_handles`` (returns the metadata), ``_close_handles``,
    ``_read_one(i)``, ``_read_many(indices, out)`` and optionally
    ``_read_range(start, stop, out)`` on checked indices (``out`` is a checked
    array to fill, or None).
    """

    format_name = None

    def __init__(self, path, **options):
        self.path = os.path.abspath(os.fspath(path))
        self._options = options
        self._pid = None
        self.metadata = None
        self._ensure_open()

    # public API -----------------------------------------------------------

    @property
    def shape(self):
        """(H, W, C) of every image, or "variable"."""
        return self.metadata["shape"]

    @property
    def variable(self):
        """True when the images have varying sizes (``read_batch`` returns a list)."""
        return self.shape == VARIABLE

    @property
    def label_names(self):
        """The label names given when the store was written, or None."""
        return self.metadata.get("label_names")

    def __len__(self):
        return self.metadata["count"]

    def __getitem__(self, index):
        """``(image (H, W, C) uint8, label int)`` of image ``index``; StoreIndexError when out of range."""
        i = self._check_index(index)
        self._ensure_open()
        image, label = self._read_one(i)
        self._verify_pixels(np.array([i]), [image], np.array([label], np.int64))
        return image, int(label)

    def read_batch(self, indices, out=None):
        """``(images, labels)`` for ``indices`` in the order given (repeats allowed).

        ``images`` is an (N, H, W, C) uint8 array, or a list of (H, W, C)
        arrays for a store of varying sizes; ``labels`` is (N,) int64.
        ``out``, a writeable C-contiguous (N, H, W, C) uint8 array, receives
        the images instead of a new array (reusing memory saves the cost of
        faulting in fresh pages, which is a large part of a full read).
        Raises StoreIndexError for an index out of range.
        """
        idx = self._check_indices(indices)
        self._ensure_open()
        out = self._check_out(out, idx.size)
        if idx.size == 0:
            return self._empty() if out is None else (out, np.empty(0, np.int64))
        return self._verified(idx, self._read_many(idx, out))

    def batches(self, batch_size=1024, start=0, stop=None):
        """Yield ``(images, labels)`` of consecutive images in order, ``batch_size`` at a time.

        From image ``start`` up to ``stop`` (default and at most the end).
        Raises ValueError for ``batch_size`` < 1 and StoreIndexError unless
        0 <= start <= stop; both are checked at the call, not at the first batch.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        n = len(self)
        start = operator.index(start)
        stop = n if stop is None else min(operator.index(stop), n)
        if not 0 <= start <= stop:
            raise StoreIndexError(f"{self.path}: batches(start={start}, stop={stop}) is not a range within 0 .. {n}")
        return self._batches(batch_size, start, stop)

    def _batches(self, batch_size, start, stop):
        for first in range(start, stop, batch_size):
            self._ensure_open()
            last = min(first + batch_size, stop)
            yield self._read_range_checked(first, last, None)

    def read_all(self, out=None):
        """Every image and label: ``read_batch(range(len(self)), out)`` done the fastest way."""
        self._ensure_open()
        out = self._check_out(out, len(self))
        if len(self) == 0:
            return self._empty() if out is None else (out, np.empty(0, np.int64))
        return self._read_range_checked(0, len(self), out)

    def labels(self):
        """All labels as an (N,) int64 array, in image order."""
        parts = [labels for _, labels in self.batches(4096)]
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def shapes(self):
        """The (H, W, C) of every image as an (N, 3) int64 array."""
        if not self.variable:
            return np.tile(np.array(self.shape, np.int64), (len(self), 1))
        shapes = [image.shape for images, _ in self.batches(1024) for image in images]
        return np.array(shapes, np.int64).reshape(-1, 3)

    def checksums(self):
        """The per-image checksums kept by the store (see :func:`image_checksums`), or None.

        None when the format checks its own records as it reads them (LMDB)
        or keeps no checksums (a classic PNG folder).
        """
        return None

    def check_layout(self):
        """Store-wide problems (missing or extra parts) as a list of sentences; empty when sound."""
        return []

    def _read_range_checked(self, start, stop, out):
        """Images ``start .. stop - 1`` read (``_read_range``) and checked against their checksums.

        A format may do both at once, in threads.
        """
        return self._verified(np.arange(start, stop), self._read_range(start, stop, out))

    def _verified(self, indices, result):
        self._verify_pixels(indices, result[0], result[1])
        return result

    def _verify_pixels(self, indices, images, labels):
        """Raise StoreError for an image whose pixels or label do not match the store's checksum."""
        if not self._options.get("verify", True):
            return
        stored = self.checksums()
        if stored is None or len(indices) == 0:
            return
        if self._checksums_cover_labels():
            computed = image_checksums(images, labels)
        else:
            computed = kernels.crc32c_images(images)
        wrong = np.flatnonzero(computed != stored[indices])
        if wrong.size:
            i = int(indices[wrong[0]])
            raise StoreError(
                f"{self.path}: image {i} (pixels or label) does not match its stored checksum: the store is corrupt"
            )

    def _checksums_cover_labels(self):
        """Whether :meth:`checksums` are :func:`image_checksums` (pixels and label) or of the pixels only."""
        return False

    def __iter__(self):
        for images, labels in self.batches():
            for image, label in zip(images, labels):
                yield image, int(label)

    def close(self):
        """Close the handles of this process; the store reopens them when used again."""
        if getattr(self, "_pid", None) == os.getpid():
            self._close_handles()
        self._pid = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass  # at interpreter exit the modules close() needs may be gone

    def __getstate__(self):
        return {"path": self.path, "options": self._options}

    def __setstate__(self, state):
        self.__init__(state["path"], **state["options"])

    def __repr__(self):
        return f"<{type(self).__name__} {self.path!r}: {len(self)} images of {shape_text(self.shape)}>"

    # helpers ---------------------------------------------------------------

    def _ensure_open(self):
        pid = os.getpid()
        if self._pid == pid:
            return
        if self._pid is not None:
            # Opened in another process (we are a forked child): never touch
            # those handles here, open our own.
            self._forget_handles()
        self.metadata = self._open_handles()
        self._pid = pid

    def _check_index(self, index):
        try:
            i = operator.index(index)
        except TypeError:
            raise TypeError(f"store indices must be integers, got {type(index).__name__}") from None
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise StoreIndexError(f"{self.path}: index {index} is out of range for a store of {n} images")
        return i

    def _check_indices(self, indices):
        idx = np.asarray(indices)
        if idx.dtype.kind not in "iu" and not (idx.size == 0):
            raise TypeError(f"{self.path}: indices must be integers, got dtype {idx.dtype}")
        if idx.dtype.kind == "u" and idx.size and int(idx.max()) > np.iinfo(np.int64).max:
            first = idx.reshape(-1)[int(np.argmax(idx.reshape(-1) > np.iinfo(np.int64).max))]
            raise StoreIndexError(f"{self.path}: index {first} is out of range for a store of {len(self)} images")
        idx = idx.astype(np.int64, copy=False).reshape(-1)
        n = len(self)
        if idx.size:
            idx = np.where(idx < 0, idx + n, idx)
            bad = (idx < 0) | (idx >= n)
            if bad.any():
                first = np.asarray(indices).reshape(-1)[int(np.argmax(bad))]
                raise StoreIndexError(f"{self.path}: index {first} is out of range for a store of {n} images")
        return np.ascontiguousarray(idx)

    def _check_out(self, out, n):
        if out is None:
            return None
        if self.variable:
            raise StoreError(f"{self.path}: out= needs a store of one image shape, this one has varying sizes")
        want = (n, *self.shape)
        if not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.shape != want:
            got = f"{out.shape} {out.dtype}" if isinstance(out, np.ndarray) else type(out).__name__
            raise StoreError(f"{self.path}: out must be a uint8 array of shape {want}, got {got}")
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise StoreError(f"{self.path}: out must be a writeable C-contiguous array")
        return out

    def _empty(self):
        labels = np.empty(0, np.int64)
        if self.variable:
            return [], labels
        return np.empty((0, *self.shape), np.uint8), labels

    def _read_range(self, start, stop, out):
        return self._read_many(np.arange(start, stop, dtype=np.int64), out)

    def _forget_handles(self):
        """Drop handles inherited over fork without using them."""

    @abc.abstractmethod
    def _open_handles(self):
        """Open this process's handles; returns the checked metadata."""

    @abc.abstractmethod
    def _close_handles(self):
        """Close this process's handles."""

    @abc.abstractmethod
    def _read_one(self, i):
        """``(image, label)`` of the checked index ``i``."""

    @abc.abstractmethod
    def _read_many(self, indices, out):
        """``(images, labels)`` of the checked ``indices``, into ``out`` when given."""
