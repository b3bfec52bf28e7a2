"""Hugging Face datasets: an Arrow dataset saved with ``save_to_disk``, read with ``load_from_disk``.

As the datasets guide "Use with NumPy" says for N-dimensional arrays: the
images are an ``Array3D(shape=(H, W, C), dtype="uint8")`` feature ("you must
explicitly use the Array feature type and specify the shape"), the labels a
``Value("int64")``; ``Dataset.from_dict(..., features=...)`` then
``save_to_disk``. Reading: ``load_from_disk(path).with_format("numpy")``,
``dataset[:]`` for everything and ``dataset[indices]`` for a batch. The numpy
formatter returns integers as int64 unless given a dtype, so the image
column is formatted with ``dtype=np.uint8`` (a ``format_kwargs`` of
``with_format``) and the label column without: the images come back as
uint8, as written, and the labels whatever their range.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from ..methods import BenchCheckError, Environment, Method
from .common import BASELINE, GROUP, INSTALL, ImagesAndLabels, import_probe, versions_of


def store(path: str, images: np.ndarray, labels: np.ndarray, env: Optional[Environment] = None) -> None:
    """``Dataset.from_dict`` with the Array3D feature, then ``save_to_disk``."""
    import datasets

    datasets.disable_progress_bars()
    features = datasets.Features({"image": datasets.Array3D(shape=images.shape[1:], dtype="uint8"),
                                  "label": datasets.Value("int64")})
    dataset = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    dataset.save_to_disk(path)


class Reader:
    """The dataset at ``path`` formatted as NumPy, one view per column (images as uint8)."""

    def __init__(self, path: str, count: int):
        import datasets

        dataset = datasets.load_from_disk(path)
        if len(dataset) != count:
            raise BenchCheckError(f"hf-datasets: the dataset holds {len(dataset):,} rows, {count:,} were written: "
                                  "the run fails")
        self._views: Tuple[Any, Any] = (dataset.with_format("numpy", columns=["image"], dtype=np.uint8),
                                        dataset.with_format("numpy", columns=["label"]))

    def rows(self, rows: Union[slice, Sequence[int]]) -> ImagesAndLabels:
        """``(images, labels)`` of ``rows`` (a slice or a list of row numbers)."""
        images, labels = self._views
        return images[rows]["image"], np.asarray(labels[rows]["label"], np.int64)

    def read_one(self, index: int) -> Tuple[np.ndarray, int]:
        """``(image, label)`` of row ``index``."""
        images, labels = self._views
        return images[int(index)]["image"], int(labels[int(index)]["label"])

    def read_batch(self, indices: Sequence[int]) -> ImagesAndLabels:
        """``dataset[indices]`` of each view."""
        return self.rows(np.asarray(indices).tolist())

    def close(self) -> None:
        """Drop the views (Arrow releases its memory map when they are collected)."""
        self._views = (None, None)


def read_all(path: str, count: int, env: Optional[Environment] = None) -> ImagesAndLabels:
    """``dataset[:]`` of the NumPy-formatted views."""
    return Reader(path, count).rows(slice(None))


HF_DATASETS = Method(
    "hf-datasets", "arrow", "peer", "datasets Array3D uint8, save_to_disk / load_from_disk, numpy format",
    "HF datasets", store=store, read_all=read_all, open_reader=Reader, baseline=BASELINE, requires=("datasets",),
    install=INSTALL, group=GROUP, versions=versions_of("datasets", "pyarrow"),
    probe=import_probe("datasets", "datasets"),
    doc="https://huggingface.co/docs/datasets/use_with_numpy (Use with NumPy: N-dimensional arrays)",
)
