"""The error rule: bad arguments are ValueError/TypeError/IndexError, bad data the ImgconvError kinds."""
import numpy as np
import pytest

import imgconv
from imgconv import errors, stores


def test_every_exception_class_lives_in_errors_and_the_old_places_still_work():
    from imgconv.cli import UsageError
    from imgconv.convert import ConversionError, Interrupted, WorkerDied
    from imgconv.sources import SkippedImageWarning
    from imgconv.sources.base import SkippedImageWarning as again
    from imgconv.stores import StoreIndexError

    assert UsageError is errors.UsageError and issubclass(UsageError, errors.ImgconvError)
    assert (ConversionError, Interrupted, WorkerDied) == (errors.ConversionError, errors.Interrupted,
                                                          errors.WorkerDied)
    assert SkippedImageWarning is again is errors.SkippedImageWarning
    assert StoreIndexError is errors.StoreIndexError


@pytest.mark.parametrize("fmt, name, options", [
    ("png", "out", {"compress_level": 10}),
    ("png", "out", {"compress_level": "6"}),
    ("lmdb", "out.lmdb", {"records_per_value": 0}),
    ("lmdb", "out.lmdb", {"map_size": -1}),
    ("hdf5", "out.h5", {"compression": "zstd"}),
    ("hdf5", "out.h5", {"compression_level": 4}),  # gzip only
    ("hdf5", "out.h5", {"chunk_images": 0}),
    ("hdf5", "out.h5", {"shape": (0, 3)}),
])
def test_a_bad_writer_option_is_a_value_error_and_still_a_store_error(tmp_path, fmt, name, options):
    with pytest.raises(ValueError) as info:
        stores.create(tmp_path / name, fmt, **options)
    assert isinstance(info.value, errors.StoreArgumentError) and isinstance(info.value, errors.StoreError)
    assert str(tmp_path / name) in str(info.value)


def test_a_bad_batch_is_a_value_error(tmp_path):
    with stores.create(tmp_path / "x.lmdb") as writer:
        with pytest.raises(ValueError, match="uint8"):
            writer.append(np.zeros((1, 2, 2, 3), np.float32), [0])
        with pytest.raises(ValueError, match="labels"):
            writer.append(np.zeros((2, 2, 2, 3), np.uint8), [0])
        writer.append(np.zeros((1, 2, 2, 3), np.uint8), [0])
        with pytest.raises(ValueError, match="the store holds 2x2x3"):
            writer.append(np.zeros((1, 3, 3, 3), np.uint8), [0])


def test_bad_arguments_of_convert_and_readers(tmp_path):
    images = np.zeros((3, 2, 2, 3), np.uint8)
    np.save(tmp_path / "x.npy", images)
    for bad in ({"workers": -1}, {"batch_size": 0}, {"limit": -2}, {"workers": True}):
        with pytest.raises(ValueError):
            imgconv.convert(tmp_path / "x.npy", tmp_path / "y.h5", **bad)
    with stores.create(tmp_path / "z.h5") as writer:
        writer.append(images, [0, 1, 2])
    with imgconv.open(tmp_path / "z.h5") as store:
        with pytest.raises(IndexError):
            store[3]
        with pytest.raises(ValueError):
            store.read_all(out=np.zeros((3, 2, 2, 1), np.uint8))
        with pytest.raises(ValueError):
            store.batches(0)


def test_interrupted_names_the_signal():
    import signal

    assert "SIGTERM" in str(errors.Interrupted(signal.SIGTERM)) and errors.Interrupted(signal.SIGINT).signum == 2
