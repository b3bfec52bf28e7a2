"""The timing harness: ``python -m imgconv bench`` reruns the classic experiment side by side.

The classic comparison of PNG files, LMDB and HDF5 stores and reads one image
and many (10 to 100,000), reads random batches, and weighs the disk each
method takes. The harness does all of it with imgconv's stores and the classic
methods (:mod:`imgconv.bench.methods`) in the same process, on the same
images, one after the other at each cutoff, and adds the compiled kernels and
a CIFAR-10 archive converted end to end.

It is a grid: ``EXPERIMENTS`` (a registry, run in its order) times each
method of ``METHODS`` at each cutoff. An experiment on the "cutoff" grid runs
on the store written at that cutoff, which is written once, timed by
``store-many`` when that is selected. Every figure is the median of up to
``--repeat`` runs, after a warm-up run when it is cheap; ``--budget`` stops
repeating a long measurement. Every read is checked against the images
written: wrong pixels or labels raise :class:`BenchCheckError`, which fails
the run. All files go to a temporary directory that is removed at the end.
"""
import argparse
import datetime
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from collections import namedtuple

import numpy as np

import imgconv

from .._platform import remove_path
from . import classic, inputs, kernels, loader_bench, memory, report, studies
from .methods import FORMATS, METHODS, BenchCheckError, Environment, disk_bytes, same_data
from .timing import measure

DEFAULT_CUTOFFS = (10, 100, 1_000, 10_000, 100_000)
QUICK_CUTOFFS = (10, 100, 1_000)
DEFAULT_REPEAT = 3
DEFAULT_BUDGET = 10.0
QUICK_BUDGET = 1.0
CIFAR_COUNT, QUICK_CIFAR_COUNT = 60_000, 3_000
KERNEL_COUNTS = (5_000, 100_000)  # kernels run on the largest cutoff, kept within these
ONE_IMAGE_REPEAT = 11  # single-image operations are short: more runs for a steady median
RANDOM_BATCH_SIZE = 64
RANDOM_BATCHES, QUICK_RANDOM_BATCHES = 16, 4  # per timed run; the single reads are as many images
# A warm-up run precedes the timed ones when it is expected to take less than
# this (from the same measurement at the previous cutoff); beyond, runs are
# long enough that the first one is not a cold start, and a warm-up of
# 100,000 PNG files would cost half a minute.
WARMUP_LIMIT = 1.0
DEFAULT_OUT = "bench-results"
SEED = 1


Experiment = namedtuple("Experiment", "name title grid run")
Experiment.__doc__ = """One experiment: ``name`` as given to ``--experiments``, a ``title``
for the table, its ``grid`` ("one": each method on a one-image store;
"cutoff": each method at each cutoff, on the store written there; "alone": run
once) and ``run``, called as ``run(harness, method, path, count)`` on the
grids and ``run(harness)`` alone; it returns result rows."""

EXPERIMENTS = {}


def experiment(name, title, grid):
    """Register the decorated function as the experiment ``name`` (see :class:`Experiment`)."""

    def register(run):
        EXPERIMENTS[name] = Experiment(name, title, grid, run)
        return run

    return register


Target = namedtuple("Target", "what experiment method key higher threshold text unit")
Target.__doc__ = """A target of the issues: the row of ``method`` in ``experiment`` at the
largest count that has ``key`` ("speedup", "disk_ratio", ...), at least
(``higher``) or at most ``threshold``; ``text`` shows the target and ``unit``
follows the measured value. Kernel targets (experiment "kernels") name a
comparison of :mod:`imgconv.bench.kernels` and judge its ratio."""

TARGETS = [
    Target("LMDB full read, against the classic pickles", "read-many", "lmdb", "speedup", True, 20, ">= 20x", "x"),
    Target("LMDB write, against the classic pickles", "store-many", "lmdb", "speedup", True, 6, ">= 6x", "x"),
    Target("LMDB disk, against the raw pixel bytes", "disk", "lmdb", "disk_ratio", False, 1.05, "<= 1.05x", "x raw"),
    Target("HDF5 full read, no slower than classic", "read-many", "hdf5", "speedup", True, 1, ">= 1x", "x"),
    Target("HDF5 write in batches, within 2x of classic", "store-many", "hdf5", "speedup", True, 0.5, ">= 0.5x",
           "x"),
    Target("HDF5 random single reads, within 2x of contiguous", "random-one", "hdf5", "speedup", True, 0.5,
           ">= 0.5x", "x"),
    Target("PNG folder write, worker pool against one loop", "store-many", "png", "speedup", True, 1.8, ">= 1.8x",
           "x"),
    Target("PNG folder read, worker pool against one loop", "read-many", "png", "speedup", True, 1.8, ">= 1.8x", "x"),
    Target("CHW-to-HWC into a preallocated array, against NumPy", "kernels",
           "chw_to_hwc, into a preallocated array", "ratio", True, 8, ">= 8x", "x"),
    Target("CHW-to-HWC allocating the result, against NumPy", "kernels",
           "chw_to_hwc, allocating the result", "ratio", True, 8, ">= 8x", "x"),
    Target("CIFAR-10 .tar.gz to LMDB end to end, against classic", "convert", "lmdb", "speedup", True, 3, ">= 3x",
           "x"),
] + [
    Target(f"{title} conversion, peak anonymous memory of the tree", "memory", fmt, "tree_anon_mb", False,
           memory.LIMIT_MB, f"< {memory.LIMIT_MB:g} MB", " MB")
    for fmt, title in (("png", "PNG folder"), ("lmdb", "LMDB"), ("hdf5", "HDF5"))
] + [
    Target(f"{title} conversion memory, 10x the images against 1x", "memory", fmt, "growth", False,
           memory.GROWTH_LIMIT, f"<= {memory.GROWTH_LIMIT:g}x", "x")
    for fmt, title in (("lmdb", "LMDB"), ("hdf5", "HDF5"))
]


class Harness:
    """One run of the experiment: the chosen methods, experiments and cutoffs on one image set.

    ``images`` is the :class:`~imgconv.bench.inputs.ImageSet`; ``workdir`` a
    directory for the stores (emptied as it goes); ``cifar`` the CIFAR-10
    python archive or directory of the conversion and ``cifar_train`` its
    training images and labels when known (else they are read with
    ``imgconv.load``, to check both conversions against); ``progress(text)`` is
    called before each step. Call :meth:`run`; the rows accumulate in
    ``rows``, the kernel figures in ``kernels``.
    """

    def __init__(self, images, methods, experiments, cutoffs, *, repeat, budget, workers, workdir, cifar,
                 kernel_count, cifar_train=None, random_batches=RANDOM_BATCHES, progress=None):
        self.images = images
        self.methods = methods
        self.experiments = experiments
        self.cutoffs = cutoffs
        self.repeat = repeat
        self.budget = budget
        self.env = Environment(workers, images.npz)
        self.workdir = workdir
        self.cifar = cifar
        self.cifar_train = cifar_train
        self.kernel_count = kernel_count
        self.random_batches = random_batches
        self.progress = progress or (lambda text: None)
        self.rows = []
        self.kernels = None
        self.wall = {}  # seconds spent in each experiment, untimed parts included
        self._previous = {}

    # the plan -------------------------------------------------------------

    def _grid(self, grid):
        return [e for e in self.experiments if e.grid == grid]

    def steps(self):
        """The number of steps :meth:`run` reports to ``progress``."""
        one = len(self._grid("one")) * len(self.methods)
        per_cutoff = len(self._grid("cutoff")) * len(self.methods) * len(self.cutoffs)
        # The memory experiment reports each of its five conversions.
        alone = sum(6 if e.name == "memory" else 1 for e in self._grid("alone"))
        return one + per_cutoff + alone

    def run(self):
        """Run every selected experiment; returns the rows (also kept in ``rows``)."""
        if self._grid("one"):
            for method in self.methods:
                self._on_store(self._grid("one"), method, 1, one=True)
        if self._grid("cutoff"):
            for count in self.cutoffs:
                for method in self.methods:
                    self._on_store(self._grid("cutoff"), method, count)
        for alone in self._grid("alone"):
            self.progress(alone.name)
            self._run(alone)
        return self.rows

    def _run(self, exp, *args):
        started = time.perf_counter()
        self.rows += exp.run(self, *args)
        self.wall[exp.name] = self.wall.get(exp.name, 0.0) + time.perf_counter() - started

    def _on_store(self, chosen, method, count, one=False):
        """Write ``method``'s store of ``count`` images, run ``chosen`` on it, check it, remove it."""
        path = os.path.join(self.workdir, f"{method.name}-{'one' if one else count}{method.suffix}")
        images, labels = self.images.images[:count], self.images.labels[:count]
        store_first = "store-one" if one else "store-many"
        try:
            if store_first not in (e.name for e in chosen):
                self._store(method, path, count, one)
            for exp in chosen:
                self.progress(f"{exp.name} {method.name} {count:,}")
                self._run(exp, method, path, count)
            if one or "read-many" not in (e.name for e in chosen):
                self.check(method.read_all(path, count, self.env), images, labels, f"{method.name} read_all", count)
        finally:
            remove_path(path)

    # helpers for experiments ----------------------------------------------

    def _store(self, method, path, count, one):
        images, labels = self.images.images[:count], self.images.labels[:count]
        if one:
            method.store_one(path, images, labels)
        else:
            method.store(path, images, labels, self.env)

    def time(self, key, count, run, setup=None, repeat=None, warmup=None):
        """Measure ``run`` (see :func:`~imgconv.bench.timing.measure`) with the harness's repeats and budget.

        ``key`` names the measurement across cutoffs: unless ``warmup`` is
        given, a warm-up run is made when the same measurement at the previous
        cutoff, scaled to ``count``, predicts less than ``WARMUP_LIMIT``
        seconds (and at the first cutoff).
        """
        previous = self._previous.get(key)
        if warmup is None:
            warmup = 1 if previous is None or previous[1] * count / previous[0] < WARMUP_LIMIT else 0
        timed = measure(run, repeat or self.repeat, warmup=warmup, setup=setup, budget=self.budget)
        self._previous[key] = (count, timed.median)
        return timed

    def check(self, got, images, labels, what, count):
        """Raise BenchCheckError unless ``got`` is ``(images, labels)``."""
        if not same_data(got, images, labels):
            raise BenchCheckError(f"{what} of {count:,} images returned wrong pixels or labels: the run fails")

    def row(self, experiment_name, method, count, timed=None, **extra):
        """A result row for ``method`` at ``count`` images (``timed``: a Measurement)."""
        row = {"experiment": experiment_name, "method": method.name, "format": method.format,
               "family": method.family, "images": count}
        if timed is not None:
            row.update(seconds=timed.median, runs=len(timed.times), warmup=timed.warmup, times=timed.times)
        row.update(extra)
        return row


# --------------------------------------------------------------------------- the experiments


@experiment("store-one", "store one image (median time)", "one")
def store_one(harness, method, path, count):
    """Write a store holding one image (a new store each run)."""
    images, labels = harness.images.images[:1], harness.images.labels[:1]
    timed = harness.time(("store-one", method.name), 1, lambda: method.store_one(path, images, labels),
                         setup=lambda: remove_path(path), repeat=max(harness.repeat, ONE_IMAGE_REPEAT))
    return [harness.row("store-one", method, 1, timed)]


@experiment("read-one", "read one image: open, read, close (median time)", "one")
def read_one(harness, method, path, count):
    """Open the one-image store, read its image, close it: the classic single read."""

    def run():
        reader = method.open_reader(path, 1)
        try:
            return reader.read_one(0)
        finally:
            reader.close()

    timed = harness.time(("read-one", method.name), 1, run, repeat=max(harness.repeat, ONE_IMAGE_REPEAT))
    image, label = timed.result
    harness.check((image[np.newaxis], np.array([label])), harness.images.images[:1], harness.images.labels[:1],
                  f"{method.name} read one", 1)
    return [harness.row("read-one", method, 1, timed)]


@experiment("store-many", "store many images (median time)", "cutoff")
def store_many(harness, method, path, count):
    """Write ``count`` images as a new store (removed before each run)."""
    images, labels = harness.images.images[:count], harness.images.labels[:count]
    timed = harness.time(("store-many", method.name), count,
                         lambda: method.store(path, images, labels, harness.env), setup=lambda: remove_path(path))
    return [harness.row("store-many", method, count, timed, per_image_us=timed.median / count * 1e6)]


@experiment("read-many", "read every image into one array (median time)", "cutoff")
def read_many(harness, method, path, count):
    """Read the whole store back into memory; the last run's result is checked."""
    timed = harness.time(("read-many", method.name), count, lambda: method.read_all(path, count, harness.env))
    harness.check(timed.result, harness.images.images[:count], harness.images.labels[:count],
                  f"{method.name} read", count)
    return [harness.row("read-many", method, count, timed, per_image_us=timed.median / count * 1e6)]


def _random_indices(count, shape):
    return np.random.default_rng(SEED).integers(0, count, shape)


def _random_reads(harness, name, method, path, count, indices, read):
    """Time ``read(reader, indices)`` on an open reader; check what it returned for every index."""
    reader = method.open_reader(path, count)
    try:
        timed = harness.time((name, method.name), count, lambda: read(reader, indices))
    finally:
        reader.close()
    images, labels = harness.images.images, harness.images.labels
    for got, idx in zip(timed.result, indices):
        harness.check(got, images[idx], labels[idx], f"{method.name} {name}", count)
    reads = indices.size
    return [harness.row(name, method, count, timed, reads=reads, per_image_us=timed.median / reads * 1e6)]


@experiment("random-batch", f"random access: batches of {RANDOM_BATCH_SIZE} random images, store open (median time)",
            "cutoff")
def random_batch(harness, method, path, count):
    """Shuffled training's reads: batches of random indices from a store opened once."""
    indices = _random_indices(count, (harness.random_batches, RANDOM_BATCH_SIZE))
    return _random_reads(harness, "random-batch", method, path, count, indices,
                         lambda reader, idx: [reader.read_batch(batch) for batch in idx])


@experiment("random-one", "random access: single random images, store open (median time)", "cutoff")
def random_one(harness, method, path, count):
    """A ``Dataset.__getitem__``'s reads: one random image at a time from a store opened once."""
    indices = _random_indices(count, (harness.random_batches * RANDOM_BATCH_SIZE, 1))

    def read(reader, idx):
        pairs = [reader.read_one(int(i)) for i in idx[:, 0]]
        return [(image[np.newaxis], np.array([label])) for image, label in pairs]

    return _random_reads(harness, "random-one", method, path, count, indices, read)


@experiment("disk", "disk use (MB, and the ratio to the raw pixel bytes)", "cutoff")
def disk(harness, method, path, count):
    """Bytes on disk: the files' sizes (and the filesystem blocks they take)."""
    apparent, allocated = disk_bytes(path)
    raw = harness.images.images[:count].nbytes
    return [harness.row("disk", method, count, bytes=apparent, allocated_bytes=allocated, raw_bytes=raw,
                        disk_ratio=apparent / raw)]


@experiment("kernels", "compiled kernels against NumPy and pickle", "alone")
def kernel_experiment(harness):
    """CHW-to-HWC against NumPy's transpose-copy and a memcpy; record pack and unpack against pickle."""
    try:
        times, comparisons = kernels.run(harness.kernel_count, harness.repeat)
    except AssertionError as exc:
        raise BenchCheckError(f"kernels: {exc}") from None
    harness.kernels = {"images": harness.kernel_count, "seconds": times, "comparisons": comparisons}
    return [{"experiment": "kernels", "method": name, "format": None, "family": None,
             "images": harness.kernel_count, "seconds": seconds} for name, seconds in times.items()]


@experiment("convert", "a CIFAR-10 python .tar.gz (or directory) to LMDB, end to end", "alone")
def convert_experiment(harness):
    """The classic CIFAR-to-LMDB recipe against ``imgconv.convert(archive, dest.lmdb)``, the training split."""
    archive = harness.cifar
    expected, expected_labels = harness.cifar_train or imgconv.load(archive, split="train", workers=0)
    count = len(expected_labels)
    classic_path = os.path.join(harness.workdir, "convert-classic.lmdb")
    ours_path = os.path.join(harness.workdir, "convert-imgconv.lmdb")
    try:
        # Seconds per run: no warm-up (the archive was just read, so its pages are cached anyway).
        timed_classic = harness.time(("convert", "classic"), count,
                                     lambda: classic.classic_cifar_to_lmdb(archive, classic_path),
                                     setup=lambda: remove_path(classic_path), warmup=0)
        if timed_classic.result != count:
            raise BenchCheckError(f"{archive}: the classic recipe converted {timed_classic.result:,} training images, "
                                  f"imgconv reads {count:,}: the run fails")
        harness.check(classic.read_lmdb_pickles(classic_path, count), expected, expected_labels,
                      "the classic CIFAR-to-LMDB recipe", count)
        remove_path(classic_path)
        timed_ours = harness.time(("convert", "imgconv"), count,
                                  lambda: imgconv.convert(archive, ours_path, split="train",
                                                           workers=harness.env.workers),
                                  setup=lambda: remove_path(ours_path), warmup=0)
        with imgconv.open(ours_path) as store:
            harness.check(store.read_all(), expected, expected_labels, "imgconv.convert(archive, lmdb)", count)
    finally:
        remove_path(classic_path)
        remove_path(ours_path)
    return [harness.row("convert", METHODS["classic-lmdb"], count, timed_classic, source=archive),
            harness.row("convert", METHODS["lmdb"], count, timed_ours, source=archive,
                        workers=harness.env.workers)]


@experiment("memory", "peak memory of python -m imgconv convert, process tree (opt-in: slow)", "alone")
def memory_experiment(harness):
    """Peak memory converting the largest cutoff's images to each format, and ten times as many to LMDB and HDF5."""
    count = max(harness.cutoffs)
    tile = harness.images.images[:count]
    plan = {count: ("png", "lmdb", "hdf5"), 10 * count: ("lmdb", "hdf5")}
    found = memory.measure(tile, harness.workdir, plan, harness.env.workers, harness.progress)
    rows = [harness.row("memory", METHODS[f["format"]], f["images"], **f) for f in found]
    small = {row["format"]: row for row in rows if row["images"] == count}
    for row in rows:
        if row["images"] > count:
            row["growth"] = row["tree_anon_mb"] / small[row["format"]]["tree_anon_mb"]
    return rows


experiment("lmdb-layout", "LMDB records per value (opt-in)", "alone")(studies.lmdb_layout)
experiment("hdf5-layout", "HDF5 images per chunk (opt-in)", "alone")(studies.hdf5_layout)
experiment("png-level", "PNG compression level (opt-in)", "alone")(studies.png_level)
experiment("loader", "training loaders, one shuffled epoch each (opt-in)", "alone")(loader_bench.run)


# --------------------------------------------------------------------------- results


def add_speedups(rows):
    """Give each imgconv row the ratio classic time / imgconv time of the classic row it pairs with."""
    classic_rows = {(r["experiment"], r["format"], r["images"]): r for r in rows if r.get("family") == "classic"}
    for row in rows:
        partner = classic_rows.get((row["experiment"], row["format"], row["images"]))
        if row.get("family") == "imgconv" and partner and row.get("seconds") and partner.get("seconds"):
            row["speedup"] = partner["seconds"] / row["seconds"]
            row["classic_seconds"] = partner["seconds"]


def evaluate_targets(rows, kernel_figures):
    """Mark each target's row (``target``, ``status``) and return the targets as dicts, met or MISSED."""
    found = []
    for target in TARGETS:
        if target.experiment == "kernels":
            comparisons = {c["what"]: c for c in (kernel_figures or {}).get("comparisons", [])}
            hit = comparisons.get(target.method)
            value, images = (hit["ratio"], kernel_figures["images"]) if hit else (None, None)
            row = None
        else:
            candidates = [r for r in rows if r["experiment"] == target.experiment and r["method"] == target.method
                          and r.get(target.key) is not None]
            row = max(candidates, key=lambda r: r["images"]) if candidates else None
            value, images = (row[target.key], row["images"]) if row else (None, None)
        if value is None:
            continue
        met = value >= target.threshold if target.higher else value <= target.threshold
        status = "met" if met else "MISSED"
        if row is not None:
            row["target"], row["status"] = target.text, status
        found.append({"what": target.what, "experiment": target.experiment, "method": target.method,
                      "images": images, "value": f"{value:.2f}{target.unit}", "ratio": value, "target": target.text,
                      "met": met, "status": status})
    return found


# --------------------------------------------------------------------------- the command


def _names(known, groups):
    """An argparse type: one name of ``known`` or of ``groups``, or several joined by commas; returns a list."""

    def parse(text):
        chosen = []
        for part in filter(None, text.split(",")):
            if part not in known and part not in groups:
                raise argparse.ArgumentTypeError(f"unknown name {part!r}; known: {', '.join([*known, *groups])}")
            chosen += groups.get(part, [part])
        return chosen

    return parse


METHOD_GROUPS = {
    "all": list(METHODS),
    "imgconv": [name for name, m in METHODS.items() if m.family == "imgconv"],
    "classic": [name for name, m in METHODS.items() if m.family == "classic"],
}
DEFAULT_EXPERIMENTS = ("store-one", "read-one", "store-many", "read-many", "random-batch", "random-one", "disk",
                       "kernels", "convert")
EXPERIMENT_GROUPS = {"all": list(DEFAULT_EXPERIMENTS)}


def _cutoffs(text):
    try:
        values = sorted({int(v.replace("_", "")) for v in text.replace(",", " ").split()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of whole numbers: {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"cutoffs must be at least 1, got {text!r}")
    return values


def _positive_number(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text!r}")
        return value

    return parse


BENCH_EXAMPLE = """examples:
  python -m imgconv bench --quick                      # a first look, under 20 s
  python -m imgconv bench --out bench-results          # the whole experiment, 10 to 100,000 images
  python -m imgconv bench --tmp /dev/shm --methods lmdb classic-lmdb --cutoffs 1000,100000
  python -m imgconv bench --cifar cifar-10-python.tar.gz --experiments store-many read-many disk

experiments: """ + ", ".join(DEFAULT_EXPERIMENTS) + """
opt-in experiments: memory, lmdb-layout, hdf5-layout, png-level
methods: """ + ", ".join(METHODS) + """ (groups: imgconv, classic, all)
"""


def add_arguments(parser):
    """Add the bench command's arguments to ``parser``."""
    from ..convert import default_workers

    parser.epilog = BENCH_EXAMPLE
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--cifar", metavar="PATH",
                        help="a CIFAR-10 directory or .tar.gz to measure with (the training images, "
                             "repeated up to the largest cutoff) instead of the built-in sample")
    source.add_argument("--source", metavar="PATH", help="any source imgconv reads (images of one size)")
    parser.add_argument("--cutoffs", type=_cutoffs, default=None,
                        help="numbers of images, e.g. 10,100,1000 (default 10,100,1000,10000,100000)")
    parser.add_argument("--methods", nargs="+", type=_names(list(METHODS), METHOD_GROUPS), default=None,
                        metavar="NAME", help="methods to run (default all), e.g. lmdb classic-lmdb")
    parser.add_argument("--experiments", nargs="+", type=_names(list(EXPERIMENTS), EXPERIMENT_GROUPS),
                        default=None, metavar="NAME",
                        help="experiments to run (default all), e.g. store-many read-many disk")
    parser.add_argument("--repeat", type=_positive_number(int), default=DEFAULT_REPEAT,
                        help=f"timed runs per figure, the median is reported (default {DEFAULT_REPEAT})")
    parser.add_argument("--budget", type=_positive_number(float), default=None,
                        help=f"stop repeating a figure once its runs took this many seconds (default "
                             f"{DEFAULT_BUDGET:g}, --quick {QUICK_BUDGET:g}); at least one run is made")
    parser.add_argument("--workers", type=_positive_number(int), default=default_workers(),
                        help=f"worker processes of imgconv's PNG pool and conversion (default: the CPUs, here "
                             f"{default_workers()})")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help=f"where results.json, results.csv, table.txt and the plots go (default {DEFAULT_OUT})")
    parser.add_argument("--tmp", metavar="DIR", default=None,
                        help="where the measured stores are written (default: the system temp dir; "
                             "e.g. /dev/shm to take the disk out of the figures)")
    parser.add_argument("--cache", metavar="DIR", default=None,
                        help="where the built-in sample is kept between runs (default: imgconv-bench-cache "
                             "in the system temp dir)")
    parser.add_argument("--quick", action="store_true",
                        help="a first look in under 20 s: cutoffs 10,100,1000, a small budget and CIFAR sample")
    parser.add_argument("--no-plots", action="store_true", help="do not draw the plots")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _selection(args):
    """The chosen methods and experiments in the order they run (each once)."""
    methods = {name for names in (args.methods or [list(METHODS)]) for name in names}
    experiments = {name for names in (args.experiments or [DEFAULT_EXPERIMENTS]) for name in names}
    # Each format's classic method just before imgconv's, so both see the machine in the same state.
    ordered = sorted((METHODS[n] for n in methods), key=lambda m: (FORMATS.index(m.format), m.family != "classic"))
    return ordered, [e for e in EXPERIMENTS.values() if e.name in experiments]


def _progress_bar(total, quiet):
    """``(update(text), close())`` of a tqdm bar over the whole run on stderr; silent when not a terminal."""
    if quiet or not sys.stderr.isatty():
        return (lambda text: None), (lambda: None)
    from tqdm import tqdm

    bar = tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True, desc="imgconv bench")
    started = [False]

    def update(text):
        if started[0]:
            bar.update(1)
        started[0] = True
        bar.set_postfix_str(text)

    def close():
        if started[0]:
            bar.update(1)
        bar.close()

    return update, close


def run_bench(args):
    """Run the bench command for parsed ``args``; prints the table, writes the files; returns 0.

    Raises BenchCheckError when a method returns wrong data (results.json
    then records the failure).
    """
    started = time.perf_counter()
    methods, experiments = _selection(args)
    cutoffs = args.cutoffs or list(QUICK_CUTOFFS if args.quick else DEFAULT_CUTOFFS)
    budget = args.budget or (QUICK_BUDGET if args.quick else DEFAULT_BUDGET)
    cache = args.cache or os.path.join(tempfile.gettempdir(), "imgconv-bench-cache")
    os.makedirs(args.out, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="imgconv-bench-", dir=args.tmp)
    results = {
        "harness": "python -m imgconv bench", "schema": 1, "status": "running",
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": report.machine_info(), "versions": report.versions(),
    }
    try:
        if args.cifar and any(e.name == "convert" for e in experiments) and not classic.has_python_batches(args.cifar):
            raise inputs.BenchInputError(
                f"{args.cifar}: no python-version training batches (data_batch_1 ...): the conversion experiment "
                "times the classic recipe, which reads cifar-10-python.tar.gz or cifar-10-batches-py; "
                "choose --experiments without convert for this dataset")
        images = _image_set(args, max(cutoffs), cache, workdir)
        cifar = cifar_train = None
        if any(e.name == "convert" for e in experiments):
            cifar = args.cifar
            if cifar is None:
                sample_count = QUICK_CIFAR_COUNT if args.quick else CIFAR_COUNT
                cifar = inputs.cifar_archive(cache, sample_count)
                cifar_train = inputs.sample_train(sample_count, None if args.source else images)
        kernel_count = min(max(max(cutoffs), KERNEL_COUNTS[0]), KERNEL_COUNTS[1])
        random_batches = QUICK_RANDOM_BATCHES if args.quick else RANDOM_BATCHES
        results["parameters"] = {
            "input": images.description, "cutoffs": cutoffs, "methods": [m.name for m in methods],
            "experiments": [e.name for e in experiments], "repeat": args.repeat, "budget_seconds": budget,
            "warmup_below_seconds": WARMUP_LIMIT, "one_image_repeat": max(args.repeat, ONE_IMAGE_REPEAT),
            "workers": args.workers, "quick": args.quick, "cifar": cifar, "kernel_images": kernel_count,
            "random_batch": {"batches": random_batches, "batch_size": RANDOM_BATCH_SIZE, "seed": SEED},
            "random_one": {"reads": random_batches * RANDOM_BATCH_SIZE, "seed": SEED},
            "tmp": report.filesystem_of(workdir), "argv": sys.argv[1:],
        }
        harness = Harness(images, methods, experiments, cutoffs, repeat=args.repeat, budget=budget,
                          workers=args.workers, workdir=workdir, cifar=cifar, cifar_train=cifar_train,
                          kernel_count=kernel_count, random_batches=random_batches)
        update, close = _progress_bar(harness.steps(), args.quiet)
        harness.progress = update
        try:
            harness.run()
        finally:
            close()
            results["rows"] = harness.rows
            results["kernels"] = harness.kernels
            results["experiment_seconds"] = harness.wall
        results["status"] = "complete"
    except BaseException as exc:
        results["status"] = f"failed: {exc}" if str(exc) else f"failed: {type(exc).__name__}"
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        rows = results.setdefault("rows", [])
        add_speedups(rows)
        results["targets"] = evaluate_targets(rows, results.get("kernels"))
        results["seconds"] = time.perf_counter() - started
        results["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        report.write_json(os.path.join(args.out, "results.json"), results)
        report.write_csv(os.path.join(args.out, "results.csv"), rows)
    text = report.format_table(results, experiments)
    print(text, flush=True)
    with open(os.path.join(args.out, "table.txt"), "w") as f:
        f.write(text + "\n")
    written = ["results.json", "results.csv", "table.txt"]
    if not args.no_plots:
        written += _plots(results, args.out)
    print(f"\n{results['seconds']:.0f} s; wrote {', '.join(os.path.join(args.out, n) for n in written)}")
    return 0


def _plots(results, out):
    if importlib.util.find_spec("matplotlib") is None:
        print('no plots: matplotlib is not installed; to get them: pip install "imgconv[plot]"')
        return []
    from . import plots

    return plots.plot_results(results, out)


def _image_set(args, count, cache, workdir):
    if args.cifar:
        return inputs.loaded_set(args.cifar, count, workdir, args.workers, "CIFAR-10", split="train")
    if args.source:
        return inputs.loaded_set(args.source, count, workdir, args.workers, "the source")
    return inputs.sample_set(count, cache)
