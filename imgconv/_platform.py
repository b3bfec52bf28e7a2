"""Operating-system calls imgconv needs, each written once, with its fallback where one exists.

imgconv runs on Linux (tested) and should run on macOS and other POSIX
systems, where the Linux-only calls (``renameat2``, ``PR_SET_PDEATHSIG``,
``sched_getaffinity``, ``fdatasync``) fall back to portable ones. On Windows
``import imgconv`` works and stores can be read, but writing a store needs
``flock`` on a directory: that is refused when tried, with a message saying
so (:data:`CAN_LOCK_DIRECTORIES`).

Also here: :class:`PerProcess`, a value (a thread pool, a table of open
environments) that each process makes for itself, so that a child forked
from a process that had one never uses the parent's, and
:class:`ForkSafeLock`, a lock a forked child never inherits held.
"""
import ctypes
import errno
import functools
import io
import os
import shutil
import signal
import stat
import sys
import threading
import time
import weakref
from collections import deque, namedtuple
from typing import Callable, Generic, Optional, Tuple, TypeVar

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

T = TypeVar("T")

IS_LINUX = sys.platform.startswith("linux")
CAN_LOCK_DIRECTORIES = fcntl is not None
UNSUPPORTED = "imgconv writes stores on Linux and macOS (POSIX), not on this platform"


# --------------------------------------------------------------------------- processors


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask where the system has one), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# --------------------------------------------------------------------------- files


def pread_exact(fd: int, view: memoryview, offset: int) -> int:
    """Read ``len(view)`` bytes of ``fd`` at ``offset`` into ``view``; returns the number read.

    Loops over short reads; fewer than ``len(view)`` bytes come back only
    when the file ends first (the caller names the truncated file). Uses
    ``preadv`` (no copy) where the system has it, else ``pread``.
    """
    done = 0
    while done < len(view):
        if _HAVE_PREADV:
            got = os.preadv(fd, [view[done:]], offset + done)
        else:
            data = _pread(fd, len(view) - done, offset + done)
            got = len(data)
            view[done : done + got] = data
        if got <= 0:
            break
        done += got
    return done


_HAVE_PREADV = hasattr(os, "preadv")
CAN_PREAD = _HAVE_PREADV or hasattr(os, "pread")


def _pread(fd: int, size: int, offset: int) -> bytes:
    if not hasattr(os, "pread"):
        raise OSError(errno.ENOTSUP, f"reading at an offset (pread) is not available on {sys.platform}")
    return os.pread(fd, size, offset)


class NotRegularFileError(OSError):
    """:func:`open_regular` found no regular file at a path: a FIFO, socket, device or directory.

    ``filename`` is the path, ``kind`` what is there ("a FIFO (named pipe)"),
    ``strerror`` says both ("a FIFO (named pipe), not a regular file"), ``str()`` with the path
    ("PATH is a FIFO (named pipe), not a regular file").
    """

    def __init__(self, path: "str | os.PathLike[str]", kind: str) -> None:
        super().__init__(None, f"{kind}, not a regular file", os.fspath(path))
        self.kind = kind

    def __str__(self) -> str:
        return f"{self.filename} is {self.kind}, not a regular file"


def file_kind(mode: int) -> str:
    """What a ``st_mode`` is, as messages say it: "a regular file", "a FIFO (named pipe)", "a directory"..."""
    for test, kind in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return kind
    return "not a file"


def open_regular(path: "str | os.PathLike[str]", flags: int = os.O_RDONLY, *, follow_symlinks: bool = True) -> int:
    """Open ``path`` with ``flags`` if it is a regular file, without ever blocking on anything else; returns the fd.

    A FIFO, socket or device where a file was expected is refused before it
    is opened (opening a FIFO for reading blocks until a writer comes,
    forever if none does; opening a device can have effects of its own).
    What is there is looked at first (``stat``, or ``lstat`` with
    ``follow_symlinks=False``), then opened with ``O_NONBLOCK`` (and
    ``O_NOFOLLOW`` when not following links) and checked again on the open
    descriptor, so a file swapped for a FIFO in between cannot block either;
    ``O_NONBLOCK`` is then cleared. The descriptor is close-on-exec. Raises
    :class:`NotRegularFileError` for anything but a regular file (a
    symbolic link too, with ``follow_symlinks=False``) and OSError as
    ``os.open`` does.
    """
    path = os.fspath(path)
    found = os.stat(path, follow_symlinks=follow_symlinks).st_mode
    if not stat.S_ISREG(found):
        raise NotRegularFileError(path, file_kind(found))
    extra = getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        extra |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags | extra)
    except OSError as exc:
        if not follow_symlinks and exc.errno == errno.ELOOP:  # O_NOFOLLOW met a link put there since the lstat
            raise NotRegularFileError(path, "a symbolic link") from None
        raise
    try:
        opened = os.fstat(fd).st_mode
        if not stat.S_ISREG(opened):
            raise NotRegularFileError(path, file_kind(opened))
        if extra & getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular_file(path: "str | os.PathLike[str]", *, follow_symlinks: bool = True) -> "io.BufferedReader":
    """:func:`open_regular` for reading, as a binary file object (close it)."""
    return os.fdopen(open_regular(path, follow_symlinks=follow_symlinks), "rb")


def fdatasync(fd: int) -> None:
    """Flush the data of ``fd`` to disk (``fsync`` where the system has no ``fdatasync``, as macOS)."""
    sync = getattr(os, "fdatasync", None) or os.fsync
    sync(fd)


def fsync_dir(directory: str) -> None:
    """Make the entries of ``directory`` (a rename into it) durable; silently impossible on some systems."""
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


def lock_exclusive(fd: int) -> bool:
    """Take an exclusive ``flock`` on ``fd`` without waiting: True when taken, False when another holds it.

    The kernel drops the lock when the descriptor is closed or its process
    dies. OSError (ENOTSUP) on a system without ``flock``.
    """
    if fcntl is None:
        raise OSError(errno.ENOTSUP, UNSUPPORTED)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def special_file(path: str) -> Optional[str]:
    """What ``path`` is when neither a regular file nor a directory ("a FIFO (named pipe)", "a socket", ...), else None.

    Asked with ``stat`` (a symbolic link is followed), never by opening:
    opening a FIFO blocks until someone writes to it. None also for a path
    that does not exist or cannot be asked about: the caller's own open or
    stat then says so.
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return file_kind(mode)


def remove_path(path: str) -> None:
    """Remove a file or a directory tree; a missing path is fine."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


DiskUsage = namedtuple("DiskUsage", "data_bytes allocated_bytes")
DiskUsage.__doc__ = """The size of a file or tree: ``data_bytes``, the sum of its files' sizes
(what ``ls -l`` adds up), and ``allocated_bytes``, the blocks the filesystem
gave it, directories included (what ``du`` says: whole blocks per small
file); None where the system does not tell (no ``st_blocks``)."""


def disk_usage(path: str) -> DiskUsage:
    """The :class:`DiskUsage` of the file or directory tree at ``path`` (links are not followed).

    A file reached by several hard links counts once, as ``du`` counts it;
    entries that vanish while walking are left out.
    """
    data = allocated = 0
    blocks_known = True
    seen = set()
    for entry in _walk(path):
        try:
            st = os.lstat(entry)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        if not stat.S_ISDIR(st.st_mode):
            data += st.st_size
        blocks = getattr(st, "st_blocks", None)
        if blocks is None:
            blocks_known = False
        else:
            allocated += blocks * 512
    return DiskUsage(data, allocated if blocks_known else None)


def _walk(path: str):
    yield path
    if os.path.isdir(path) and not os.path.islink(path):
        for root, directories, files in os.walk(path):
            for name in directories + files:
                yield os.path.join(root, name)


def free_bytes(path: str) -> Optional[int]:
    """Bytes an unprivileged process may still write on the filesystem of ``path``, or None."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


# --------------------------------------------------------------------------- renames

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100


def renameat2(source: str, target: str, flags: int) -> bool:
    """Linux ``renameat2()``: True when done; False when the system or filesystem does not offer it or ``flags``.

    Other errors (the target exists under RENAME_NOREPLACE, permissions) raise OSError.
    """
    func = _renameat2_function()
    if func is None:
        return False
    if func(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), target)


@functools.cache
def _renameat2_function():
    if not IS_LINUX:
        return None
    try:
        func = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except OSError:
        return None
    if func is not None:
        func.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
        func.restype = ctypes.c_int
    return func


# --------------------------------------------------------------------------- processes

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """End this (worker) process as soon as the process ``parent`` dies, however it dies.

    A worker of a parent killed by SIGKILL would otherwise wait on its task
    queue forever: it holds the queue's write end itself, so it never sees
    end-of-file. On Linux the kernel sends SIGKILL when the parent goes
    (PR_SET_PDEATHSIG; strictly, when the parent's thread that forked us
    ends: a process pool forks from the thread that submits, the main one);
    elsewhere a thread watches the parent's pid.
    """
    armed = IS_LINUX and _set_parent_death_signal()
    if os.getppid() != parent:
        os._exit(1)  # the parent died before the signal was armed
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent,), name="imgconv-parent-watch", daemon=True).start()


def _set_parent_death_signal() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(1)


def process_exists(pid: int) -> Optional[bool]:
    """Whether a process ``pid`` exists; None when that cannot be told (no permission to ask)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return None
    return True


_STATES = {"R": "running", "S": "sleeping", "D": "waiting for the disk", "T": "stopped", "t": "stopped by a tracer",
           "Z": "a zombie", "X": "dead", "I": "idle"}


def process_state(pid: int) -> Optional[Tuple[str, str]]:
    """The state of process ``pid`` from ``/proc`` as ``(letter, words)``, e.g. ``("T", "stopped")``; None if unknown.

    Linux only (elsewhere None).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the state follows the last ")".
    fields = stat_line[stat_line.rfind(b")") + 2 :].split()
    if not fields:
        return None
    letter = fields[0].decode("ascii", "replace")
    return letter, _STATES.get(letter, "in state " + letter)


def owned_by_me(path: str) -> bool:
    """Whether the file at ``path`` belongs to this process's user (always True where there are no uids)."""
    getuid = getattr(os, "getuid", None)
    return getuid is None or os.stat(path).st_uid == getuid()


# --------------------------------------------------------------------------- per-process state

_FORK_SAFE = weakref.WeakSet()  # type: weakref.WeakSet


class ForkSafeLock:
    """A ``threading.Lock`` that a forked child never inherits held.

    A child forked while another thread of the parent held a lock would find
    it held forever (that thread does not exist in the child); this one is
    replaced by a fresh lock in the child. Use it as a context manager.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        _FORK_SAFE.add(self)

    def _renew(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> "ForkSafeLock":
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def _renew_locks_in_child() -> None:
    for lock in list(_FORK_SAFE):
        lock._renew()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_locks_in_child)


class PerProcess(Generic[T]):
    """A value each process makes for itself on first use (``factory()``), never sharing the parent's.

    What a child inherits over ``fork`` (a thread pool whose threads did not
    survive, an LMDB environment LMDB forbids to use after fork) is handed to
    ``discard`` (when given) in the child, never used, and a new value made.
    Thread-safe: one value per process, whatever the threads.
    """

    def __init__(self, factory: Callable[[], T], discard: Optional[Callable[[T], None]] = None) -> None:
        self._factory = factory
        self._discard = discard
        self._lock = ForkSafeLock()
        self._pid: Optional[int] = None
        self._value: Optional[T] = None

    def get(self) -> T:
        """This process's value, made now if it has none yet."""
        pid = os.getpid()
        if self._pid != pid:
            with self._lock:
                if self._pid != pid:
                    inherited, self._value = self._value, None
                    if inherited is not None and self._discard is not None:
                        self._discard(inherited)
                    self._value = self._factory()
                    self._pid = pid
        return self._value  # type: ignore[return-value]

    def peek(self) -> Optional[T]:
        """This process's value if it has made one, else None (nothing is made)."""
        return self._value if self._pid == os.getpid() else None

    def reset(self) -> None:
        """Forget this process's value (the next :meth:`get` makes a new one); a value of another
        process is dropped without being touched."""
        with self._lock:
            self._value = None
            self._pid = None


# --------------------------------------------------------------------------- closing in the background

# Descriptors waiting for the closing thread; past this many a close is done
# at once, so that a loop of writers cannot run the process out of descriptors.
MAX_PENDING_CLOSES = 64
# Seconds the closing thread waits for more work before it ends: a process
# that forks its workers later (a conversion after a store) rarely has it then.
CLOSER_IDLE_SECONDS = 1.0


class _Closer:
    """A daemon thread, started when needed and ended when idle, that closes descriptors handed to it."""

    def __init__(self) -> None:
        self._fds: "deque[int]" = deque()  # appends and pops are atomic: no lock a fork could inherit held
        # Released to wake the thread: a release never waits, where an Event's set
        # waits for its condition's lock, held by the thread as it wakes.
        self._wake = threading.Lock()
        self._wake.acquire()
        self._state = threading.Lock()  # guards _thread: whether a thread runs, started or ending
        self._thread: Optional[threading.Thread] = None

    def close(self, fd: int) -> None:
        if len(self._fds) >= MAX_PENDING_CLOSES:
            _close_quietly(fd)
            return
        with self._state:  # the thread ends only with nothing waiting, under this lock
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="imgconv-close", daemon=True)
                thread.start()  # RuntimeError where no thread can start (fd not taken)
                self._thread = thread
            self._fds.append(fd)
        try:
            self._wake.release()
        except RuntimeError:
            pass  # released already: the thread drains the queue when it wakes

    def pending(self) -> int:
        return len(self._fds)

    def _run(self) -> None:
        while True:
            # Every descriptor appended is followed by a release.
            if not self._wake.acquire(timeout=CLOSER_IDLE_SECONDS):
                with self._state:
                    if not self._fds:
                        self._thread = None
                        return
                continue  # appended as the wait ended: its release comes (or came) next
            self.close_all()

    def close_all(self) -> None:
        """Close every descriptor waiting (also what a forked child inherited: its thread is the parent's)."""
        while self._fds:
            _close_quietly(self._fds[0])
            self._fds.popleft()  # after the close: pending() counts the one being closed


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


_CLOSER: PerProcess[_Closer] = PerProcess(_Closer, discard=_Closer.close_all)


def close_in_background(fd: int) -> None:
    """Close ``fd`` in a thread of this process, so the caller does not wait for it.

    The thread starts when needed and ends after :data:`CLOSER_IDLE_SECONDS`
    with nothing to close.

    For a descriptor that holds nothing anyone waits for, whose close can
    wait on the disk: the last reference to a removed directory, whose inode
    and block the filesystem frees then (on a filesystem mounted with
    ``discard`` and no journal, such as the project's VM, that waits for the
    device: BENCHMARKS.md, "Fixed costs"). A lock (``flock``) on it is
    dropped when the close happens. Errors of the close are ignored. Where no
    thread can be started (at interpreter shutdown), ``fd`` is closed at once.
    """
    try:
        _CLOSER.get().close(fd)
    except RuntimeError:  # "can't create new thread at interpreter shutdown", or no thread to be had
        _close_quietly(fd)


def wait_for_background_closes(timeout: float = 10.0) -> bool:
    """Wait until every descriptor handed to :func:`close_in_background` is closed; False on timeout."""
    closer = _CLOSER.peek()
    deadline = time.monotonic() + timeout
    while closer is not None and closer.pending():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True
