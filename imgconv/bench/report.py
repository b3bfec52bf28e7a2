"""What the harness writes: the table on stdout, ``results.json``, ``results.csv``, and the facts
about the machine and the software that make a run comparable with another.

The table is made from the results alone (as results.json holds them), one
block per experiment: an experiment's ``table`` function, or the pair table
of the grids (baseline and measured method side by side, the ratio and the
spread of its rounds), then the targets.
"""
from __future__ import annotations

import csv
import json
import os
import platform
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from .internals import default_workers
from .targets import NOT_MEASURED, NOT_RUN

CSV_COLUMNS = ("experiment", "method", "format", "family", "images", "reads", "seconds", "runs", "warmup", "times",
               "per_image_us", "baseline", "speedup", "ratios", "bytes", "allocated_bytes", "disk_ratio", "target",
               "status")

STUDY_FIELDS = ("write_seconds", "single_read_us", "h5py_single_read_us", "encode_us", "decode_us", "mean_bytes",
                "disk_ratio", "size_ratio")
Results = Mapping[str, Any]
Rows = List[Dict[str, Any]]


# --------------------------------------------------------------------------- facts


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def machine_info() -> Dict[str, Any]:
    """CPU model, cores (all, and usable by this process), memory, OS and load average, as a dict."""
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": default_workers(),
        "memory_bytes": _memory_bytes(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "load_average_at_start": load,
    }


def filesystem_of(path: str) -> Dict[str, Any]:
    """``{"path", "type", "mount"}`` of the filesystem holding ``path`` (from /proc/mounts on Linux)."""
    real = os.path.realpath(path)
    best = ("", "unknown")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mount = fields[1].replace("\\040", " ")
                inside = real == mount or real.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) > len(best[0]):
                    best = (mount, fields[2])
    except OSError:
        pass
    return {"path": real, "type": best[1], "mount": best[0] or None}


def versions() -> Dict[str, Optional[str]]:
    """The versions of imgconv, Python and every library the measurements go through."""
    import h5py
    import lmdb
    import numpy
    import PIL
    import tqdm

    from .. import __version__, kernels

    found = {
        "imgconv": __version__,
        "imgconv_backend": kernels.BACKEND,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "Pillow": PIL.__version__,
        "lmdb": lmdb.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "tqdm": tqdm.__version__,
    }
    try:
        import matplotlib
    except ImportError:
        found["matplotlib"] = None
    else:
        found["matplotlib"] = matplotlib.__version__
    return found


# --------------------------------------------------------------------------- files


def write_json(path: str, results: Mapping[str, Any]) -> None:
    """``results`` as indented JSON at ``path`` (written beside and renamed)."""
    partial = path + ".partial"
    with open(partial, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    os.replace(partial, path)


def write_csv(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """One CSV line per result row (``CSV_COLUMNS``; a row's run times and paired ratios joined by ``;``)."""
    partial = path + ".partial"
    with open(partial, "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            line = dict(row)
            line["times"] = ";".join(f"{t:.6g}" for t in row.get("times") or ())
            line["ratios"] = ";".join(f"{r:.6g}" for r in row.get("ratios") or ())
            writer.writerow(line)
    os.replace(partial, path)


# --------------------------------------------------------------------------- the table


def seconds_text(seconds: Optional[float]) -> str:
    """A time, readable at any scale: '12.3 s', '45.6 ms', '789 us'."""
    if seconds is None:
        return "-"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} us"


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _cell(row: Optional[Mapping[str, Any]]) -> str:
    if row is None:
        return "-"
    if row["experiment"] == "disk":
        return f"{row['bytes'] / 1e6:,.2f} MB ({row['disk_ratio']:.2f}x)"
    return seconds_text(row.get("seconds"))


def spread_text(ratios: Sequence[float]) -> str:
    """The lowest and highest of a ratio's rounds and how many: '3.52-3.81 (3)'; '(1)' for one round."""
    if not ratios:
        return ""
    if len(ratios) == 1:
        return "(1)"
    return f"{min(ratios):.2f}-{max(ratios):.2f} ({len(ratios)})"


def _label(results: Results, name: str) -> str:
    info = results.get("methods", {}).get(name)
    return info["label"] if info else name


def _family(results: Results, name: str) -> Optional[str]:
    info = results.get("methods", {}).get(name)
    return info["family"] if info else None


def _order(results: Results, name: str) -> int:
    names = list(results.get("methods", {}))
    return names.index(name) if name in names else len(names)


def _baseline(results: Results, row: Mapping[str, Any]) -> Optional[str]:
    info = results.get("methods", {}).get(row["method"])
    return row.get("baseline") or (info or {}).get("baseline")


def pair_lines(results: Results, rows: Rows) -> List[str]:
    """The pair table of ``rows`` (one experiment): a line per measured method and size, its baseline beside it.

    A method's baseline (its row's, else its registered one) stands in the
    left column of the method's line, with the ratio and its spread when the
    two were timed side by side; a method that is nobody's baseline and has
    none present gets a line of its own.
    """
    by_key = {(row["method"], row["images"]): row for row in rows}
    partners = {id(row): by_key.get((_baseline(results, row), row["images"])) for row in rows}
    taken = {id(p) for p in partners.values() if p is not None}
    lines = [row for row in rows if partners[id(row)] is not None or id(row) not in taken]
    lines.sort(key=lambda row: (_order(results, row["method"]), row["images"]))
    families = set()
    for row in lines:
        partner = partners[id(row)]
        if partner is not None:
            families.add((partner.get("family"), row.get("family")))
    left, right = ("classic", "imgconv") if families == {("classic", "imgconv")} else ("baseline", "measured")
    width = max([6, *(len(_label(results, row["method"])) for row in lines)])
    out = [f"  {'format':<{width}} {'images':>9}  {left:>19}  {right:>19}  {'speed-up':>9}  {'spread (rounds)':<16} "
           f"{'target':<10} status"]
    for row in lines:
        ratio = "" if row.get("speedup") is None else f"{row['speedup']:.2f}x"
        out.append(f"  {_label(results, row['method']):<{width}} {row['images']:>9,}  {_cell(partners[id(row)]):>19}  "
                   f"{_cell(row):>19}  {ratio:>9}  {spread_text(row.get('ratios') or ()):<16} "
                   f"{row.get('target', ''):<10} {row.get('status', '')}")
    return out


def pair_table(results: Results, title: str, rows: Rows) -> List[str]:
    """The block of a grid experiment (and the default block of any other): its title and :func:`pair_lines`."""
    return [title, *pair_lines(results, rows)]


def kernel_table(results: Results, title: str, rows: Rows) -> List[str]:
    """The kernels' block: each comparison's ratio, its spread, its target."""
    kernels = results.get("kernels")
    if not kernels:
        return []
    rounds = {(c["baseline"], c["method"]): c["ratios"] for c in results.get("comparisons", [])
              if c["experiment"] == "kernels"}
    lines = [f"kernels on {kernels['images']:,} images of 32x32x3 (median seconds)",
             f"  {'comparison':<40} {'result':<62} {'spread (rounds)':<16} {'target':<10} status"]
    for c in kernels["comparisons"]:
        if c["kind"] == "within":
            result = f"{c['ratio']:.2f}x the time of {c['baseline']}"
            target = f"within {c['target']:g}x" if c["target"] else ""
            ratios = [1 / r for r in rounds.get(tuple(c["sides"]), ())]
        else:
            result = f"{c['ratio']:.2f}x faster than {c['baseline']}"
            target = f">= {c['target']:g}x" if c["target"] else ""
            ratios = rounds.get(tuple(c["sides"]), [])
        status = "" if c["status"] == NOT_MEASURED else c["status"]
        lines.append(f"  {c['what']:<40} {result:<62} {spread_text(ratios):<16} {target:<10} {status}")
    return lines


def convert_table(results: Results, title: str, rows: Rows) -> List[str]:
    """The conversion's block: the classic recipe against ``imgconv.convert``, as a pair."""
    source = rows[0].get("source") if rows else None
    return [f"conversion end to end: {source} (train split) to LMDB", *pair_lines(results, rows)]


def memory_table(results: Results, title: str, rows: Rows) -> List[str]:
    """The memory experiment's block: peak memory of each conversion, however counted; photos against a bound."""
    workers = results["parameters"]["workers"]
    lines = [f"peak memory of python -m imgconv convert .npy DEST --workers {workers}, MB: "
             "process tree summed (anon = RssAnon, file = RssFile), parent alone, /usr/bin/time -v",
             f"  {'format':<6} {'images':>10} {'procs':>5} {'tree anon':>9} {'tree file':>9} "
             f"{'parent anon':>11} {'time -v':>8} {'seconds':>8}  {'target':<10} status"]
    for row in rows:
        if row.get("source") == "photos":
            continue
        time_v = "-" if row["time_max_rss_mb"] is None else f"{row['time_max_rss_mb']:.0f}"
        lines.append(f"  {_label(results, row['method']):<6} {row['images']:>10,} {row['processes']:>5} "
                     f"{row['tree_anon_mb']:>9.0f} {row['tree_file_mb']:>9.0f} {row['parent_anon_mb']:>11.0f} "
                     f"{time_v:>8} {row['seconds']:>8.1f}  {row.get('target', ''):<10} {row.get('status', '')}")
    photos = [row for row in rows if row.get("source") == "photos"]
    if photos:
        first = photos[0]
        lines += [f"peak memory of python -m imgconv convert PHOTOS DEST --workers {workers} (default batches of "
                  f"{first['batch_bytes'] / 2**20:g} MiB), {first['images']} JPEGs of {first['photo_size']}, MB: "
                  "tree anon against its bound (processes x one small conversion's + the batches in flight)",
                  f"  {'format':<6} {'procs':>5} {'tree anon':>9} {'parent anon':>11} {'time -v':>8} "
                  f"{'baseline':>8} {'bound':>7} {'seconds':>8}  within bound"]
        for row in photos:
            time_v = "-" if row["time_max_rss_mb"] is None else f"{row['time_max_rss_mb']:.0f}"
            lines.append(f"  {_label(results, row['method']):<6} {row['processes']:>5} {row['tree_anon_mb']:>9.0f} "
                         f"{row['parent_anon_mb']:>11.0f} {time_v:>8} {row['baseline_mb']:>8.0f} "
                         f"{row['bound_mb']:>7.0f} {row['seconds']:>8.1f}  "
                         f"{'yes' if row['within_bound'] else 'NO'}")
    return lines


def study_table(results: Results, title: str, rows: Rows) -> List[str]:
    """A layout study's block: one line per setting (median seconds; per-image times in us)."""
    lines = [f"{title}: median seconds; per-image times in us"]
    for row in rows:
        extra = "  ".join(f"{key}={_number(row[key])}" for key in STUDY_FIELDS if row.get(key) is not None)
        lines.append(f"  {row['experiment']:<12} {row['images']:>9,}  {row['setting']:<26} "
                     f"{seconds_text(row['seconds']):>9}  {extra}")
    return lines


def _side_label(row: Mapping[str, Any]) -> str:
    if row.get("best_of"):
        return f"= {row['method']}: " + (row.get("chosen") or f"best of {', '.join(row['best_of'])}")
    title = row.get("title")
    return f"{row['method']:<{SIDE_NAME_WIDTH}} {title}" if title else row["method"]


SIDE_NAME_WIDTH = 28  # the names of the sides of sides_table, before their titles


def _ratio_text(speedup: float) -> str:
    return f"{speedup:.2f}x" if speedup >= 1 else f"{speedup:.2f}x ({1 / speedup:.2f}x the time)"


def sides_table(results: Results, title: str, rows: Rows) -> List[str]:
    """The block of an alone experiment with many sides (one row each) and the comparisons between them.

    Each side (its name and ``title``): its median, its fastest and slowest
    run, the number of runs; a best-of side (``best_of``, right after its
    settings) names the setting it took (``chosen``); a side ``skipped``
    or ``failed`` says why; a row with neither times nor those shows its
    ``summary``. Then every comparison of the experiment: the geometric mean
    of its rounds' ratios (baseline time / side time) and their spread.
    """
    width = max([4, *(len(_side_label(row)) for row in rows)])
    lines = [title, f"  {'side':<{width}} {'median':>9}  {'fastest-slowest':>19}  runs"]
    for row in rows:
        label = _side_label(row)
        if row.get("skipped"):
            lines.append(f"  {label:<{width}} skipped: {row['skipped']}")
        elif row.get("failed"):
            lines.append(f"  {label:<{width}} failed: {row['failed']}")
        elif row.get("times"):
            times = row["times"]
            spread = f"{seconds_text(min(times))}-{seconds_text(max(times))}" if len(times) > 1 else ""
            lines.append(f"  {label:<{width}} {seconds_text(row['seconds']):>9}  {spread:>19}  {len(times)}")
        elif row.get("summary"):
            lines.append(f"  {label:<{width}} {row['summary']}")
    experiment = rows[0]["experiment"] if rows else None
    comparisons = [c for c in results.get("comparisons", []) if c["experiment"] == experiment]
    if comparisons:
        names = max(len(f"{c['method']} against {c['baseline']}") for c in comparisons)
        lines.append("  comparisons: baseline time / side time, geometric mean of the rounds, lowest-highest "
                     "(rounds)")
        for c in comparisons:
            pair = f"{c['method']} against {c['baseline']}"
            lines.append(f"  {pair:<{names}}  {_ratio_text(c['speedup']):<22} {spread_text(c['ratios'])}")
    return lines


def _value_text(value: float, unit: str) -> str:
    return f"{value:.0f}{unit}" if abs(value) >= 100 else f"{value:.2f}{unit}"


def _target_line(t: Mapping[str, Any]) -> str:
    status, result = t["status"], ""
    if status in ("met", "MISSED", "undecided"):
        result = _value_text(t["value"], t["unit"])
        if t["low"] is not None:
            result += f" (90%: {t['low']:.2f}-{t['high']:.2f}, {t['rounds']} rounds)"
        elif t["rounds"]:
            result += f" ({t['rounds']} round: no spread)"
    elif status == NOT_MEASURED:
        status, result = "not measured", "not measured at this size"
    else:
        status, result = "skipped", status[len("skipped: "):]
    return f"  {status:<12} {t['what']:<58} {t['target'] + ' at ' + format(t['images'], ','):<24} {result}"


def targets_lines(results: Results) -> List[str]:
    """The targets block: every target the run measured, or could not measure at its size."""
    shown = [t for t in results.get("targets", []) if t["status"] != NOT_RUN]
    if not shown:
        return []
    lines = ["targets: each judged only at the number of images it is set for; a ratio on its rounds (the two sides "
             "run alternately), decided when its 90% confidence interval lies wholly on one side of the target",
             f"  {'status':<12} {'target':<58} {'set for images':<24} result"]
    lines += [_target_line(t) for t in shown]
    if any(t["status"] == NOT_MEASURED for t in shown):
        cutoffs = results["parameters"]["cutoffs"]
        lines.append(f"  not measured: this run measured {', '.join(f'{c:,}' for c in cutoffs)} images, not the "
                     "number the target is set for (the default run, without --quick, measures them)")
    if any(t["status"] == "undecided" for t in shown):
        settle = results["parameters"]["settle_seconds"]
        lines.append(f"  undecided: the rounds disagree too much to tell within {settle:g} s of alternate reruns "
                     "(--settle SECONDS allows more)")
    return lines


def _legend(results: Results) -> str:
    paired = [row for row in results["rows"] if row.get("baseline") and row.get("family")]
    pairs = {(_family(results, row["baseline"]), row["family"]) for row in paired}
    peer_baselines = sorted({_label(results, row["baseline"]) for row in paired if row["family"] == "peer"})
    peers = (f"; a peer's is imgconv's {' or '.join(peer_baselines)}: below 1, imgconv is faster"
             if peer_baselines else "")
    what = ("classic time / imgconv time, same format (above 1: imgconv is faster)" if pairs <= {("classic", "imgconv")}
            else "baseline time / measured time (above 1: the measured method is faster; imgconv's baseline is the "
                 f"classic method of its format{peers})")
    return (f"speed-up = {what}; both run back to back in each round: the geometric mean of the rounds, and their "
            "spread: lowest-highest (rounds)")


def format_table(results: Results, experiments: Iterable[Any]) -> str:
    """The whole report as text: the header, one block per experiment, the targets.

    ``experiments`` are the :class:`~imgconv.bench.harness.Experiment` run, in
    order; each block is the experiment's ``table(results, title, rows)``, or
    :func:`pair_table`.
    """
    params = results["parameters"]
    machine = results["machine"]
    tmp = params["tmp"]
    lines = [
        f"imgconv bench: {params['input']}",
        f"{machine['cpu']}, {machine['usable_cores']} cores; PNG pool {params['workers']} workers; "
        f"files in {tmp['path']} ({tmp['type']}); median of up to {params['repeat']} runs "
        f"(fewer past {params['budget_seconds']:g} s)",
        _legend(results),
    ]
    for name, info in results.get("methods", {}).items():
        if info.get("skipped"):
            lines.append(f"skipped: {name}: {info['skipped']}")
    for name, reason in results.get("skipped_experiments", {}).items():
        lines.append(f"skipped: the {name} experiment: {reason}")
    rows = results["rows"]
    for exp in experiments:
        mine = [row for row in rows if row["experiment"] == exp.name]
        if not mine:
            continue
        block = (exp.table or pair_table)(results, exp.title, mine)
        if block:
            lines += ["", *block]
    targets = targets_lines(results)
    if targets:
        lines += ["", *targets]
    return "\n".join(line.rstrip() for line in lines)
