"""Finding the CIFAR batch files at a path: a folder of them, a directory holding one, or a tar archive of one.

A set of batch files is a folder holding batch files of one layout,
whatever the folder is called (:func:`~.layouts.layout_of`). A path is
read when it holds exactly one set:

- a directory: the directory itself, or one of its folders (one level
  down, as an archive extracts); a directory holding two sets is refused,
  naming both;
- a tar archive: any folder in it, whatever its name and depth, at its top
  level too (``tar -C dir .``), after other members or not. The first set
  in the archive's order is used, found by reading member headers up to
  it; a second set is found by the passes that read the archive (counting
  or converting it reads it whole) and refused then, naming both, before
  a store is finished with the first.

The container returned knows the most bytes each of its files may hold
(:meth:`~.layouts.Layout.size_limits`), and says which folder is used
(``container.location``, part of the source's description).
"""
from __future__ import annotations

import os
import posixpath
from collections.abc import Callable

from ...errors import SourceError
from ..archive import DECODE_ERRORS, Archive, Container, Directory, TarReader, is_tar, member_name
from .layouts import FILE_NAMES, Layout, layout_of


def _layout_in_directory(path: str) -> Layout | None:
    """The layout of the batch files in the directory ``path`` itself, or None."""
    # A FIFO or device with a batch file's name counts: reading it refuses it by name.
    present = {n for n in FILE_NAMES if os.path.lexists(os.path.join(path, n))
               and not os.path.isdir(os.path.join(path, n))}
    return layout_of(present, os.path.basename(os.path.normpath(path)))


def _sets_in_directory(path: str) -> list[tuple[Layout, str]]:
    """``(layout, folder)`` of each set of batch files in ``path`` and in its folders, in sorted order."""
    found = []
    layout = _layout_in_directory(path)
    if layout is not None:
        found.append((layout, path))
    try:
        with os.scandir(path) as listing:
            folders = sorted(e.path for e in listing if not e.name.startswith(".") and e.is_dir())
    except OSError as exc:
        raise SourceError(f"{path}: cannot list the directory ({exc.strerror})") from None
    for folder in folders:
        layout = _layout_in_directory(folder)
        if layout is not None:
            found.append((layout, folder))
    return found


def _two_sets(where: str, folders: list[str]) -> SourceError:
    shown = " and ".join(folders[:2]) + (f" (and {len(folders) - 2} more)" if len(folders) > 2 else "")
    return SourceError(f"{where} holds {len(folders)} sets of CIFAR batch files, in {shown}; open the one to read")


def _archive_folder(folder: str) -> str:
    """A folder of an archive as messages show it: ``name/``, or ``./`` for the top level."""
    return f"{folder or '.'}/"


def _first_set_in_archive(path: str) -> tuple[Layout, str] | None:
    """``(layout, folder)`` of the first set of batch files in the tar archive ``path``, reading headers up to it."""
    seen: dict[str, set[str]] = {}
    try:
        with TarReader(path) as reader:
            for info in reader.tar:
                if not info.isfile():
                    continue
                folder, name = posixpath.split(member_name(info.name))
                if name in FILE_NAMES:
                    names = seen.setdefault(folder, set())
                    names.add(name)
                    layout = layout_of(names, posixpath.basename(folder))
                    if layout is not None:
                        return layout, folder
    except DECODE_ERRORS as exc:
        raise SourceError(f"{path}: cannot read the tar archive ({exc})") from None
    return None


class CifarArchive(Archive):
    """A tar archive of one set of CIFAR batch files, in folder ``prefix``: a pass meeting another set refuses it."""

    def _watcher(self) -> Callable[[str], None]:
        seen: dict[str, set[str]] = {}

        def watch(full_name: str) -> None:
            folder, name = posixpath.split(full_name)
            if name not in FILE_NAMES or folder == self.prefix:
                return
            names = seen.setdefault(folder, set())
            names.add(name)
            if layout_of(names, posixpath.basename(folder)) is not None:
                raise _two_sets(f"tar archive {self.path}", [_archive_folder(self.prefix), _archive_folder(folder)])

        return watch


def detect(path: str) -> tuple[Layout, Container] | None:
    """``(layout, container)`` for the one set of CIFAR batch files at ``path``, None when there is none.

    See the module docstring for where a set may be. Raises SourceError for
    a directory holding two sets, or a tar archive holding none.
    """
    if os.path.isdir(path):
        found = _sets_in_directory(path)
        if len(found) > 1:
            raise _two_sets(f"directory {path}", [folder for _, folder in found])
        if not found:
            return None
        layout, folder = found[0]
        return layout, Directory(folder, layout.size_limits())
    if os.path.isfile(path) and is_tar(path):
        first = _first_set_in_archive(path)
        if first is None:
            raise SourceError(
                f"{path} is a tar archive holding no CIFAR batch files (data_batch_1..5 and test_batch, "
                "train and test with meta, or their .bin versions, in any folder); extract it and open what it holds"
            )
        layout, prefix = first
        return layout, CifarArchive(path, prefix, layout.size_limits())
    return None


def is_cifar(path: str) -> bool:
    """True when ``path`` holds CIFAR batches :func:`detect` recognises (SourceError as detect)."""
    return detect(path) is not None
