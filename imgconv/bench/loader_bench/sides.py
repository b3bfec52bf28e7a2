"""The loaders the experiment times, one function each: ``make(data, stack)`` returns a function that runs
one shuffled epoch and returns what it yielded (an :class:`Epoch`, for the check).

:data:`SIDES` lists them, in the order each round runs them. A loader that
starts worker processes or holds a store open registers its ``close`` on
``stack``. Every epoch is drained the same way (:func:`drain`): each batch's
labels kept, the first and last batch kept, nothing else done with them.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, List, NamedTuple, Optional, Tuple

import numpy as np

import imgconv

from ...augment import CIFAR10_MEAN, CIFAR10_STD, CropFlipNormalize
from ...epochs import epoch_order
from .data import Data

BATCH_SIZE = 256
SEED = 0
PADDING = 4  # the CIFAR augmentations: pad 4, crop back to 32x32, flip half
MEAN, STD = CIFAR10_MEAN, CIFAR10_STD
WORKER_SETTINGS = (0, 2)  # the num_workers of torch's DataLoader and LitData's
TORCH_THREADS = (1, 2)  # torch's intra-op threads for the tensor-operation pipeline


class Epoch(NamedTuple):
    """What one epoch yielded: ``order()`` gives the indices it should have yielded, in order (None: the
    loader shuffles its own way, so only the multiset of labels is known); ``labels``, every batch's labels;
    ``first`` and ``last``, the first and last batches as ``(images, labels)``."""

    order: Optional[Callable[[], np.ndarray]]
    labels: List[Any]
    first: Optional[Tuple[Any, Any]]
    last: Optional[Tuple[Any, Any]]


EpochFn = Callable[[], Epoch]
Make = Callable[[Data, contextlib.ExitStack], EpochFn]


@dataclass(frozen=True)
class LoaderSide:
    """One loader: ``name`` (its row's method), ``title`` (what it is), ``family`` ("floor", "imgconv",
    "torch" for torch's own DataLoader and tensor operations, "peer"), ``format`` it reads, ``make`` (see
    the module docstring), ``requires`` (modules beyond torch; missing, the side is skipped with a reason
    saying ``install``), ``output`` ("uint8" NHWC batches or "float32" NCHW ones) and ``fallible``
    (torch's DataLoader or a peer, whose worker processes can crash for reasons of their own, such as a
    full /dev/shm: the crash retires the side from the rounds instead of failing the run; a wrong batch
    fails it all the same)."""

    name: str
    title: str
    family: str
    format: str
    make: Make
    requires: Tuple[str, ...] = ()
    install: str = ""
    output: str = "uint8"
    fallible: bool = False


def drain(batches: Iterable[Any], order: Optional[Callable[[], np.ndarray]]) -> Epoch:
    """Consume an epoch of ``(images, labels)`` batches (or LitData's ``{"image", "label"}`` dicts)."""
    labels: List[Any] = []
    first = last = None
    for batch in batches:
        images, batch_labels = (batch["image"], batch["label"]) if isinstance(batch, dict) else batch
        last = (images, batch_labels)
        if first is None:
            first = last
        labels.append(batch_labels)
    return Epoch(order, labels, first, last)


def _batches_of(order: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(order), BATCH_SIZE):
        yield order[start : start + BATCH_SIZE]


def _shutdown(loader: Any) -> None:
    """Stop the persistent workers of a torch DataLoader (it has no public close)."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    loader._iterator = None


# --------------------------------------------------------------------------- the floor, read_batch, the Loader


def floor_memmap(data: Data, stack: contextlib.ExitStack) -> EpochFn:
    """The floor: a NumPy memmap of the ``.npy``, gathered per batch in the main process, as tensors."""
    import torch

    images = np.load(data.npy, mmap_mode="r")
    labels = np.load(data.labels)
    epochs = itertools.count()

    def epoch() -> Epoch:
        number = next(epochs)
        order = epoch_order(data.size, SEED, number)
        batches = ((torch.from_numpy(images[index]), torch.from_numpy(labels[index])) for index in _batches_of(order))
        return drain(batches, functools.partial(epoch_order, data.size, SEED, number))

    return epoch


def read_batch_loop(data: Data, stack: contextlib.ExitStack, fmt: str) -> EpochFn:
    """``store.read_batch`` of each shuffled batch in the main process, no read-ahead, as tensors."""
    import torch

    store = stack.enter_context(imgconv.open(data.store(fmt)))
    epochs = itertools.count()

    def epoch() -> Epoch:
        number = next(epochs)
        order = epoch_order(data.size, SEED, number)
        batches = (tuple(map(torch.from_numpy, store.read_batch(index))) for index in _batches_of(order))
        return drain(batches, functools.partial(epoch_order, data.size, SEED, number))

    return epoch


def imgconv_loader(data: Data, stack: contextlib.ExitStack, fmt: str,
                   in_loop: Optional[Callable[[Any], Any]] = None, **options: Any) -> EpochFn:
    """``imgconv.torch.Loader`` over the store with ``options`` (its defaults: one read-ahead thread, or
    worker processes for a PNG folder); ``in_loop``, when given, is applied to each batch's images in
    the training loop's thread."""
    from ...torch import Loader

    loader = stack.enter_context(Loader(data.store(fmt), BATCH_SIZE, seed=SEED, **options))
    epochs = itertools.count()

    def epoch() -> Epoch:
        number = next(epochs)
        loader.set_epoch(number)
        batches = loader if in_loop is None else ((in_loop(images), labels) for images, labels in loader)
        return drain(batches, functools.partial(epoch_order, data.size, SEED, number))

    return epoch


# --------------------------------------------------------------------------- torch's DataLoader, LitData


def dataloader_dataset(data: Data, stack: contextlib.ExitStack, fmt: str, workers: int) -> EpochFn:
    """torch's DataLoader over ``imgconv.torch.Dataset`` with its ``BatchSampler`` and ``collate`` (one
    ``read_batch`` a batch), ``workers`` persistent workers."""
    from torch.utils.data import DataLoader

    from ...torch import BatchSampler, Dataset, collate

    dataset = Dataset(data.store(fmt))
    sampler = BatchSampler(dataset, BATCH_SIZE, seed=SEED)
    loader: DataLoader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                                    persistent_workers=workers > 0)
    stack.callback(_shutdown, loader)
    epochs = itertools.count()

    def epoch() -> Epoch:
        number = next(epochs)
        sampler.set_epoch(number)
        return drain(loader, functools.partial(epoch_order, data.size, SEED, number))

    return epoch


class ItemDataset:
    """The obvious map-style Dataset: ``store[i]`` per image (the default collate stacks them), with an
    optional per-image ``transform`` of a PIL image (torchvision's way)."""

    def __init__(self, path: str, transform: Optional[Callable[[Any], Any]] = None) -> None:
        self.store = imgconv.open(path)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        image, label = self.store[index]
        if self.transform is not None:
            from PIL import Image

            return self.transform(Image.fromarray(image)), label
        return image, label


def dataloader_items(data: Data, stack: contextlib.ExitStack, fmt: str, workers: int,
                     transform: Optional[Callable[[Any], Any]] = None) -> EpochFn:
    """torch's DataLoader over :class:`ItemDataset`, ``shuffle=True``, ``workers`` persistent workers."""
    import torch
    from torch.utils.data import DataLoader

    dataset = ItemDataset(data.store(fmt), transform)
    stack.callback(dataset.store.close)
    loader: DataLoader = DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True,  # type: ignore[arg-type]
                                    generator=torch.Generator().manual_seed(SEED), num_workers=workers,
                                    persistent_workers=workers > 0)
    stack.callback(_shutdown, loader)
    return lambda: drain(loader, None)


def litdata_loader(data: Data, stack: contextlib.ExitStack, workers: int) -> EpochFn:
    """LitData's StreamingDataLoader over its ``StreamingDataset(shuffle=True)`` of the optimised chunks."""
    import litdata

    if data.litdata is None:
        raise RuntimeError(data.litdata_error or "the LitData chunks were not written")
    dataset = litdata.StreamingDataset(data.litdata, shuffle=True, seed=SEED, drop_last=False)
    loader = litdata.StreamingDataLoader(dataset, batch_size=BATCH_SIZE, num_workers=workers,
                                         persistent_workers=workers > 0)
    stack.callback(_shutdown, loader)
    return lambda: drain(loader, None)


# --------------------------------------------------------------------------- the augmentations


def imgconv_augment(data: Data, stack: contextlib.ExitStack, fmt: str) -> EpochFn:
    """The Loader with the compiled :class:`~imgconv.augment.CropFlipNormalize` (float32 NCHW batches)."""
    transform = CropFlipNormalize(MEAN, STD, padding=PADDING, flip=True)
    return imgconv_loader(data, stack, fmt, transform=transform)


def torch_ops_transform() -> Callable[[Any], Any]:
    """The CIFAR augmentations written with torch tensor operations on a uint8 NHWC batch.

    Pad, take each image's crop window out of an ``unfold`` view (no copy of
    the windows), flip the chosen half, normalise in place.
    """
    import torch
    import torch.nn.functional as F

    scale = 255 * torch.tensor(STD).view(1, 3, 1, 1)
    shift = 255 * torch.tensor(MEAN).view(1, 3, 1, 1)
    generator = torch.Generator().manual_seed(SEED)
    room = 2 * PADDING + 1

    def transform(images: Any) -> Any:
        n, h, w, _ = images.shape
        padded = F.pad(images.permute(0, 3, 1, 2).float(), (PADDING,) * 4)
        windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # (n, 3, room, room, h, w), a view
        top = torch.randint(0, room, (n,), generator=generator)
        left = torch.randint(0, room, (n,), generator=generator)
        crops = windows[torch.arange(n), :, top, left]  # (n, 3, h, w)
        flip = torch.rand(n, generator=generator) < 0.5
        crops[flip] = crops[flip].flip(3)
        return crops.sub_(shift).div_(scale)

    return transform


def _with_torch_threads(threads: int, epoch: EpochFn) -> EpochFn:
    """``epoch`` run with torch's intra-op threads set to ``threads`` (and set back after)."""
    import torch

    def run() -> Epoch:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return epoch()
        finally:
            torch.set_num_threads(before)

    return run


def torch_ops_augment(data: Data, stack: contextlib.ExitStack, fmt: str, threads: int) -> EpochFn:
    """The Loader's uint8 batches put through :func:`torch_ops_transform` in the loop, torch running
    ``threads`` intra-op threads (on a busy machine one can be much faster than two)."""
    return _with_torch_threads(threads, imgconv_loader(data, stack, fmt, in_loop=torch_ops_transform()))


def _in_memory(data: Data) -> Tuple[np.ndarray, np.ndarray]:
    # Copy-on-write: writable (torch.from_numpy does not warn), never written, no copy made.
    return np.load(data.npy, mmap_mode="c"), np.load(data.labels)


def augment_alone(data: Data, stack: contextlib.ExitStack) -> EpochFn:
    """:class:`~imgconv.augment.CropFlipNormalize` alone on batches already in memory (no reading)."""
    images, labels = _in_memory(data)
    transform = CropFlipNormalize(MEAN, STD, padding=PADDING, flip=True)
    rng = np.random.default_rng(SEED)
    order = functools.partial(np.arange, data.size)

    def epoch() -> Epoch:
        return drain(((transform(images[i : i + BATCH_SIZE], rng=rng), labels[i : i + BATCH_SIZE])
                      for i in range(0, data.size, BATCH_SIZE)), order)

    return epoch


def torch_ops_alone(data: Data, stack: contextlib.ExitStack, threads: int) -> EpochFn:
    """:func:`torch_ops_transform` alone on batches already in memory, ``threads`` intra-op threads."""
    import torch

    images, labels = _in_memory(data)
    transform = torch_ops_transform()
    order = functools.partial(np.arange, data.size)

    def epoch() -> Epoch:
        return drain(((transform(torch.from_numpy(images[i : i + BATCH_SIZE])), labels[i : i + BATCH_SIZE])
                      for i in range(0, data.size, BATCH_SIZE)), order)

    return _with_torch_threads(threads, epoch)


def torchvision_per_image(data: Data, stack: contextlib.ExitStack, fmt: str, workers: int) -> EpochFn:
    """torchvision's per-image CIFAR recipe (``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``,
    ``ToTensor``, ``Normalize``) in a DataLoader over :class:`ItemDataset`, ``workers`` workers."""
    from torchvision import transforms

    recipe = transforms.Compose([transforms.RandomCrop(32, padding=PADDING), transforms.RandomHorizontalFlip(),
                                 transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    return dataloader_items(data, stack, fmt, workers, transform=recipe)


# --------------------------------------------------------------------------- the sides, in the order rounds run them


def _threads(count: int) -> str:
    return f"{count} torch thread{'s' if count > 1 else ''}"


def _sides() -> List[LoaderSide]:
    p = functools.partial
    litdata, torchvision = ("litdata",), ("torchvision",)
    found = [LoaderSide("floor", "NumPy memmap gathered per batch, main process (the floor)", "floor", "npy",
                        floor_memmap)]
    for fmt, label in (("lmdb", "LMDB"), ("hdf5", "HDF5")):
        found += [
            LoaderSide(f"read_batch-{fmt}", f"{label}: store.read_batch per batch, main process", "imgconv", fmt,
                       p(read_batch_loop, fmt=fmt)),
            LoaderSide(f"loader-{fmt}", f"{label}: imgconv Loader (defaults: 1 read-ahead thread)", "imgconv", fmt,
                       p(imgconv_loader, fmt=fmt)),
            LoaderSide(f"loader-{fmt}-2threads", f"{label}: imgconv Loader, 2 read-ahead threads", "imgconv", fmt,
                       p(imgconv_loader, fmt=fmt, threads=2)),
        ]
        found += [LoaderSide(f"dataloader-dataset-{fmt}-{w}w", f"{label}: DataLoader + imgconv Dataset, {w} workers",
                             "torch", fmt, p(dataloader_dataset, fmt=fmt, workers=w), fallible=True)
                  for w in WORKER_SETTINGS]
    found += [LoaderSide(f"litdata-{w}w", f"LitData StreamingDataLoader, {w} workers", "peer", "litdata",
                         p(litdata_loader, workers=w), litdata, "pip install litdata", fallible=True)
              for w in WORKER_SETTINGS]
    found += [LoaderSide("augment-alone", "augmentations alone, batches in memory: CropFlipNormalize", "imgconv",
                         "npy", augment_alone, output="float32")]
    found += [LoaderSide(f"torch-ops-alone-{t}t", f"augmentations alone, batches in memory: torch ops, {_threads(t)}",
                         "torch", "npy", p(torch_ops_alone, threads=t), output="float32") for t in TORCH_THREADS]
    found += [LoaderSide("augment-lmdb", "LMDB: imgconv Loader + CropFlipNormalize", "imgconv", "lmdb",
                         p(imgconv_augment, fmt="lmdb"), output="float32")]
    found += [LoaderSide(f"torch-ops-lmdb-{t}t", f"LMDB: imgconv Loader + the same in torch ops, {_threads(t)}",
                         "torch", "lmdb", p(torch_ops_augment, fmt="lmdb", threads=t), output="float32")
              for t in TORCH_THREADS]
    found += [LoaderSide(f"torchvision-lmdb-{w}w", f"LMDB: DataLoader, torchvision per-image transforms, {w} workers",
                         "peer", "lmdb", p(torchvision_per_image, fmt="lmdb", workers=w), torchvision,
                         "pip install torchvision", output="float32", fallible=True) for w in WORKER_SETTINGS]
    found += [
        LoaderSide("loader-png", "PNG: imgconv Loader (worker processes)", "imgconv", "png",
                   p(imgconv_loader, fmt="png")),
        LoaderSide("dataloader-items-png-2w", "PNG: DataLoader over store[i], 2 workers", "torch", "png",
                   p(dataloader_items, fmt="png", workers=2), fallible=True),
    ]
    return found


SIDES: Tuple[LoaderSide, ...] = tuple(_sides())
