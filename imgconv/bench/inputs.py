"""The images the harness measures with: the built-in sample, a CIFAR-10 download, or any source.

:func:`image_set` returns an :class:`ImageSet` of at least the largest cutoff's
images, held in memory (every method stores the same arrays) and also saved
as a stored ``.npz``, which ``imgconv.convert`` reads from. The built-in
sample is generated once and cached; a smaller dataset is repeated to reach
the largest cutoff, as the classic experiment doubles CIFAR-10's 50,000
training images to make 100,000.

The cache (:func:`default_cache`, or ``--cache DIR``) keeps the built-in
sample between runs: ``sample-N.npz`` for the images of each largest cutoff
used, and ``sample-N/cifar-10-python.tar.gz`` for the conversion experiment.
:func:`clear_cache` removes exactly those.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Any, List, NamedTuple, Optional, Tuple

import numpy as np

import imgconv

from ..errors import BenchInputError
from ..sample import PYTHON_ARCHIVE, generate_sample, write_sample

CACHE_NAME = "imgconv-bench-cache"
_CACHED = re.compile(r"sample-\d+(\.partial|\.npz|\.npz\.partial\.npz)?$")


class ImageSet(NamedTuple):
    """The harness's images: ``images`` (N, H, W, C) uint8, ``labels`` (N,) int64, ``npz`` the
    path of a stored ``.npz`` holding both, and a one-line ``description`` of where they came from."""

    images: np.ndarray
    labels: np.ndarray
    npz: Optional[str]
    description: Optional[str]


def _save_npz(path: str, images: np.ndarray, labels: np.ndarray) -> None:
    partial = path + ".partial.npz"  # np.savez adds .npz to a name without it
    np.savez(partial, images=images, labels=labels)  # stored, not compressed: convert maps it
    os.replace(partial, path)


def sample_set(count: int, cache: str) -> ImageSet:
    """The first ``count`` images of the built-in sample, cached as ``sample-{count}.npz`` in ``cache``."""
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, f"sample-{count}.npz")
    if os.path.exists(path):
        with np.load(path) as data:
            images, labels = data["images"], data["labels"]
    else:
        images, labels = generate_sample(count)
        _save_npz(path, images, labels)
    return ImageSet(images, labels, path, f"the built-in sample ({count:,} images of 32x32x3)")


def _repeat_to(images: np.ndarray, labels: np.ndarray, count: int) -> Tuple[np.ndarray, np.ndarray, str]:
    if len(labels) >= count:
        return images[:count], labels[:count], ""
    times = -(-count // len(labels))
    note = f", repeated {times} times to reach {count:,}"
    return (np.concatenate([images] * times)[:count], np.concatenate([labels] * times)[:count], note)


def loaded_set(path: str, count: int, workdir: str, workers: int, what: str, **options: Any) -> ImageSet:
    """The images of the dataset at ``path`` (read with ``imgconv.load``), repeated up to ``count``.

    The ``.npz`` goes to ``workdir`` (removed with it). Raises BenchInputError
    for a dataset without images or with images of varying sizes.
    """
    images, labels = imgconv.load(path, workers=workers, **options)
    if isinstance(images, list):
        raise BenchInputError(f"{path}: the images vary in size; the classic methods need one size "
                              "(make them one size first: python -m imgconv convert SRC DST --resize WxH)")
    if len(labels) == 0:
        raise BenchInputError(f"{path}: no images to measure with")
    found = len(labels)
    images, labels, note = _repeat_to(images, labels, count)
    if labels.min() < 0 or labels.max() > 255:
        # The classic HDF5 recipe stores labels as uint8: keep them in its range.
        labels = labels % 256
        note += ", labels taken modulo 256"
    npz = os.path.join(workdir, "images.npz")
    _save_npz(npz, images, labels)
    shape = "x".join(map(str, images.shape[1:]))
    return ImageSet(images, labels, npz, f"{what} {path} ({found:,} images of {shape}{note})")


def cifar_archive(cache: str, count: int) -> str:
    """The built-in sample's ``cifar-10-python.tar.gz`` of ``count`` images in ``cache`` (written once).

    Only the archive is kept: the sample's other forms (the batch
    directories, the binary archive) would triple what the cache holds.
    """
    directory = os.path.join(cache, f"sample-{count}")
    archive = os.path.join(directory, PYTHON_ARCHIVE)
    if not os.path.exists(archive):
        # Written beside and renamed, so that an interrupted run leaves no half archive to reuse.
        partial = directory + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        files = write_sample(partial, count)
        shutil.rmtree(files.python_dir)
        shutil.rmtree(files.binary_dir)
        os.unlink(files.binary_archive)
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(partial, directory)
    return archive


def sample_train(count: int, images: Optional[ImageSet] = None) -> Tuple[np.ndarray, np.ndarray]:
    """The training images and labels of the built-in sample of ``count`` images.

    ``images``, an :class:`ImageSet` of the built-in sample, provides them
    when it holds enough (image i of the sample does not depend on the count);
    otherwise they are generated.
    """
    train = count - count // 6  # the sample's split: one sixth is the test batch
    if images is None or len(images.labels) < train:
        generated, generated_labels = generate_sample(count)
        images = ImageSet(generated, generated_labels, None, None)
    return images.images[:train], images.labels[:train]


def default_cache() -> str:
    """The cache directory when ``--cache`` is not given: ``imgconv-bench-cache`` in the system temp dir."""
    return os.path.join(tempfile.gettempdir(), CACHE_NAME)


def clear_cache(cache: str) -> Tuple[List[str], int]:
    """Remove what the harness keeps in ``cache`` (``sample-N.npz``, ``sample-N/``); returns (paths, bytes freed).

    Nothing else in the directory is touched (``--cache`` may name a
    directory that holds other files); the directory itself goes when it is
    left empty.
    """
    if not os.path.isdir(cache):
        return [], 0
    removed, freed = [], 0
    for name in sorted(os.listdir(cache)):
        path = os.path.join(cache, name)
        if not _CACHED.match(name) or os.path.islink(path):
            continue
        if os.path.isdir(path):
            freed += sum(os.lstat(os.path.join(root, f)).st_size for root, _, files in os.walk(path) for f in files)
            shutil.rmtree(path)
        else:
            freed += os.lstat(path).st_size
            os.unlink(path)
        removed.append(path)
    if not os.listdir(cache):
        os.rmdir(cache)
    return removed, freed
