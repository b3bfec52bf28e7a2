"""Timing primitives shared by every benchmark: warm-up, repeats, medians."""
import statistics
import time


def median_seconds(run, repeat=5, warmup=1, setup=None):
    """Median wall time of ``run()`` over ``repeat`` timed calls after ``warmup`` untimed ones.

    ``setup()``, when given, runs untimed before every call (to reset state the
    run consumes). Returns ``(median, all_times)``.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    times = []
    for i in range(warmup + repeat):
        if setup is not None:
            setup()
        start = time.perf_counter()
        run()
        elapsed = time.perf_counter() - start
        if i >= warmup:
            times.append(elapsed)
    return statistics.median(times), times
