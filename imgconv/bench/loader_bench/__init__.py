"""The training read path measured: ``python -m imgconv bench --experiments loader`` (opt-in; needs torch).

One shuffled epoch over the largest cutoff's images in batches of 256, for
every loader of :data:`~.sides.SIDES` (the floor, ``read_batch``, imgconv's
Loader, torch's DataLoader over imgconv's Dataset and over ``store[i]``,
LitData, the augmentations compiled, in torch operations and in
torchvision), timed side by side by the harness
(:meth:`~imgconv.bench.harness.Harness.side_by_side`): rounds in which every
loader runs one epoch, after a warm-up epoch each. A loader whose package is
missing (litdata, torchvision) is skipped with a one-line reason; a peer's
loader, or torch's DataLoader, whose worker processes crash is retired with
the reason; every epoch is checked (:mod:`.check`) and a wrong batch fails
the run.

"In its best setting" is a side of its own (:data:`BEST`): of the settings
measured (0 or 2 workers, 1 or 2 torch threads), the one with the lowest
median over the rounds (see ``side_by_side``). The targets are
``[[target]]`` entries of ``targets.toml`` naming the sides of :data:`PAIRS`,
set for 100,000 images and judged only there; the harness reruns a target's
two sides alternately until it is decided. The Loader's peak memory over an
epoch is measured apart (:func:`measure_memory`) against the bound its
read-ahead sets.
"""
from __future__ import annotations

import contextlib
import functools
import tracemalloc
from typing import Any, Dict, List, Tuple

from .. import report
from ..harness import Harness, Row, Trial, experiment
from ..methods import missing_modules
from ..timing import failure_text
from .check import EpochCheck
from .data import prepare
from .sides import BATCH_SIZE, SEED, SIDES, TORCH_THREADS, WORKER_SETTINGS, drain

# Sides that stand for the best of several settings (Harness.side_by_side's ``best``).
BEST: Dict[str, Tuple[str, ...]] = {
    "litdata-best": tuple(f"litdata-{w}w" for w in WORKER_SETTINGS),
    "dataloader-dataset-lmdb-best": tuple(f"dataloader-dataset-lmdb-{w}w" for w in WORKER_SETTINGS),
    "dataloader-dataset-hdf5-best": tuple(f"dataloader-dataset-hdf5-{w}w" for w in WORKER_SETTINGS),
    "torch-ops-lmdb-best": tuple(f"torch-ops-lmdb-{t}t" for t in TORCH_THREADS),
    "torch-ops-alone-best": tuple(f"torch-ops-alone-{t}t" for t in TORCH_THREADS),
    "torchvision-lmdb-best": tuple(f"torchvision-lmdb-{w}w" for w in WORKER_SETTINGS),
}

# (baseline, side) compared round by round: the targets' pairs, then those that explain them.
PAIRS: Tuple[Tuple[str, str], ...] = (
    ("litdata-best", "loader-lmdb"), ("litdata-best", "loader-hdf5"),
    ("dataloader-dataset-lmdb-best", "loader-lmdb"), ("dataloader-dataset-hdf5-best", "loader-hdf5"),
    ("floor", "loader-lmdb"), ("floor", "loader-hdf5"),
    ("torch-ops-lmdb-best", "augment-lmdb"), ("torchvision-lmdb-best", "augment-lmdb"),
    ("dataloader-items-png-2w", "loader-png"),
    ("floor", "read_batch-lmdb"), ("floor", "read_batch-hdf5"),
    ("read_batch-lmdb", "loader-lmdb"), ("read_batch-hdf5", "loader-hdf5"),
    ("loader-lmdb", "loader-lmdb-2threads"), ("loader-hdf5", "loader-hdf5-2threads"),
    ("torch-ops-alone-best", "augment-alone"),
)
MEMORY_SIDE = "loader-memory"
PREFETCH = 4  # the Loader's default read-ahead, measured for memory

TITLE = f"training loaders: one shuffled epoch each, batches of {BATCH_SIZE}, side by side (opt-in)"


def measure_memory(path: str, count: int, image_bytes: int, prefetch: int = PREFETCH,
                   threads: int = 1) -> Dict[str, Any]:
    """Peak traced allocations (NumPy's, through tracemalloc) of one Loader epoch over the store at ``path``
    (``count`` images of ``image_bytes``), uint8 batches dropped as they come, against the bound its
    read-ahead sets.

    The bound: ``prefetch`` batches read ahead, ``threads`` being read, one
    held by the loop and one spare, plus the epoch's order (random keys and
    their permutation, 16 bytes an image, which every shuffling loader has).
    """
    from ...torch import Loader

    with Loader(path, BATCH_SIZE, seed=SEED, prefetch=prefetch, threads=threads) as loader:
        drain(loader, None)  # warm: imports, the first buffers
        tracemalloc.start()
        try:
            drain(((None, labels) for _, labels in loader), None)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    batch_bytes = BATCH_SIZE * image_bytes
    bound = (prefetch + threads + 2) * batch_bytes + 16 * count
    return {"peak_mb": peak / 1e6, "bound_mb": bound / 1e6, "batch_mb": batch_bytes / 1e6,
            "store_mb": count * batch_bytes / BATCH_SIZE / 1e6, "peak_over_bound": peak / bound,
            "prefetch": prefetch, "threads": threads}


def _memory_row(harness: Harness, path: str, count: int) -> Row:
    found = measure_memory(path, count, harness.images.images[0].nbytes)
    summary = (f"peak {found['peak_mb']:.1f} MB over an epoch against a bound of {found['bound_mb']:.1f} MB "
               f"({found['prefetch']} read ahead + {found['threads']} being read + 2 batches of "
               f"{found['batch_mb']:.2f} MB, and the order); the store holds {found['store_mb']:,.0f} MB")
    return harness.row("loader", MEMORY_SIDE, count, title="LMDB: imgconv Loader, peak traced memory of an epoch",
                       format="lmdb", family="imgconv", summary=summary, **found)


@experiment("loader", TITLE, "alone", default=False, requires=("torch",), install='pip install "imgconv[torch]"',
            sides=(*(side.name for side in SIDES), *BEST, MEMORY_SIDE), table=report.sides_table)
def loader_experiment(harness: Harness) -> List[Row]:
    """Every loader of :data:`~.sides.SIDES` on the largest cutoff's images, side by side; then the
    Loader's peak memory. Returns the rows (one per side and best-of side, and the memory row)."""
    count = max(harness.cutoffs)
    images, labels = harness.images.images[:count], harness.images.labels[:count]
    harness.parameters["loader"] = {"images": count, "batch_size": BATCH_SIZE, "seed": SEED,
                                    "best": {name: list(settings) for name, settings in BEST.items()},
                                    "best_is": "the setting with the lowest median over the rounds",
                                    "torch": _version("torch"), "torchvision": _version("torchvision"),
                                    "litdata": _version("litdata")}
    check = EpochCheck(images, labels)
    with contextlib.ExitStack() as stack:
        data = prepare(harness.workdir, images, labels, harness.env, stack, harness.note)
        trials: Dict[str, Trial] = {}
        for side in SIDES:
            fields = {"title": side.title, "format": side.format, "family": side.family, "batch_size": BATCH_SIZE}
            reason = missing_modules(side.requires, side.install)
            if reason is None and side.format == "litdata" and data.litdata_error:
                reason = data.litdata_error
            if reason is not None:
                trials[side.name] = Trial.unavailable(reason, fields)
                continue
            harness.note(f"loader: starting {side.name}")
            try:
                epoch = side.make(data, stack)
            except Exception as exc:
                if not side.fallible:
                    raise
                trials[side.name] = Trial.unavailable(f"could not start: {failure_text(exc)}", fields)
                continue
            trials[side.name] = Trial(epoch, check=functools.partial(check, side), fallible=side.fallible,
                                      per=count, fields=fields)
        rows = harness.side_by_side("loader", count, trials, PAIRS, best=BEST)
        harness.note("loader: peak memory")
        rows.append(_memory_row(harness, data.lmdb, count))
    return rows


def _version(module: str) -> object:
    if missing_modules((module,)) is not None:
        return None
    return getattr(__import__(module), "__version__", None)


__all__ = ["BEST", "PAIRS", "loader_experiment", "measure_memory"]
