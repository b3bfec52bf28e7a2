"""The engine boundary: whatever runs the jobs of a conversion, the parent sees results in task order.

An :class:`Engine` takes a :class:`WorkerContext` (what every job needs,
set up once per worker: the source, the store's encoder) and an iterable of
:class:`~imgconv.pipeline.plan.Job`, and yields ``(task, result)`` in task
order, never more than a bounded window ahead, so that the parent, the only
writer, writes the store in order with flat memory. Closing the iterator
ends the work at once. Failures come out as the package's errors:
:class:`~imgconv.errors.Interrupted` (a signal),
:class:`~imgconv.errors.WorkerDied` (a worker process lost; the work done
can be resumed) and :class:`~imgconv.errors.ConversionError` (a job failed,
naming its images).

The local engines are in :mod:`imgconv.pipeline.pool`: this process
(``workers=0``) and a pool of worker processes. A cluster engine (Dask:
each task converting a partition into a shard) implements the same
:meth:`Engine.run`, ships the context once per worker, and reports the same
errors; the converter does not change.
"""
import abc
from typing import Any, Callable, Generator, Iterable, Optional, Tuple

from .. import _platform
from .plan import Job, Task

Results = Generator[Tuple[Task, Any], None, None]  # closing it ends the work


class WorkerContext:
    """What every job of one run finds in its worker: ``source``, ``encoder`` and ``output``.

    ``output`` is for jobs that write into memory the parent set up (load's
    shared array); None otherwise. A context is handed to each worker once,
    not with every job, so jobs carry only indices.
    """

    __slots__ = ("source", "encoder", "output")

    def __init__(self, source: Any, encoder: Callable[[Any, Any], Any], output: Any = None) -> None:
        self.source = source
        self.encoder = encoder
        self.output = output


class Engine(abc.ABC):
    """Runs jobs and yields their results in task order (see the module docstring)."""

    #: Whether jobs run in this process or in processes forked from it after
    #: ``run`` starts, and so see memory this process set up (load's shared output).
    shares_memory: bool = False

    @abc.abstractmethod
    def run(self, context: WorkerContext, jobs: Iterable[Job], what: str) -> Results:
        """Yield ``(task, result)`` for each job, in task order; ``what`` names the work in error messages.

        Leaving the iteration (normally, by an exception, or by closing the
        iterator) ends every worker. Raises Interrupted on SIGINT/SIGTERM,
        WorkerDied when a worker dies, ConversionError when a job raises
        something other than the package's own errors.
        """


def workers_worth_starting(workers: int, tasks: Optional[int], heavy: bool) -> int:
    """How many worker processes a run should start, at most ``workers`` (the caller's bound).

    None when the work is light (``heavy`` False: nothing to decode or
    encode, only copies and checksums at memory speed, which cost less than
    starting a pool and sending every batch to a worker and back) or when
    there is at most one task; else one per task at most. ``tasks`` None:
    not known in advance (a stream). The output is the same either way.
    """
    if not heavy or workers <= 0 or (tasks is not None and tasks <= 1):
        return 0
    return workers if tasks is None else min(workers, tasks)


def default_workers() -> int:
    """The number of worker processes used by default: the CPUs this process may run on."""
    return _platform.cpu_count()


def local_engine(workers: int, window: Optional[int] = None, stall_seconds: Optional[float] = None) -> Engine:
    """This process (``workers=0``) or a pool of ``workers`` processes with ``window`` jobs in flight
    (default ``2 * workers``), reporting workers that return nothing for ``stall_seconds``
    (default :data:`~imgconv.pipeline.pool.DEFAULT_STALL_SECONDS`)."""
    from .pool import DEFAULT_STALL_SECONDS, InProcessEngine, ProcessPoolEngine

    if workers == 0:
        return InProcessEngine()
    return ProcessPoolEngine(workers, window, DEFAULT_STALL_SECONDS if stall_seconds is None else stall_seconds)
