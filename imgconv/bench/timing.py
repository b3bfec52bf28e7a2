"""Timing primitives shared by every benchmark: warm-up, repeats, a time budget, rounds side by side.

:func:`measure` times one thing on its own. :class:`Rounds` times several
things (*sides*) in turn: each round runs every side once, back to back, so
that two sides compared by a ratio see the machine in the same state, and the
ratio has one value per round (its spread). Both take a ``clock`` so that
tests can drive them with fake timings.

A side marked ``fallible`` (a peer's loader, whose crash is the peer's own
and should not end a run that measures many things) is retired from the
rounds when its ``run`` raises, and :attr:`Rounds.failed` says why; a wrong
result (its ``check`` raising, or :class:`~imgconv.errors.BenchCheckError`
from anywhere) always propagates.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

from ..errors import BenchCheckError

Clock = Callable[[], float]


class Measurement(NamedTuple):
    """What :func:`measure` timed: the ``median`` of the timed runs' seconds,
    every timed run's seconds in ``times``, the number of untimed ``warmup``
    runs, and the ``result`` the last run returned (for the caller to check)."""

    median: float
    times: List[float]
    warmup: int
    result: Any


def measure(run: Callable[[], Any], repeat: int = 5, warmup: int = 1, setup: Optional[Callable[[], None]] = None,
            budget: Optional[float] = None, clock: Clock = time.perf_counter) -> Measurement:
    """Time ``run()`` ``repeat`` times after ``warmup`` untimed calls; returns a :class:`Measurement`.

    ``setup()``, when given, runs untimed before every call (to reset state the
    run consumes, such as removing the store the previous run wrote).
    ``budget`` (seconds), when given, ends the repeats early once the timed
    runs so far add up to it: at least one run is always timed, and long runs
    (100,000 PNG files) are not repeated past what the caller can afford.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    times: List[float] = []
    result = None
    for i in range(warmup + repeat):
        if setup is not None:
            setup()
        start = clock()
        result = run()
        elapsed = clock() - start
        if i >= warmup:
            times.append(elapsed)
            if budget is not None and sum(times) >= budget:
                break
    return Measurement(statistics.median(times), times, warmup, result)


def median_seconds(run: Callable[[], Any], repeat: int = 5, warmup: int = 1,
                   setup: Optional[Callable[[], None]] = None) -> Tuple[float, List[float]]:
    """Median wall time of ``run()`` over ``repeat`` timed calls after ``warmup`` untimed ones.

    ``setup()``, when given, runs untimed before every call. Returns
    ``(median, all_times)``.
    """
    timed = measure(run, repeat, warmup, setup)
    return timed.median, timed.times


@dataclass
class Side:
    """One thing :class:`Rounds` times: ``run()`` is timed; ``setup()`` runs untimed before it;
    ``check(result)`` runs untimed after every run and raises when the result is wrong.
    ``fallible``: an exception from ``setup`` or ``run`` (other than BenchCheckError) retires the
    side instead of propagating (see the module docstring)."""

    run: Callable[[], Any]
    setup: Optional[Callable[[], None]] = None
    check: Optional[Callable[[Any], None]] = None
    fallible: bool = False


def failure_text(exc: BaseException, limit: int = 200) -> str:
    """An exception as one line: its type and the last line of its message, at most ``limit`` characters."""
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[-1] if message else ''}".rstrip(": ")[:limit]


class Rounds:
    """Timed runs of several sides in turn, one run of each side per round.

    ``sides`` maps a name to a :class:`Side`, in the order each round runs
    them. ``times[name]`` holds every timed run of a side, ``rounds`` the
    seconds of each side that ran in each round; :meth:`ratios` pairs two
    sides round by round. Results are checked as they come and not kept.
    ``failed[name]`` says why a fallible side was retired (one line).
    """

    def __init__(self, sides: Mapping[str, Side], clock: Clock = time.perf_counter):
        self.sides: Dict[str, Side] = dict(sides)
        self.clock = clock
        self.times: Dict[str, List[float]] = {name: [] for name in self.sides}
        self.warmups: Dict[str, int] = dict.fromkeys(self.sides, 0)
        self.rounds: List[Dict[str, float]] = []
        self.failed: Dict[str, str] = {}

    def _once(self, name: str) -> Optional[float]:
        """Seconds of one checked run of side ``name``; None when the fallible side failed (now retired)."""
        side = self.sides[name]
        try:
            if side.setup is not None:
                side.setup()
            start = self.clock()
            result = side.run()
            elapsed = self.clock() - start
        except BenchCheckError:
            raise
        except Exception as exc:
            if not side.fallible:
                raise
            self.failed[name] = failure_text(exc)
            return None
        if side.check is not None:
            side.check(result)
        return elapsed

    def warm_up(self, name: str, runs: int) -> None:
        """``runs`` untimed runs of side ``name`` (each after its setup, each checked)."""
        for _ in range(runs):
            if name in self.failed or self._once(name) is None:
                return
            self.warmups[name] += 1

    def round(self, names: Optional[Iterable[str]] = None) -> Dict[str, float]:
        """One timed run of each side of ``names`` (default: all, failed sides left out), in the sides' order;
        returns their seconds."""
        chosen = set(self.sides if names is None else names) - set(self.failed)
        seconds = {}
        for name in self.sides:
            if name in chosen:
                elapsed = self._once(name)
                if elapsed is not None:
                    seconds[name] = elapsed
        for name, elapsed in seconds.items():
            self.times[name].append(elapsed)
        self.rounds.append(seconds)
        return seconds

    def run(self, repeat: Union[int, Mapping[str, int]], budget: Optional[float] = None) -> None:
        """Rounds until every side has ``repeat`` timed runs (a number, or one per side).

        ``budget`` (seconds) retires a side from further rounds once its timed
        runs add up to it (every side is timed at least once): long runs are
        not repeated past what the caller can afford, and the other sides go on.
        """
        wanted = repeat if isinstance(repeat, Mapping) else dict.fromkeys(self.sides, repeat)

        def wants(name: str) -> bool:
            times = self.times[name]
            return (name not in self.failed and len(times) < wanted[name]
                    and (budget is None or not times or sum(times) < budget))

        while True:
            names = [name for name in self.sides if wants(name)]
            if not names:
                return
            self.round(names)

    def median(self, name: str) -> float:
        """The median of side ``name``'s timed runs."""
        return statistics.median(self.times[name])

    def ratios(self, baseline: str, method: str) -> List[float]:
        """``baseline seconds / method seconds`` of every round in which both ran (above 1: method faster)."""
        return [r[baseline] / max(r[method], 1e-12) for r in self.rounds if baseline in r and method in r]


def geometric_mean(values: Sequence[float]) -> float:
    """The geometric mean of positive ``values`` (the centre of ratios that multiply)."""
    return math.exp(statistics.fmean(math.log(v) for v in values))
