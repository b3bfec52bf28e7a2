"""The training read path measured: ``python -m imgconv bench --experiments loader``.

One shuffled epoch over the largest cutoff's images (100,000 by default) in
batches of 256, for each loader below, side by side: every loader's epochs
are timed in turn, round after round (a warm-up epoch first), so they all see
the machine in the same state; each figure is the median of the rounds, with
the fastest and slowest. Every epoch is checked: it must yield every image
once (count and sum of labels), and the imgconv loaders' first batches must
hold the right pixels.

Loaders (one function each, returning a function that runs one epoch):

- the floor: a NumPy memmap of the images gathered per batch in the main
  process (:func:`floor_memmap`); ``store.read_batch`` per batch in the main
  process (:func:`read_batch_loop`);
- ``imgconv.torch.Loader`` on LMDB, HDF5 and a PNG folder (:func:`imgconv_loader`);
- torch's DataLoader over ``imgconv.torch.Dataset`` with its BatchSampler
  (:func:`dataloader_dataset`) and over the obvious per-image Dataset
  (``store[i]``, :func:`dataloader_items`), with 0 and 2 workers;
- LitData's StreamingDataLoader over the same images optimised into its
  chunks, 0 and 2 workers (:func:`litdata_loader`), when ``litdata`` imports;
- the CIFAR augmentations to normalised float32 NCHW: the Loader with
  :class:`imgconv.augment.CropFlipNormalize`, the same pipeline in torch
  tensor operations on each batch (:func:`torch_ops_augment`), and
  torchvision's per-image transforms in a DataLoader
  (:func:`torchvision_per_image`), when ``torchvision`` imports; and the two
  batch pipelines alone on batches in memory, to show what reading adds
  (:func:`augment_alone`, :func:`torch_ops_alone`).

A loader whose package is missing is skipped with a one-line reason. The
targets are data (:data:`TARGETS`): ratios of medians between two rows. The
peak memory of the Loader over an epoch (traced NumPy allocations) is
measured apart and set against its read-ahead bound.
"""
from __future__ import annotations

import importlib.util
import os
import statistics
import time
import tracemalloc
from collections import namedtuple
from typing import Callable, Dict, List, Tuple

import numpy as np

import imgconv

from .._platform import remove_path
from ..epochs import epoch_order
from .harness import experiment
from .methods import BenchCheckError

BATCH_SIZE = 256
SEED = 0
WORKER_SETTINGS = (0, 2)
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
LITDATA_CHUNK_BYTES = "64MB"

Epoch = Callable[[], Tuple[int, int]]  # runs one epoch; returns (images, sum of labels)
Loader = namedtuple("Loader", "name title group make")
Loader.__doc__ = """One measured loader: ``name`` (the row's method), ``title`` (what it is),
``group`` (rows compared in a target share one), ``make(paths)`` returns an
:data:`Epoch` function, or raises :class:`Skipped`."""

Target = namedtuple("Target", "what ours baseline kind threshold text")
Target.__doc__ = """A target: ``kind`` "faster" wants ``baseline``'s median over ``ours``' at
least ``threshold``; "within" wants ``ours``' over ``baseline``'s at most
``threshold``. Each side names one loader, or several joined by "|": the best
of them (a peer in its best setting, imgconv in its best)."""


class Skipped(Exception):
    """A loader that cannot run here (a package missing); the message says why, in one line."""


def _need(module: str, why: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise Skipped(f"{module} is not installed ({why}; pip install {module})")


# --------------------------------------------------------------------------- the data on disk


def prepare(workdir: str, images: np.ndarray, labels: np.ndarray, workers: int, progress) -> Dict[str, str]:
    """Write the images as a .npy, LMDB, HDF5, a PNG folder and (when litdata imports) LitData chunks."""
    paths = {"npy": os.path.join(workdir, "loader-images.npy"), "labels": os.path.join(workdir, "loader-labels.npy"),
             "lmdb": os.path.join(workdir, "loader.lmdb"), "hdf5": os.path.join(workdir, "loader.h5"),
             "png": os.path.join(workdir, "loader-png"), "litdata": os.path.join(workdir, "loader-litdata")}
    np.save(paths["npy"], images)
    np.save(paths["labels"], labels)
    for fmt in ("lmdb", "hdf5"):
        progress(f"loader: writing {fmt}")
        with imgconv.create(paths[fmt]) as writer:
            for start in range(0, len(labels), 10_000):
                writer.append(images[start : start + 10_000], labels[start : start + 10_000])
    progress("loader: writing png")
    _write_png(paths, images, labels, workers)
    if importlib.util.find_spec("litdata") is not None:
        progress("loader: optimising for litdata")
        _write_litdata(paths, len(labels), workers)
    return paths


def _write_png(paths, images, labels, workers):
    npz = paths["npy"][:-4] + ".npz"
    np.savez(npz, images=images, labels=labels)
    try:
        imgconv.convert(npz, paths["png"], workers=workers)
    finally:
        os.unlink(npz)


_LITDATA_SOURCE = {}


def _litdata_item(i):
    images, labels = _LITDATA_SOURCE["arrays"]
    return {"image": np.ascontiguousarray(images[i]), "label": int(labels[i])}


def _litdata_start(paths):
    _LITDATA_SOURCE["arrays"] = (np.load(paths["npy"], mmap_mode="r"), np.load(paths["labels"]))


def _write_litdata(paths, count, workers):
    import litdata

    _litdata_start(paths)
    litdata.optimize(fn=_litdata_item, inputs=list(range(count)), output_dir=paths["litdata"],
                     chunk_bytes=LITDATA_CHUNK_BYTES, num_workers=max(1, workers), verbose=False,
                     start_method="fork")


# --------------------------------------------------------------------------- the loaders


def _count(batches) -> Tuple[int, int]:
    images = total = 0
    for batch in batches:
        labels = batch[1] if isinstance(batch, (tuple, list)) else batch["label"]
        images += len(labels)
        total += int(labels.sum())
    return images, total


def floor_memmap(paths) -> Epoch:
    """The floor: a NumPy memmap of the images, gathered per batch in the main process, as tensors."""
    import torch

    images = np.load(paths["npy"], mmap_mode="r")
    labels = np.load(paths["labels"])
    epochs = iter(range(1 << 30))

    def epoch():
        order = epoch_order(len(labels), SEED, next(epochs))

        def batches():
            for start in range(0, len(order), BATCH_SIZE):
                index = order[start : start + BATCH_SIZE]
                yield torch.from_numpy(images[index]), torch.from_numpy(labels[index])

        return _count(batches())

    return epoch


def read_batch_loop(paths, fmt) -> Epoch:
    """``store.read_batch`` of each shuffled batch in the main process, no read-ahead."""
    import torch

    store = imgconv.open(paths[fmt])
    epochs = iter(range(1 << 30))

    def epoch():
        order = epoch_order(len(store), SEED, next(epochs))

        def batches():
            for start in range(0, len(order), BATCH_SIZE):
                images, labels = store.read_batch(order[start : start + BATCH_SIZE])
                yield torch.from_numpy(images), torch.from_numpy(labels)

        return _count(batches())

    return epoch


def imgconv_loader(paths, fmt, **options) -> Epoch:
    """``imgconv.torch.Loader`` over the store (its defaults: a read-ahead thread, or workers for PNG)."""
    _need("torch", "imgconv.torch needs it")
    from ..torch import Loader as TorchLoader

    loader = TorchLoader(paths[fmt], BATCH_SIZE, seed=SEED, **options)
    return lambda: _count(loader)


def dataloader_dataset(paths, fmt, workers) -> Epoch:
    """torch's DataLoader over ``imgconv.torch.Dataset`` and ``BatchSampler`` (batched reads), ``workers``."""
    from torch.utils.data import DataLoader

    from ..torch import BatchSampler, Dataset, collate

    dataset = Dataset(paths[fmt])
    options = dict(num_workers=workers, persistent_workers=True) if workers else {}
    loader = DataLoader(dataset, batch_sampler=BatchSampler(dataset, BATCH_SIZE, seed=SEED), collate_fn=collate,
                        **options)
    return lambda: _count(loader)


class _ItemDataset:
    """The obvious Dataset: ``store[i]`` per image, the default collate stacks them."""

    def __init__(self, path, transform=None):
        self.store = imgconv.open(path)
        self.transform = transform

    def __len__(self):
        return len(self.store)

    def __getitem__(self, i):
        image, label = self.store[i]
        if self.transform is not None:
            from PIL import Image

            return self.transform(Image.fromarray(image)), label
        return image, label


def dataloader_items(paths, fmt, workers, transform=None) -> Epoch:
    """torch's DataLoader over the obvious per-image Dataset (``store[i]``), shuffled, ``workers``."""
    import torch
    from torch.utils.data import DataLoader

    options = dict(num_workers=workers, persistent_workers=True) if workers else {}
    generator = torch.Generator().manual_seed(SEED)
    loader = DataLoader(_ItemDataset(paths[fmt], transform), batch_size=BATCH_SIZE, shuffle=True,
                        generator=generator, **options)
    return lambda: _count(loader)


def litdata_loader(paths, workers) -> Epoch:
    """LitData's StreamingDataLoader over the images optimised into its chunks, shuffled, ``workers``."""
    _need("litdata", "the LitData comparison")
    import litdata

    dataset = litdata.StreamingDataset(paths["litdata"], shuffle=True, seed=SEED, drop_last=False)
    options = dict(persistent_workers=True) if workers else {}
    loader = litdata.StreamingDataLoader(dataset, batch_size=BATCH_SIZE, num_workers=workers, **options)
    return lambda: _count(loader)


def imgconv_augment(paths, fmt) -> Epoch:
    """The Loader with the compiled CIFAR augmentations to normalised float32 NCHW."""
    from ..augment import CropFlipNormalize

    return imgconv_loader(paths, fmt, transform=CropFlipNormalize(MEAN, STD, padding=4, flip=True))


def torch_ops_transform():
    """The CIFAR augmentations written with torch tensor operations on a uint8 NHWC batch.

    Pad, then take each image's crop window out of an ``unfold`` view (no
    copy of the windows), flip the chosen half, normalise in place.
    """
    import torch
    import torch.nn.functional as F

    scale = 255 * torch.tensor(STD).view(1, 3, 1, 1)
    shift = 255 * torch.tensor(MEAN).view(1, 3, 1, 1)
    generator = torch.Generator().manual_seed(SEED)

    def transform(images):
        n, h, w, _ = images.shape
        padded = F.pad(images.permute(0, 3, 1, 2).float(), (4, 4, 4, 4))
        windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # (n, 3, 9, 9, h, w), a view
        top = torch.randint(0, 9, (n,), generator=generator)
        left = torch.randint(0, 9, (n,), generator=generator)
        crops = windows[torch.arange(n), :, top, left]  # (n, 3, h, w)
        flip = torch.rand(n, generator=generator) < 0.5
        crops[flip] = crops[flip].flip(3)
        return crops.sub_(shift).div_(scale)

    return transform


def torch_ops_augment(paths, fmt, threads) -> Epoch:
    """The Loader's uint8 batches, augmented in the loop with torch tensor operations on the batch,
    torch running ``threads`` intra-op threads (on a busy machine one is much faster than two)."""
    _need("torch", "the torch comparison")
    import torch

    from ..torch import Loader as TorchLoader

    loader = TorchLoader(paths[fmt], BATCH_SIZE, seed=SEED)
    transform = torch_ops_transform()

    def batches():
        for images, labels in loader:
            yield transform(images), labels

    def epoch():
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return _count(batches())
        finally:
            torch.set_num_threads(before)

    return epoch


def _in_memory_batches(paths):
    images, labels = np.load(paths["npy"]), np.load(paths["labels"])
    return [(images[start : start + BATCH_SIZE], labels[start : start + BATCH_SIZE])
            for start in range(0, len(labels), BATCH_SIZE)]


def augment_alone(paths) -> Epoch:
    """The compiled augmentations alone, on batches already in memory (no reading)."""
    from ..augment import CropFlipNormalize

    batches = _in_memory_batches(paths)
    transform = CropFlipNormalize(MEAN, STD, padding=4, flip=True)
    rng = np.random.default_rng(SEED)
    return lambda: _count((transform(images, rng=rng), labels) for images, labels in batches)


def torch_ops_alone(paths, threads) -> Epoch:
    """The same augmentations in torch tensor operations alone, on batches already in memory."""
    _need("torch", "the torch comparison")
    import torch

    batches = [(torch.from_numpy(images), labels) for images, labels in _in_memory_batches(paths)]
    transform = torch_ops_transform()

    def epoch():
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return _count((transform(images), labels) for images, labels in batches)
        finally:
            torch.set_num_threads(before)

    return epoch


def torchvision_per_image(paths, fmt, workers) -> Epoch:
    """torchvision's per-image CIFAR recipe (RandomCrop, RandomHorizontalFlip, ToTensor, Normalize)."""
    _need("torchvision", "the per-image baseline")
    from torchvision import transforms

    recipe = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                 transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    return dataloader_items(paths, fmt, workers, transform=recipe)


def _loaders() -> List[Loader]:
    found = [Loader("floor", "NumPy memmap gathered per batch, main process (the floor)", "uint8",
                    floor_memmap)]
    for fmt, title in (("lmdb", "LMDB"), ("hdf5", "HDF5")):
        found += [
            Loader(f"read_batch-{fmt}", f"{title}: store.read_batch per batch, main process", "uint8",
                   lambda p, f=fmt: read_batch_loop(p, f)),
            Loader(f"loader-{fmt}", f"{title}: imgconv Loader (defaults: 1 read-ahead thread)", "uint8",
                   lambda p, f=fmt: imgconv_loader(p, f)),
            Loader(f"loader-{fmt}-2threads", f"{title}: imgconv Loader, 2 read-ahead threads", "uint8",
                   lambda p, f=fmt: imgconv_loader(p, f, threads=2)),
        ] + [Loader(f"dataloader-dataset-{fmt}-{w}w", f"{title}: DataLoader + imgconv Dataset, {w} workers",
                    "uint8", lambda p, f=fmt, w=w: dataloader_dataset(p, f, w)) for w in WORKER_SETTINGS]
    found += [Loader(f"litdata-{w}w", f"LitData StreamingDataLoader, {w} workers", "uint8",
                     lambda p, w=w: litdata_loader(p, w)) for w in WORKER_SETTINGS]
    found += [
        Loader("loader-png", "PNG: imgconv Loader (worker processes)", "png", lambda p: imgconv_loader(p, "png")),
        Loader("dataloader-items-png-2w", "PNG: DataLoader over store[i], 2 workers", "png",
               lambda p: dataloader_items(p, "png", 2)),
        Loader("augment-lmdb", "LMDB: imgconv Loader + CropFlipNormalize", "augment",
               lambda p: imgconv_augment(p, "lmdb")),
    ]
    found += [Loader(f"torch-ops-lmdb-{t}t", f"LMDB: imgconv Loader + the same in torch ops, {t} torch threads",
                     "augment", lambda p, t=t: torch_ops_augment(p, "lmdb", t)) for t in (1, 2)]
    found += [Loader("augment-alone", "augmentations alone, batches in memory: CropFlipNormalize", "augment",
                     augment_alone)]
    found += [Loader(f"torch-ops-alone-{t}t", f"augmentations alone, batches in memory: torch ops, {t} threads",
                     "augment", lambda p, t=t: torch_ops_alone(p, t)) for t in (1, 2)]
    found += [Loader(f"torchvision-lmdb-{w}w", f"LMDB: DataLoader, torchvision per-image transforms, {w} workers",
                     "augment", lambda p, w=w: torchvision_per_image(p, "lmdb", w)) for w in WORKER_SETTINGS]
    return found


TARGETS = [
    Target("LMDB Loader against LitData, its best workers", "loader-lmdb",
           "litdata-0w|litdata-2w", "faster", 5, ">= 5x"),
    Target("HDF5 Loader against LitData, its best workers", "loader-hdf5",
           "litdata-0w|litdata-2w", "faster", 5, ">= 5x"),
    Target("LMDB Loader against DataLoader + imgconv Dataset, best", "loader-lmdb",
           "dataloader-dataset-lmdb-0w|dataloader-dataset-lmdb-2w", "faster", 3, ">= 3x"),
    Target("HDF5 Loader against DataLoader + imgconv Dataset, best", "loader-hdf5",
           "dataloader-dataset-hdf5-0w|dataloader-dataset-hdf5-2w", "faster", 3, ">= 3x"),
    Target("LMDB Loader within 2.5x of the floor", "loader-lmdb", "floor", "within", 2.5,
           "<= 2.5x"),
    Target("HDF5 Loader within 2.5x of the floor", "loader-hdf5", "floor", "within", 2.5,
           "<= 2.5x"),
    Target("augmentations against torch ops on the batch, best", "augment-lmdb",
           "torch-ops-lmdb-1t|torch-ops-lmdb-2t", "faster", 3, ">= 3x"),
    Target("augmentations alone (no reading) against torch ops, best", "augment-alone",
           "torch-ops-alone-1t|torch-ops-alone-2t", "faster", 3, "(>= 3x)"),
    Target("augmentations against torchvision per image, best", "augment-lmdb",
           "torchvision-lmdb-0w|torchvision-lmdb-2w", "faster", 10, ">= 10x"),
    Target("PNG Loader against DataLoader over store[i], 2 workers", "loader-png", "dataloader-items-png-2w",
           "faster", 1.8, ">= 1.8x"),
]


# --------------------------------------------------------------------------- measuring


def _check_first_batch(paths, images, labels):
    """The Loader's first batch of epoch 0 holds the pixels of the planned indices (every format)."""
    _need("torch", "imgconv.torch needs it")
    from ..epochs import EpochPlan
    from ..torch import Loader as TorchLoader

    planned = next(EpochPlan(len(labels), BATCH_SIZE, seed=SEED).batches(0)).indices
    for fmt in ("lmdb", "hdf5", "png"):
        with TorchLoader(paths[fmt], BATCH_SIZE, seed=SEED, workers=0) as loader:
            got_images, got_labels = next(iter(loader))
        if not (np.array_equal(got_images.numpy(), images[planned]) and np.array_equal(got_labels.numpy(),
                                                                                      labels[planned])):
            raise BenchCheckError(f"imgconv Loader over {fmt}: the first batch holds wrong pixels or labels")


# The rows of imgconv's own Loader: an error there fails the run. A peer's loader that
# breaks (a DataLoader worker's shared memory, say) becomes a row saying so.
OURS = ("floor", "read_batch-", "loader-", "augment-")


def _time_side_by_side(epochs: Dict[str, Epoch], expected: Tuple[int, int], repeat: int, budget: float,
                       progress) -> Tuple[Dict[str, List[float]], Dict[str, str]]:
    """Each loader's epochs in turn, round after round, after one warm-up epoch each.

    Returns the seconds of each loader's epochs and the loaders that failed, with why.
    """
    times = {name: [] for name in epochs}
    failed = {}

    def run(name):
        started = time.perf_counter()
        try:
            result = epochs[name]()
        except BenchCheckError:
            raise
        except Exception as exc:
            if name.startswith(OURS):
                raise
            failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[-1] if str(exc) else ''}"[:200]
            return None
        _checked(name, result, expected)
        return time.perf_counter() - started

    progress("loader: a warm-up epoch of each loader")
    for name in epochs:
        run(name)
    for round_number in range(repeat):
        progress(f"loader: round {round_number + 1} of {repeat}")
        for name in epochs:
            if name in failed or (round_number and sum(times[name]) >= budget):
                continue  # long epochs are not repeated past the budget
            seconds = run(name)
            if seconds is not None:
                times[name].append(seconds)
    return {name: t for name, t in times.items() if t and name not in failed}, failed


def _checked(name, result, expected):
    if tuple(result) != expected:
        raise BenchCheckError(f"loader {name}: an epoch yielded {result[0]:,} images with label sum {result[1]:,}, "
                              f"expected {expected[0]:,} and {expected[1]:,}: the run fails")


def measure_memory(path, count, prefetch=4, threads=1) -> dict:
    """Peak traced allocations of one Loader epoch (uint8 batches, dropped as they come) against its bound."""
    from ..torch import Loader as TorchLoader

    loader = TorchLoader(path, BATCH_SIZE, seed=SEED, prefetch=prefetch, threads=threads)
    _count(loader)  # warm: imports, first buffers
    tracemalloc.start()
    try:
        _count(loader)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        loader.close()
    batch_bytes = BATCH_SIZE * int(np.prod(imgconv.open(path).shape))
    # Read ahead, being read, held by the loop and one spare; plus the epoch's order
    # (random keys and their permutation: 16 bytes an image, every shuffling loader has it).
    bound = (prefetch + threads + 2) * batch_bytes + 16 * count
    return {"peak_mb": peak / 1e6, "bound_mb": bound / 1e6, "batch_mb": batch_bytes / 1e6,
            "store_mb": count * batch_bytes / BATCH_SIZE / 1e6, "met": peak <= bound}


def _best(names, medians):
    present = [name for name in names.split("|") if name in medians]
    return min(present, key=medians.get) if present else None


def evaluate(medians: Dict[str, float]) -> List[dict]:
    """Each target whose loaders ran: the ratio, met or MISSED."""
    found = []
    for target in TARGETS:
        ours, baseline = _best(target.ours, medians), _best(target.baseline, medians)
        if ours is None or baseline is None:
            continue
        if target.kind == "faster":
            ratio = medians[baseline] / medians[ours]
            met = ratio >= target.threshold
        else:
            ratio = medians[ours] / medians[baseline]
            met = ratio <= target.threshold
        found.append({"what": target.what, "ours": ours, "baseline": baseline, "ratio": ratio,
                      "value": f"{ratio:.2f}x", "target": target.text, "met": met,
                      "status": "met" if met else "MISSED"})
    return found


def run(harness) -> List[dict]:
    """The loader experiment on the largest cutoff's images; returns result rows (see the module docstring)."""
    count = max(harness.cutoffs)
    images, labels = harness.images.images[:count], harness.images.labels[:count]
    expected = (count, int(labels.sum()))
    rows = []
    paths = prepare(harness.workdir, images, labels, harness.env.workers, harness.progress)
    try:
        _check_first_batch(paths, images, labels)
        epochs, skipped = {}, {}
        for loader in _loaders():
            try:
                epochs[loader.name] = loader.make(paths)
            except Skipped as exc:
                skipped[loader.name] = str(exc)
        times, failed = _time_side_by_side(epochs, expected, harness.repeat, harness.budget, harness.progress)
        memory = measure_memory(paths["lmdb"], count)
    finally:
        for path in paths.values():
            remove_path(path)
    medians = {name: statistics.median(t) for name, t in times.items()}
    titles = {loader.name: loader.title for loader in _loaders()}
    for name, seconds in times.items():
        spread = f"{min(seconds):.2f}-{max(seconds):.2f} s"
        rows.append({"experiment": "loader", "method": name, "format": None, "family": "loader", "images": count,
                     "seconds": medians[name], "runs": len(seconds), "times": seconds, "warmup": 1,
                     "batch_size": BATCH_SIZE, "setting": f"{titles[name]} [{len(seconds)} runs, {spread}]"})
    for name, reason in failed.items():
        rows.append({"experiment": "loader", "method": name, "format": None, "family": "loader", "images": count,
                     "seconds": None, "failed": reason, "setting": f"{titles[name]}: failed, {reason}"})
    for name, reason in skipped.items():
        rows.append({"experiment": "loader", "method": name, "format": None, "family": "loader", "images": count,
                     "seconds": None, "skipped": reason, "setting": f"{titles[name]}: skipped, {reason}"})
    targets = evaluate(medians)
    bound = f"<= {memory['bound_mb']:.1f} MB"
    targets.append({"what": "Loader peak memory, bounded by the read-ahead", "value": f"{memory['peak_mb']:.1f} MB",
                    "target": bound, "met": memory["met"], "status": "met" if memory["met"] else "MISSED",
                    **memory})
    for t in targets:
        rows.append({"experiment": "loader", "method": "target", "format": None, "family": "target",
                     "images": count, "seconds": None, **t,
                     "setting": f"{t['status']:<6} {t['what']}: {t['value']} (target {t['target']})"})
    return rows


def table(rows: List[dict]) -> List[str]:
    """The experiment's block of the report: each loader's median and spread, then the targets."""
    mine = [row for row in rows if row["experiment"] == "loader"]
    if not mine:
        return []
    count = mine[0]["images"]
    lines = ["", f"loader: one shuffled epoch of {count:,} images in batches of {BATCH_SIZE}, side by side "
                 "(median, fastest-slowest)",
             f"  {'loader':<66} {'median':>9}  {'spread':>15}  runs"]
    for row in mine:
        if row["family"] == "loader" and row.get("seconds") is not None:
            title = row["setting"].split(" [")[0]
            spread = f"{min(row['times']):.2f}-{max(row['times']):.2f} s"
            lines.append(f"  {title:<66} {row['seconds']:>7.2f} s  {spread:>15}  {row['runs']}")
    for row in mine:
        if row.get("skipped") or row.get("failed"):
            lines.append(f"  {row['setting']}")
    lines.append("  targets")
    for row in mine:
        if row["family"] == "target":
            lines.append(f"  {row['status']:<7} {row['what']:<58} {row['value']:>9}  (target {row['target']})")
    return lines


experiment("loader", "training loaders: one shuffled epoch each (opt-in)", "alone", default=False,
           requires=("torch",), install='pip install "imgconv[torch]"',
           table=lambda results, title, rows: table(rows))(run)
