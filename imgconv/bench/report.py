"""What the harness writes: the table on stdout, ``results.json``, ``results.csv``, and the facts
about the machine and the software that make a run comparable with another.
"""
import csv
import json
import os
import platform

from .methods import FORMAT_TITLES

CSV_COLUMNS = ("experiment", "method", "format", "family", "images", "reads", "seconds", "runs", "warmup", "times",
               "per_image_us", "speedup", "bytes", "allocated_bytes", "disk_ratio", "target", "status")


STUDY_FIELDS = ("write_seconds", "single_read_us", "h5py_single_read_us", "encode_us", "decode_us", "mean_bytes",
                "disk_ratio", "size_ratio")


# --------------------------------------------------------------------------- facts


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes():
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


def machine_info():
    """CPU model, cores (all, and usable by this process), memory, OS and load average, as a dict."""
    from ..convert import default_workers

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


def filesystem_of(path):
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


def versions():
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


def write_json(path, results):
    """``results`` as indented JSON at ``path`` (written beside and renamed)."""
    partial = path + ".partial"
    with open(partial, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    os.replace(partial, path)


def write_csv(path, rows):
    """One CSV line per result row (``CSV_COLUMNS``; a row's run times joined by ``;``)."""
    partial = path + ".partial"
    with open(partial, "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            line = dict(row)
            line["times"] = ";".join(f"{t:.6g}" for t in row.get("times") or ())
            writer.writerow(line)
    os.replace(partial, path)


# --------------------------------------------------------------------------- the table


def seconds_text(seconds):
    """A time, readable at any scale: '12.3 s', '45.6 ms', '789 us'."""
    if seconds is None:
        return "-"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} us"


def _number(value):
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _cell(row):
    if row is None:
        return "-"
    if row["experiment"] == "disk":
        return f"{row['bytes'] / 1e6:,.2f} MB ({row['disk_ratio']:.2f}x)"
    return seconds_text(row["seconds"])


def _ratio(row):
    if row is None or row.get("speedup") is None:
        return ""
    return f"{row['speedup']:.2f}x"


def _status(row):
    if row is None or not row.get("target"):
        return "", ""
    return row["target"], row["status"]


def format_table(results, experiments):
    """The whole report as text: the header, one block per experiment, kernels, conversion, targets."""
    params = results["parameters"]
    machine = results["machine"]
    tmp = params["tmp"]
    lines = [
        f"imgconv bench: {params['input']}",
        f"{machine['cpu']}, {machine['usable_cores']} cores; PNG pool {params['workers']} workers; "
        f"files in {tmp['path']} ({tmp['type']}); median of up to {params['repeat']} runs "
        f"(fewer past {params['budget_seconds']:g} s)",
        "speed-up = classic time / imgconv time, same format, same run (above 1: imgconv is faster)",
    ]
    rows = results["rows"]
    header = f"  {'format':<6} {'images':>9}  {'classic':>19}  {'imgconv':>19}  {'speed-up':>9}  {'target':<10} status"
    for experiment in experiments:
        if experiment.grid == "alone":
            continue
        mine = [row for row in rows if row["experiment"] == experiment.name]
        if not mine:
            continue
        lines += ["", f"{experiment.title}", header]
        keys = sorted({(row["images"], row["format"]) for row in mine},
                      key=lambda key: (list(FORMAT_TITLES).index(key[1]), key[0]))
        for images, fmt in keys:
            pair = {row["family"]: row for row in mine if row["images"] == images and row["format"] == fmt}
            ours = pair.get("imgconv")
            target, status = _status(ours)
            lines.append(f"  {FORMAT_TITLES[fmt]:<6} {images:>9,}  {_cell(pair.get('classic')):>19}  "
                         f"{_cell(ours):>19}  {_ratio(ours):>9}  {target:<10} {status}")
    if results.get("kernels"):
        lines += ["", f"kernels on {results['kernels']['images']:,} images of 32x32x3 (median seconds)",
                  f"  {'comparison':<40} {'result':<62} {'target':<10} status"]
        for c in results["kernels"]["comparisons"]:
            if c["kind"] == "within":
                result = f"{c['ratio']:.2f}x the time of {c['baseline']}"
                target = f"within {c['target']:g}x"
            else:
                result = f"{c['ratio']:.2f}x faster than {c['baseline']}"
                target = f">= {c['target']:g}x" if c["target"] else ""
            status = {True: "met", False: "MISSED", None: ""}[c["met"]]
            lines.append(f"  {c['what']:<40} {result:<62} {target:<10} {status}")
    convert_rows = [row for row in rows if row["experiment"] == "convert"]
    if convert_rows:
        pair = {row["family"]: row for row in convert_rows}
        ours = pair.get("imgconv")
        target, status = _status(ours)
        lines += ["", f"conversion end to end: {params['cifar']} (train split) to LMDB", header,
                  f"  {'LMDB':<6} {convert_rows[0]['images']:>9,}  {_cell(pair.get('classic')):>19}  "
                  f"{_cell(ours):>19}  {_ratio(ours):>9}  {target:<10} {status}"]
    memory_rows = [row for row in rows if row["experiment"] == "memory"]
    if memory_rows:
        lines += ["", f"peak memory of python -m imgconv convert .npy DEST --workers {params['workers']}, MB: "
                      "process tree summed (anon = RssAnon, file = RssFile), parent alone, /usr/bin/time -v",
                  f"  {'format':<6} {'images':>10} {'procs':>5} {'tree anon':>9} {'tree file':>9} "
                  f"{'parent anon':>11} {'time -v':>8} {'seconds':>8}  {'target':<10} status"]
        for row in memory_rows:
            time_v = "-" if row["time_max_rss_mb"] is None else f"{row['time_max_rss_mb']:.0f}"
            target, status = _status(row)
            lines.append(f"  {FORMAT_TITLES[row['format']]:<6} {row['images']:>10,} {row['processes']:>5} "
                         f"{row['tree_anon_mb']:>9.0f} {row['tree_file_mb']:>9.0f} {row['parent_anon_mb']:>11.0f} "
                         f"{time_v:>8} {row['seconds']:>8.1f}  {target:<10} {status}")
    studies = [row for row in rows if row.get("setting")]
    if studies:
        lines += ["", "layout studies (median seconds; per-image times in us)"]
        for row in studies:
            extra = "  ".join(f"{key}={_number(row[key])}" for key in STUDY_FIELDS if row.get(key) is not None)
            lines.append(f"  {row['experiment']:<12} {row['images']:>9,}  {row['setting']:<26} "
                         f"{seconds_text(row['seconds']):>9}  {extra}")
    if results["targets"]:
        lines += ["", "targets (set for 100,000 images on a 2-core machine)"]
        if max(params["cutoffs"]) < 100_000:
            lines.append(f"  (this run stops at {max(params['cutoffs']):,} images: indicative only)")
        for t in results["targets"]:
            where = "" if t["images"] is None else f" at {t['images']:,} images"
            lines.append(f"  {t['status']:<7} {t['what']:<60} {t['value']:>12}  (target {t['target']}{where})")
    return "\n".join(line.rstrip() for line in lines)
