"""Atomic output: a finished store appears at its path in one step, or not at all.

A writer builds its output under another name (its partial output, see
:mod:`imgconv.stores.partial`) and :func:`commit` moves it into place at the
end. At every moment the path holds nothing, the old store or the new one.
"""
import os
import secrets

from .. import _platform
from .._platform import remove_path
from ..errors import StoreError


def temporary_sibling(path: str) -> str:
    """A fresh hidden name beside ``path``: ``.{name}.tmp-{pid}-{random}``."""
    return os.path.join(
        os.path.dirname(path) or ".", f".{os.path.basename(path)}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    )


def check_target(path: str, overwrite: bool) -> None:
    """Refuse an existing ``path`` unless ``overwrite`` (a FIFO, socket or device always); check its folder exists."""
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        raise StoreError(f"{path}: cannot create a store there, directory {parent} does not exist")
    special = _platform.special_file(path)
    if special is not None:  # no store, and not the user's data to replace
        raise StoreError(f"{path}: {special} is there, not a store; imgconv does not replace it (choose another DST)")
    if os.path.lexists(path) and not overwrite:
        raise StoreError(f"{path}: already exists; to replace it, pass overwrite=True")


def commit(temporary: str, path: str, overwrite: bool, sync: bool = True) -> None:
    """Move the finished ``temporary`` output to ``path``.

    An existing ``path`` is refused unless ``overwrite`` (it may have appeared
    while the store was written): StoreError, and the finished store stays at
    ``temporary``, named in the message. A file replaces the old one with one
    atomic rename. A directory is swapped with the old one in one step where
    the system can (``renameat2(RENAME_EXCHANGE)``); elsewhere the old one is
    renamed aside, the new one renamed in, and the old one put back if that
    fails or is interrupted. At every moment ``path`` is the old store or the
    new one; the old one is removed only once the new one is in place.
    With ``sync`` the rename is made durable (the directory is synced).
    """
    exists = os.path.lexists(path)
    if exists and not overwrite:
        raise StoreError(f"{path}: already exists (it appeared while the store was written); "
                         f"the finished store is kept at {temporary}")
    try:
        if not exists:
            _rename_no_replace(temporary, path)  # renameat2 refuses a path that appeared since
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
    if sync:
        _platform.fsync_dir(os.path.dirname(path) or ".")


def _rename_no_replace(source: str, target: str) -> None:
    # Never replace something that appeared at the target in the meantime.
    if _platform.renameat2(source, target, _platform.RENAME_NOREPLACE):
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


def _swap_into_place(temporary: str, path: str) -> None:
    if _platform.renameat2(temporary, path, _platform.RENAME_EXCHANGE):
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
