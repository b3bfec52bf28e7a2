"""Every read of every format returns arrays the caller may write to (torch warns on read-only ones)."""
import numpy as np
import pytest

from imgconv import stores

FORMATS = {"lmdb": ".lmdb", "hdf5": ".h5", "png": "_png"}


def _write(path, images, labels):
    with stores.create(path) as writer:
        writer.append(images, labels)
    return path


@pytest.fixture(scope="module", params=sorted(FORMATS))
def fixed(request, tmp_path_factory):
    images = np.random.default_rng(0).integers(0, 256, (6, 4, 5, 3), dtype=np.uint8)
    path = str(tmp_path_factory.mktemp("fixed") / ("store" + FORMATS[request.param]))
    return _write(path, images, np.arange(6))


@pytest.fixture(scope="module", params=sorted(FORMATS))
def varying(request, tmp_path_factory):
    images = [np.zeros((3, 4, 3), np.uint8), np.zeros((5, 2, 1), np.uint8), np.zeros((2, 2, 3), np.uint8)]
    path = str(tmp_path_factory.mktemp("varying") / ("store" + FORMATS[request.param]))
    return _write(path, images, np.arange(3))


def _reads(store):
    """(what, images) of every way to read: one image, a batch, the batches, everything."""
    yield "store[i]", [store[1][0]]
    images, labels = store.read_batch([2, 0, 2])
    yield "read_batch", list(images) if isinstance(images, list) else [images]
    yield "read_batch labels", [labels]
    yield "batches", [image for batch, _ in store.batches(2) for image in batch]
    images, _ = store.read_all()
    yield "read_all", list(images) if isinstance(images, list) else [images]


def _check_writeable(path):
    with stores.open(path) as store:
        for what, arrays in _reads(store):
            for array in arrays:
                assert array.flags.writeable, f"{store.format_name} {what} returned a read-only array"
                array += 1  # what failed on a PNG folder's store[i]


def test_fixed_size_reads_are_writeable(fixed):
    _check_writeable(fixed)


def test_varying_size_reads_are_writeable(varying):
    _check_writeable(varying)
