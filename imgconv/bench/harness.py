"""Measurement: the experiment registry and the grid that runs experiments over methods and cutoffs.

``EXPERIMENTS`` (a registry, run in its order) holds each :class:`Experiment`.
An experiment on a grid ("one": a one-image store; "cutoff": the store written
at each cutoff) is run for each *group* of methods: a method with the methods
measured against it (its ``baseline`` links), e.g. classic-lmdb and lmdb. For
each group and cutoff the stores are written once (timed by ``store-many``
when that is selected), every selected experiment runs on them, and they are
removed. An experiment returns a :class:`Trial` per method (what to time), and
the harness times the group's trials side by side: :class:`~.timing.Rounds`,
each round running every method once, back to back. Every figure is the median
of up to ``repeat`` runs, after a warm-up run when it is cheap; ``budget``
stops repeating a long measurement. A target set at this cutoff is then
settled (:func:`~.targets.settle`): its two sides are rerun alternately until
it is decided. An "alone" experiment runs once and times what it likes
(:meth:`Harness.side_by_side`, :meth:`Harness.time`). Every read is checked
against the images written: wrong pixels or labels raise
:class:`~.methods.BenchCheckError`, which fails the run.
"""
from __future__ import annotations

import contextlib
import functools
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Hashable, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .inputs import ImageSet
from .internals import remove_path
from .methods import METHODS, BenchCheckError, Environment, Method, missing_modules, same_data
from .targets import Target, baseline_of, settle
from .timing import Measurement, Rounds, Side, geometric_mean, measure

DEFAULT_CUTOFFS = (10, 100, 1_000, 10_000, 100_000)
QUICK_CUTOFFS = (10, 100, 1_000)
DEFAULT_REPEAT = 3
DEFAULT_BUDGET = 10.0
QUICK_BUDGET = 1.0
DEFAULT_SETTLE = 60.0  # seconds per undecided target
QUICK_SETTLE = 10.0
# A warm-up run precedes the timed ones when it is expected to take less than
# this (from the same measurement at the previous cutoff); beyond, runs are
# long enough that the first one is not a cold start, and a warm-up of
# 100,000 PNG files would cost half a minute.
WARMUP_LIMIT = 1.0
GRIDS = ("one", "cutoff", "alone")
_WRITERS = {"one": "store_one", "cutoff": "store"}  # the capability that writes a grid's stores

Row = Dict[str, Any]
TableFn = Callable[[Mapping[str, Any], str, List[Row]], List[str]]
PlotFn = Callable[[Mapping[str, Any], str], List[str]]


@dataclass(frozen=True)
class Experiment:
    """One experiment, self-describing.

    ``name`` as given to ``--experiments``; ``title`` heads its block of the
    table; ``grid`` is "one" (each method on a one-image store), "cutoff" (each
    method at each cutoff, on the store written there) or "alone" (run once).
    On a grid ``run(harness, method, path, count)`` returns a :class:`Trial` (timed
    side by side with the other methods of the group) or a list of rows
    (nothing to time, e.g. disk use); alone, ``run(harness)`` returns rows.

    ``needs``: the method capabilities it calls (``Method.capability``); a
    method without them is left out. ``default``: part of a plain run (else
    named with ``--experiments``); ``group``: an opt-in group that also turns
    it on (``--GROUP``). ``requires``/``install``: modules it imports, and how
    to get them (skipped with that reason when missing). ``sides``: the names
    an alone experiment measures that are not registered methods (targets may
    name them). ``steps``: progress steps of an alone experiment (a number or
    ``steps(harness)``). ``table(results, title, rows)``: the lines of its
    block of the table, from results.json's contents and the experiment's rows
    (default: :func:`~imgconv.bench.report.pair_table`). ``plot(results,
    out)``: draws the experiment's own plots into the directory ``out`` with
    matplotlib (imported inside) and returns the file names written; called
    when the run draws plots. ``probe()``: as a method's (see
    :class:`~imgconv.bench.methods.Method`), why the experiment cannot run
    here although ``requires`` is found, or None.
    """

    name: str
    title: str
    grid: str
    run: Callable[..., Any]
    needs: Tuple[str, ...] = ()
    default: bool = True
    group: Optional[str] = None
    requires: Tuple[str, ...] = ()
    install: str = ""
    sides: Tuple[str, ...] = ()
    steps: Union[int, Callable[["Harness"], int]] = 1
    table: Optional[TableFn] = None
    plot: Optional[PlotFn] = None
    probe: Optional[Callable[[], Optional[str]]] = None

    def skip_reason(self) -> Optional[str]:
        """Why the experiment cannot run here (a required module is missing, or its ``probe`` says why), or None."""
        return missing_modules(self.requires, self.install) or (self.probe() if self.probe is not None else None)


EXPERIMENTS: Dict[str, Experiment] = {}


def register_experiment(exp: Experiment) -> Experiment:
    """Add ``exp`` to ``EXPERIMENTS`` (it runs after those registered before it); returns it.

    Raises ValueError for a name already registered or an unknown grid.
    """
    if exp.name in EXPERIMENTS:
        raise ValueError(f"a bench experiment named {exp.name!r} is already registered")
    if exp.grid not in GRIDS:
        raise ValueError(f"{exp.name}: grid must be one of {', '.join(GRIDS)}, got {exp.grid!r}")
    if exp.group is not None and exp.default:
        raise ValueError(f"{exp.name}: an experiment of the opt-in group {exp.group!r} cannot run by default")
    EXPERIMENTS[exp.name] = exp
    return exp


def experiment(name: str, title: str, grid: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated function as the ``run`` of the experiment ``name`` (see :class:`Experiment`)."""

    def register(run: Callable[..., Any]) -> Callable[..., Any]:
        register_experiment(Experiment(name, title, grid, run, **options))
        return run

    return register


@dataclass
class Trial(Side):
    """What a grid experiment times for one method: a :class:`~.timing.Side` (``run``, ``setup``,
    ``check``) and how to report it.

    ``close()`` runs once after every run (e.g. closes the reader the runs
    share); ``per``: operations per run, for ``per_image_us`` (None: not
    reported); ``repeat``: at least this many timed runs; ``warmup``: untimed
    runs first (None: the harness's policy); ``fields``: extra row fields;
    ``fallible``: a peer's side whose crash retires it instead of failing the
    run (see :mod:`~imgconv.bench.timing`); ``skip_reason``: why the side
    cannot run here (made by :meth:`unavailable`).
    """

    close: Optional[Callable[[], None]] = None
    per: Optional[int] = None
    repeat: Optional[int] = None
    warmup: Optional[int] = None
    fields: Dict[str, Any] = field(default_factory=dict)
    skip_reason: Optional[str] = None

    @classmethod
    def unavailable(cls, reason: str, fields: Optional[Mapping[str, Any]] = None) -> "Trial":
        """A side that cannot run here (a package missing): never run; its row says ``skipped``: ``reason``."""

        def never() -> None:
            raise RuntimeError(f"a skipped side is never run ({reason})")

        return cls(never, fields=dict(fields or {}), skip_reason=reason)


def _in_order(rows: Mapping[str, Row], trials: Mapping[str, Trial], best: Mapping[str, Sequence[str]]) -> List[Row]:
    """The rows in the trials' order, each best-of side's row right after the last of its settings."""
    after: Dict[str, List[str]] = {}
    for name, settings in best.items():
        present = [s for s in settings if s in trials]
        after.setdefault(present[-1] if present else "", []).append(name)
    ordered = []
    for name in [*trials, ""]:
        ordered += [rows[n] for n in ([name] if name in rows else []) + after.get(name, [])]
    return ordered


def method_groups_of(methods: Sequence[Method]) -> List[List[Method]]:
    """``methods`` grouped by their baseline links (each group in the given order, baselines first)."""
    chosen = {m.name: m for m in methods}

    def root(method: Method) -> str:
        while method.baseline in chosen:
            method = chosen[method.baseline]
        return method.name

    groups: Dict[str, List[Method]] = {}
    for method in methods:
        groups.setdefault(root(method), []).append(method)
    return list(groups.values())


class Harness:
    """One run: the chosen methods, experiments and cutoffs on one image set.

    ``images`` is the :class:`~imgconv.bench.inputs.ImageSet`; ``workdir`` a
    directory for the stores (emptied as it goes); ``targets`` the targets to
    settle as their sizes are measured, with ``settle_budget`` seconds each;
    ``options`` holds what particular experiments need from the command
    (``cache``; ``cifar`` and ``cifar_train`` for the conversion); ``quick``
    says a first look was asked for (an experiment scales itself down).
    ``progress(text)`` is called before each step, ``note(text)`` while
    settling a target. Call
    :meth:`run`; the rows accumulate in ``rows``, paired ratios in
    ``comparisons``, what experiments record about themselves in
    ``parameters``.
    """

    def __init__(self, images: ImageSet, methods: Sequence[Method], experiments: Sequence[Experiment],
                 cutoffs: Sequence[int], *, repeat: int, budget: float, workers: int, workdir: str,
                 targets: Sequence[Target] = (), settle_budget: float = DEFAULT_SETTLE, quick: bool = False,
                 options: Optional[Mapping[str, Any]] = None, progress: Optional[Callable[[str], None]] = None,
                 note: Optional[Callable[[str], None]] = None):
        self.images = images
        self.methods = list(methods)
        self.experiments = list(experiments)
        self.cutoffs = list(cutoffs)
        self.repeat = repeat
        self.budget = budget
        self.env = Environment(workers, images.npz)
        self.workdir = workdir
        self.targets = list(targets)
        self.settle_budget = settle_budget
        self.quick = quick
        self.options: Dict[str, Any] = dict(options or {})
        self.progress = progress or (lambda text: None)
        self.note = note or (lambda text: None)
        self.rows: List[Row] = []
        self.comparisons: List[Row] = []
        self.parameters: Dict[str, Any] = {}
        self.kernels: Optional[Dict[str, Any]] = None
        self.wall: Dict[str, float] = {}  # seconds spent in each experiment, untimed parts included
        self._previous: Dict[Hashable, Tuple[int, float]] = {}
        self.groups = method_groups_of(self.methods)

    # the plan -------------------------------------------------------------

    def _grid(self, grid: str) -> List[Experiment]:
        return [e for e in self.experiments if e.grid == grid]

    def _members(self, exp: Experiment, group: Sequence[Method]) -> List[Method]:
        """The methods of ``group`` that ``exp`` runs: those with what it needs and what writes its grid's stores."""
        return [m for m in group if m.supports((_WRITERS[exp.grid], *exp.needs))]

    def steps(self) -> int:
        """The number of steps :meth:`run` reports to ``progress``."""
        count = 0
        for grid, sizes in (("one", 1), ("cutoff", len(self.cutoffs))):
            for exp in self._grid(grid):
                count += sizes * sum(1 for group in self.groups if self._members(exp, group))
        for exp in self._grid("alone"):
            count += exp.steps(self) if callable(exp.steps) else exp.steps
        return count

    def run(self) -> List[Row]:
        """Run every selected experiment; returns the rows (also kept in ``rows``)."""
        if self._grid("one"):
            for group in self.groups:
                self._on_group(self._grid("one"), group, 1, one=True)
        if self._grid("cutoff"):
            for count in self.cutoffs:
                for group in self.groups:
                    self._on_group(self._grid("cutoff"), group, count)
        for alone in self._grid("alone"):
            self.progress(alone.name)
            self._timed(alone, functools.partial(alone.run, self))
        return self.rows

    def _timed(self, exp: Experiment, run: Callable[[], List[Row]]) -> None:
        started = time.perf_counter()
        try:
            self.rows += run()
        finally:
            self.wall[exp.name] = self.wall.get(exp.name, 0.0) + time.perf_counter() - started

    def _on_group(self, chosen: Sequence[Experiment], group: Sequence[Method], count: int, one: bool = False) -> None:
        """Write the group's stores of ``count`` images, run ``chosen`` on them side by side, check, remove them."""
        group = [m for m in group if m.capability(_WRITERS["one" if one else "cutoff"]) is not None]
        paths = {m.name: os.path.join(self.workdir, f"{m.name}-{'one' if one else count}{m.suffix}") for m in group}
        names = {e.name for e in chosen}
        try:
            if ("store-one" if one else "store-many") not in names:
                for method in group:
                    self._store(method, paths[method.name], count, one)
            for exp in chosen:
                members = self._members(exp, group)
                if members:
                    self.progress(f"{exp.name} {'/'.join(m.name for m in members)} {count:,}")
                    self._timed(exp, functools.partial(self._grid_experiment, exp, members, paths, count))
            if one or "read-many" not in names:
                for method in group:
                    if method.read_all is not None:
                        self.check(method.read_all(paths[method.name], count, self.env), self.images.images[:count],
                                   self.images.labels[:count], f"{method.name} read_all", count)
        finally:
            for path in paths.values():
                remove_path(path)

    def _grid_experiment(self, exp: Experiment, members: Sequence[Method], paths: Mapping[str, str],
                         count: int) -> List[Row]:
        rows: List[Row] = []
        trials: Dict[str, Trial] = {}
        with contextlib.ExitStack() as stack:
            for method in members:
                got = exp.run(self, method, paths[method.name], count)
                if isinstance(got, Trial):
                    if got.close is not None:
                        stack.callback(got.close)
                    trials[method.name] = got
                else:
                    rows += got
            if trials:
                pairs = [(m.baseline, m.name) for m in members if m.name in trials and m.baseline in trials]
                rows += self.side_by_side(exp.name, count, trials, pairs)
        return rows

    def _store(self, method: Method, path: str, count: int, one: bool) -> None:
        images, labels = self.images.images[:count], self.images.labels[:count]
        if one:
            assert method.store_one is not None  # groups hold only methods that can write the grid's stores
            method.store_one(path, images, labels)
        else:
            assert method.store is not None
            method.store(path, images, labels, self.env)

    # measuring ------------------------------------------------------------

    def _warmup(self, key: Hashable, count: int, forced: Optional[int]) -> int:
        if forced is not None:
            return forced
        previous = self._previous.get(key)
        return 1 if previous is None or previous[1] * count / previous[0] < WARMUP_LIMIT else 0

    def side_by_side(self, experiment: str, count: int, trials: Mapping[str, Trial],
                     pairs: Sequence[Tuple[str, str]] = (), best: Optional[Mapping[str, Sequence[str]]] = None
                     ) -> List[Row]:
        """Time ``trials`` (name -> :class:`Trial`) in rounds, settle the targets of ``pairs``; returns rows.

        ``pairs`` lists ``(baseline, method)`` names of ``trials`` (or of
        ``best``) to compare: each gets a record in ``comparisons`` (every
        round's ratio), and a method in one pair gets ``speedup`` (the
        geometric mean of the rounds' ``baseline time / method time``),
        ``baseline`` and ``ratios`` on its row. A target set for
        ``experiment``, the pair and ``count`` is settled before the rows are
        made. A name of a registered method gives its row the method's format
        and family; rows of other names have none (unless the trial's
        ``fields`` give them).

        ``best`` names sides that are the best of several settings, e.g.
        ``{"litdata-best": ("litdata-0w", "litdata-2w")}``: once the rounds are
        done, the setting with the lowest median stands for it (its row gets
        ``best_of`` and ``chosen``, and the chosen setting's times), and a
        target on it is settled by rerunning that setting. The median, not the
        fastest setting of each round: a user picks a setting once and keeps
        it, and the per-round minimum of noisy sides is biased low.

        A trial made by :meth:`Trial.unavailable` is not run: its row says
        ``skipped`` and why; a fallible trial that failed gets ``failed``. A
        best-of side with no setting timed is skipped with its settings'
        reasons, and a pair with a side not timed is not compared (its targets
        say why, from these rows).
        """
        timed = {name: trial for name, trial in trials.items() if trial.skip_reason is None}
        rounds = Rounds(timed)
        for name, trial in timed.items():
            rounds.warm_up(name, self._warmup((experiment, name), count, trial.warmup))
        rounds.run({name: max(self.repeat, trial.repeat or 0) for name, trial in timed.items()}, self.budget)
        measured = {name for name in timed if rounds.times[name]}
        chosen, unmeasured = self._choose_best(best or {}, rounds, measured, trials)
        side = {**{name: name for name in measured}, **chosen}  # pair name -> the trial timed for it
        pairs = [(baseline, method) for baseline, method in pairs if baseline in side and method in side]
        settled: Dict[Tuple[str, str], Tuple[int, float]] = {}
        for baseline, method in pairs:
            for target in self._targets_for(experiment, baseline, method, count):
                self.note(f"settling: {target.what}")
                verdict = settle(target, rounds, side[baseline], side[method], self.settle_budget)
                added, seconds = settled.get((baseline, method), (0, 0.0))
                settled[(baseline, method)] = (added + verdict.settle_rounds, seconds + verdict.settle_seconds)
        for name in measured:
            self._previous[(experiment, name)] = (count, rounds.median(name))
        rows = self._side_rows(experiment, count, trials, rounds, measured)
        for name, setting in chosen.items():
            rows[name] = {**rows[setting], "method": name, "best_of": list((best or {})[name]), "chosen": setting}
        for name, reason in unmeasured.items():
            rows[name] = self.row(experiment, name, count, skipped=reason, best_of=list((best or {})[name]))
        single = [method for _, method in pairs]
        for baseline, method in pairs:
            ratios = rounds.ratios(side[baseline], side[method])
            speedup = (geometric_mean(ratios) if ratios
                       else rounds.median(side[baseline]) / rounds.median(side[method]))
            added, seconds = settled.get((baseline, method), (0, 0.0))
            self.comparisons.append({"experiment": experiment, "images": count, "method": method,
                                     "baseline": baseline, "speedup": speedup, "ratios": ratios,
                                     "settle_rounds": added, "settle_seconds": seconds,
                                     "sides": [side[baseline], side[method]]})
            if single.count(method) == 1:
                rows[method].update(baseline=baseline, speedup=speedup,
                                    baseline_seconds=rounds.median(side[baseline]), ratios=ratios)
        return _in_order(rows, trials, best or {})

    @staticmethod
    def _choose_best(best: Mapping[str, Sequence[str]], rounds: Rounds, measured: Iterable[str],
                     trials: Mapping[str, Trial]) -> Tuple[Dict[str, str], Dict[str, str]]:
        """``(chosen, unmeasured)``: the setting with the lowest median of each best-of side, and why
        those with no setting timed have none (their settings' reasons, one line)."""
        chosen: Dict[str, str] = {}
        unmeasured: Dict[str, str] = {}
        measured = set(measured)
        for name, settings in best.items():
            timed = [s for s in settings if s in measured]
            if timed:
                chosen[name] = min(timed, key=rounds.median)
                continue
            reasons = []
            for s in settings:
                reason = trials[s].skip_reason if s in trials else "not measured"
                reason = reason or f"failed: {rounds.failed.get(s, 'no run')}"
                if reason not in reasons:
                    reasons.append(reason)
            unmeasured[name] = "; ".join(reasons)
        return chosen, unmeasured

    def _side_rows(self, experiment: str, count: int, trials: Mapping[str, Trial], rounds: Rounds,
                   measured: Iterable[str]) -> Dict[str, Row]:
        """A row per trial: timed (median, runs, per-image time), skipped or failed (with why)."""
        rows: Dict[str, Row] = {}
        measured = set(measured)
        for name, trial in trials.items():
            method = METHODS.get(name, name)
            if trial.skip_reason is not None:
                rows[name] = self.row(experiment, method, count, **trial.fields, skipped=trial.skip_reason)
            elif name not in measured:
                rows[name] = self.row(experiment, method, count, **trial.fields,
                                      failed=rounds.failed.get(name, "no run"))
            else:
                timed = Measurement(rounds.median(name), rounds.times[name], rounds.warmups[name], None)
                extra = dict(trial.fields)
                if trial.per:
                    extra["per_image_us"] = timed.median / trial.per * 1e6
                rows[name] = self.row(experiment, method, count, timed, **extra)
        return rows

    def _targets_for(self, experiment: str, baseline: str, method: str, count: int) -> List[Target]:
        wanted = (experiment, method, count, baseline)
        return [t for t in self.targets
                if t.is_ratio and (t.experiment, t.method, t.images, baseline_of(t, METHODS)) == wanted]

    def time(self, key: Hashable, count: int, run: Callable[[], Any], setup: Optional[Callable[[], None]] = None,
             repeat: Optional[int] = None, warmup: Optional[int] = None) -> Measurement:
        """Measure ``run`` alone (see :func:`~imgconv.bench.timing.measure`) with the harness's repeats and budget.

        ``key`` names the measurement across cutoffs: unless ``warmup`` is
        given, a warm-up run is made when the same measurement at the previous
        cutoff, scaled to ``count``, predicts less than ``WARMUP_LIMIT``
        seconds (and at the first cutoff).
        """
        timed = measure(run, repeat or self.repeat, warmup=self._warmup(key, count, warmup), setup=setup,
                        budget=self.budget)
        self._previous[key] = (count, timed.median)
        return timed

    def check(self, got: Tuple[Any, Any], images: np.ndarray, labels: np.ndarray, what: str, count: int) -> None:
        """Raise BenchCheckError unless ``got`` is ``(images, labels)``."""
        if not same_data(got, images, labels):
            raise BenchCheckError(f"{what} of {count:,} images returned wrong pixels or labels: the run fails")

    def row(self, experiment_name: str, method: Union[Method, str], count: int, timed: Optional[Measurement] = None,
            **extra: Any) -> Row:
        """A result row for ``method`` (a Method, or the name of a side) at ``count`` images.

        ``timed`` (a Measurement) gives ``seconds`` (the median), ``runs``,
        ``warmup`` and every run's ``times``.
        """
        if isinstance(method, Method):
            row: Row = {"experiment": experiment_name, "method": method.name, "format": method.format,
                        "family": method.family, "images": count}
        else:
            row = {"experiment": experiment_name, "method": method, "format": None, "family": None, "images": count}
        if timed is not None:
            row.update(seconds=timed.median, runs=len(timed.times), warmup=timed.warmup, times=list(timed.times))
        row.update(extra)
        return row
