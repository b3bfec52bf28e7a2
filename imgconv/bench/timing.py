"""Timing primitives shared by every benchmark: warm-up, repeats, a time budget, medians."""
import statistics
import time
from collections import namedtuple

Measurement = namedtuple("Measurement", "median times warmup result")
Measurement.__doc__ = """What :func:`measure` timed: the ``median`` of the timed runs' seconds,
every timed run's seconds in ``times``, the number of untimed ``warmup`` runs,
and the ``result`` the last run returned (for the caller to check)."""


def measure(run, repeat=5, warmup=1, setup=None, budget=None):
    """Time ``run()`` ``repeat`` times after ``warmup`` untimed calls; returns a :class:`Measurement`.

    ``setup()``, when given, runs untimed before every call (to reset state the
    run consumes, such as removing the store the previous run wrote).
    ``budget`` (seconds), when given, ends the repeats early once the timed
    runs so far add up to it: at least one run is always timed, and long runs
    (100,000 PNG files) are not repeated past what the caller can afford.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    times = []
    result = None
    for i in range(warmup + repeat):
        if setup is not None:
            setup()
        start = time.perf_counter()
        result = run()
        elapsed = time.perf_counter() - start
        if i >= warmup:
            times.append(elapsed)
            if budget is not None and sum(times) >= budget:
                break
    return Measurement(statistics.median(times), times, warmup, result)


def median_seconds(run, repeat=5, warmup=1, setup=None):
    """Median wall time of ``run()`` over ``repeat`` timed calls after ``warmup`` untimed ones.

    ``setup()``, when given, runs untimed before every call. Returns
    ``(median, all_times)``.
    """
    timed = measure(run, repeat, warmup, setup)
    return timed.median, timed.times
