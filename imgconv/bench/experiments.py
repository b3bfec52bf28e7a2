"""The built-in experiments, registered in the order they run (see :mod:`imgconv.bench.harness`).

On the grids, each returns what to time for one method (a :class:`Trial`),
and the harness times the methods of a group side by side: ``store-one``,
``read-one`` (a one-image store), ``store-many``, ``read-many``,
``random-batch``, ``random-one`` and ``disk`` (each cutoff). Alone:
``kernels`` (:mod:`imgconv.bench.kernel_bench`), ``convert`` (a CIFAR-10
archive to LMDB, end to end), and the opt-in ``memory``
(:mod:`imgconv.bench.memory`) and layout studies
(:mod:`imgconv.bench.studies`).
"""
from __future__ import annotations

import os
from typing import Any, Callable, List, Tuple

import numpy as np

import imgconv

from ..pipeline.plan import DEFAULT_BATCH_BYTES
from . import classic, kernel_bench, memory, report, studies
from .harness import Experiment, Harness, Row, Trial, experiment, register_experiment
from .internals import remove_path
from .methods import METHODS, BenchCheckError, Method

ONE_IMAGE_REPEAT = 11  # single-image operations are short: more runs for a steady median
RANDOM_BATCH_SIZE = 64
RANDOM_BATCHES, QUICK_RANDOM_BATCHES = 16, 4  # per timed run; the single reads are as many images
KERNEL_COUNTS = (5_000, 100_000)  # kernels run on the largest cutoff, kept within these
SEED = 1


def _data(harness: Harness, count: int) -> Tuple[np.ndarray, np.ndarray]:
    return harness.images.images[:count], harness.images.labels[:count]


# --------------------------------------------------------------------------- one image


@experiment("store-one", "store one image (median time)", "one", needs=("store_one",))
def store_one(harness: Harness, method: Method, path: str, count: int) -> Trial:
    """Write a store holding one image (a new store each run)."""
    images, labels = _data(harness, 1)
    store = method.store_one
    assert store is not None  # the harness runs an experiment only for the methods with what it needs
    return Trial(lambda: store(path, images, labels), setup=lambda: remove_path(path), repeat=ONE_IMAGE_REPEAT)


@experiment("read-one", "read one image: open, read, close (median time)", "one",
            needs=("store_one", "open_reader"))
def read_one(harness: Harness, method: Method, path: str, count: int) -> Trial:
    """Open the one-image store, read its image, close it: the classic single read."""
    open_reader = method.open_reader
    assert open_reader is not None

    def run() -> Tuple[np.ndarray, Any]:
        reader = open_reader(path, 1)
        try:
            return reader.read_one(0)
        finally:
            reader.close()

    def check(got: Tuple[np.ndarray, Any]) -> None:
        image, label = got
        harness.check((image[np.newaxis], np.array([label])), *_data(harness, 1), f"{method.name} read one", 1)

    return Trial(run, check=check, repeat=ONE_IMAGE_REPEAT)


# --------------------------------------------------------------------------- each cutoff


@experiment("store-many", "store many images (median time)", "cutoff", needs=("store",))
def store_many(harness: Harness, method: Method, path: str, count: int) -> Trial:
    """Write ``count`` images as a new store (removed before each run)."""
    images, labels = _data(harness, count)
    store = method.store
    assert store is not None
    return Trial(lambda: store(path, images, labels, harness.env), setup=lambda: remove_path(path), per=count)


@experiment("read-many", "read every image into one array (median time)", "cutoff", needs=("read_all",))
def read_many(harness: Harness, method: Method, path: str, count: int) -> Trial:
    """Read the whole store back into memory; every run's result is checked."""
    images, labels = _data(harness, count)
    read_all = method.read_all
    assert read_all is not None
    return Trial(lambda: read_all(path, count, harness.env),
                 check=lambda got: harness.check(got, images, labels, f"{method.name} read", count), per=count)


def random_batches(harness: Harness) -> int:
    """Batches per timed run of ``random-batch`` (and reads of ``random-one`` over 64)."""
    return QUICK_RANDOM_BATCHES if harness.quick else RANDOM_BATCHES


def _random_indices(count: int, shape: Tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(SEED).integers(0, count, shape)


def _random_reads(harness: Harness, name: str, method: Method, path: str, count: int, indices: np.ndarray,
                  read: Callable[[Any, np.ndarray], List[Tuple[np.ndarray, np.ndarray]]]) -> Trial:
    """Time ``read(reader, indices)`` on a reader opened once; check what it returned for every index."""
    images, labels = harness.images.images, harness.images.labels

    def check(got: List[Tuple[np.ndarray, np.ndarray]]) -> None:
        for pair, idx in zip(got, indices):
            harness.check(pair, images[idx], labels[idx], f"{method.name} {name}", count)

    assert method.open_reader is not None
    reader = method.open_reader(path, count)
    harness.parameters[name] = {"reads": int(indices.size), "batch_size": int(indices.shape[1]), "seed": SEED}
    return Trial(lambda: read(reader, indices), check=check, close=reader.close, per=indices.size,
                 fields={"reads": int(indices.size)})


@experiment("random-batch", f"random access: batches of {RANDOM_BATCH_SIZE} random images, store open (median time)",
            "cutoff", needs=("open_reader",))
def random_batch(harness: Harness, method: Method, path: str, count: int) -> Trial:
    """Shuffled training's reads: batches of random indices from a store opened once."""
    indices = _random_indices(count, (random_batches(harness), RANDOM_BATCH_SIZE))
    return _random_reads(harness, "random-batch", method, path, count, indices,
                         lambda reader, idx: [reader.read_batch(batch) for batch in idx])


@experiment("random-one", "random access: single random images, store open (median time)", "cutoff",
            needs=("open_reader",))
def random_one(harness: Harness, method: Method, path: str, count: int) -> Trial:
    """A ``Dataset.__getitem__``'s reads: one random image at a time from a store opened once."""
    indices = _random_indices(count, (random_batches(harness) * RANDOM_BATCH_SIZE, 1))

    def read(reader: Any, idx: np.ndarray) -> List[Tuple[np.ndarray, np.ndarray]]:
        pairs = [reader.read_one(int(i)) for i in idx[:, 0]]
        return [(image[np.newaxis], np.array([label])) for image, label in pairs]

    return _random_reads(harness, "random-one", method, path, count, indices, read)


def disk_bytes(path: str) -> Tuple[int, int]:
    """``(apparent, allocated)`` bytes of the file or directory tree at ``path``.

    Apparent is the sum of the file sizes; allocated counts the filesystem
    blocks (``st_blocks``), which is what a folder of many small files costs.
    """
    paths = [path] if os.path.isfile(path) else [
        os.path.join(root, name) for root, _, names in os.walk(path) for name in names
    ]
    apparent = allocated = 0
    for file in paths:
        info = os.stat(file)
        apparent += info.st_size
        allocated += info.st_blocks * 512
    return apparent, allocated


@experiment("disk", "disk use (MB, and the ratio to the raw pixel bytes)", "cutoff", needs=("store",))
def disk(harness: Harness, method: Method, path: str, count: int) -> List[Row]:
    """Bytes on disk: the files' sizes (and the filesystem blocks they take)."""
    apparent, allocated = disk_bytes(path)
    raw = harness.images.images[:count].nbytes
    return [harness.row("disk", method, count, bytes=apparent, allocated_bytes=allocated, raw_bytes=raw,
                        disk_ratio=apparent / raw)]


# --------------------------------------------------------------------------- alone


def kernel_count(harness: Harness) -> int:
    """Images of the kernel experiment: the largest cutoff, kept within ``KERNEL_COUNTS``."""
    return min(max(max(harness.cutoffs), KERNEL_COUNTS[0]), KERNEL_COUNTS[1])


@experiment("kernels", "compiled kernels against NumPy and pickle", "alone", table=report.kernel_table,
            sides=tuple(name for _, ours, base, _ in kernel_bench.COMPARISONS for name in (ours, base)))
def kernel_experiment(harness: Harness) -> List[Row]:
    """CHW-to-HWC against NumPy's transpose-copy and a memcpy; record pack and unpack against pickle; CRC32C.

    The sides of each kernel are timed side by side; ``harness.kernels`` gets
    the medians by title and the comparisons (as ``kernel_bench.run`` reports them).
    """
    count = kernel_count(harness)
    images = kernel_bench._random_images(count)
    labels = np.arange(count, dtype=np.int64) % 10
    rows: List[Row] = []
    titles, ratios = {}, {}
    first = len(harness.comparisons)
    try:
        for sides in kernel_bench.groups(images, labels):
            trials = {name: Trial(side.run, side.setup, side.check, fields={"title": title})
                      for name, (title, side) in sides.items()}
            titles.update({name: title for name, (title, _) in sides.items()})
            rows += harness.side_by_side("kernels", count, trials, kernel_bench.pairs_within(sides))
    except AssertionError as exc:
        raise BenchCheckError(f"kernels: {exc}") from None
    for c in harness.comparisons[first:]:
        ratios[(c["baseline"], c["method"])] = c["ratios"]
    harness.kernels = {"images": count, "seconds": {row["title"]: row["seconds"] for row in rows},
                       "comparisons": kernel_bench.compare(ratios, titles, count, harness.targets)}
    return rows


@experiment("convert", "a CIFAR-10 python .tar.gz (or directory) to LMDB, end to end", "alone",
            table=report.convert_table)
def convert_experiment(harness: Harness) -> List[Row]:
    """The classic CIFAR-to-LMDB recipe against ``imgconv.convert(archive, dest.lmdb)``, the training split.

    ``harness.options`` gives the ``cifar`` archive or directory and, when
    known, ``cifar_train``: its training images and labels (else they are read
    with ``imgconv.load``) to check both conversions against.
    """
    archive = harness.options["cifar"]
    expected, expected_labels = harness.options.get("cifar_train") or imgconv.load(archive, split="train", workers=0)
    if not isinstance(expected, np.ndarray):  # CIFAR images are all 32x32: one array, never a list
        raise BenchCheckError(f"{archive}: its training images are not of one shape: not a CIFAR archive")
    count = len(expected_labels)
    harness.parameters["cifar"] = archive
    classic_path = os.path.join(harness.workdir, "convert-classic.lmdb")
    ours_path = os.path.join(harness.workdir, "convert-imgconv.lmdb")

    def check_classic(converted: int) -> None:
        if converted != count:
            raise BenchCheckError(f"{archive}: the classic recipe converted {converted:,} training images, "
                                  f"imgconv reads {count:,}: the run fails")
        harness.check(classic.read_lmdb_pickles(classic_path, count), expected, expected_labels,
                      "the classic CIFAR-to-LMDB recipe", count)

    def check_ours(_: Any) -> None:
        with imgconv.open(ours_path) as store:
            harness.check(store.read_all(), expected, expected_labels, "imgconv.convert(archive, lmdb)", count)

    # Seconds per run: no warm-up (the archive was just read, so its pages are cached anyway).
    trials = {
        "classic-lmdb": Trial(lambda: classic.classic_cifar_to_lmdb(archive, classic_path),
                              setup=lambda: remove_path(classic_path), check=check_classic, warmup=0,
                              fields={"source": archive}),
        "lmdb": Trial(lambda: imgconv.convert(archive, ours_path, split="train", workers=harness.env.workers),
                      setup=lambda: remove_path(ours_path), check=check_ours, warmup=0,
                      fields={"source": archive, "workers": harness.env.workers}),
    }
    try:
        return harness.side_by_side("convert", count, trials, [("classic-lmdb", "lmdb")])
    finally:
        remove_path(classic_path)
        remove_path(ours_path)


@experiment("memory", "peak memory of python -m imgconv convert, process tree (opt-in: slow)", "alone",
            default=False, steps=10, table=report.memory_table)
def memory_experiment(harness: Harness) -> List[Row]:
    """Peak memory converting the largest cutoff's images to each format, ten times as many to LMDB and HDF5,
    and a folder of large photos (``--memory-photos``) to each format with default settings, against its bound."""
    count = max(harness.cutoffs)
    tile = harness.images.images[:count]
    plan = {count: ("png", "lmdb", "hdf5"), 10 * count: ("lmdb", "hdf5")}
    found = memory.measure(tile, harness.workdir, plan, harness.env.workers, harness.progress)
    rows = [harness.row("memory", METHODS[f["format"]], f["images"], source="npy", **f) for f in found]
    small = {row["format"]: row for row in rows if row["images"] == count}
    for row in rows:
        if row["images"] > count:
            row["growth"] = row["tree_anon_mb"] / small[row["format"]]["tree_anon_mb"]
    photos, size = harness.options.get("memory_photos", memory.DEFAULT_PHOTOS)
    found = memory.measure_photos(harness.workdir, photos, size, ("png", "lmdb", "hdf5"), harness.env.workers,
                                  DEFAULT_BATCH_BYTES, harness.progress)
    rows += [harness.row("memory", METHODS[f["format"]], f["images"], **f) for f in found]
    return rows


for _name, _title, _run in (("lmdb-layout", "layout study: LMDB records per value (opt-in)", studies.lmdb_layout),
                            ("hdf5-layout", "layout study: HDF5 images per chunk (opt-in)", studies.hdf5_layout),
                            ("png-level", "layout study: PNG compression level (opt-in)", studies.png_level)):
    register_experiment(Experiment(_name, _title, "alone", _run, default=False, table=report.study_table))
