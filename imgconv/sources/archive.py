"""Member files read in place: a directory on disk, or a tar archive (gzip or not) never extracted.

A source that reads named files (CIFAR batches today; ImageNet tars or
WebDataset shards next) asks a :class:`Container` for them and does not care
which kind it has: :class:`Directory` and :class:`Archive` answer the same
questions (is a member there, how big, its bytes from an offset, every member
in one pass). What differs is the cost: a directory reads anything anywhere;
a compressed archive cannot seek, so it is best read once, front to back, in
its own order (:meth:`Archive.read_ahead`, with a thread inflating the next
member while the caller works on the last), and :class:`OrderedMembers` puts
members that arrive before their turn aside on disk until it comes.

A member read whole (a batch, a label-name file) is first checked against
the most bytes it may hold, given as ``limits`` by the source that knows what
the member is; a member declared larger (in the tar header, or by the file
system) is refused naming it before anything of it is read, so a small
archive holding a sparse or highly compressed gigabyte costs nothing. A
member that is a FIFO, socket or device is refused by name and never opened.

Gzip is inflated by the ISA-L decoder of the ``isal`` package when it is
installed (about twice as fast as ``zlib``, and it lets go of the GIL; see
BENCHMARKS.md), else by the standard library, with the same results.
:data:`DECODE_ERRORS` are the exceptions a damaged archive can raise here,
for callers to turn into one clear error naming the file.
"""
from __future__ import annotations

import os
import posixpath
import queue
import stat
import tarfile
import tempfile
import threading
import zlib
from collections.abc import Collection, Generator, Iterator, Mapping, Sequence
from contextlib import closing
from typing import IO, Any, Callable, Protocol, Union

from .._platform import NotRegularFileError, file_kind, open_regular_file
from ..errors import SourceError
from .base import SizeLimit, check_input_size

_igzip: Any
try:
    from isal import igzip as _igzip
    from isal import isal_zlib as _isal_zlib

    _IsalError: type[Exception] = getattr(_isal_zlib, "error")  # noqa: B009 - its type stub calls it an instance
except ImportError:  # a platform without isal wheels: the standard library's gzip
    _igzip = None
    _IsalError = zlib.error

DECODE_ERRORS: tuple[type[Exception], ...] = (tarfile.TarError, OSError, EOFError, zlib.error, _IsalError)

_GZIP_MAGIC = b"\x1f\x8b"

Bytes = Union[bytes, memoryview]

Limits = Mapping[str, SizeLimit]


def fast_gzip_available() -> bool:
    """True when gzip is inflated by ISA-L (the ``isal`` package) rather than ``zlib``."""
    return _igzip is not None


class TarReader:
    """A tar archive open for reading, and the gzip decoder under it; closed together.

    ``tar`` is the ``tarfile.TarFile``, always opened in its seekable mode:
    iterating it front to back reads the archive once (a member read whole
    is one large read of the decoder, faster than ``tarfile``'s stream mode
    and its 10 KiB reads), and ``extractfile`` of any member in any order
    works too (going backwards in a gzip stream restarts it). Raises the
    errors of :data:`DECODE_ERRORS`.
    """

    def __init__(self, path: str) -> None:
        self._gzip = None
        with open(path, "rb") as f:
            gzipped = f.read(2) == _GZIP_MAGIC
        if gzipped and _igzip is not None:
            self._gzip = _igzip.open(path, "rb")
            try:
                self.tar = tarfile.open(fileobj=self._gzip, mode="r:")
            except BaseException:
                self._gzip.close()
                raise
        else:
            self.tar = tarfile.open(path, "r:*")

    def close(self) -> None:
        """Close the archive and its decoder."""
        try:
            self.tar.close()
        finally:
            if self._gzip is not None:
                self._gzip.close()

    def __enter__(self) -> TarReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def member_name(name: str) -> str:
    """A tar member's name as compared everywhere: no "./", no doubled or trailing "/"."""
    return posixpath.normpath(name).lstrip("/")


def is_tar(path: str) -> bool:
    """True when the file at ``path`` is a tar archive; SourceError for a damaged compressed one."""
    try:
        return tarfile.is_tarfile(path)
    except DECODE_ERRORS as exc:
        # is_tarfile only gets this far into a compressed file that began well: a damaged archive.
        raise SourceError(
            f"{path}: a damaged or truncated compressed archive, cannot read it ({type(exc).__name__}: {exc})"
        ) from None


class Container(Protocol):
    """Where a source's member files are: what :class:`Directory` and :class:`Archive` both answer.

    Names are relative, with "/" between folders. ``sequential`` is True
    when reading a member out of order costs a pass over those before it
    (a compressed archive): such a container is best read with
    :meth:`read_ahead`, in its own order. ``limits`` bounds members by name
    (a member over its limit is refused whenever it is asked for: its size,
    its bytes); ``location`` says where the members are, for messages.
    Methods raise SourceError, or the errors of :data:`DECODE_ERRORS` for
    damaged data (callers name the member with :meth:`where`).
    """

    path: str
    sequential: bool
    limits: Limits

    @property
    def location(self) -> str:
        """Where the members are, as messages show it: a directory, or ``archive:folder/``."""

    def where(self, name: str) -> str:
        """``name`` as messages show it: a path, or ``archive:member``."""

    def has(self, name: str) -> bool:
        """True when member ``name`` is there and is no folder (reading it then says whether it is a file)."""

    def size(self, name: str) -> int:
        """The size of member ``name`` in bytes (SourceError when it is over its limit, or not a file)."""

    def open(self, name: str) -> IO[bytes]:
        """Member ``name`` open for reading (a file object; close it)."""

    def read(self, name: str) -> bytes:
        """All of member ``name``, its size checked against its limit first."""

    def read_range(self, name: str, offset: int, size: int) -> Bytes:
        """Up to ``size`` bytes of member ``name`` from ``offset`` (fewer at its end)."""

    def each(self, names: Collection[str] | None = None) -> Iterator[tuple[str, IO[bytes]]]:
        """``(name, open member)`` for those of ``names`` there (None: every member), in one pass."""

    def read_ahead(self, names: Collection[str] | None = None) -> Generator[tuple[str, bytes], None, None]:
        """``(name, bytes)`` for those of ``names`` there (None: every member), in the container's order."""

    def close(self) -> None:
        """Let go of open files and members kept in memory; the container stays usable."""


class Directory:
    """Member files in a directory on disk: any member, any offset, in any order.

    A member that is not a regular file (a FIFO, socket, device or folder
    with a member's name) is refused by name, never opened.
    """

    sequential = False

    def __init__(self, path: str, limits: Limits | None = None) -> None:
        self.path = path
        self.limits: Limits = dict(limits or {})

    @property
    def location(self) -> str:
        """The directory."""
        return self.path

    def where(self, name: str) -> str:
        """The member's path on disk."""
        return os.path.join(self.path, name)

    def has(self, name: str) -> bool:
        """True when ``name`` is in the directory and is no folder: a file, or a FIFO or device reading refuses."""
        path = self.where(name)
        return os.path.exists(path) and not os.path.isdir(path)

    def size(self, name: str) -> int:
        """The size of file ``name`` in bytes; SourceError when it is not a regular file or over its limit."""
        st = os.stat(self.where(name))
        if not stat.S_ISREG(st.st_mode):
            raise SourceError(f"{self.where(name)}: {file_kind(st.st_mode)}, not a regular file")
        _check_limit(self, name, st.st_size)
        return st.st_size

    def open(self, name: str) -> IO[bytes]:
        """File ``name`` open for reading; SourceError when it is not a regular file (never opened then)."""
        try:
            return open_regular_file(self.where(name))
        except NotRegularFileError as exc:
            raise SourceError(f"{self.where(name)}: {exc.strerror}") from None

    def read(self, name: str) -> bytes:
        """All of file ``name``, refused (SourceError) before reading when it is over its limit."""
        with self.open(name) as f:
            return _read_whole(self, name, f, os.fstat(f.fileno()).st_size)

    def read_range(self, name: str, offset: int, size: int) -> Bytes:
        """Up to ``size`` bytes of ``name`` from ``offset``: only those are read."""
        with self.open(name) as f:
            f.seek(offset)
            return f.read(size)

    def _every_name(self) -> list[str]:
        """Every regular file below the directory, relative, sorted."""
        found = []
        for top, folders, files in os.walk(self.path):
            folders.sort()
            relative = os.path.relpath(top, self.path)
            for name in sorted(files):
                full = name if relative == "." else f"{relative}/{name}".replace(os.sep, "/")
                if os.path.isfile(self.where(full)):
                    found.append(full)
        return found

    def each(self, names: Collection[str] | None = None) -> Iterator[tuple[str, IO[bytes]]]:
        """Yield ``(name, open file)`` for those of ``names`` that are there, in sorted order."""
        for name in self._every_name() if names is None else sorted(names):
            if self.has(name):
                with self.open(name) as f:
                    yield name, f

    def read_ahead(self, names: Collection[str] | None = None) -> Generator[tuple[str, bytes], None, None]:
        """Yield ``(name, bytes)`` for those of ``names`` that are there, in sorted order (each checked first)."""
        for name, f in self.each(names):
            yield name, _read_whole(self, name, f, os.fstat(f.fileno()).st_size)

    def close(self) -> None:
        """Nothing is kept open between calls."""


def _check_limit(container: Container, name: str, size: int) -> None:
    """SourceError naming member ``name`` when ``size`` bytes is more than its limit allows."""
    limit = container.limits.get(name)
    if limit is not None:
        check_input_size(container.where(name), limit.what, size, limit.bytes)


def _read_whole(container: Container, name: str, f: IO[bytes], size: int) -> bytes:
    """All of the open member ``name``, declared ``size`` bytes, its limit checked before reading.

    Reads ``size`` bytes and one more: a file that grew after its size was
    taken is refused, not read on without bound.
    """
    _check_limit(container, name, size)
    data = f.read(size + 1)
    if len(data) > size:
        raise SourceError(f"{container.where(name)}: grew while it was read (from {size:,} bytes)")
    return data


_END = object()  # read_ahead's end of the archive


class Archive:
    """Member files inside a tar archive (gzip or not), read member by member without extracting.

    ``prefix`` is the archive's top directory holding the members (names are
    relative to it), or "" for members at the top. The member index (names,
    offsets, sizes) is built by one pass over the archive and travels with
    the container when it is pickled; the open archive and the member in
    memory do not. Within a process they are kept between calls until
    :meth:`close`: gzip cannot seek, so reopening for every read would
    decompress the archive from its start each time. Reading on from where
    the last read stopped continues the stream; reading an earlier member
    restarts it (gzip does that itself when asked to seek backwards). A
    process forked with the archive open opens its own: sharing the file
    position with the parent would mix up their reads.
    """

    sequential = True

    def __init__(self, path: str, prefix: str = "", limits: Limits | None = None) -> None:
        self.path = path
        self.prefix = prefix
        self.limits: Limits = dict(limits or {})
        self.members: dict[str, tarfile.TarInfo] | None = None
        self._tar: TarReader | None = None
        self._member: tuple[str, memoryview] | None = None
        self._pid: int | None = None  # the process that opened _tar

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state.update(_tar=None, _member=None, _pid=None)
        return state

    @property
    def location(self) -> str:
        """``archive:folder/``, or ``archive:./`` for members at its top level."""
        return f"{self.path}:{self.prefix or '.'}/"

    def where(self, name: str) -> str:
        """``archive:prefix/name``, as messages show a member."""
        return f"{self.path}:{self.prefix}/{name}" if self.prefix else f"{self.path}:{name}"

    def _relative(self, info: tarfile.TarInfo) -> str | None:
        """The member's name below the prefix, or None for a member outside it or not a file."""
        full = member_name(info.name)
        if not info.isfile():
            return None
        if not self.prefix:
            return full
        return full[len(self.prefix) + 1 :] if full.startswith(self.prefix + "/") else None

    def _index(self) -> dict[str, tarfile.TarInfo]:
        if self.members is None:
            for _ in self.each(()):
                pass
        assert self.members is not None
        return self.members

    def each(self, names: Collection[str] | None = None) -> Generator[tuple[str, IO[bytes]], None, None]:
        """Yield ``(name, open member)`` for those of ``names`` in the archive (None: all), in archive order.

        One streaming pass, which also builds the member index. Raises
        SourceError for an unreadable archive or two members of one name.
        """
        with closing(self._pass(names)) as members:
            for name, _, member in members:
                yield name, member

    def _pass(self, names: Collection[str] | None) -> Generator[tuple[str, tarfile.TarInfo, IO[bytes]], None, None]:
        """:meth:`each`, with each member's header."""
        members: dict[str, tarfile.TarInfo] = {}
        watch = self._watcher()
        try:
            with TarReader(self.path) as reader:
                for info in reader.tar:
                    if watch is not None and info.isfile():
                        watch(member_name(info.name))
                    name = self._relative(info)
                    if name is None:
                        continue
                    if name in members:
                        # Counting would see the first, random access the last: refuse to guess.
                        raise SourceError(f"{self.where(name)}: the archive holds two members of that name")
                    members[name] = info
                    if names is None or name in names:
                        member = reader.tar.extractfile(info)
                        assert member is not None  # a regular file always has one
                        yield name, info, member
        except DECODE_ERRORS as exc:
            raise SourceError(f"{self.path}: cannot read the tar archive ({exc})") from None
        self.members = members

    def _watcher(self) -> Callable[[str], None] | None:
        """A function shown the full name of every regular file of one pass, which may refuse the archive.

        It raises SourceError to refuse it (a subclass knows what must not be
        there); None here: every archive is fine.
        """
        return None

    def read_ahead(self, names: Collection[str] | None = None) -> Generator[tuple[str, bytes], None, None]:
        """Yield ``(name, bytes)`` for those of ``names`` in the archive (None: all), in archive order, in one pass.

        A thread inflates and reads the next member while the caller works on
        the one before (the gzip decoder lets go of the GIL), so decompressing
        overlaps the caller's work; one member at most waits in memory.
        Closing the generator early stops the thread. Raises SourceError as
        :meth:`each`, naming the member that cannot be read.
        """
        handoff: queue.Queue[object] = queue.Queue(maxsize=1)
        stop = threading.Event()

        def hand_over(item: object) -> bool:
            while not stop.is_set():
                try:
                    handoff.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    pass
            return False

        def produce() -> None:
            members = self._pass(names)
            try:
                for name, info, f in members:
                    try:
                        data = _read_whole(self, name, f, info.size)
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
                yield item  # type: ignore[misc]
        finally:
            stop.set()
            thread.join()

    def has(self, name: str) -> bool:
        """True when the archive holds member ``name`` (the first call reads the index)."""
        return name in self._index()

    def size(self, name: str) -> int:
        """The size of member ``name`` in bytes (from its header); SourceError when it is over its limit."""
        size = self._index()[name].size
        _check_limit(self, name, size)
        return size

    def open(self, name: str) -> IO[bytes]:
        """Member ``name`` open for reading, from the archive kept open in this process."""
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
        member = self._tar.tar.extractfile(info)
        assert member is not None
        return member

    def read_range(self, name: str, offset: int, size: int) -> Bytes:
        """Up to ``size`` bytes of member ``name`` from ``offset``.

        The whole member is read once and kept until another is asked for:
        seeking inside a gzip stream restarts it from the beginning whenever
        it goes backwards, which small reads ahead would make it do.
        """
        if self._member is None or self._member[0] != name or self._pid != os.getpid():
            self._member = None
            self._member = (name, memoryview(self.read(name)))
        return self._member[1][offset : offset + size]

    def read(self, name: str) -> bytes:
        """All of member ``name``, refused (SourceError) before it is read when its header says it is over its limit."""
        with self.open(name) as f:
            return _read_whole(self, name, f, self._index()[name].size)

    def close(self) -> None:
        """Close the open archive and drop the member kept in memory (reopened when next needed)."""
        self._member = None
        if self._tar is not None:
            self._tar.close()
            self._tar = None


def read_exactly(container: Container, name: str, offset: int, size: int) -> Bytes:
    """Exactly ``size`` bytes of member ``name`` from ``offset``; SourceError naming it when it is shorter."""
    where = container.where(name)
    try:
        data = container.read_range(name, offset, size)
    except DECODE_ERRORS as exc:
        raise SourceError(f"{where}: cannot read ({exc})") from None
    if len(data) != size:
        raise SourceError(f"{where}: truncated, {offset + len(data)} bytes where {offset + size} were expected")
    return data


def set_aside(directory: str, number: int, data: bytes) -> str:
    """Keep a member's bytes in file ``member-NUMBER`` of ``directory`` until their turn; returns its path."""
    path = os.path.join(directory, f"member-{number}")
    with open(path, "wb") as f:
        f.write(data)
    return path


def take_back(path: str) -> bytes:
    """The bytes :func:`set_aside` kept at ``path``; the file is removed."""
    with open(path, "rb") as f:
        data = f.read()
    os.remove(path)
    return data


class OrderedMembers:
    """The members ``order`` of a container, yielded in that order, read in one pass in the container's order.

    Iterating yields ``(name, bytes)``: each name of ``order`` in turn, and
    each of ``anytime`` (say, a small file of label names) as soon as it
    arrives. The official CIFAR archives do not keep their batches in order;
    a member that arrives before its turn waits in a file of a temporary
    directory, not in memory, so one member at a time is held whatever the
    archive's order. Stopping early (closing the iterator, or leaving the
    ``with`` block) stops the container's read-ahead and removes the waiting
    files; after :meth:`drop_order` only the members of ``anytime`` still
    come (the caller has all it wants of the others). After a complete
    pass, :attr:`delivered` lists the names of ``order`` yielded and
    :attr:`missing` those that never came (or were dropped), in order.
    Raises SourceError as :meth:`Container.read_ahead`.
    """

    def __init__(self, container: Container, order: Sequence[str], anytime: Collection[str] = ()) -> None:
        if len(set(order)) != len(order) or set(order) & set(anytime):
            raise ValueError(f"names must be distinct: order {list(order)}, anytime {list(anytime)}")
        self.container = container
        self.order = list(order)
        self.anytime = set(anytime)
        self.delivered: list[str] = []
        self.missing: list[str] = []
        self._ordered = True
        self._iterator: Generator[tuple[str, bytes], None, None] | None = None

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        if self._iterator is None:
            self._iterator = self._members()
        return self._iterator

    def _members(self) -> Generator[tuple[str, bytes], None, None]:
        waiting: dict[str, str] = {}  # name -> the file its bytes wait in
        arriving = self.container.read_ahead(set(self.order) | self.anytime)
        with tempfile.TemporaryDirectory(prefix="imgconv-early-") as directory, closing(arriving):
            for name, data in arriving:
                if name in self.anytime:
                    yield name, data
                elif not self._ordered:
                    continue
                elif name != self._due():
                    waiting[name] = set_aside(directory, self.order.index(name), data)
                else:
                    self.delivered.append(name)
                    yield name, data
                    del data  # before the members that waited are read back
                    while self._ordered and self._due() in waiting:
                        due = self.order[len(self.delivered)]
                        self.delivered.append(due)
                        yield due, take_back(waiting.pop(due))
        self.missing = self.order[len(self.delivered) :]

    def _due(self) -> str | None:
        return self.order[len(self.delivered)] if len(self.delivered) < len(self.order) else None

    def drop_order(self) -> None:
        """Yield no more members of ``order``: those that arrive from now on are dropped."""
        self._ordered = False

    def close(self) -> None:
        """Stop reading: the read-ahead thread ends and the waiting files are removed."""
        if self._iterator is not None:
            self._iterator.close()

    def __enter__(self) -> OrderedMembers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
