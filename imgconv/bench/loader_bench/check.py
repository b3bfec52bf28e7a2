"""Checking what a loader's epoch yielded against the images written: a wrong batch fails the run.

Every epoch, untimed, after it ran (:class:`EpochCheck`):

- it yielded every image once: as many labels as images, and, where the
  order is known (imgconv's loaders, the floor, torch's DataLoader with
  imgconv's sampler), exactly the labels of the planned order; else (the
  loader shuffles its own way) the same multiset of labels;
- its first and last batches hold the right images: uint8 NHWC batches
  equal to the images of the planned indices, or, order unknown, each
  image with its label found among those written (by a digest of its
  bytes); float32 NCHW batches (the augmentations) finite, of the right
  shape, and, order known, each of the first :data:`CROPS_CHECKED` images a
  crop of its zero-padded original, flipped or not, normalised as asked.

A failure raises :class:`~imgconv.errors.BenchCheckError`, which fails the
run whichever loader it is.
"""
from __future__ import annotations

import hashlib
from typing import Any, Optional, Set, Tuple

import numpy as np

from ..methods import BenchCheckError
from .sides import MEAN, PADDING, STD, Epoch, LoaderSide

CROPS_CHECKED = 8  # images of a float batch matched against their originals (81 windows x 2 flips each)


def as_array(value: Any) -> np.ndarray:
    """A torch tensor or NumPy array as a NumPy array (no copy for a CPU tensor)."""
    if type(value).__module__.split(".")[0] == "torch":
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _digest(image: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).digest()


def is_augmented(output: np.ndarray, original: np.ndarray, mean: np.ndarray, std: np.ndarray, padding: int) -> bool:
    """Whether ``output`` (C, H, W float) is ``original`` (H, W, C uint8) zero-padded by ``padding`` on every
    side, cropped to (H, W) somewhere, flipped left to right or not, and normalised by ``mean``/``std``."""
    pixels = np.rint((output.astype(np.float64) * std[:, None, None] + mean[:, None, None]) * 255)
    if pixels.min() < 0 or pixels.max() > 255:
        return False
    crop = pixels.astype(np.uint8).transpose(1, 2, 0)
    padded = np.pad(original, ((padding, padding), (padding, padding), (0, 0)))
    height, width = crop.shape[:2]
    for top in range(padded.shape[0] - height + 1):
        for left in range(padded.shape[1] - width + 1):
            window = padded[top : top + height, left : left + width]
            if np.array_equal(window, crop) or np.array_equal(window[:, ::-1], crop):
                return True
    return False


class EpochCheck:
    """Checks each epoch of the loaders against ``images`` (N, H, W, C) uint8 and ``labels`` (N,); call it
    as ``check(side, epoch)`` (see the module docstring)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images = images
        self.labels = labels
        self.sorted_labels = np.sort(labels)
        self.mean = np.asarray(MEAN, np.float64)
        self.std = np.asarray(STD, np.float64)
        self._digests: Optional[Set[Tuple[bytes, int]]] = None

    def __call__(self, side: LoaderSide, epoch: Epoch) -> None:
        count = len(self.labels)
        got = np.concatenate([as_array(batch).reshape(-1) for batch in epoch.labels]) if epoch.labels else \
            np.empty(0, np.int64)
        if got.size != count:
            self._fail(side, f"an epoch yielded {got.size:,} images, expected {count:,}")
        order = epoch.order() if epoch.order is not None else None
        if order is not None and not np.array_equal(got, self.labels[order]):
            self._fail(side, "an epoch's labels are not those of the planned order")
        if order is None and not np.array_equal(np.sort(got), self.sorted_labels):
            self._fail(side, "an epoch's labels are not those of the images, each once")
        assert epoch.first is not None and epoch.last is not None  # the epoch yielded every image
        last_start = count - len(as_array(epoch.last[1]))
        for which, (images, labels), start in (("first", epoch.first, 0), ("last", epoch.last, last_start)):
            images, labels = as_array(images), as_array(labels)
            indices = None if order is None else order[start : start + len(labels)]
            if side.output == "uint8":
                self._uint8_batch(side, which, images, labels, indices)
            else:
                self._float_batch(side, which, images, indices)

    def _fail(self, side: LoaderSide, problem: str) -> None:
        raise BenchCheckError(f"loader {side.name} ({side.title}): {problem}: the run fails")

    def _uint8_batch(self, side: LoaderSide, which: str, images: np.ndarray, labels: np.ndarray,
                     indices: Optional[np.ndarray]) -> None:
        shape = (len(labels), *self.images.shape[1:])
        if images.dtype != np.uint8 or images.shape != shape:
            self._fail(side, f"its {which} batch is {images.shape} {images.dtype}, expected {shape} uint8")
        if indices is not None:
            if not np.array_equal(images, self.images[indices]):
                self._fail(side, f"its {which} batch holds other pixels than the planned images")
            return
        if self._digests is None:
            self._digests = {(_digest(image), int(label)) for image, label in zip(self.images, self.labels)}
        for image, label in zip(images, labels):
            if (_digest(image), int(label)) not in self._digests:
                self._fail(side, f"its {which} batch holds an image, or a label, that was not written")

    def _float_batch(self, side: LoaderSide, which: str, images: np.ndarray, indices: Optional[np.ndarray]) -> None:
        height, width, channels = self.images.shape[1:]
        shape = (len(images), channels, height, width)
        if images.dtype != np.float32 or images.shape != shape or not np.all(np.isfinite(images)):
            self._fail(side, f"its {which} batch is {images.shape} {images.dtype}, expected finite {shape} float32")
        if indices is None:
            return
        for output, index in zip(images[:CROPS_CHECKED], indices):
            if not is_augmented(output, self.images[index], self.mean, self.std, PADDING):
                self._fail(side, f"its {which} batch holds an image that is not a crop of the planned one, "
                                 "flipped or not, normalised")
