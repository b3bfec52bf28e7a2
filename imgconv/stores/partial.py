"""The partial output: the locked directory beside a store's path where its writer builds it.

``.{name}.imgconv-partial/`` beside ``path`` holds the output under
``path``'s own name until :func:`~imgconv.stores.atomic.commit` renames it into
place, and whatever the layer above the writer keeps with it (the resume
journal). Its name is fixed, so the next writer of ``path`` finds what an
interrupted one left, to continue it or to remove it. The lock (``flock`` on
the directory) keeps two writers of one path apart; the kernel drops it when
its process dies, so a killed writer never leaves a stale lock.
"""
import os
from typing import Optional

from .. import _platform
from .._platform import remove_path
from ..errors import StoreError

PARTIAL_SUFFIX = ".imgconv-partial"


def partial_path(path: str) -> str:
    """The directory where the writer of ``path`` keeps its output until it is finished."""
    return os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}{PARTIAL_SUFFIX}")


class PartialOutput:
    """The partial-output directory of one target, locked by the writer that uses it.

    ``path`` is the directory, ``store`` the output inside it (named like the
    target), ``target`` the store's final path.
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self.path = partial_path(target)
        self.store = os.path.join(self.path, os.path.basename(target))
        self._fd: Optional[int] = None
        self._made = False  # this object made the directory (so it is empty)

    @property
    def locked(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Create the directory if needed and lock it; StoreError if another process holds it."""
        if not _platform.CAN_LOCK_DIRECTORIES:
            raise StoreError(f"{self.target}: cannot write a store here: {_platform.UNSUPPORTED}")
        while self._fd is None:
            try:
                os.mkdir(self.path)
                self._made = True
            except FileExistsError:
                self._made = False
            except OSError as exc:
                raise StoreError(f"{self.target}: cannot create {self.path}: {exc.strerror or exc}") from None
            try:
                fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            except FileNotFoundError:
                continue  # removed by the writer that just finished: create it again
            except OSError as exc:
                raise StoreError(f"{self.target}: cannot use {self.path}: {exc.strerror or exc}") from None
            self._lock(fd)

    def _lock(self, fd: int) -> None:
        try:
            locked = _platform.lock_exclusive(fd)
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"{self.target}: cannot lock {self.path}: {exc.strerror or exc}") from None
        if not locked:
            os.close(fd)
            raise StoreError(f"{self.target}: another process is writing this store "
                             f"(its partial output {self.path} is locked)")
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(self.path))
        except FileNotFoundError:
            same = False
        if same:
            self._fd = fd
        else:
            os.close(fd)  # the directory was removed (and perhaps made again) meanwhile: try again

    def release(self) -> None:
        """Drop the lock (the directory stays)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def clear(self) -> None:
        """Empty the directory (locked by us) for a fresh start."""
        if self._made:
            return  # made by acquire(), locked since: nothing can be in it
        for name in os.listdir(self.path):
            remove_path(os.path.join(self.path, name))

    def remove(self) -> None:
        """Remove the directory and drop the lock."""
        try:
            os.rmdir(self.path)  # empty once the output is in place: one call
        except OSError:
            remove_path(self.path)
        fd, self._fd = self._fd, None
        if fd is not None:
            # The last reference to the removed directory: closing it frees its
            # inode and block, which can wait on the disk; nobody waits for the
            # lock of a directory no longer there (the next writer makes a new one).
            _platform.close_in_background(fd)

    def has_output(self) -> bool:
        """True when an earlier writer left output here."""
        return os.path.lexists(self.store)


def remove_finished_partial(path: str) -> None:
    """Remove a partial-output directory whose store is gone (a writer killed between its
    rename into place and the removal of the directory): it holds nothing but a journal."""
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
