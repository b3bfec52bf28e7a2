"""CIFAR-10 and CIFAR-100 in their official layouts, python and binary.

Four layouts, each readable from its extracted directory, from the directory
holding that one, or straight from the official ``.tar.gz`` (or any tar
archive ``tarfile`` opens) without extracting it:

================  =====================  ==========================================
layout            directory              batches (train / test), label names
================  =====================  ==========================================
CIFAR-10 python   cifar-10-batches-py    data_batch_1..5 / test_batch, batches.meta
CIFAR-100 python  cifar-100-python       train / test, meta (fine and coarse)
CIFAR-10 binary   cifar-10-batches-bin   data_batch_1..5.bin / test_batch.bin,
                                         batches.meta.txt
CIFAR-100 binary  cifar-100-binary       train.bin / test.bin,
                                         fine_label_names.txt, coarse_label_names.txt
================  =====================  ==========================================

Python batches are pickled dicts (``data``: uint8 (N, 3072) rows of colour
planes, ``labels`` or ``fine_labels``/``coarse_labels``), loaded with the
restricted unpickler of :mod:`imgconv.sources.safe_pickle`. Binary batches are
records of label bytes (CIFAR-10: label; CIFAR-100: coarse, fine) and 3072
pixel bytes, read with no pickle at all, only the records a batch needs. Rows
become (32, 32, 3) images through :func:`imgconv.chw_to_hwc_into`.

Images are numbered in the official order: the training batches in order,
then the test batch (``split="all"``).
"""
import os
import posixpath
import queue
import tarfile
import tempfile
import threading
from collections import namedtuple
from contextlib import closing

import numpy as np

from .. import kernels
from ..errors import SourceError
from .base import BatchCutter, Source, check_choice, check_stream_arguments, group_by_part, plan_segments
from .safe_pickle import load_pickle
from .tar_archive import DECODE_ERRORS, TarReader

HEIGHT, WIDTH, CHANNELS = 32, 32, 3
ROW_BYTES = HEIGHT * WIDTH * CHANNELS
SPLITS = ("train", "test", "all")
LABEL_KINDS = ("fine", "coarse")

Layout = namedtuple("Layout", "name dirname archive kind classes train test meta label_bytes")
Layout.__doc__ = """One official CIFAR layout.

``name`` says what it is ("CIFAR-10 python"); ``kind`` is "python" or "binary"; ``train``/``test`` the batch file names;
``meta`` the label-name file(s); ``label_bytes`` the label bytes before each
binary record (0 for python batches); ``classes`` the number of (fine) classes.
"""

LAYOUTS = (
    Layout(
        "CIFAR-10 python", "cifar-10-batches-py", "cifar-10-python.tar.gz", "python", 10,
        tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), ("batches.meta",), 0,
    ),
    Layout(
        "CIFAR-100 python", "cifar-100-python", "cifar-100-python.tar.gz", "python", 100,
        ("train",), ("test",), ("meta",), 0,
    ),
    Layout(
        "CIFAR-10 binary", "cifar-10-batches-bin", "cifar-10-binary.tar.gz", "binary", 10,
        tuple(f"data_batch_{i}.bin" for i in range(1, 6)), ("test_batch.bin",), ("batches.meta.txt",), 1,
    ),
    Layout(
        "CIFAR-100 binary", "cifar-100-binary", "cifar-100-binary.tar.gz", "binary", 100,
        ("train.bin",), ("test.bin",), ("fine_label_names.txt", "coarse_label_names.txt"), 2,
    ),
)

_COARSE_CLASSES = 20


def _is_cifar100(layout):
    return layout.classes == 100


# --- where the files are: a directory or a tar archive -----------------------


class _Directory:
    """Batch files in a directory on disk."""

    def __init__(self, path):
        self.path = path

    def where(self, name):
        return os.path.join(self.path, name)

    def has(self, name):
        return os.path.isfile(self.where(name))

    def size(self, name):
        return os.path.getsize(self.where(name))

    def open(self, name):
        return open(self.where(name), "rb")

    def read_range(self, name, offset, size):
        """Up to ``size`` bytes of ``name`` from ``offset``: only those are read."""
        with self.open(name) as f:
            f.seek(offset)
            return f.read(size)

    def each(self, names):
        """Yield ``(name, open file)`` for those of ``names`` that are there."""
        for name in names:
            if self.has(name):
                with self.open(name) as f:
                    yield name, f

    def close(self):
        pass


_END = object()  # read_ahead's end of the archive


def _set_aside(directory, number, data):
    """Keep a member's bytes in a file of ``directory`` until their turn; returns its path."""
    path = os.path.join(directory, f"member-{number}")
    with open(path, "wb") as f:
        f.write(data)
    return path


def _take_back(kept):
    """The bytes :func:`_set_aside` kept (the file is removed), or ``kept`` itself when it is the bytes."""
    if isinstance(kept, bytes):
        return kept
    with open(kept, "rb") as f:
        data = f.read()
    os.remove(kept)
    return data


def _member_name(name):
    """A tar member's name as compared everywhere: no "./", no doubled or trailing "/"."""
    return posixpath.normpath(name).lstrip("/")


class _Archive:
    """Batch files inside a tar archive (gzip or not), read member by member without extracting.

    The member index (names, offsets, sizes) is built by one pass over the
    archive and travels with the source when it is pickled; the open archive
    and the member in memory do not. Within a process they are kept between
    calls until :meth:`close`: gzip cannot seek, so reopening for every batch
    would decompress the archive from its start each time. Reading on from
    where the last read stopped continues the stream; reading an earlier
    member restarts it (gzip does that itself when asked to seek backwards).
    A process forked with the archive open opens its own: sharing the file
    position with the parent would mix up their reads.
    """

    def __init__(self, path, prefix):
        self.path = path
        self.prefix = prefix
        self.members = None
        self._tar = None
        self._member = None
        self._pid = None  # the process that opened _tar

    def __getstate__(self):
        return {"path": self.path, "prefix": self.prefix, "members": self.members,
                "_tar": None, "_member": None, "_pid": None}

    def where(self, name):
        return f"{self.path}:{self.prefix}/{name}"

    def _index(self):
        if self.members is None:
            for _ in self.each(()):
                pass
        return self.members

    def each(self, names):
        """Yield ``(name, open member)`` for those of ``names`` in the archive, in archive order.

        One streaming pass, which also builds the member index.
        """
        members = {}
        try:
            with TarReader(self.path) as reader:
                for info in reader.tar:
                    full = _member_name(info.name)
                    if info.isfile() and full.startswith(self.prefix + "/"):
                        name = full[len(self.prefix) + 1 :]
                        if name in members:
                            # Counting would see the first, random access the last: refuse to guess.
                            raise SourceError(f"{self.where(name)}: the archive holds two members of that name")
                        members[name] = info
                        if name in names:
                            yield name, reader.tar.extractfile(info)
        except DECODE_ERRORS as exc:
            raise SourceError(f"{self.path}: cannot read the tar archive ({exc})") from None
        self.members = members

    def read_ahead(self, names):
        """Yield ``(name, bytes)`` for those of ``names`` in the archive, in archive order, in one pass.

        A thread inflates and reads the next member while the caller works on
        the one before (the gzip decoder lets go of the GIL), so decompressing
        overlaps converting; one member at most waits in memory. Closing the
        generator early stops the thread. Raises SourceError as :meth:`each`.
        """
        handoff = queue.Queue(maxsize=1)
        stop = threading.Event()

        def hand_over(item):
            while not stop.is_set():
                try:
                    handoff.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    pass
            return False

        def produce():
            members = self.each(names)
            try:
                for name, f in members:
                    try:
                        data = f.read()
                    except DECODE_ERRORS as exc:
                        raise SourceError(f"{self.where(name)}: cannot read ({exc})") from None
                    if not hand_over((name, data)):
                        return
                hand_over(_END)
            except BaseException as exc:  # re-raised by the consumer, in its thread
                hand_over(exc)
            finally:
                members.close()

        thread = threading.Thread(target=produce, name=f"imgconv read-ahead {self.path}", daemon=True)
        thread.start()
        try:
            while True:
                item = handoff.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join()

    def has(self, name):
        return name in self._index()

    def size(self, name):
        return self._index()[name].size

    def open(self, name):
        info = self._index()[name]
        if self._pid != os.getpid():
            # Opened by the parent of this forked process (or never): leave its objects alone.
            self._tar, self._member = None, None
        if self._tar is None:
            try:
                self._pid = os.getpid()
                self._tar = TarReader(self.path)
            except DECODE_ERRORS as exc:
                raise SourceError(f"{self.path}: cannot open the tar archive ({exc})") from None
        return self._tar.tar.extractfile(info)

    def read_range(self, name, offset, size):
        """Up to ``size`` bytes of member ``name`` from ``offset``.

        The whole member is read once and kept until another is asked for:
        seeking inside a gzip stream restarts it from the beginning whenever
        it goes backwards, which small reads ahead would make it do.
        """
        if self._member is None or self._member[0] != name or self._pid != os.getpid():
            self._member = None
            with self.open(name) as f:
                self._member = (name, memoryview(f.read()))
        return self._member[1][offset : offset + size]

    def close(self):
        """Close the open archive and drop the member kept in memory (reopened when next needed)."""
        self._member = None
        if self._tar is not None:
            self._tar.close()
            self._tar = None


def _read_exactly(container, name, offset, size):
    where = container.where(name)
    try:
        data = container.read_range(name, offset, size)
    except DECODE_ERRORS as exc:
        raise SourceError(f"{where}: cannot read ({exc})") from None
    if len(data) != size:
        raise SourceError(f"{where}: truncated, {offset + len(data)} bytes where {offset + size} were expected")
    return data


# --- the two batch formats ---------------------------------------------------


def _text(value):
    """``value`` as str when it is a str or bytes, else None (never str() of data from a file)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _str_keys(obj, where):
    if not isinstance(obj, dict):
        raise SourceError(f"{where}: holds a {type(obj).__name__}, not the dict of a CIFAR batch")
    # Keys that are not strings cannot be CIFAR keys; they are left out, not printed.
    return {text: value for text, value in ((_text(key), value) for key, value in obj.items()) if text is not None}


def _key_list(mapping, limit=10):
    keys = sorted(mapping)
    shown = ", ".join(repr(k[:40]) if len(k) > 40 else k for k in keys[:limit])
    return shown + (f", ... ({len(keys)} keys)" if len(keys) > limit else "") if keys else "none"


def _labels_array(values, n, classes, where, key):
    """Check ``values`` (a list of ints, or a 1-D integer array) as ``n`` labels in ``0..classes-1``.

    Returns an int64 array. The list is checked element by element before
    NumPy sees it: ``np.asarray`` on a list of lists (which a pickle can make
    huge from a few bytes by repeating one reference) would build all of it.
    """
    if isinstance(values, np.ndarray):
        if values.ndim != 1 or (values.size and values.dtype.kind not in "iu"):
            raise SourceError(
                f"{where}: {key} must be a flat list of integers, got {values.dtype} of shape {values.shape}"
            )
        count = values.shape[0]
    elif type(values) is list:
        count = len(values)
    else:
        raise SourceError(f"{where}: {key} must be a list of integers, got a {type(values).__name__}")
    if count != n:
        raise SourceError(f"{where}: the arrays disagree in length: {n} images but {count} {key}")
    if isinstance(values, list):
        for position, value in enumerate(values):
            if type(value) is not int:
                raise SourceError(
                    f"{where}: {key} must be integers, but {key}[{position}] is a {type(value).__name__}"
                )
        try:
            values = np.fromiter(values, np.int64, n)
        except OverflowError:
            raise SourceError(f"{where}: {key} holds an integer beyond 64 bits") from None
        except MemoryError:
            raise SourceError(f"{where}: not enough memory for {n} {key}") from None
    if values.size and (values.min() < 0 or values.max() >= classes):
        bad = values[(values < 0) | (values >= classes)][0]
        raise SourceError(f"{where}: {key} holds {bad}, outside 0..{classes - 1}")
    return values.astype(np.int64)


def _python_batch(container, name, layout, label_kind):
    """Load one pickled batch: returns ``(rows (N, 3072) uint8, labels (N,) int64)``."""
    try:
        with container.open(name) as f:
            # Read whole first: the pure-Python unpickler makes many small
            # reads, each costly through tarfile and gzip; the batch's array
            # is this big anyway.
            data = f.read()
    except DECODE_ERRORS as exc:
        raise SourceError(f"{container.where(name)}: cannot read ({exc})") from None
    return _parse_python_batch(data, container.where(name), layout, label_kind)


def _parse_python_batch(data, where, layout, label_kind):
    """``(rows, labels)`` of a pickled batch held in ``data`` (bytes); ``where`` names it in errors."""
    batch = _str_keys(load_pickle(data, where), where)
    key = f"{label_kind}_labels" if _is_cifar100(layout) else "labels"
    missing = [k for k in ("data", key) if k not in batch]
    if missing:
        raise SourceError(
            f"{where}: not a {layout.name} batch: no {' or '.join(missing)} (keys: {_key_list(batch)})"
        )
    rows = batch["data"]
    if not isinstance(rows, np.ndarray) or rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != ROW_BYTES:
        got = f"{rows.dtype} array of shape {rows.shape}" if isinstance(rows, np.ndarray) else type(rows).__name__
        raise SourceError(f"{where}: data must be a uint8 array (N, {ROW_BYTES}), got {got}")
    classes = layout.classes if label_kind == "fine" else _COARSE_CLASSES
    return rows, _labels_array(batch[key], rows.shape[0], classes, where, key)


def _binary_record_size(layout):
    return layout.label_bytes + ROW_BYTES


def _binary_count(container, name, layout):
    return _records_in(container.size(name), container.where(name), layout)


def _records_in(size, where, layout):
    """The number of records in a binary batch of ``size`` bytes; SourceError unless whole."""
    record = _binary_record_size(layout)
    if size == 0:
        raise SourceError(f"{where}: empty file (0 bytes), a batch holds {record}-byte records")
    count, rest = divmod(size, record)
    if rest:
        raise SourceError(
            f"{where}: truncated or not a {layout.name} batch: {size} bytes is {count} records of "
            f"{record} bytes and {rest} bytes left over"
        )
    return count


def _binary_records(container, name, layout, label_kind, lo, hi):
    """Read records ``lo..hi`` of a binary batch: ``(rows (n, 3072) uint8, labels (n,) int64)``."""
    record = _binary_record_size(layout)
    data = _read_exactly(container, name, lo * record, (hi - lo) * record)
    return _split_records(data, hi - lo, container.where(name), layout, label_kind)


def _split_records(data, n, where, layout, label_kind):
    """``(rows, labels)`` of ``n`` whole binary records in ``data``."""
    records = np.frombuffer(data, np.uint8).reshape(n, _binary_record_size(layout))
    if _is_cifar100(layout):
        column, classes = (1, layout.classes) if label_kind == "fine" else (0, _COARSE_CLASSES)
    else:
        column, classes = 0, layout.classes
    key = f"{label_kind} label" if _is_cifar100(layout) else "label"
    labels = _labels_array(records[:, column], n, classes, where, key)
    return records[:, layout.label_bytes :], labels


def _decode_member(data, where, layout, label_kind):
    """``(rows, labels)`` of a whole batch file held in ``data``, python or binary."""
    if layout.kind == "python":
        return _parse_python_batch(data, where, layout, label_kind)
    return _split_records(data, _records_in(len(data), where, layout), where, layout, label_kind)


def _meta_name(layout, label_kind):
    """The file of the layout holding the label names asked for."""
    if layout.kind == "binary" and _is_cifar100(layout):
        return f"{label_kind}_label_names.txt"
    return layout.meta[0]


def _label_names(container, layout, label_kind):
    """Label names from the layout's meta file, or None when the file is absent."""
    name = _meta_name(layout, label_kind)
    if not container.has(name):
        return None
    data = _read_exactly(container, name, 0, container.size(name))
    return _parse_label_names(data, container.where(name), layout, label_kind)


def _parse_label_names(data, where, layout, label_kind):
    """Label names from the bytes of the meta file at ``where``."""
    if layout.kind == "binary":
        return [line.strip() for line in bytes(data).decode("utf-8", "replace").splitlines() if line.strip()]
    meta = _str_keys(load_pickle(data, where), where)
    key = f"{label_kind}_label_names" if _is_cifar100(layout) else "label_names"
    if not isinstance(meta.get(key), (list, tuple)):
        raise SourceError(f"{where}: no list {key} (keys: {_key_list(meta)})")
    names = [_text(n) for n in meta[key]]
    if None in names:
        bad = meta[key][names.index(None)]
        raise SourceError(f"{where}: {key} holds a {type(bad).__name__}, not a name")
    return names


# --- finding a layout at a path ----------------------------------------------


def _layout_in_directory(path):
    """The layout whose batch files are in ``path``, or None."""
    for layout in LAYOUTS:
        names = layout.train + layout.test
        if any(os.path.isfile(os.path.join(path, n)) for n in names):
            # CIFAR-100's "train"/"test" are common names: its meta file must be there too.
            if layout.kind == "python" and _is_cifar100(layout) and not os.path.isfile(os.path.join(path, "meta")):
                continue
            return layout
    return None


def _archive_prefix(path):
    """Top directory of the tar archive at ``path`` (from its first named member), or None if not a tar."""
    try:
        with TarReader(path) as reader:
            for info in reader.tar:
                name = _member_name(info.name)
                if name != ".":  # "tar -C dir ." archives start with "./" itself
                    return name.split("/")[0]
    except DECODE_ERRORS:
        return None
    return ""


def _is_tar(path):
    """True when ``path`` is a tar archive; SourceError for a damaged compressed one."""
    try:
        return tarfile.is_tarfile(path)
    except DECODE_ERRORS as exc:
        # is_tarfile only gets this far into a compressed file that began well: a damaged archive.
        raise SourceError(
            f"{path}: a damaged or truncated compressed archive, cannot read it ({type(exc).__name__}: {exc})"
        ) from None


def detect(path):
    """``(layout, container)`` for CIFAR batches at ``path``, None when there are none.

    ``path`` may be the batch directory, a directory holding exactly one of the
    official batch directories, or a tar archive of one. Raises SourceError for
    a directory holding several layouts, or a tar archive of something else.
    """
    if os.path.isdir(path):
        layout = _layout_in_directory(path)
        if layout is not None:
            return layout, _Directory(path)
        found = [
            (layout, os.path.join(path, layout.dirname))
            for layout in LAYOUTS
            if os.path.isdir(os.path.join(path, layout.dirname))
            and _layout_in_directory(os.path.join(path, layout.dirname)) == layout
        ]
        if len(found) > 1:
            listed = ", ".join(p for _, p in found)
            raise SourceError(f"directory {path} holds several CIFAR layouts ({listed}); open the one to read")
        return (found[0][0], _Directory(found[0][1])) if found else None
    if os.path.isfile(path) and _is_tar(path):
        prefix = _archive_prefix(path)
        for layout in LAYOUTS:
            if prefix == layout.dirname:
                return layout, _Archive(path, prefix)
        known = ", ".join(l.archive for l in LAYOUTS)
        raise SourceError(
            f"{path} is a tar archive of {prefix or 'nothing'!r}, not one of the CIFAR archives ({known}); "
            "extract it and open the directory"
        )
    return None


def is_cifar(path):
    """True when ``path`` holds CIFAR batches :func:`detect` recognises (SourceError as detect)."""
    return detect(path) is not None


class CifarSource(Source):
    """CIFAR-10 or CIFAR-100, python or binary, from a directory or a tar archive.

    Arguments: ``path`` (batch directory, its parent, or the archive);
    ``split`` "train" (default), "test" or "all" (train then test);
    ``label_kind`` "fine" (default) or "coarse", CIFAR-100 only.

    Batches are uint8 (B, 32, 32, 3) arrays with int64 labels. The number of
    images is known from the file sizes for binary batches and by loading each
    batch once for python ones (done on first need, and kept when the source
    is pickled, so workers do not count again). Between calls a source keeps
    the open archive and the last batches loaded (at most
    ``CACHED_BATCHES``), so successive ``batches``/``take`` calls in one
    process do not start over; pickling leaves them behind and :meth:`close`
    lets them go. Raises SourceError for a missing, truncated or inconsistent
    batch, UnsafePickleError for a pickle that asks for code.
    """

    _TRANSIENT = ("_cache",)
    CACHED_BATCHES = 2

    def __init__(self, path, *, split="train", label_kind="fine"):
        self.path = os.fspath(path)
        found = detect(self.path)
        if found is None:
            looked = ", ".join(layout.dirname for layout in LAYOUTS)
            raise SourceError(f"{self.path}: no CIFAR batches found (looked for {looked})")
        self.layout, self.container = found
        self.split = check_choice("split", split, SPLITS)
        self.label_kind = check_choice("label_kind", label_kind, LABEL_KINDS)
        if label_kind != "fine" and not _is_cifar100(self.layout):
            raise SourceError(f"label_kind={label_kind!r} applies to CIFAR-100; {self.path} holds CIFAR-10")
        self._counts = None
        self._label_names = None
        self._names_known = False
        self._cache = None  # {part: (rows, labels)} of python batches, oldest first

    @property
    def sequential(self):
        """True for a tar archive (see :attr:`Source.sequential`)."""
        return isinstance(self.container, _Archive)

    def _batch_names(self):
        names = {"train": self.layout.train, "test": self.layout.test}.get(self.split)
        return names if names is not None else self.layout.train + self.layout.test

    def _plan(self):
        """Count the images of each selected batch (once), checking that every batch is there."""
        if self._counts is None:
            names = self._batch_names()
            if self.layout.kind == "binary":
                self._require(names, [n for n in names if not self.container.has(n)])
                counts = [_binary_count(self.container, n, self.layout) for n in names]
            else:
                counts = self._count_python(names)
            if not self._names_known:
                self._label_names = _label_names(self.container, self.layout, self.label_kind)
                self._names_known = True
            self._counts = counts
            self.container.close()
        return self._counts

    def _require(self, names, missing):
        if missing:
            expected = ", ".join(self.layout.train + self.layout.test)
            raise SourceError(
                f"{self.container.where(missing[0])}: missing; {self.layout.name} batches for split "
                f"{self.split!r} need {', '.join(names)} (the full set: {expected})"
            )

    def _count_python(self, names):
        # One pass in archive order: a tar.gz is read once, not once per batch.
        found = {}
        try:
            for name, f in self.container.each(names):
                rows, _ = _parse_python_batch(f.read(), self.container.where(name), self.layout, self.label_kind)
                found[name] = rows.shape[0]
        except DECODE_ERRORS as exc:
            raise SourceError(f"{self.path}: cannot read ({exc})") from None
        self._require(names, [n for n in names if n not in found])
        return [found[n] for n in names]

    def _python_rows(self, index, name):
        if self._cache is None:
            self._cache = {}
        if index not in self._cache:
            while len(self._cache) >= self.CACHED_BATCHES:  # let the oldest go before loading the next
                del self._cache[next(iter(self._cache))]
            self._cache[index] = _python_batch(self.container, name, self.layout, self.label_kind)
        return self._cache[index]

    def close(self):
        """Close the archive and drop the batches kept in memory; the source stays usable."""
        self._cache = None
        self.container.close()

    @property
    def description(self):
        kind = f", {self.label_kind} labels" if _is_cifar100(self.layout) else ""
        # An archive is not read just to say how many images it holds; once read, it says.
        count = "" if self.sequential and self._counts is None else f", {self.length} images"
        return f"{self.layout.name} batches at {self.container.path} ({self.split}{kind}{count})"

    @property
    def length(self):
        return int(sum(self._plan()))

    @property
    def shape(self):
        return (HEIGHT, WIDTH, CHANNELS)

    @property
    def label_names(self):
        if not self._names_known:
            self._plan()
        return self._label_names

    def stream(self, batch_size, limit=None):
        """Batches from the first image on, as :meth:`Source.stream`; an archive is read once.

        From a tar archive, members are read in one pass in archive order,
        inflated by a thread while the batches before are converted; a batch
        file that arrives before its turn waits in memory (at most the
        split's size: the official archives do not keep batch order). The
        image count and label names are learnt on the way, so no counting
        pass comes first. Raises SourceError as :meth:`batches`.
        """
        if not self.sequential or self._counts is not None:
            return super().stream(batch_size, limit)
        check_stream_arguments(batch_size, limit)
        return self._stream_archive(batch_size, limit)

    def _stream_archive(self, batch_size, limit):
        names = self._batch_names()
        meta = _meta_name(self.layout, self.label_kind)
        # A batch file that arrives before its turn (the official archives are
        # not in batch order) waits in a file, not in memory: the conversion's
        # memory stays that of one batch file whatever the archive's order.
        early = {}  # name -> the member's bytes (its turn) or the file they wait in
        counts = []
        label_names, meta_seen = None, False
        cutter = BatchCutter(batch_size, limit, kernels.chw_to_hwc_into, (HEIGHT, WIDTH, CHANNELS))
        members = self.container.read_ahead(set(names) | {meta})
        with tempfile.TemporaryDirectory(prefix="imgconv-early-") as waiting, closing(members):
            for name, data in members:
                where = self.container.where(name)
                if name == meta:
                    label_names, meta_seen = _parse_label_names(data, where, self.layout, self.label_kind), True
                elif not cutter.full:
                    due = name == names[len(counts)]
                    early[name] = data if due else _set_aside(waiting, names.index(name), data)
                    del data
                    while len(counts) < len(names) and names[len(counts)] in early:
                        name = names[len(counts)]
                        rows, labels = _decode_member(_take_back(early.pop(name)), self.container.where(name),
                                                      self.layout, self.label_kind)
                        counts.append(rows.shape[0])
                        yield from cutter.add(rows, labels)
                if cutter.full and meta_seen:
                    break  # the images asked for are out and the label names known
        if not cutter.full:
            self._require(names, names[len(counts):])
            self._counts = counts
        self._label_names, self._names_known = label_names, True
        yield from cutter.finish()

    def batches(self, batch_size, start=0, stop=None):
        """Yield uint8 (B, 32, 32, 3) images and int64 (B,) labels for images ``start..stop``.

        See :meth:`Source.batches`. Raises SourceError for unreadable batches.
        """
        start, stop = self._check_range(batch_size, start, stop)
        return self._iterate(batch_size, start, stop)

    def _iterate(self, batch_size, start, stop):
        names = self._batch_names()
        try:
            for size, segments in plan_segments(self._plan(), start, stop, batch_size):
                images = np.empty((size, HEIGHT, WIDTH, CHANNELS), np.uint8)
                labels = np.empty(size, np.int64)
                for part, lo, hi, offset in segments:
                    rows, part_labels = self._segment(part, names[part], lo, hi)
                    kernels.chw_to_hwc_into(rows, images[offset : offset + hi - lo])
                    labels[offset : offset + hi - lo] = part_labels
                yield images, labels
        except DECODE_ERRORS as exc:
            raise SourceError(f"{self.path}: cannot read ({exc})") from None

    def _gather(self, unique):
        # Indices are sorted, so each batch file is read once, for the span its indices cover.
        names = self._batch_names()
        images = np.empty((unique.size, HEIGHT, WIDTH, CHANNELS), np.uint8)
        labels = np.empty(unique.size, np.int64)
        groups = list(group_by_part(self._plan(), unique))
        # Batches still in memory first, so they are used before loading others pushes them out.
        groups.sort(key=lambda group: group[0] not in (self._cache or {}))
        try:
            for part, out, local in groups:
                lo, hi = int(local[0]), int(local[-1]) + 1
                rows, part_labels = self._segment(part, names[part], lo, hi)
                kernels.chw_to_hwc_into(np.ascontiguousarray(rows[local - lo]), images[out])
                labels[out] = part_labels[local - lo]
        except DECODE_ERRORS as exc:
            raise SourceError(f"{self.path}: cannot read ({exc})") from None
        return images, labels, np.ones(unique.size, bool)

    def _segment(self, part, name, lo, hi):
        if self.layout.kind == "binary":
            return _binary_records(self.container, name, self.layout, self.label_kind, lo, hi)
        rows, labels = self._python_rows(part, name)
        if hi > rows.shape[0]:
            raise SourceError(
                f"{self.container.where(name)}: holds {rows.shape[0]} images now, "
                f"{self._counts[part]} when first counted"
            )
        return rows[lo:hi], labels[lo:hi]
