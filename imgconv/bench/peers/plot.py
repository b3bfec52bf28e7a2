"""``peers.png``: imgconv's stores and the peers at the largest cutoff, one panel per figure (lower is better).

The ``peers`` experiment's ``plot`` hook; matplotlib is imported inside
(the command calls it only when matplotlib is installed).
"""
from __future__ import annotations

import os
from typing import Any, List, Mapping

from .table import FIGURES, figures

LOG = {"s": True, "MB": True, "x": False}  # the times and memory span three orders of magnitude
UNITS = {"s": "s", "MB": "MB", "x": "x raw pixels"}
COLOURS = {"imgconv": "tab:orange", "peer": "tab:gray"}


def plot_peers(results: Mapping[str, Any], out: str) -> List[str]:
    """Draw ``peers.png`` into ``out`` when the peers experiment measured a side; returns the file names written."""
    rows = [row for row in results["rows"] if row["experiment"] == "peers" and row.get("tree_anon_mb") is not None]
    if not rows:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    count = rows[0]["images"]
    methods = results["methods"]
    values = figures(results, count)
    names = [row["method"] for row in rows]
    fig, axes = plt.subplots(1, len(FIGURES), figsize=(4 * len(FIGURES), 0.45 * len(names) + 1.8))
    for ax, figure in zip(axes, FIGURES):
        if LOG[figure.unit]:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # the labels of the minor ticks overlap
        for y, name in enumerate(names):
            value = values.get(name, {}).get(figure)
            if value is None:
                ax.annotate("n/a", (0.02, y), xycoords=("axes fraction", "data"), va="center", fontsize=8)
                continue
            ax.barh(y, value, color=COLOURS[methods[name]["family"]], edgecolor="black")
            text = f"{value:,.0f}" if figure.unit == "MB" else f"{value:.3g}"
            ax.annotate(text, (value, y), va="center", fontsize=7, xytext=(2, 0), textcoords="offset points")
        labels = [("imgconv " if methods[n]["family"] == "imgconv" else "") + methods[n]["label"] for n in names]
        ax.set_yticks(range(len(names)), labels if ax is axes[0] else [""] * len(names))
        ax.invert_yaxis()
        ax.set_title(f"{figure.heading} ({UNITS[figure.unit]}{', log' if LOG[figure.unit] else ''})", fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
        ax.margins(x=0.25)
    fig.suptitle(f"imgconv (orange) and its peers (grey) on the same {count:,} images: lower is better; "
                 f"{results['machine']['cpu']}, {results['machine']['usable_cores']} cores", fontsize=10)
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.08, top=0.8, wspace=0.25)
    fig.savefig(os.path.join(out, "peers.png"), dpi=100)
    plt.close(fig)
    return ["peers.png"]
