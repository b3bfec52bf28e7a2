"""The imgconv internals the harness uses beyond the public API, imported in this one place.

The harness is a client of the public API (``imgconv.create``, ``open``,
``convert``, ``load``); these two helpers are not part of it. When the core
moves them, this module is the one line to change.
"""
from .._platform import remove_path  # noqa: F401 - re-exported
from ..pipeline.engine import default_workers  # noqa: F401 - re-exported

__all__ = ["default_workers", "remove_path"]
