"""Progress reported from inside a job, for engines whose jobs are long (a whole shard per job).

A job calls :func:`report` as it goes; an engine that can carry the
reports to the converter (the Dask engine: worker events) runs each job
inside :func:`reporting`. Elsewhere :func:`report` does nothing, so a job
does not need to know where it runs.
"""
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

Reporter = Callable[[int, int], None]

_CURRENT = threading.local()


def report(key: int, done: int) -> None:
    """Say that the job working on ``key`` (a shard number) has done ``done`` images of it so far."""
    reporter: Optional[Reporter] = getattr(_CURRENT, "reporter", None)
    if reporter is not None:
        reporter(key, done)


@contextmanager
def reporting(reporter: Reporter) -> Iterator[None]:
    """Send the reports of the jobs run in this thread to ``reporter(key, done)`` while inside."""
    previous = getattr(_CURRENT, "reporter", None)
    _CURRENT.reporter = reporter
    try:
        yield
    finally:
        _CURRENT.reporter = previous
