"""The project's goal thresholds (``targets.toml``, data) and how a run judges them.

A :class:`Target` names the row it judges explicitly: an experiment, a method
(and for a ratio the baseline it is against, by default the method's
registered baseline), the number of images it is set for, what is measured
and the threshold. A run judges a target only when it measured exactly that
number of images; otherwise the target is "not measured at this size", never
MISSED.

**How a ratio is judged** (``measure = "speedup"``: baseline time / method
time; ``"slowdown"``: its inverse). The harness runs the two sides
alternately, one round after the other, each round giving one paired ratio.
From n >= 2 paired ratios it takes the geometric mean and its 90% confidence
interval (Student's t on the logarithms: mean +- t(0.95, n-1) * sd / sqrt(n)).
An "at least T" target is **met** when the whole interval is at or above T,
**MISSED** when it is wholly below, and otherwise **undecided**; "at most" is
the mirror image. While a target is undecided the harness reruns its two
sides, alternately, one round at a time (:func:`settle`), until it is decided,
the settling budget (seconds per target, ``--settle``) is spent or
:data:`MAX_ROUNDS` rounds are reached; it then stays "undecided" and the table
shows its interval. The interval narrows as rounds accumulate (about as
1/sqrt(n)) and stays wide when the rounds disagree, which is the point: a
ratio that swings from run to run is not judged on one lucky run. Other
measures (disk ratio, megabytes of memory) are single values, judged as they
are.
"""
from __future__ import annotations

import math
import os
import statistics
import sys
from dataclasses import dataclass
from importlib import resources
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .inputs import BenchInputError
from .timing import Rounds

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

RATIO_MEASURES = ("speedup", "slowdown")
MAX_ROUNDS = 30
CONFIDENCE = 0.90
# Student's t at 0.95 (one side of a 90% two-sided interval) for 1..29 degrees of freedom.
_T95 = (6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812, 1.796, 1.782, 1.771, 1.761, 1.753,
        1.746, 1.740, 1.734, 1.729, 1.725, 1.721, 1.717, 1.714, 1.711, 1.708, 1.706, 1.703, 1.701, 1.699)

MET, MISSED, UNDECIDED = "met", "MISSED", "undecided"
NOT_MEASURED = "not measured at this size"
NOT_RUN = "not run"

_KEYS = {"what", "experiment", "method", "baseline", "images", "measure", "at_least", "at_most", "unit"}


@dataclass(frozen=True)
class Target:
    """One goal: ``measure`` of ``method`` in ``experiment`` at exactly ``images`` images, at least
    (``op`` ">=") or at most ("<=") ``threshold``. For a ratio measure, ``baseline`` is the other
    side (None: the method's registered baseline). ``unit`` follows the numbers in the table."""

    what: str
    experiment: str
    method: str
    images: int
    measure: str
    op: str
    threshold: float
    baseline: Optional[str] = None
    unit: str = "x"

    @property
    def text(self) -> str:
        """The threshold as the table shows it: '>= 20x', '<= 300 MB', 'within 3x'."""
        if self.measure == "slowdown" and self.op == "<=":
            return f"within {self.threshold:g}{self.unit}"
        return f"{self.op} {self.threshold:g}{self.unit}"

    @property
    def is_ratio(self) -> bool:
        """True when the target judges the paired ratio of two sides (and can be settled by reruns)."""
        return self.measure in RATIO_MEASURES

    def passes(self, value: float) -> bool:
        """Whether a single ``value`` meets the threshold."""
        return value >= self.threshold if self.op == ">=" else value <= self.threshold


@dataclass(frozen=True)
class Verdict:
    """How a target came out: ``status`` (met, MISSED, undecided), the ``value`` judged, the
    confidence interval ``low``..``high`` of a ratio (None for a single value), the paired
    ``rounds`` it rests on, and the rounds and seconds :func:`settle` added."""

    status: str
    value: Optional[float]
    low: Optional[float] = None
    high: Optional[float] = None
    rounds: int = 0
    settle_rounds: int = 0
    settle_seconds: float = 0.0


# --------------------------------------------------------------------------- the file


def default_path() -> Any:
    """The packaged ``targets.toml``."""
    return resources.files(__package__) / "targets.toml"


def _target(entry: Mapping[str, Any], where: str) -> Target:
    unknown = set(entry) - _KEYS
    if unknown:
        raise BenchInputError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(sorted(_KEYS))}")
    for key in ("what", "experiment", "method", "images", "measure"):
        if key not in entry:
            raise BenchInputError(f"{where}: {key!r} is missing")
    if ("at_least" in entry) == ("at_most" in entry):
        raise BenchInputError(f"{where}: give exactly one of at_least or at_most")
    op, threshold = (">=", entry["at_least"]) if "at_least" in entry else ("<=", entry["at_most"])
    images = entry["images"]
    if not isinstance(images, int) or isinstance(images, bool) or images < 1:
        raise BenchInputError(f"{where}: images must be a whole number above 0, got {images!r}")
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not math.isfinite(threshold):
        raise BenchInputError(f"{where}: the threshold must be a number, got {threshold!r}")
    for key in ("what", "experiment", "method", "measure", "baseline", "unit"):
        if key in entry and not isinstance(entry[key], str):
            raise BenchInputError(f"{where}: {key} must be a string, got {entry[key]!r}")
    return Target(entry["what"], entry["experiment"], entry["method"], images, entry["measure"], op, float(threshold),
                  entry.get("baseline"), entry.get("unit", "x"))


def load_targets(path: Any = None) -> List[Target]:
    """The targets of the TOML file at ``path`` (default: the packaged ``targets.toml``).

    Raises BenchInputError naming the file and the entry for a file that is
    not TOML or an entry that is incomplete or of the wrong type.
    """
    source = default_path() if path is None else path
    try:
        with open(source, "rb") if isinstance(source, (str, os.PathLike)) else source.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise BenchInputError(f"{source}: cannot read the targets file ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise BenchInputError(f"{source}: not a valid TOML targets file ({exc})") from None
    entries = data.get("target", [])
    if set(data) - {"target"} or not isinstance(entries, list):
        raise BenchInputError(f"{source}: expected only [[target]] tables")
    return [_target(entry, f"{source}: target {i + 1} ({entry.get('what', 'no what')!r})")
            for i, entry in enumerate(entries)]


def check_targets(targets: Iterable[Target], experiments: Mapping[str, Any], methods: Mapping[str, Any],
                  source: Any = "targets") -> None:
    """Raise BenchInputError unless every target names a registered experiment and known sides.

    ``experiments`` maps names to :class:`~imgconv.bench.harness.Experiment`
    (whose ``sides`` lists the names an experiment measures besides the
    registered methods); ``methods`` maps names to
    :class:`~imgconv.bench.methods.Method`.
    """
    for target in targets:
        where = f"{source}: target {target.what!r}"
        experiment = experiments.get(target.experiment)
        if experiment is None:
            raise BenchInputError(f"{where}: no experiment {target.experiment!r}; known: {', '.join(experiments)}")
        known = set(methods) | set(experiment.sides)
        if target.method not in known:
            raise BenchInputError(f"{where}: {target.experiment} measures no {target.method!r}")
        if target.is_ratio:
            baseline = baseline_of(target, methods)
            if baseline is None:
                raise BenchInputError(f"{where}: a {target.measure} needs a baseline, and {target.method} has none")
            if baseline not in known:
                raise BenchInputError(f"{where}: {target.experiment} measures no baseline {baseline!r}")


def baseline_of(target: Target, methods: Mapping[str, Any]) -> Optional[str]:
    """The other side of a ratio target: its own ``baseline``, else the method's registered one."""
    if target.baseline is not None:
        return target.baseline
    method = methods.get(target.method)
    return getattr(method, "baseline", None)


# --------------------------------------------------------------------------- judging


def _t95(degrees: int) -> float:
    return _T95[degrees - 1] if degrees <= len(_T95) else 1.645


def interval(ratios: Sequence[float]) -> Tuple[float, float, float]:
    """``(centre, low, high)``: the geometric mean of ``ratios`` and its 90% confidence interval.

    Needs two ratios or more (one ratio has no spread: its interval is itself).
    """
    logs = [math.log(r) for r in ratios]
    centre = statistics.fmean(logs)
    if len(logs) < 2:
        return math.exp(centre), math.exp(centre), math.exp(centre)
    half = _t95(len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(centre), math.exp(centre - half), math.exp(centre + half)


def judge(target: Target, ratios: Sequence[float] = (), value: Optional[float] = None) -> Verdict:
    """The verdict on ``target``: from the paired ``ratios`` (baseline / method, one per round) for a
    ratio measure, from the single ``value`` otherwise (see the module docstring for the rule)."""
    if not target.is_ratio:
        if value is None:
            raise ValueError(f"{target.what}: no value to judge")
        return Verdict(MET if target.passes(value) else MISSED, value)
    if not ratios:
        raise ValueError(f"{target.what}: no paired rounds to judge")
    values = [r if target.measure == "speedup" else 1 / r for r in ratios]
    centre, low, high = interval(values)
    if len(values) < 2:
        return Verdict(UNDECIDED, centre, None, None, 1)
    if target.passes(low) and target.passes(high):
        status = MET
    elif not target.passes(low) and not target.passes(high):
        status = MISSED
    else:
        status = UNDECIDED
    return Verdict(status, centre, low, high, len(values))


def settle(target: Target, rounds: Rounds, baseline: str, method: str, budget: float) -> Verdict:
    """Judge ``target`` on the paired rounds of ``baseline`` and ``method``, rerunning both, alternately,
    one round at a time, while it is undecided and the ``budget`` (seconds) and :data:`MAX_ROUNDS` allow
    (and neither side has failed: see :attr:`~imgconv.bench.timing.Rounds.failed`).

    The rounds' own clock measures the budget (so tests can fake it); a round
    is started only while less than ``budget`` seconds have gone by.
    """
    started = rounds.clock()
    added = 0
    verdict = judge(target, rounds.ratios(baseline, method))
    while (verdict.status == UNDECIDED and rounds.clock() - started < budget
           and len(rounds.ratios(baseline, method)) < MAX_ROUNDS and not {baseline, method} & set(rounds.failed)):
        rounds.round([baseline, method])
        added += 1
        verdict = judge(target, rounds.ratios(baseline, method))
    return Verdict(verdict.status, verdict.value, verdict.low, verdict.high, verdict.rounds, added,
                   rounds.clock() - started)


# --------------------------------------------------------------------------- a run's targets


def _comparison(comparisons: Sequence[Mapping[str, Any]], target: Target,
                baseline: Optional[str]) -> Optional[Mapping[str, Any]]:
    for c in comparisons:
        if (c["experiment"], c["method"], c["baseline"], c["images"]) == (target.experiment, target.method, baseline,
                                                                            target.images):
            return c
    return None


def _row(rows: Sequence[Dict[str, Any]], target: Target) -> Optional[Dict[str, Any]]:
    for row in rows:
        if ((row["experiment"], row["method"], row["images"]) == (target.experiment, target.method, target.images)
                and row.get(target.measure) is not None):
            return row
    return None


def _measured(target: Target, baseline: Optional[str], rows: Sequence[Dict[str, Any]],
              comparisons: Sequence[Mapping[str, Any]]) -> Tuple[Optional[Verdict], Optional[Dict[str, Any]],
                                                                 Mapping[str, Any]]:
    """``(verdict, the method's row, the comparison)`` of ``target`` in a run; verdict None when not measured."""
    if not target.is_ratio:
        row = _row(rows, target)
        return (None if row is None else judge(target, value=row[target.measure])), row, {}
    comparison = _comparison(comparisons, target, baseline)
    if comparison is None or not comparison["ratios"]:
        return None, None, {}
    row = next((r for r in rows if (r["experiment"], r["method"], r["images"], r.get("baseline"))
                == (target.experiment, target.method, target.images, baseline)), None)
    return judge(target, comparison["ratios"]), row, comparison


def evaluate_targets(targets: Iterable[Target], rows: Sequence[Dict[str, Any]],
                     comparisons: Sequence[Mapping[str, Any]], methods: Mapping[str, Any],
                     ran: Iterable[Tuple[str, str]],
                     skipped: Optional[Mapping[str, str]] = None) -> List[Dict[str, Any]]:
    """Judge every target on a run's ``rows`` and ``comparisons``; returns one dict per target.

    ``ran`` holds the (experiment, method) pairs the run measured at any size,
    ``skipped`` the reason a method or experiment was skipped. A target is
    judged only at the exact number of images it is set for; the method row
    it judges gets ``target`` and ``status`` (for the table). Statuses: met,
    MISSED, undecided, "not measured at this size" (the run measured the
    experiment and method, at other sizes), "not run" (it did not), or the
    skip reason.
    """
    ran = set(ran)
    skipped = skipped or {}
    found = []
    for target in targets:
        baseline = baseline_of(target, methods) if target.is_ratio else None
        entry: Dict[str, Any] = {
            "what": target.what, "experiment": target.experiment, "method": target.method, "baseline": baseline,
            "images": target.images, "measure": target.measure, "op": target.op, "threshold": target.threshold,
            "target": target.text, "unit": target.unit, "value": None, "low": None, "high": None, "rounds": 0,
        }
        verdict, row, comparison = _measured(target, baseline, rows, comparisons)
        if verdict is None:
            reason = next((skipped[n] for n in (target.experiment, target.method, baseline or "") if n in skipped),
                          None)
            if reason:
                entry["status"] = f"skipped: {reason}"
            else:
                entry["status"] = NOT_MEASURED if (target.experiment, target.method) in ran else NOT_RUN
        else:
            entry.update(status=verdict.status, value=verdict.value, low=verdict.low, high=verdict.high,
                         rounds=verdict.rounds, settle_rounds=comparison.get("settle_rounds", 0),
                         settle_seconds=comparison.get("settle_seconds", 0.0))
            if row is not None:
                row["target"], row["status"] = target.text, verdict.status
        found.append(entry)
    return found
