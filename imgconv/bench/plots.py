"""The harness's plots, like the classic article's, drawn with matplotlib (the ``plot`` extra).

Store time and read time against the number of images, on linear and on log
scales, and the disk use of each method at the largest cutoff; each format in
its own colour, the classic method dashed beside imgconv's solid line.
``overview.png`` puts store time, read time and disk use side by side.
Importing this module needs matplotlib; it draws with the Agg backend (files
only, no display).
"""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend is chosen first

from .methods import FORMAT_TITLES, FORMATS, METHODS  # noqa: E402

COLOURS = {"png": "tab:blue", "lmdb": "tab:orange", "hdf5": "tab:green"}
TIME_PLOTS = (("store-many", "store"), ("read-many", "read"))


def _label(name):
    method = METHODS[name]
    kind = {"png": "PNG files" if method.family == "classic" else "PNG folder", "lmdb": "LMDB", "hdf5": "HDF5"}
    return f"{method.family} {kind[method.format]}"


def _series(rows, experiment):
    """``{method: (images, seconds)}`` of ``experiment``'s rows, sorted by images."""
    series = {}
    for row in rows:
        if row["experiment"] == experiment and row.get("seconds") is not None:
            series.setdefault(row["method"], []).append((row["images"], row["seconds"]))
    return {name: tuple(zip(*sorted(points))) for name, points in series.items()}


def _ordered(names):
    return sorted(names, key=lambda n: (FORMATS.index(METHODS[n].format), METHODS[n].family != "classic"))


def _time_axes(ax, rows, experiment, verb, log):
    series = _series(rows, experiment)
    if not series:
        return False
    for name in _ordered(series):
        images, seconds = series[name]
        method = METHODS[name]
        classic = method.family == "classic"
        ax.plot(images, seconds, linestyle="--" if classic else "-", marker="o" if classic else "s",
                color=COLOURS[method.format], label=_label(name), alpha=0.8 if classic else 1.0)
    ax.set_xlabel("number of images")
    ax.set_ylabel(f"{verb} time (s)")
    ax.set_title(f"{verb} many images ({'log' if log else 'linear'} scale)")
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return True


def _disk_axes(ax, rows):
    disk = [row for row in rows if row["experiment"] == "disk"]
    if not disk:
        return False
    largest = max(row["images"] for row in disk)
    at = {row["method"]: row for row in disk if row["images"] == largest}
    names = _ordered(at)
    positions = []
    for fmt_index, fmt in enumerate(f for f in FORMATS if any(METHODS[n].format == f for n in names)):
        for name in (n for n in names if METHODS[n].format == fmt):
            offset = -0.2 if METHODS[name].family == "classic" else 0.2
            x = fmt_index + offset
            row = at[name]
            classic = METHODS[name].family == "classic"
            ax.bar(x, row["bytes"] / 1e6, width=0.38, color=COLOURS[fmt], alpha=0.45 if classic else 1.0,
                   hatch="//" if classic else None, edgecolor="black", label=_label(name))
            ax.annotate(f"{row['disk_ratio']:.2f}x", (x, row["bytes"] / 1e6), ha="center", va="bottom", fontsize=8)
            positions.append((fmt_index, fmt))
    raw = next(iter(at.values()))["raw_bytes"] / 1e6
    ax.axhline(raw, color="gray", linestyle=":", label=f"raw pixels ({raw:,.1f} MB)")
    ticks = sorted(set(positions))
    ax.set_xticks([i for i, _ in ticks], [FORMAT_TITLES[f] for _, f in ticks])
    ax.set_ylabel("MB on disk (file sizes)")
    ax.set_title(f"disk use, {largest:,} images (x raw pixels)")
    ax.legend(fontsize=8)
    return True


def _save(fig, out, name):
    path = os.path.join(out, name)
    # Fixed margins: tight_layout costs seconds on log axes, and the layout never changes.
    fig.subplots_adjust(left=0.1 if len(fig.axes) == 1 else 0.04, right=0.98, bottom=0.12, top=0.88,
                        wspace=0.22)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return name


def plot_results(results, out):
    """Draw the plots of ``results`` (as in results.json) into ``out``; returns the file names written."""
    rows = results["rows"]
    written = []
    for experiment, verb in TIME_PLOTS:
        for log in (False, True):
            fig, ax = plt.subplots(figsize=(7, 4.5))
            if _time_axes(ax, rows, experiment, verb, log):
                written.append(_save(fig, out, f"{verb}_time{'_log' if log else ''}.png"))
            else:
                plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if _disk_axes(ax, rows):
        written.append(_save(fig, out, "disk_use.png"))
    else:
        plt.close(fig)
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    drawn = [_time_axes(axes[0], rows, "store-many", "store", True),
             _time_axes(axes[1], rows, "read-many", "read", True), _disk_axes(axes[2], rows)]
    if any(drawn):
        fig.suptitle(f"imgconv bench: {results['parameters']['input']}; {results['machine']['cpu']}, "
                     f"{results['machine']['usable_cores']} cores", fontsize=10)
        written.append(_save(fig, out, "overview.png"))
    else:
        plt.close(fig)
    return written
