"""The peers' block of the table: imgconv's stores and the peers at the largest cutoff, figure by figure.

Write, full read, random batches and disk come from the grid's experiments
(``store-many``, ``read-many``, ``random-batch``, ``disk``: every method timed
side by side, every read checked), the writer's peak memory from the
``peers`` experiment's rows. :func:`figures` gathers them from a
results.json; :func:`peers_table` is the experiment's ``table`` hook.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

from ..report import seconds_text
from .common import GROUP


class Figure(NamedTuple):
    """One column: where its value comes from (``experiment``, ``key`` of the row), a heading and a unit."""

    experiment: str
    key: str
    heading: str
    unit: str  # "s", "x" (of the raw pixel bytes) or "MB"


FIGURES = (  # lower is better for every one
    Figure("store-many", "seconds", "write", "s"),
    Figure("read-many", "seconds", "full read", "s"),
    Figure("random-batch", "seconds", "random batches", "s"),
    Figure("disk", "disk_ratio", "disk", "x"),
    Figure("peers", "tree_anon_mb", "writer anon", "MB"),
)
FAMILIES = ("imgconv", "peer")


def value_text(value: Optional[float], unit: str) -> str:
    """A figure's value with its unit; '-' when it was not measured."""
    if value is None:
        return "-"
    if unit == "s":
        return seconds_text(value)
    if unit == "MB":
        return f"{value:,.0f} MB"
    return f"{value:.3f}x"


def figures(results: Mapping[str, Any], count: int) -> Dict[str, Dict[Figure, Optional[float]]]:
    """``{method: {figure: value}}`` at ``count`` images for the imgconv and peer methods run, in the run's order."""
    families = {name: info["family"] for name, info in results.get("methods", {}).items()}
    found: Dict[str, Dict[Figure, Optional[float]]] = {}
    for row in results["rows"]:
        if row["images"] != count or families.get(row["method"]) not in FAMILIES:
            continue
        for figure in FIGURES:
            if row["experiment"] == figure.experiment:
                found.setdefault(row["method"], dict.fromkeys(FIGURES))[figure] = row.get(figure.key)
    return found


def best(values: Mapping[str, Mapping[Figure, Optional[float]]], families: Mapping[str, str],
         figure: Figure) -> Dict[str, Optional[Tuple[float, str]]]:
    """``{"imgconv": (value, method), "peer": ...}``: each family's lowest value of ``figure`` (None: none measured)."""
    found: Dict[str, Optional[Tuple[float, str]]] = {}
    for family in FAMILIES:
        measured = [(value, name) for name, v in values.items()
                    if families.get(name) == family and (value := v[figure]) is not None]
        found[family] = min(measured) if measured else None
    return found


def verdict_lines(results: Mapping[str, Any], count: int) -> List[str]:
    """For each figure measured on both sides: the best imgconv store against the best peer."""
    values = figures(results, count)
    methods = results.get("methods", {})
    families = {name: info["family"] for name, info in methods.items()}
    lines = []
    for figure in FIGURES:
        sides = best(values, families, figure)
        ours, theirs = sides["imgconv"], sides["peer"]
        if ours is None or theirs is None:
            continue
        ratio = theirs[0] / ours[0] if ours[0] else float("inf")
        verdict = "imgconv ahead" if ours[0] <= theirs[0] else "imgconv BEHIND"
        lines.append(f"  {figure.heading:<15} best imgconv {methods[ours[1]]['label']} "
                     f"{value_text(ours[0], figure.unit)}, best peer {methods[theirs[1]]['label']} "
                     f"{value_text(theirs[0], figure.unit)}: {verdict} ({ratio:.2f}x)")
    return lines


def peers_table(results: Mapping[str, Any], title: str, rows: List[Dict[str, Any]]) -> List[str]:
    """The ``peers`` experiment's block: a line per side, the peers skipped and why, the verdicts."""
    if not rows:
        return []
    count = rows[0]["images"]
    methods = results.get("methods", {})
    random_batch = results["parameters"].get("random-batch") or {}
    batches = (f"{random_batch['reads'] // random_batch['batch_size']} random batches of {random_batch['batch_size']}"
               if random_batch else "random batches")
    values = figures(results, count)
    width = max([14, *(len(methods[row["method"]]["label"]) + (len("imgconv ") if row["family"] == "imgconv" else 0)
                       for row in rows)])
    lines = [f"{title}, {count:,} images: write, full read, {batches} and disk as timed side by side above "
             "(medians); the writer's peak memory in a fresh process (anonymous, and RSS of its process tree)",
             f"  {'side':<{width}} {'version':<10} {'write':>9} {'full read':>10} {'random batches':>15} "
             f"{'disk':>8} {'writer anon':>12} {'tree RSS':>9}  status"]
    for row in rows:
        name = row["method"]
        label = ("imgconv " if row["family"] == "imgconv" else "") + methods[name]["label"]
        mine = values.get(name, dict.fromkeys(FIGURES))
        texts = [value_text(mine[figure], figure.unit) for figure in FIGURES]
        rss = "-" if row.get("tree_rss_mb") is None else f"{row['tree_rss_mb']:,.0f} MB"
        lines.append(f"  {label:<{width}} {row.get('version') or '-':<10} {texts[0]:>9} {texts[1]:>10} "
                     f"{texts[2]:>15} {texts[3]:>8} {texts[4]:>12} {rss:>9}  {row.get('status', '')}")
    for name, info in methods.items():
        if info.get("group") == GROUP and info.get("skipped"):
            lines.append(f"  skipped {name}: {info['skipped']}")
    for row in rows:
        if row.get("random_access") is False:
            lines.append(f"  {row['method']}: no random access (its format has no index): no random-batch figure")
    if any(values.get(row["method"], {}).get(FIGURES[0]) is None for row in rows):
        lines.append(f"  write, full read, random batches and disk come from the store-many, read-many, random-batch "
                     f"and disk experiments at {count:,} images: run them too (a plain run with --peers does)")
    return lines + verdict_lines(results, count)
