"""The storage methods the harness compares: imgconv's three stores and the classic recipes.

A :class:`Method` stores a set of images at a path, reads them all back, and
opens the store for random reads. The harness times these, on the same images
in the same process, and checks every read against the images written.
``METHODS`` is the registry, in the order the harness runs and prints them
(for each format the classic method first, then imgconv's).

imgconv's methods are what the package offers a user: a PNG folder written by
``imgconv.convert`` and read by ``imgconv.load`` through a pool of worker
processes (PNG encoding and decoding is the CPU work a second core takes);
LMDB and HDF5 written with ``imgconv.create`` in batches of 1,024 and read with
``imgconv.open(...).read_all()`` in the calling process: the library's API
for images already in memory. The classic methods are in
:mod:`imgconv.bench.classic`, done the plain way.
"""
import os
from collections import namedtuple

import numpy as np

import imgconv

from ..errors import BenchCheckError  # noqa: F401 - harness and memory import it from here
from . import classic

WRITE_BATCH = 1024

Method = namedtuple("Method", "name format family title suffix store store_one read_all open_reader")
Method.__doc__ = """One storage method.

``name`` as given to ``--methods``; ``format`` ("png", "lmdb", "hdf5") pairs
a classic method with imgconv's; ``family`` is "classic" or "imgconv";
``title`` says what it does; ``suffix`` ends its paths.
``store(path, images, labels, env)`` writes a new store (``env`` is the
:class:`Environment`); ``store_one(path, images, labels)`` writes a store of
one image the way a user storing one image would; ``read_all(path, count,
env) -> (images, labels)`` reads it all back; ``open_reader(path, count)``
returns an object with ``read_one(i) -> (image, label)``, ``read_batch(indices)
-> (images, labels)`` and ``close()``."""

Environment = namedtuple("Environment", "workers npz")
Environment.__doc__ = """What the methods need besides the images: the ``workers`` of imgconv's
PNG pool, and ``npz``, a stored ``.npz`` of the whole image set (images and
labels) that ``imgconv.convert`` reads the images from."""


# --------------------------------------------------------------------------- classic


def _classic_png_store(path, images, labels, env=None):
    os.mkdir(path)
    classic.store_png_files(path, images, labels)


def _classic_png_read(path, count, env=None):
    return classic.read_png_files(path, count)


def _classic_lmdb_store(path, images, labels, env=None):
    classic.store_lmdb_pickles(path, images, labels)


def _classic_lmdb_read(path, count, env=None):
    return classic.read_lmdb_pickles(path, count)


def _classic_hdf5_store(path, images, labels, env=None):
    classic.store_hdf5_contiguous(path, images, labels)


def _classic_hdf5_read(path, count, env=None):
    return classic.read_hdf5_contiguous(path)


class ClassicReader:
    """A classic store opened for random reads (``reader_class`` from :mod:`classic`), batch by loop."""

    def __init__(self, reader_class, path, count):
        self._reader = reader_class(path, count)

    def read_one(self, index):
        """``(image, label)`` of image ``index``."""
        return self._reader.read_one(index)

    def read_batch(self, indices):
        """``(images, labels)`` for ``indices``, one lookup per index."""
        return classic.read_batch(self._reader, indices)

    def close(self):
        """Close what the classic reader holds open."""
        self._reader.close()


def _classic_opener(reader_class):
    return lambda path, count: ClassicReader(reader_class, path, count)


# --------------------------------------------------------------------------- imgconv


def _imgconv_write(fmt):
    def store(path, images, labels, env=None):
        with imgconv.create(path, fmt) as writer:
            for start in range(0, len(images), WRITE_BATCH):
                writer.append(images[start : start + WRITE_BATCH], labels[start : start + WRITE_BATCH])

    return store


def _imgconv_png_store(path, images, labels, env):
    imgconv.convert(env.npz, path, format="png", limit=len(images), workers=env.workers)


def _imgconv_png_read(path, count, env):
    return imgconv.load(path, workers=env.workers)


def _imgconv_read_all(path, count, env=None):
    with imgconv.open(path) as store:
        return store.read_all()


class StoreReader:
    """An imgconv store opened for random reads: ``store[i]`` and ``store.read_batch``."""

    def __init__(self, path, count):
        self._store = imgconv.open(path)

    def read_one(self, index):
        """``(image, label)`` of image ``index``."""
        return self._store[index]

    def read_batch(self, indices):
        """``(images, labels)`` for ``indices`` in one call."""
        return self._store.read_batch(indices)

    def close(self):
        """Close the store."""
        self._store.close()


METHODS = {
    method.name: method
    for method in [
        Method("classic-png", "png", "classic", "Image.save / Image.open per file, one labels CSV", "",
               _classic_png_store, _classic_png_store, _classic_png_read, _classic_opener(classic.PngFilesReader)),
        Method("png", "png", "imgconv", "imgconv.convert / imgconv.load through the worker pool", "",
               _imgconv_png_store, _imgconv_write("png"), _imgconv_png_read, StoreReader),
        Method("classic-lmdb", "lmdb", "classic", "a pickled object per key, one transaction", ".lmdb",
               _classic_lmdb_store, _classic_lmdb_store, _classic_lmdb_read,
               _classic_opener(classic.LmdbPicklesReader)),
        Method("lmdb", "lmdb", "imgconv", "imgconv.create in batches / open().read_all()", ".lmdb",
               _imgconv_write("lmdb"), _imgconv_write("lmdb"), _imgconv_read_all, StoreReader),
        Method("classic-hdf5", "hdf5", "classic", "one create_dataset of the whole array, big-endian uint8", ".h5",
               _classic_hdf5_store, _classic_hdf5_store, _classic_hdf5_read,
               _classic_opener(classic.Hdf5ContiguousReader)),
        Method("hdf5", "hdf5", "imgconv", "imgconv.create in batches (chunked) / open().read_all()", ".h5",
               _imgconv_write("hdf5"), _imgconv_write("hdf5"), _imgconv_read_all, StoreReader),
    ]
}
FORMATS = ("png", "lmdb", "hdf5")
FORMAT_TITLES = {"png": "PNG", "lmdb": "LMDB", "hdf5": "HDF5"}


def disk_bytes(path):
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


def same_data(got, images, labels):
    """True when ``got`` (images, labels) holds exactly ``images`` and ``labels``."""
    got_images, got_labels = got
    return (isinstance(got_images, np.ndarray) and got_images.shape == images.shape
            and np.array_equal(got_images, images) and np.array_equal(np.asarray(got_labels), labels))
