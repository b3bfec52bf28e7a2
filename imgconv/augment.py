"""Batch augmentation in one compiled pass: random crop with zero padding, flip, NCHW, normalise.

The usual CIFAR training pipeline (torchvision's ``RandomCrop(32, padding=4)``,
``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize(mean, std)``) applied
to a whole uint8 NHWC batch at once::

    from imgconv.augment import CIFAR10_MEAN, CIFAR10_STD, CropFlipNormalize

    train = CropFlipNormalize(CIFAR10_MEAN, CIFAR10_STD, padding=4, flip=True)
    test = CropFlipNormalize(CIFAR10_MEAN, CIFAR10_STD)      # normalise only
    x = train(images, rng=np.random.default_rng(0))          # (N, 3, 32, 32) float32

The randomness (crop offsets, flips) is drawn here, in NumPy, from the
generator given, and passed to the kernel, so the result depends on the
generator's state only: the compiled kernel (``imgconv._augment``, from
``ext/_augment.pyx``) and the NumPy reference (``imgconv._augment_pure``)
give bit-identical outputs. ``BACKEND`` says which is in use; the
environment switches ``IMGCONV_PURE=1`` and ``IMGCONV_REQUIRE_EXT=1`` act as
for :mod:`imgconv.kernels`.
"""
from __future__ import annotations

import importlib
import os
import sys
import warnings
from typing import Any, Dict, NamedTuple, Optional, Sequence, Union

import numpy as np

from . import _augment_pure
from .errors import ExtensionMissingError

__all__ = ["BACKEND", "CIFAR100_MEAN", "CIFAR100_STD", "CIFAR10_MEAN", "CIFAR10_STD", "CropFlipNormalize", "Draws",
           "implementation"]

# Per-channel mean and standard deviation of the training images, in 0..1.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

_DTYPES = {"float32": (np.float32, np.uint32), "float16": (np.float16, np.uint16), "uint8": (np.uint8, np.uint8)}


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _load_backend():
    if _flag("IMGCONV_PURE"):
        return _augment_pure, "numpy"
    try:
        module = importlib.import_module("imgconv._augment")
    except ImportError as exc:
        if _flag("IMGCONV_REQUIRE_EXT"):
            raise ExtensionMissingError(
                f"imgconv's compiled augmentation (imgconv._augment) cannot be imported: {exc}. "
                "Build it with `pip install -e .` in the source tree, or unset IMGCONV_REQUIRE_EXT."
            ) from exc
        warnings.warn(
            "imgconv's compiled augmentation is not built, so the slower NumPy reference is in use. "
            "Build it with `pip install .` (or `pip install -e .` in a source checkout); "
            "set IMGCONV_PURE=1 to choose NumPy and silence this warning.",
            RuntimeWarning,
            stacklevel=3,
        )
        return _augment_pure, "numpy"
    return module, "compiled"


_impl, BACKEND = _load_backend()


def implementation():
    """The module whose kernel is in use (``imgconv._augment`` or ``imgconv._augment_pure``)."""
    return _impl


class Draws(NamedTuple):
    """The random choices for a batch: crop offsets ``top`` and ``left`` in the padded
    image (int64, 0 .. 2 * padding + image size - crop size) and ``flip`` (uint8, 0 or 1)."""

    top: np.ndarray
    left: np.ndarray
    flip: np.ndarray


def _channel_values(name, values, channels):
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 1:
        array = np.repeat(array, channels)
    if array.size != channels:
        raise ValueError(f"{name} has {array.size} values, the images have {channels} channels")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {values!r}")
    return array


def _is_torch_tensor(value):
    return type(value).__module__.split(".")[0] == "torch" and hasattr(value, "numpy")


class CropFlipNormalize:
    """Random crop of the zero-padded image, random horizontal flip, NHWC uint8 to NCHW, normalisation.

    ``mean`` and ``std`` (one value per channel, or one for all, on the 0..1
    scale as torchvision's ``Normalize`` takes them) give
    ``(pixel / 255 - mean) / std``; without them the output is
    ``pixel / 255``. ``padding`` zero pixels are added on every side before a
    crop of ``size`` ((height, width) or one number; default the image's own
    size) is taken at a random place; ``flip`` mirrors half of the images
    left to right. ``dtype`` is "float32", "float16" or "uint8" (the bytes
    themselves, cropped and flipped: normalise on the GPU; no mean or std).
    Each output value comes from a per-channel table computed once in
    float64 and rounded to ``dtype``. With ``padding=0``, no ``size`` and no
    ``flip`` it is a deterministic conversion (for evaluation).

    Call it on a batch: ``transform(images, rng=None, out=None)``; see
    :meth:`__call__`. Raises ValueError or TypeError for bad arguments.
    """

    takes_rng = True  # loaders call it as transform(images, rng=generator, out=array)

    def __init__(self, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None, *,
                 padding: int = 0, size: Union[None, int, Sequence[int]] = None, flip: bool = False,
                 dtype: str = "float32") -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        if dtype == "uint8" and mean is not None:
            raise ValueError("dtype='uint8' keeps the bytes as they are: it takes no mean or std")
        if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
            raise ValueError(f"padding must be a whole number of pixels >= 0, got {padding!r}")
        self.mean = mean
        self.std = std
        self.padding = int(padding)
        self.size = self._size(size)
        self.flip = bool(flip)
        self.dtype = dtype
        self._tables: Dict[int, np.ndarray] = {}

    @staticmethod
    def _size(size):
        if size is None:
            return None
        values = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
        if len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1
                                   for v in values):
            raise ValueError(f"size must be a positive number of pixels or (height, width), got {size!r}")
        return int(values[0]), int(values[1])

    def __repr__(self) -> str:
        return (f"CropFlipNormalize(mean={self.mean!r}, std={self.std!r}, padding={self.padding}, "
                f"size={self.size!r}, flip={self.flip}, dtype={self.dtype!r})")

    def table(self, channels: int) -> np.ndarray:
        """The (channels, 256) lookup table of output values, as the bits of ``dtype`` (unsigned ints)."""
        table = self._tables.get(channels)
        if table is None:
            value_type, bits_type = _DTYPES[self.dtype]
            levels = np.arange(256, dtype=np.float64)
            if self.dtype == "uint8":
                values = np.tile(levels, (channels, 1))
            elif self.mean is None:
                values = np.tile(levels / 255.0, (channels, 1))
            else:
                mean = _channel_values("mean", self.mean, channels)
                std = _channel_values("std", self.std, channels)
                if np.any(std == 0):
                    raise ValueError(f"std must not be 0, got {self.std!r}")
                values = (levels[None, :] / 255.0 - mean[:, None]) / std[:, None]
            table = np.ascontiguousarray(values.astype(value_type)).view(bits_type)
            self._tables[channels] = table
        return table

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the output for images of ``height`` x ``width``; ValueError when the crop does not fit."""
        oh, ow = self.size or (height, width)
        if oh > height + 2 * self.padding or ow > width + 2 * self.padding:
            raise ValueError(f"a crop of {oh}x{ow} does not fit in {height}x{width} images padded by {self.padding}")
        return oh, ow

    def draw(self, count: int, height: int, width: int, rng: Any = None) -> Draws:
        """The random crop offsets and flips of ``count`` images of ``height`` x ``width``, from ``rng``.

        ``rng`` is a ``numpy.random.Generator``, an int seed, or None for fresh
        entropy. Offsets are uniform over the places the crop fits in the
        padded image; each image is flipped with probability 1/2.
        """
        oh, ow = self.output_size(height, width)
        generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        top = np.zeros(count, np.int64)
        left = np.zeros(count, np.int64)
        flip = np.zeros(count, np.uint8)
        room_y, room_x = height + 2 * self.padding - oh, width + 2 * self.padding - ow
        if room_y:
            top = generator.integers(0, room_y + 1, count, dtype=np.int64)
        if room_x:
            left = generator.integers(0, room_x + 1, count, dtype=np.int64)
        if self.flip:
            flip = generator.integers(0, 2, count, dtype=np.uint8)
        return Draws(top, left, flip)

    def apply(self, images: Any, draws: Draws, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Crop, flip and convert ``images`` (N, H, W, C) uint8 as ``draws`` say, into ``out`` or a new array.

        ``out``, when given, is a writeable C-contiguous (N, C, OH, OW) array
        of ``dtype``. Returns the (N, C, OH, OW) array.
        """
        images = self._images(images)
        n, height, width, channels = images.shape
        oh, ow = self.output_size(height, width)
        value_type, bits_type = _DTYPES[self.dtype]
        want = (n, channels, oh, ow)
        if out is None:
            out = np.empty(want, value_type)
        elif (not isinstance(out, np.ndarray) or out.shape != want or out.dtype != value_type
              or not out.flags.c_contiguous or not out.flags.writeable):
            got = f"{out.shape} {out.dtype}" if isinstance(out, np.ndarray) else type(out).__name__
            raise ValueError(f"out must be a writeable C-contiguous {self.dtype} array of shape {want}, got {got}")
        top, left, flip = self._checked_draws(draws, n, height, width, oh, ow)
        if np.may_share_memory(images, out):
            raise ValueError("out must not overlap the images")
        _impl.crop_flip_lut(images, top, left, flip, self.padding, self.table(channels), out.view(bits_type))
        return out

    def __call__(self, images: Any, rng: Any = None, out: Optional[np.ndarray] = None) -> Any:
        """Augment a batch: ``images`` (N, H, W, C) uint8, a NumPy array or a CPU torch tensor.

        ``rng`` (a ``numpy.random.Generator``, an int seed, or None for fresh
        entropy) draws the crops and flips; ``out`` as for :meth:`apply`.
        Returns an (N, C, OH, OW) array of ``dtype``, a torch tensor when
        ``images`` is one.
        """
        as_tensor = _is_torch_tensor(images)
        array = self._images(images)
        n, height, width, _ = array.shape
        result = self.apply(array, self.draw(n, height, width, rng), out)
        if as_tensor:
            return sys.modules["torch"].from_numpy(result)
        return result

    @staticmethod
    def _images(images):
        if _is_torch_tensor(images):
            if images.device.type != "cpu":
                raise ValueError(f"the images are on {images.device}: augment them on the CPU, before moving them")
            images = images.numpy()
        if not isinstance(images, np.ndarray):
            raise TypeError(f"images must be a NumPy array or a torch tensor, got {type(images).__name__}")
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"images must be an (N, H, W, C) uint8 batch, got shape {images.shape} {images.dtype}")
        if 0 in images.shape[1:]:
            raise ValueError(f"images must have at least one row, column and channel, got shape {images.shape}")
        return np.ascontiguousarray(images)

    def _checked_draws(self, draws, n, height, width, oh, ow):
        top, left, flip = (np.ascontiguousarray(a, dtype) for a, dtype in
                           zip(draws, (np.int64, np.int64, np.uint8)))
        for name, array in (("top", top), ("left", left), ("flip", flip)):
            if array.shape != (n,):
                raise ValueError(f"draws.{name} must hold one value per image ({n}), got shape {array.shape}")
        if n and (top.min() < 0 or top.max() > height + 2 * self.padding - oh):
            raise ValueError(f"draws.top must lie in 0 .. {height + 2 * self.padding - oh}")
        if n and (left.min() < 0 or left.max() > width + 2 * self.padding - ow):
            raise ValueError(f"draws.left must lie in 0 .. {width + 2 * self.padding - ow}")
        if n and flip.max() > 1:
            raise ValueError("draws.flip must be 0 or 1")
        return top, left, flip
