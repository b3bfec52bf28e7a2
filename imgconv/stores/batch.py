"""Batches on their way into a store: checked on entry, encoded by the format, checked again by the writer.

Images are uint8 (N, H, W, C); a batch given as (N, H, W) is grayscale, C = 1.
A store holds either one fixed image shape (batches given as arrays) or varying
shapes (:data:`VARIABLE`: batches given as lists of (H, W, C) or (H, W) arrays).
"""
from typing import Any, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np

from .. import _validate
from ..errors import StoreArgumentError

VARIABLE: Literal["variable"] = "variable"

Shape = Tuple[int, int, int]
StoreShape = Union[Shape, Literal["variable"]]  # (H, W, C) or VARIABLE (a Literal: `shape == VARIABLE` narrows)
Images = Union[np.ndarray, Sequence[np.ndarray]]


class Batch:
    """A checked batch: ``images`` is an (N, H, W, C) uint8 array, or a list of
    (H, W, C) uint8 arrays when ``variable``; ``labels`` is (N,) int64."""

    __slots__ = ("images", "labels", "variable")

    def __init__(self, images: Images, labels: np.ndarray, variable: bool) -> None:
        self.images = images
        self.labels = labels
        self.variable = variable

    def __len__(self) -> int:
        return len(self.labels)

    def shapes(self) -> np.ndarray:
        """The (N, 3) int64 array of each image's (H, W, C)."""
        if not self.variable:
            assert isinstance(self.images, np.ndarray)
            return np.tile(np.asarray(self.images.shape[1:], np.int64), (len(self), 1))
        return np.array([image.shape for image in self.images], np.int64).reshape(-1, 3)


def _as_image(image: Any, where: str) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise StoreArgumentError(f"{where}: an image must be a NumPy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise StoreArgumentError(f"{where}: images must be uint8, got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, np.newaxis]
    if image.ndim != 3 or 0 in image.shape:
        raise StoreArgumentError(
            f"{where}: an image must be (H, W) or (H, W, C) and non-empty, got shape {image.shape}")
    return np.ascontiguousarray(image)


def _as_labels(labels: Any, n: int) -> np.ndarray:
    if labels is None:
        return np.full(n, -1, np.int64)
    return _validate.int64_labels(labels, n, error=StoreArgumentError)


def check_batch(images: Any, labels: Any) -> Batch:
    """Check and normalise one batch; returns a :class:`Batch`.

    ``images`` is a uint8 array (N, H, W, C) or (N, H, W), or a list/tuple of
    uint8 arrays (H, W, C) or (H, W) (varying sizes). ``labels`` holds N
    integers, or None for "no label" (-1). Raises StoreArgumentError (a
    ValueError) naming the problem.
    """
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise StoreArgumentError(f"images must be uint8, got dtype {images.dtype}")
        if images.ndim == 3:
            images = images[..., np.newaxis]
        if images.ndim != 4 or 0 in images.shape[1:]:
            raise StoreArgumentError(f"images must be (N, H, W, C) or (N, H, W), got shape {images.shape}")
        return Batch(np.ascontiguousarray(images), _as_labels(labels, images.shape[0]), False)
    if isinstance(images, (list, tuple)):
        checked: List[np.ndarray] = [_as_image(image, f"image {i} of the batch") for i, image in enumerate(images)]
        return Batch(checked, _as_labels(labels, len(checked)), True)
    raise StoreArgumentError(f"images must be a uint8 array or a list of arrays, got {type(images).__name__}")


class EncodedBatch:
    """What a format's ``encode_batch`` returns: finished payload plus what the writer checks.

    ``labels`` (N,) int64, ``shapes`` (N, 3) int64 (H, W, C) of each image,
    ``variable`` whether the images came as a list. Subclasses add the payload.
    Instances are plain data, picklable, so workers can send them to the writer.
    """

    def __init__(self, labels: np.ndarray, shapes: np.ndarray, variable: bool) -> None:
        self.labels = labels
        self.shapes = shapes
        self.variable = variable

    def __len__(self) -> int:
        return len(self.labels)

    def shape_of_batch(self) -> Optional[Shape]:
        """The (H, W, C) all images share, or None when they differ."""
        if len(self.shapes) == 0:
            return None
        first = self.shapes[0]
        if self.variable and not (self.shapes == first).all():
            return None
        return (int(first[0]), int(first[1]), int(first[2]))


def shape_text(shape: Union[StoreShape, Sequence[int]]) -> str:
    """'32x32x3' for a shape, 'variable' for varying sizes."""
    return VARIABLE if shape == VARIABLE else "x".join(str(int(v)) for v in shape)


def store_shape(shape: Any, where: str = "") -> Optional[StoreShape]:
    """A store shape given by a caller, normalised: None, VARIABLE, or (H, W, C) with (H, W) meaning C = 1.

    Raises StoreArgumentError for anything else.
    """
    if shape is None or shape == VARIABLE:
        return shape
    wrong = f"{where}shape must be (H, W), (H, W, C) or 'variable', got {shape!r}"
    try:
        dims = [int(_validate.positive_int("shape", v, error=StoreArgumentError)) for v in shape]
    except (TypeError, StoreArgumentError):
        raise StoreArgumentError(wrong) from None
    if len(dims) == 2:
        dims.append(1)
    if len(dims) != 3:
        raise StoreArgumentError(wrong)
    return (dims[0], dims[1], dims[2])
