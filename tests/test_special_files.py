"""FIFOs, sockets and devices where a source expects a file: refused by name, never opened, never waited on.

Opening a FIFO for reading blocks until a writer comes, forever if none
does; every case here runs in a thread with a deadline, and a reader found
stuck is released by opening the FIFO for writing (the test then fails).
"""
import os
import shutil

import numpy as np
import pytest
from factories import finishes
from PIL import Image

import imgconv
from imgconv.errors import SourceError, StoreError, UnknownFormatError
from imgconv.sample import write_sample
from imgconv.sources import NumpySource, open_source


def _refused(function, fifo, *expected):
    outcome = finishes(function, fifo)
    assert outcome is not None, f"blocked on the FIFO {fifo}"
    kind, value = outcome
    assert kind == "error" and isinstance(value, (SourceError, StoreError, UnknownFormatError)), outcome
    for text in expected:
        assert text in str(value), str(value)
    return value


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return write_sample(tmp_path_factory.mktemp("sample"), count=12, seed=2, archives=False)


def test_a_fifo_as_the_labels_csv_is_refused_by_name(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (2, 2)).save(folder / "a.png")
    fifo = tmp_path / "labels.csv"
    os.mkfifo(fifo)
    _refused(lambda: open_source(folder, labels_csv=fifo), fifo, f"{fifo}: a FIFO (named pipe), not a labels CSV")


@pytest.mark.parametrize("form, name", [("python_dir", "data_batch_2"), ("binary_dir", "data_batch_2.bin"),
                                        ("python_dir", "batches.meta")])
def test_a_fifo_as_a_cifar_file_is_refused_by_name(tmp_path, sample, form, name):
    directory = shutil.copytree(getattr(sample, form), tmp_path / "batches")
    os.remove(directory / name)
    os.mkfifo(directory / name)
    source = open_source(directory)
    _refused(lambda: (source.length, source.label_names), directory / name,
             f"{directory / name}: a FIFO (named pipe), not a regular file")


def test_a_device_or_socket_as_a_cifar_batch_is_refused_by_name(tmp_path, sample):
    import socket

    directory = shutil.copytree(sample.binary_dir, tmp_path / "batches")
    os.remove(directory / "test_batch.bin")
    os.symlink("/dev/zero", directory / "test_batch.bin")  # endless zeros: whole records forever
    with pytest.raises(SourceError, match=r"test_batch\.bin: a character device, not a regular file"):
        len(open_source(directory, split="test"))
    os.remove(directory / "test_batch.bin")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(directory / "test_batch.bin"))
    with pytest.raises(SourceError, match=r"test_batch\.bin: a socket, not a regular file"):
        len(open_source(directory, split="test"))
    listener.close()


def test_a_numpy_file_replaced_by_a_fifo_is_refused_by_name(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, images=np.zeros((4, 2, 2, 3), np.uint8), labels=np.arange(4))
    source = NumpySource(path)
    os.remove(path)
    os.mkfifo(path)
    _refused(lambda: list(source.batches(2)), path, f"{path}: a FIFO (named pipe), not a .npy or .npz file")
    _refused(lambda: NumpySource(path), path, f"{path}: a FIFO (named pipe), not a .npy or .npz file")


@pytest.mark.parametrize("name", ["data.npy", "labels.csv", "cifar-10-python.tar.gz", "store.h5"])
def test_a_fifo_given_as_the_source_or_a_store_is_named_not_opened(tmp_path, name):
    # What the messages for "nothing reads this" say: they used to open the path to quote its first bytes.
    fifo = tmp_path / name
    os.mkfifo(fifo)
    _refused(lambda: open_source(fifo), fifo, f"{fifo}: a FIFO (named pipe), not a dataset")
    _refused(lambda: imgconv.open(fifo), fifo, f"{fifo}: a FIFO (named pipe), not a store")
