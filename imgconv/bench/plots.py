"""The harness's plots, like the classic article's, drawn with matplotlib (the ``plot`` extra).

Store time and read time against the number of images, on linear and on log
scales, and the disk use of each method at the largest cutoff; each format in
its own colour, the classic method dashed beside imgconv's solid line.
``overview.png`` puts store time, read time and disk use side by side.
Importing this module needs matplotlib; it draws with the Agg backend (files
only, no display).
"""
from __future__ import annotations

import itertools
import os
from typing import Any, Dict, List, Mapping, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend is chosen first

COLOURS = {"png": "tab:blue", "lmdb": "tab:orange", "hdf5": "tab:green"}
OTHER_COLOURS = ("tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")
TIME_PLOTS = (("store-many", "store"), ("read-many", "read"))


class _Methods:
    """The methods of a results.json (``results["methods"]``): order, label, colour, style."""

    def __init__(self, results: Mapping[str, Any]):
        self.info: Dict[str, Dict[str, Any]] = dict(results.get("methods", {}))
        formats = list(dict.fromkeys(info["format"] for info in self.info.values()))
        spare = itertools.cycle(OTHER_COLOURS)
        self.colours = {fmt: COLOURS.get(fmt) or next(spare) for fmt in formats}

    def ordered(self, names: Any) -> List[str]:
        known = list(self.info)
        return sorted(names, key=lambda n: known.index(n) if n in known else len(known))

    def label(self, name: str) -> str:
        info = self.info[name]
        kind = info["label"]
        if info["format"] == "png":
            kind = "PNG files" if info["family"] == "classic" else "PNG folder"
        return f"{info['family']} {kind}"

    def classic(self, name: str) -> bool:
        return self.info[name]["family"] == "classic"

    def colour(self, name: str) -> str:
        return self.colours[self.info[name]["format"]]


def _series(rows: List[Dict[str, Any]], experiment: str) -> Dict[str, Tuple[Any, ...]]:
    """``{method: (images, seconds)}`` of ``experiment``'s rows, sorted by images."""
    series: Dict[str, List[Tuple[int, float]]] = {}
    for row in rows:
        if row["experiment"] == experiment and row.get("seconds") is not None:
            series.setdefault(row["method"], []).append((row["images"], row["seconds"]))
    return {name: tuple(zip(*sorted(points))) for name, points in series.items()}


def _time_axes(ax: Any, methods: _Methods, rows: List[Dict[str, Any]], experiment: str, verb: str,
               log: bool) -> bool:
    series = _series(rows, experiment)
    if not series:
        return False
    for name in methods.ordered(series):
        images, seconds = series[name]
        classic = methods.classic(name)
        ax.plot(images, seconds, linestyle="--" if classic else "-", marker="o" if classic else "s",
                color=methods.colour(name), label=methods.label(name), alpha=0.8 if classic else 1.0)
    ax.set_xlabel("number of images")
    ax.set_ylabel(f"{verb} time (s)")
    ax.set_title(f"{verb} many images ({'log' if log else 'linear'} scale)")
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return True


def _disk_axes(ax: Any, methods: _Methods, rows: List[Dict[str, Any]]) -> bool:
    disk = [row for row in rows if row["experiment"] == "disk"]
    if not disk:
        return False
    largest = max(row["images"] for row in disk)
    at = {row["method"]: row for row in disk if row["images"] == largest}
    names = methods.ordered(at)
    formats = list(dict.fromkeys(methods.info[n]["format"] for n in names))
    for fmt_index, fmt in enumerate(formats):
        members = [n for n in names if methods.info[n]["format"] == fmt]
        width = 0.76 / len(members)
        for i, name in enumerate(members):
            x = fmt_index - 0.38 + width * (i + 0.5)
            row = at[name]
            classic = methods.classic(name)
            ax.bar(x, row["bytes"] / 1e6, width=width * 0.95, color=methods.colour(name),
                   alpha=0.45 if classic else 1.0, hatch="//" if classic else None, edgecolor="black",
                   label=methods.label(name))
            ax.annotate(f"{row['disk_ratio']:.2f}x", (x, row["bytes"] / 1e6), ha="center", va="bottom", fontsize=8)
    raw = next(iter(at.values()))["raw_bytes"] / 1e6
    ax.axhline(raw, color="gray", linestyle=":", label=f"raw pixels ({raw:,.1f} MB)")
    labels = {methods.info[n]["format"]: methods.info[n]["label"] for n in names}
    ax.set_xticks(range(len(formats)), [labels[f] for f in formats])
    ax.set_ylabel("MB on disk (file sizes)")
    ax.set_title(f"disk use, {largest:,} images (x raw pixels)")
    ax.legend(fontsize=8)
    return True


def _save(fig: Any, out: str, name: str) -> str:
    path = os.path.join(out, name)
    # Fixed margins: tight_layout costs seconds on log axes, and the layout never changes.
    fig.subplots_adjust(left=0.1 if len(fig.axes) == 1 else 0.04, right=0.98, bottom=0.12, top=0.88,
                        wspace=0.22)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return name


def plot_results(results: Mapping[str, Any], out: str) -> List[str]:
    """Draw the plots of ``results`` (as in results.json) into ``out``; returns the file names written."""
    rows = results["rows"]
    methods = _Methods(results)
    written = []
    for experiment, verb in TIME_PLOTS:
        for log in (False, True):
            fig, ax = plt.subplots(figsize=(7, 4.5))
            if _time_axes(ax, methods, rows, experiment, verb, log):
                written.append(_save(fig, out, f"{verb}_time{'_log' if log else ''}.png"))
            else:
                plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if _disk_axes(ax, methods, rows):
        written.append(_save(fig, out, "disk_use.png"))
    else:
        plt.close(fig)
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    drawn = [_time_axes(axes[0], methods, rows, "store-many", "store", True),
             _time_axes(axes[1], methods, rows, "read-many", "read", True), _disk_axes(axes[2], methods, rows)]
    if any(drawn):
        fig.suptitle(f"imgconv bench: {results['parameters']['input']}; {results['machine']['cpu']}, "
                     f"{results['machine']['usable_cores']} cores", fontsize=10)
        written.append(_save(fig, out, "overview.png"))
    else:
        plt.close(fig)
    return written
