"""Where a conversion reads and where it writes never meet.

A store written at DST replaces DST (``overwrite``) and grows beside it, so
DST must not be SRC, hold SRC or any file the source reads (replacing it would
delete the input), or lie inside SRC (the output would become part of the
input of the next reading). Paths are compared resolved (symbolic links
followed), before anything is written.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, Optional

from .errors import OverlapError


def check_paths(source: Any, dest: Any) -> None:
    """Refuse a ``dest`` equal to, holding, or inside the ``source`` path (OverlapError); None source: nothing."""
    if source is None:
        return
    src, dst = os.path.realpath(source), os.path.realpath(dest)
    if dst == src:
        raise OverlapError(f"{dest} is the source {source} itself: a store written there would replace its input")
    if _inside(src, dst):
        raise OverlapError(f"{dest} holds the source {source}: replacing it would delete the input; "
                           "choose a DST outside SRC")
    if os.path.isdir(src) and _inside(dst, src):
        raise OverlapError(f"{dest} lies inside the source {source}: the store would be added to its input; "
                           "choose a DST outside SRC")


def check_files(files: Iterable[str], dest: Any) -> None:
    """Refuse a ``dest`` that is or holds one of ``files`` (the files a source reads); OverlapError naming it.

    Each folder is resolved once, so a million images cost a few thousand
    ``realpath`` calls, not a million.
    """
    dst = os.path.realpath(dest)
    resolved: dict[str, str] = {}
    for path in files:
        folder, name = os.path.split(path)
        real = resolved.get(folder)
        if real is None:
            real = resolved[folder] = os.path.realpath(folder or ".")
        full = os.path.join(real, name)
        if full == dst or _inside(full, dst):
            raise OverlapError(f"{dest} holds {path}, a file the source reads: replacing it would delete the input; "
                               "choose a DST apart from SRC")


def source_path(source: Any) -> Optional[str]:
    """The path a source was given as (a path, or a Source's ``path``), or None."""
    path = source if isinstance(source, (str, bytes, os.PathLike)) else getattr(source, "path", None)
    return None if path is None else os.fsdecode(path)


def _inside(path: str, folder: str) -> bool:
    """True when ``path`` lies strictly below ``folder`` (both resolved)."""
    return path.startswith(folder.rstrip(os.sep) + os.sep)
