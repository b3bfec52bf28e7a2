"""Conversion benchmark: imgconv's pipeline against the classic conversion recipes.

Run it with ``python -m imgconv.bench.convert`` (``--help`` for options). Three
measurements, chosen with ``--bench``:

- ``cifar``: the sample's ``cifar-10-python.tar.gz`` (60,000 images, 50,000
  for training) to LMDB, end to end from the archive: the classic pipeline
  (tarfile, ``pickle.load`` per batch, ``np.dstack`` per image, a pickled
  :class:`~imgconv.bench.classic.CifarImage` per key in one transaction)
  against ``convert(archive, dest.lmdb, split="train")`` with default workers.
- ``png``: 100,000 sample images to a PNG folder, the classic single-process
  ``Image.save`` loop against ``convert(source, folder, workers=2)`` (both at
  zlib level 6, Pillow's default), then each folder read back: the classic
  ``Image.open`` loop against ``load(folder, workers=2)``.
- ``memory``: peak memory of ``python -m imgconv convert SRC DST --workers 2``
  from a memory-mapped ``.npy``, to each format at 100,000 images and to LMDB
  and HDF5 at 1,000,000, sampled from ``/proc`` every 20 ms over the whole
  process tree (parent plus workers, summed), with ``/usr/bin/time -v``'s
  figure beside it.

Classic and imgconv methods run in the same process on the same images, one
after the other; every figure is the median of ``--repeat`` runs, and every
result is read back and checked against the images written before its figure
is reported (wrong pixels raise AssertionError and fail the run). The timing
harness reuses :func:`run` and the ``bench_*`` functions, which return rows.
"""
import argparse
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

import numpy as np

from .. import stores
from ..convert import convert, default_workers, load
from ..sample import PYTHON_ARCHIVE, generate_sample, write_sample
from ..stores.png_folder import DEFAULT_COMPRESS_LEVEL
from ..verify import disk_usage
from . import classic
from .timing import median_seconds

BENCHES = ("cifar", "png", "memory")
PNG_WORKERS = 2
MEMORY_LIMIT_MB = 300.0
# "Not growing with the number of images": peak anonymous memory at the large
# count within this factor of the small count's.
MEMORY_GROWTH_LIMIT = 1.2
SAMPLE_INTERVAL = 0.02

# (comparison, imgconv row, baseline row, target ratio). A ratio is the
# baseline's median time / imgconv's (above 1: imgconv is faster).
COMPARISONS = [
    ("CIFAR-10 .tar.gz to LMDB (train split), end to end", "imgconv convert(archive, lmdb)",
     "classic: unpickle + np.dstack + pickled CifarImage per key", 3.0),
    (f"images to a PNG folder, {PNG_WORKERS} workers", f"imgconv convert(npz, folder, workers={PNG_WORKERS})",
     "classic: Image.save per file, one process", 1.8),
    (f"PNG folder read back into an array, {PNG_WORKERS} workers", f"imgconv load(folder, workers={PNG_WORKERS})",
     "classic: Image.open + np.array per file, one process", 1.8),
]


def _row(bench, method, seconds, times=(), **extra):
    row = {"bench": bench, "method": method, "seconds": seconds, "times": list(times)}
    row.update(extra)
    return row


def _check(got_images, got_labels, images, labels, what):
    if not (np.array_equal(got_images, images) and np.array_equal(got_labels, labels)):
        raise AssertionError(f"{what} returned wrong pixels or labels")


def _fresh(path):
    """Remove ``path`` (file or directory) if present: setup before each timed write."""
    stores.base.remove_path(path)


# --------------------------------------------------------------------------- CIFAR to LMDB


def _classic_batches(path):
    """Yield the training batches of the CIFAR-10 python version at ``path`` (.tar.gz or directory), unpickled."""
    if os.path.isdir(path):
        for name in sorted(n for n in os.listdir(path) if n.startswith("data_batch")):
            with open(os.path.join(path, name), "rb") as f:
                yield pickle.load(f, encoding="bytes")
        return
    with tarfile.open(path, "r:gz") as tar:
        members = sorted((m for m in tar.getmembers() if os.path.basename(m.name).startswith("data_batch")),
                         key=lambda m: m.name)
        for member in members:
            yield pickle.load(tar.extractfile(member), encoding="bytes")


def classic_cifar_to_lmdb(archive, path):
    """The classic recipe: every training batch of the CIFAR-10 python version to LMDB.

    ``archive`` is the ``.tar.gz`` or the ``cifar-10-batches-py`` directory.
    ``pickle.load(f, encoding="bytes")`` per batch, each row rebuilt as
    ``np.dstack((r, g, b))`` of its three 32x32 planes, and one pickled
    :class:`~imgconv.bench.classic.CifarImage` per key ``f"{i:08}"``, all in
    one write transaction; the map size is set once, generously (the
    classic recipe's ten times the pixels of 60,000 images). Returns the
    number of images written.
    """
    import lmdb

    count = 0
    env = lmdb.open(path, map_size=10 * 60000 * 3072)
    with env.begin(write=True) as txn:
        for batch in _classic_batches(archive):
            for row, label in zip(batch[b"data"], batch[b"labels"]):
                r, g, b = (row[k * 1024 : (k + 1) * 1024].reshape(32, 32) for k in range(3))
                image = np.dstack((r, g, b))
                txn.put(f"{count:08}".encode("ascii"), pickle.dumps(CifarImage(image, label)))
                count += 1
    env.close()
    return count


# The classic recipe pickles objects of this class (the bench's own, so the
# classic read can unpickle what was written).
CifarImage = classic.CifarImage


def _read_store(path):
    store = stores.open(path)
    try:
        return store.read_all()
    finally:
        store.close()


def bench_cifar_lmdb(archive, images, labels, workdir, repeat, workers=None):
    """CIFAR-10 archive to LMDB: the classic pipeline against ``convert(..., split="train")``.

    ``images``/``labels`` are the training images the archive holds, to check
    both stores against. Returns rows.
    """
    n = len(images)
    workers = default_workers() if workers is None else workers
    classic_path = os.path.join(workdir, "classic-cifar.lmdb")
    ours_path = os.path.join(workdir, "ours-cifar.lmdb")
    classic_s, classic_t = median_seconds(lambda: classic_cifar_to_lmdb(archive, classic_path), repeat,
                                          setup=lambda: _fresh(classic_path))
    _check(*classic.read_lmdb_pickles(classic_path, n), images, labels, "classic CIFAR to LMDB")
    ours_s, ours_t = median_seconds(lambda: convert(archive, ours_path, split="train", workers=workers), repeat,
                                    setup=lambda: _fresh(ours_path))
    _check(*_read_store(ours_path), images, labels, "imgconv convert(archive, lmdb)")
    ours0_s, ours0_t = median_seconds(lambda: convert(archive, ours_path, split="train", workers=0), repeat,
                                      setup=lambda: _fresh(ours_path))
    _check(*_read_store(ours_path), images, labels, "imgconv convert(archive, lmdb, workers=0)")
    _fresh(classic_path)
    _fresh(ours_path)
    return [
        _row("cifar", COMPARISONS[0][2], classic_s, classic_t, images=n),
        _row("cifar", COMPARISONS[0][1], ours_s, ours_t, images=n, workers=workers),
        _row("cifar", "imgconv convert(archive, lmdb, workers=0)", ours0_s, ours0_t, images=n, workers=0),
    ]


# --------------------------------------------------------------------------- PNG folders


def bench_png(source, images, labels, workdir, repeat, workers=PNG_WORKERS):
    """PNG folders: write (Image.save loop against convert) and read back (Image.open loop against load).

    ``source`` is a ``.npz`` holding ``images`` and ``labels``; the classic
    loop takes the same arrays from memory. Returns rows.
    """
    n = len(images)
    classic_dir = os.path.join(workdir, "classic-png")
    ours_dir = os.path.join(workdir, "ours-png")

    def fresh_classic():
        _fresh(classic_dir)
        os.mkdir(classic_dir)

    classic_w, classic_wt = median_seconds(lambda: classic.store_png_files(classic_dir, images, labels), repeat,
                                           warmup=0, setup=fresh_classic)
    ours_w, ours_wt = median_seconds(lambda: convert(source, ours_dir, workers=workers), repeat, warmup=0,
                                     setup=lambda: _fresh(ours_dir))
    ours0_w, ours0_wt = median_seconds(lambda: convert(source, ours_dir, workers=0), repeat, warmup=0,
                                       setup=lambda: _fresh(ours_dir))
    got = {}
    classic_r, classic_rt = median_seconds(lambda: got.update(classic=classic.read_png_files(classic_dir, n)),
                                           repeat, warmup=0)
    _check(*got["classic"], images, labels, "classic PNG read (Image.open per file)")
    ours_r, ours_rt = median_seconds(lambda: got.update(ours=load(ours_dir, workers=workers)), repeat, warmup=0)
    _check(*got["ours"], images, labels, f"imgconv load(folder, workers={workers})")
    ours0_r, ours0_rt = median_seconds(lambda: got.update(ours0=load(ours_dir, workers=0)), repeat, warmup=0)
    _check(*got["ours0"], images, labels, "imgconv load(folder, workers=0)")
    got.clear()
    store = stores.open(ours_dir)
    level = store.metadata["compress_level"]
    store.close()
    classic_bytes, ours_bytes = disk_usage(classic_dir), disk_usage(ours_dir)
    _fresh(classic_dir)
    _fresh(ours_dir)
    return [
        _row("png write", COMPARISONS[1][2], classic_w, classic_wt, images=n, level=DEFAULT_COMPRESS_LEVEL,
             bytes=classic_bytes),
        _row("png write", COMPARISONS[1][1], ours_w, ours_wt, images=n, level=level, workers=workers,
             bytes=ours_bytes),
        _row("png write", "imgconv convert(npz, folder, workers=0)", ours0_w, ours0_wt, images=n, level=level,
             workers=0),
        _row("png read", COMPARISONS[2][2], classic_r, classic_rt, images=n),
        _row("png read", COMPARISONS[2][1], ours_r, ours_rt, images=n, workers=workers),
        _row("png read", "imgconv load(folder, workers=0)", ours0_r, ours0_rt, images=n, workers=0),
    ]


# --------------------------------------------------------------------------- peak memory

_STATUS_FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")


def _children_map():
    """``{ppid: [pid, ...]}`` for every process visible in /proc."""
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields follow the last ")".
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(name))
    return children


def _descendants(pid):
    children = _children_map()
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def _status_kb(pid):
    """The memory fields of /proc/PID/status in kB (empty for a process that is gone)."""
    values = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in _STATUS_FIELDS:
                    values[key] = int(rest.split()[0])
    except OSError:
        return {}
    return values


class TreeMemorySampler:
    """Samples the summed memory of a process's descendants every ``interval`` seconds, in a thread.

    ``root`` is the process whose descendants are measured (itself excluded:
    it is ``/usr/bin/time``). ``peak`` holds the peak of each summed field
    (kB), ``parent_peak`` those of the first descendant alone (the command's
    parent process), ``processes`` the most processes seen at once.
    """

    def __init__(self, root, interval=SAMPLE_INTERVAL):
        self.root = root
        self.interval = interval
        self.peak = dict.fromkeys(_STATUS_FIELDS, 0)
        self.parent_peak = dict.fromkeys(_STATUS_FIELDS, 0)
        self.processes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self):
        """Take one sample now."""
        pids = _descendants(self.root)
        if not pids:
            return
        statuses = [_status_kb(pid) for pid in pids]
        for key in _STATUS_FIELDS:
            self.peak[key] = max(self.peak[key], sum(s.get(key, 0) for s in statuses))
            self.parent_peak[key] = max(self.parent_peak[key], statuses[0].get(key, 0))
        self.processes = max(self.processes, len(pids))
        self.samples += 1

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False


def _time_max_rss_kb(stderr):
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    return int(found.group(1)) if found else None


def measure_convert_memory(source, dest, fmt, workers=PNG_WORKERS):
    """Run ``python -m imgconv convert SOURCE DEST --workers N`` under ``/usr/bin/time -v``; returns a dict.

    Peak summed VmRSS, RssAnon and RssFile (MB) of the command's process tree,
    the parent's own peaks, ``/usr/bin/time``'s maximum RSS, and wall seconds.
    Raises RuntimeError if the command fails.
    """
    command = [sys.executable, "-m", "imgconv", "convert", source, dest, "--format", fmt,
               "--workers", str(workers), "--quiet", "--overwrite"]
    timed = ["/usr/bin/time", "-v", *command] if os.path.exists("/usr/bin/time") else command
    started = time.perf_counter()
    process = subprocess.Popen(timed, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with TreeMemorySampler(process.pid if timed is not command else os.getpid()) as sampler:
        stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}): {stderr.strip()[-2000:]}")
    mb = 1 / 1024
    return {
        "format": fmt, "workers": workers, "seconds": seconds, "processes": sampler.processes,
        "samples": sampler.samples,
        "tree_rss_mb": sampler.peak["VmRSS"] * mb, "tree_anon_mb": sampler.peak["RssAnon"] * mb,
        "tree_file_mb": sampler.peak["RssFile"] * mb, "tree_shmem_mb": sampler.peak["RssShmem"] * mb,
        "parent_rss_mb": sampler.parent_peak["VmRSS"] * mb, "parent_anon_mb": sampler.parent_peak["RssAnon"] * mb,
        "parent_file_mb": sampler.parent_peak["RssFile"] * mb,
        "time_max_rss_mb": None if _time_max_rss_kb(stderr) is None else _time_max_rss_kb(stderr) * mb,
    }


def write_tiled_npy(path, tile, count):
    """Write a ``.npy`` of ``count`` images by repeating ``tile`` (N, H, W, C), in slices."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(count, *tile.shape[1:]))
    for start in range(0, count, len(tile)):
        stop = min(start + len(tile), count)
        out[start:stop] = tile[: stop - start]
    out.flush()
    del out


def _spot_check(dest, tile, count, what, probes=2048):
    """Check the store at ``dest`` holds ``count`` images equal to ``tile`` repeated (first, last, random ones)."""
    store = stores.open(dest)
    try:
        if len(store) != count:
            raise AssertionError(f"{what}: {len(store)} images written, {count} expected")
        rng = np.random.default_rng(3)
        indices = np.unique(np.concatenate([np.arange(min(probes, count)), np.arange(max(0, count - probes), count),
                                            rng.integers(0, count, probes)]))
        got, got_labels = store.read_batch(indices)
        _check(got, got_labels, tile[indices % len(tile)], np.full(len(indices), -1, np.int64), what)
    finally:
        store.close()


def bench_memory(tile, workdir, counts, formats_by_count, workers=PNG_WORKERS):
    """Peak memory converting a memory-mapped ``.npy`` of ``count`` images (``tile`` repeated) to each format.

    ``formats_by_count`` maps a count to the formats measured at it. Each
    source and store is deleted after use. Returns rows.
    """
    rows = []
    suffix = {"png": "", "lmdb": ".lmdb", "hdf5": ".h5"}
    for count in counts:
        source = os.path.join(workdir, f"mem-{count}.npy")
        write_tiled_npy(source, tile, count)
        try:
            for fmt in formats_by_count[count]:
                dest = os.path.join(workdir, f"mem-{count}-{fmt}{suffix[fmt]}")
                try:
                    figures = measure_convert_memory(source, dest, fmt, workers)
                    _spot_check(dest, tile, count, f"python -m imgconv convert to {fmt}, {count} images")
                finally:
                    _fresh(dest)
                seconds = figures.pop("seconds")
                rows.append(_row("memory", f"python -m imgconv convert .npy {fmt} --workers {workers}",
                                 seconds, images=count, **figures))
        finally:
            os.unlink(source)
    return rows


# --------------------------------------------------------------------------- driver


def compare(rows):
    """The COMPARISONS found in ``rows`` (and the memory targets): dicts with ratio, target and met."""
    seconds = {(row["bench"], row["method"]): row["seconds"] for row in rows}
    by_method = {method: value for (_, method), value in seconds.items()}
    result = []
    for what, ours, baseline, target in COMPARISONS:
        if ours in by_method and baseline in by_method:
            ratio = by_method[baseline] / by_method[ours]
            result.append({"what": what, "imgconv": ours, "baseline": baseline, "ratio": ratio,
                           "target": f">= {target:g}x", "met": ratio >= target})
    memory = [row for row in rows if row["bench"] == "memory"]
    for row in memory:
        result.append({"what": f"peak anonymous memory, {row['format']}, {row['images']:,} images",
                       "imgconv": row["method"], "baseline": None, "ratio": None, "value_mb": row["tree_anon_mb"],
                       "target": f"< {MEMORY_LIMIT_MB:g} MB", "met": row["tree_anon_mb"] < MEMORY_LIMIT_MB})
    for fmt in sorted({row["format"] for row in memory}):
        sized = sorted((row["images"], row["tree_anon_mb"]) for row in memory if row["format"] == fmt)
        if len(sized) > 1:
            (small, small_mb), (large, large_mb) = sized[0], sized[-1]
            growth = large_mb / small_mb
            result.append({"what": f"anonymous memory growth, {fmt}, {large:,} against {small:,} images",
                           "imgconv": fmt, "baseline": None, "ratio": growth,
                           "target": f"<= {MEMORY_GROWTH_LIMIT:g}x", "met": growth <= MEMORY_GROWTH_LIMIT})
    return result


def cifar_sample(cache, count=60000):
    """The sample's python archive with ``count`` images in ``cache`` (written once, reused after)."""
    directory = os.path.join(cache, f"sample-{count}")
    archive = os.path.join(directory, PYTHON_ARCHIVE)
    if not os.path.exists(archive):
        write_sample(directory, count)
    return archive


def run(benches=BENCHES, count=60000, png_count=100_000, memory_count=100_000, memory_large=1_000_000, repeat=3,
        workdir=None, cache=None, on_rows=None):
    """Run the chosen ``benches`` (see :data:`BENCHES`); returns the result rows.

    ``count`` is the CIFAR sample's size (5/6 of it is the train split),
    ``png_count`` the images of the PNG rows, ``memory_count`` and
    ``memory_large`` the two sizes of the memory rows (0 skips the large one).
    The sample archive is cached in ``cache`` (default: a directory in the
    system temp dir); stores go to a temporary directory in ``workdir``.
    ``on_rows(rows)``, when given, is called with the rows so far after each
    measurement, so a long run keeps what it measured if a later part fails.
    Raises AssertionError when any method returns wrong pixels or labels.
    """
    cache = cache or os.path.join(tempfile.gettempdir(), "imgconv-bench-convert")
    os.makedirs(cache, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="imgconv-bench-convert-", dir=workdir)
    rows = []
    try:
        if "cifar" in benches:
            archive = cifar_sample(cache, count)
            images, labels = generate_sample(count)
            train = count - count // 6
            rows += bench_cifar_lmdb(archive, images[:train], labels[:train], workdir, repeat)
            del images, labels
            if on_rows is not None:
                on_rows(rows)
        if "png" in benches:
            images, labels = generate_sample(png_count)
            source = os.path.join(workdir, "png-source.npz")
            np.savez(source, images=images, labels=labels)  # stored, so memory-mapped by the source
            rows += bench_png(source, images, labels, workdir, repeat)
            os.unlink(source)
            del images, labels
            if on_rows is not None:
                on_rows(rows)
        if "memory" in benches:
            tile = generate_sample(min(memory_count, 100_000))[0]
            counts = [memory_count] + ([memory_large] if memory_large else [])
            formats = {memory_count: ("png", "lmdb", "hdf5")}
            if memory_large:
                formats[memory_large] = ("lmdb", "hdf5")
            rows += bench_memory(tile, workdir, counts, formats)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


def format_report(rows, comparisons):
    """The timings, the memory figures and the comparisons as text."""
    lines = [f"imgconv conversion, {default_workers()} CPUs; median seconds (all runs in brackets)"]
    for row in rows:
        if row["bench"] == "memory":
            continue
        runs = ", ".join(f"{t:.2f}" for t in row["times"])
        lines.append(f"  {row['bench']:<10} {row['images']:>9,}  {row['seconds']:8.2f} s  [{runs}]  {row['method']}")
    memory = [row for row in rows if row["bench"] == "memory"]
    if memory:
        lines.append("")
        lines.append("peak memory, MB: process tree summed (anon = RssAnon, file = RssFile), parent alone, "
                     "/usr/bin/time -v max RSS")
        lines.append(f"  {'format':<6} {'images':>10} {'procs':>5} {'tree RSS':>9} {'anon':>7} {'file':>7} "
                     f"{'parent anon':>11} {'parent file':>11} {'time -v':>8} {'seconds':>8}")
        for row in memory:
            time_v = f"{row['time_max_rss_mb']:.0f}" if row["time_max_rss_mb"] is not None else "-"
            lines.append(f"  {row['format']:<6} {row['images']:>10,} {row['processes']:>5} {row['tree_rss_mb']:>9.0f} "
                         f"{row['tree_anon_mb']:>7.0f} {row['tree_file_mb']:>7.0f} {row['parent_anon_mb']:>11.0f} "
                         f"{row['parent_file_mb']:>11.0f} {time_v:>8} {row['seconds']:>8.1f}")
    lines.append("")
    lines.append(f"  {'comparison':<62} {'result':>10} {'target':>10}  met")
    for c in comparisons:
        value = f"{c['ratio']:.2f}x" if c.get("value_mb") is None else f"{c['value_mb']:.0f} MB"
        lines.append(f"  {c['what']:<62} {value:>10} {c['target']:>10}  {'yes' if c['met'] else 'NO'}")
    lines.append("ratio = classic median time / imgconv median time (above 1: imgconv is faster)")
    return "\n".join(lines)


def _count(text):
    value = int(text.replace("_", "").replace(",", ""))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def main(argv=None):
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m imgconv.bench.convert",
        description="Time imgconv's conversions against the classic recipes, and measure their peak memory.",
    )
    parser.add_argument("--bench", nargs="+", choices=BENCHES, default=list(BENCHES),
                        help="which measurements to run (default: all)")
    parser.add_argument("--count", type=_count, default=60000,
                        help="images in the CIFAR sample archive, 5/6 of them in the train split (default 60,000)")
    parser.add_argument("--png-count", type=_count, default=100_000, help="images for the PNG rows (default 100,000)")
    parser.add_argument("--memory-count", type=_count, default=100_000,
                        help="images for the memory rows, every format (default 100,000)")
    parser.add_argument("--memory-large", type=_count, default=1_000_000,
                        help="images for the LMDB and HDF5 growth rows (default 1,000,000; 0 skips them)")
    parser.add_argument("--repeat", type=_count, default=3, help="timed runs per figure; the median is reported")
    parser.add_argument("--workdir", help="directory for the stores (default: a temporary one)")
    parser.add_argument("--cache", help="directory where the sample archive is kept between runs")
    parser.add_argument("--json", metavar="FILE", help="also write the rows and comparisons as JSON")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.count < 6 or args.png_count < 1 or args.memory_count < 1:
        parser.error("--repeat, --png-count and --memory-count must be at least 1, --count at least 6")

    def save(rows, final=False):
        comparisons = compare(rows)
        if final or args.json is None:
            print(format_report(rows, comparisons) + ("" if final else "\n(partial)\n"), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"cpus": default_workers(), "png_level": DEFAULT_COMPRESS_LEVEL, "complete": final,
                           "rows": rows, "comparisons": comparisons}, f, indent=2)

    rows = run(args.bench, args.count, args.png_count, args.memory_count, args.memory_large, args.repeat,
               args.workdir, args.cache, on_rows=save)
    save(rows, final=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
