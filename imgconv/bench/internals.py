"""The imgconv internals the harness uses beyond the public API, imported in this one place.

The harness is a client of the public API (``imgconv.create``, ``open``,
``convert``, ``load``); these helpers are not part of it. When the core
moves them, this module is the one line to change.
"""
from .._platform import remove_path  # noqa: F401 - re-exported
from ..pipeline.engine import default_workers  # noqa: F401 - re-exported
from ..sources.numpy_files import _zip_ref as npz_member_ref  # noqa: F401 - re-exported: where an .npz member lies

__all__ = ["default_workers", "npz_member_ref", "remove_path"]
