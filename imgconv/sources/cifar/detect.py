"""Finding a CIFAR layout at a path: its batch directory, the directory holding it, or its tar archive."""
from __future__ import annotations

import os

from ...errors import SourceError
from ..archive import Archive, Container, Directory, is_tar, top_directory
from .layouts import LAYOUTS, Layout


def layout_in_directory(path: str) -> Layout | None:
    """The layout whose batch files are in the directory ``path``, or None."""
    for layout in LAYOUTS:
        if any(os.path.isfile(os.path.join(path, n)) for n in layout.train + layout.test):
            # CIFAR-100's "train"/"test" are common names: its meta file must be there too.
            if layout.kind == "python" and layout.cifar100 and not os.path.isfile(os.path.join(path, "meta")):
                continue
            return layout
    return None


def detect(path: str) -> tuple[Layout, Container] | None:
    """``(layout, container)`` for CIFAR batches at ``path``, None when there are none.

    ``path`` may be the batch directory, a directory holding exactly one of the
    official batch directories, or a tar archive of one. Raises SourceError for
    a directory holding several layouts, or a tar archive of something else.
    """
    if os.path.isdir(path):
        return _in_directory(path)
    if os.path.isfile(path) and is_tar(path):
        prefix = top_directory(path)
        for layout in LAYOUTS:
            if prefix == layout.dirname:
                return layout, Archive(path, prefix)
        known = ", ".join(layout.archive for layout in LAYOUTS)
        raise SourceError(
            f"{path} is a tar archive of {prefix or 'nothing'!r}, not one of the CIFAR archives ({known}); "
            "extract it and open the directory"
        )
    return None


def _in_directory(path: str) -> tuple[Layout, Container] | None:
    layout = layout_in_directory(path)
    if layout is not None:
        return layout, Directory(path)
    found = [
        (layout, os.path.join(path, layout.dirname))
        for layout in LAYOUTS
        if os.path.isdir(os.path.join(path, layout.dirname))
        and layout_in_directory(os.path.join(path, layout.dirname)) == layout
    ]
    if len(found) > 1:
        listed = ", ".join(p for _, p in found)
        raise SourceError(f"directory {path} holds several CIFAR layouts ({listed}); open the one to read")
    return (found[0][0], Directory(found[0][1])) if found else None


def is_cifar(path: str) -> bool:
    """True when ``path`` holds CIFAR batches :func:`detect` recognises (SourceError as detect)."""
    return detect(path) is not None
