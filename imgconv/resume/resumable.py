"""What a store format implements so that its writer can be continued after an interruption.

The format contract of :class:`~imgconv.stores.writer.Writer` is four hooks
(``_start``, ``_write``, ``_finish``, ``_abort``) and an ``encoder``. A
format whose output can be reopened after its writer was stopped (even
killed) also implements the four hooks of :class:`Resumable`; the Writer
base class calls them from its public ``reopen``, ``truncate``,
``durable_count`` and ``suspend``, which the resume layer
(:class:`~imgconv.resume.session.ResumeSession`) drives. The format knows
nothing of journals, checkpoints or source positions.
"""
from typing import Any, Mapping, Protocol, runtime_checkable


@runtime_checkable
class Resumable(Protocol):
    """The hooks of a resumable format's writer (called by the Writer base class, never directly)."""

    def _durable_count(self) -> int:
        """Make what was written so far reopenable (flush it) and say how many images that covers.

        Called at every checkpoint: the count may lag behind the images
        written (LMDB commits every 16 MiB, HDF5 flushes whole write units).
        """

    def _reopen(self, state: Mapping[str, Any]) -> int:
        """Open the output an earlier writer left at ``self.temporary`` to continue it.

        ``state`` is what that writer's ``format_metadata()`` said at its last
        checkpoint (the choices it made on its first write, such as LMDB's
        records per value): take them over. Returns how many of the output's
        first images are intact (checked, not trusted). Raises StoreError or
        OSError when the output cannot be continued at all.
        """

    def _truncate(self, count: int) -> None:
        """Cut the reopened output back to its first ``count`` images and get ready to append."""

    def _suspend(self) -> int:
        """Close the output keeping what is in it; returns how many images it holds (reopenable)."""
