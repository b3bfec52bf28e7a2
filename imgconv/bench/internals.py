"""The imgconv internals the harness uses beyond the public API, imported in this one place.

The harness is a client of the public API (``imgconv.create``, ``open``,
``convert``, ``load``); these helpers are not part of it. When the core
moves them, this module is the one line to change.
"""
from .. import _platform
from ..pipeline.engine import default_workers  # noqa: F401 - re-exported
from ..sources.numpy_files import _zip_ref as npz_member_ref  # noqa: F401 - re-exported: where an .npz member lies

__all__ = ["default_workers", "npz_member_ref", "remove_path"]


def remove_path(path: str) -> None:
    """Remove a file or directory tree (a missing path is fine), then wait for the descriptors imgconv
    closes in the background: the setup of a timed run, so that no side's timed run overlaps
    another's leftover work (the close of a removed partial directory can wait on the disk)."""
    _platform.remove_path(path)
    _platform.wait_for_background_closes()
