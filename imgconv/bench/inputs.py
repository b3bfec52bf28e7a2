"""The images the harness measures with: the built-in sample, a CIFAR-10 download, or any source.

:func:`image_set` returns an :class:`ImageSet` of at least the largest cutoff's
images, held in memory (every method stores the same arrays) and also saved
as a stored ``.npz``, which ``imgconv.convert`` reads from. The built-in
sample is generated once and cached; a smaller dataset is repeated to reach
the largest cutoff, as the classic experiment doubles CIFAR-10's 50,000
training images to make 100,000.
"""
import os
from collections import namedtuple

import numpy as np

import imgconv

from ..errors import BenchInputError
from ..sample import PYTHON_ARCHIVE, generate_sample, write_sample

ImageSet = namedtuple("ImageSet", "images labels npz description")
ImageSet.__doc__ = """The harness's images: ``images`` (N, H, W, C) uint8, ``labels`` (N,)
int64, ``npz`` the path of a stored ``.npz`` holding both, and a one-line
``description`` of where they came from."""


def _save_npz(path, images, labels):
    partial = path + ".partial.npz"  # np.savez adds .npz to a name without it
    np.savez(partial, images=images, labels=labels)  # stored, not compressed: convert maps it
    os.replace(partial, path)


def sample_set(count, cache):
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


def _repeat_to(images, labels, count):
    if len(labels) >= count:
        return images[:count], labels[:count], ""
    times = -(-count // len(labels))
    note = f", repeated {times} times to reach {count:,}"
    return (np.concatenate([images] * times)[:count], np.concatenate([labels] * times)[:count], note)


def loaded_set(path, count, workdir, workers, what, **options):
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


def cifar_archive(cache, count):
    """The built-in sample's ``cifar-10-python.tar.gz`` of ``count`` images in ``cache`` (written once)."""
    directory = os.path.join(cache, f"sample-{count}")
    archive = os.path.join(directory, PYTHON_ARCHIVE)
    if not os.path.exists(archive):
        write_sample(directory, count)
    return archive


def sample_train(count, images=None):
    """The training images and labels of the built-in sample of ``count`` images.

    ``images``, an :class:`ImageSet` of the built-in sample, provides them
    when it holds enough (image i of the sample does not depend on the count);
    otherwise they are generated.
    """
    train = count - count // 6  # the sample's split: one sixth is the test batch
    if images is None or len(images.labels) < train:
        images = ImageSet(*generate_sample(count), None, None)
    return images.images[:train], images.labels[:train]
