"""The fixed costs cut for small stores keep every result: no sync on request, no pool where nothing
is decoded, store[i] checked in one step, HDF5 and PNG folder openings that remember or skip work."""
import os
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

import imgconv
from imgconv.errors import StoreError
from imgconv.load import load
from imgconv.pipeline import pool, workers_worth_starting
from imgconv.stores import png_folder

IMAGES = np.random.default_rng(3).integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
LABELS = np.arange(12, dtype=np.int64) % 5


@pytest.mark.parametrize("fmt", ["png", "lmdb", "hdf5"])
def test_a_store_written_without_sync_reads_back_the_same(tmp_path, fmt, monkeypatch):
    synced = []
    monkeypatch.setattr(imgconv._platform, "fsync_dir", lambda path: synced.append(path))
    with imgconv.create(tmp_path / f"s-{fmt}", fmt, durable=False) as writer:
        writer.append(IMAGES, LABELS)
    assert synced == []  # the rename is not synced
    with imgconv.open(tmp_path / f"s-{fmt}") as store:
        images, labels = store.read_all()
    np.testing.assert_array_equal(images, IMAGES)
    np.testing.assert_array_equal(labels, LABELS)


def test_a_sharded_dataset_written_without_sync_syncs_nothing(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(imgconv._platform, "fsync_dir", lambda path: synced.append(path))
    monkeypatch.setattr(imgconv.datasets.manifest.os, "fsync", lambda fd: synced.append(fd))
    np.save(tmp_path / "images.npy", IMAGES)
    imgconv.convert(tmp_path / "images.npy", tmp_path / "s.lmdb", workers=0, shard_size=5,
                    store_options={"durable": False})
    assert synced == []
    with imgconv.open(tmp_path / "s.lmdb") as store:
        np.testing.assert_array_equal(store.read_all()[0], IMAGES)


def test_no_sync_is_a_flag_of_convert(tmp_path):
    np.save(tmp_path / "images.npy", IMAGES)
    np.save(tmp_path / "labels.npy", LABELS)
    done = subprocess.run([sys.executable, "-m", "imgconv", "convert", tmp_path / "images.npy", tmp_path / "s.lmdb",
                           "--no-sync"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with imgconv.open(tmp_path / "s.lmdb") as store:
        np.testing.assert_array_equal(store.read_all()[0], IMAGES)


def test_workers_are_started_only_for_heavy_work():
    assert workers_worth_starting(2, 10, heavy=False) == 0
    assert workers_worth_starting(2, 1, heavy=True) == 0
    assert workers_worth_starting(4, 3, heavy=True) == 3
    assert workers_worth_starting(2, None, heavy=True) == 2
    assert workers_worth_starting(0, 10, heavy=True) == 0


def _started_workers(monkeypatch, module):
    """The ``workers`` each local engine of ``module`` is asked for, as a list that fills as they are."""
    asked = []
    real = module.local_engine

    def engine(workers, *args, **kwargs):
        asked.append(workers)
        return real(workers, *args, **kwargs)

    monkeypatch.setattr(module, "local_engine", engine)
    return asked


def test_a_sharded_conversion_starts_workers_only_for_heavy_work(tmp_path, monkeypatch):
    import imgconv.datasets.convert as sharded

    asked = _started_workers(monkeypatch, sharded)
    np.save(tmp_path / "images.npy", IMAGES)
    imgconv.convert(tmp_path / "images.npy", tmp_path / "s.lmdb", workers=2, batch_size=4, shard_size=4)
    imgconv.convert(tmp_path / "images.npy", tmp_path / "s", workers=2, batch_size=4, shard_size=4)
    assert asked == [0, 2]  # arrays into LMDB: copies; into PNG: encoding


def test_several_image_folders_are_decoded_by_workers(tmp_path, monkeypatch):
    import importlib

    from PIL import Image

    converting = importlib.import_module("imgconv.convert")  # the module, not the function of its name

    for part in ("a", "b"):
        for i in range(6):
            (tmp_path / f"part-{part}" / "c").mkdir(parents=True, exist_ok=True)
            Image.fromarray(IMAGES[i]).save(tmp_path / f"part-{part}" / "c" / f"{i}.png")
    assert imgconv.open_source(str(tmp_path / "part-*")).heavy_decoding
    asked = _started_workers(monkeypatch, converting)
    imgconv.convert(str(tmp_path / "part-*"), tmp_path / "s.lmdb", workers=2, batch_size=4)
    assert asked == [2]


@pytest.mark.parametrize("name", ["s.lmdb", "s.h5"])
def test_loading_a_store_starts_no_pool(tmp_path, name, monkeypatch):
    with imgconv.create(tmp_path / name) as writer:
        writer.append(IMAGES, LABELS)

    def no_pool(*args, **kwargs):
        raise AssertionError("a worker pool was started to copy a store")

    monkeypatch.setattr(pool.ProcessPoolEngine, "run", no_pool)
    images, labels = load(tmp_path / name, workers=2, batch_size=4)
    np.testing.assert_array_equal(images, IMAGES)
    np.testing.assert_array_equal(labels, LABELS)
    imgconv.convert(tmp_path / name, tmp_path / "copy.lmdb", workers=2, batch_size=4)


@pytest.mark.parametrize("fmt", ["png", "lmdb", "hdf5"])
def test_store_item_is_checked(tmp_path, fmt):
    with imgconv.create(tmp_path / f"s-{fmt}", fmt) as writer:
        writer.append(IMAGES, LABELS)
    with imgconv.open(tmp_path / f"s-{fmt}") as store:
        for i in (0, 7, 11):
            image, label = store[i]
            np.testing.assert_array_equal(image, IMAGES[i])
            assert label == LABELS[i] and type(label) is int


def test_an_hdf5_store_changed_after_an_opening_is_checked_again(tmp_path):
    path = tmp_path / "s.h5"
    with imgconv.create(path) as writer:
        writer.append(IMAGES, LABELS)
    with imgconv.open(path) as store:
        assert store[3][1] == LABELS[3]
    with h5py.File(path, "r+") as f:
        f.attrs["count"] = 11  # no longer what the metadata checksum covers
    with pytest.raises(StoreError, match="s.h5"):
        imgconv.open(path)


def test_the_fast_labels_parse_gives_what_the_row_by_row_parse_gives():
    rows = [["0", "images/000/000000.png", "3", "0a0b0c0d"], ["1", "images/000/000001.png", "-2", "FFFFFFFF"]]
    text = ",".join(png_folder.HEADER) + "\n" + "".join(",".join(r) + "\n" for r in rows)
    paths, labels, checksums = png_folder._parse_as_written(text)
    want_paths, want_labels, want_checksums = png_folder._parse_indexed(rows, "x", "labels.csv", True)
    assert list(paths) == list(want_paths)
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_array_equal(checksums, want_checksums)
    # Anything else is left to the row-by-row parse, which explains what is wrong.
    assert png_folder._parse_as_written(text.replace("\n1,", "\n5,")) is None
    assert png_folder._parse_as_written(text + "2,images/../x.png,1,00000000\n") is None


@pytest.mark.parametrize("fmt", ["png", "lmdb", "hdf5"])
def test_the_removed_partial_directory_is_closed_in_the_background(tmp_path, fmt, monkeypatch):
    # Closing the last descriptor of a removed directory frees its block, which can wait on the disk:
    # the writer hands it to the closing thread instead of waiting.
    handed = []
    monkeypatch.setattr(imgconv._platform, "close_in_background", lambda fd: handed.append(fd))
    with imgconv.create(tmp_path / f"s-{fmt}", fmt) as writer:
        writer.append(IMAGES, LABELS)
    assert len(handed) == 1
    os.close(handed[0])  # it was still open: this close is the only one
    assert sorted(os.listdir(tmp_path)) == [f"s-{fmt}"]  # the partial directory is gone all the same


def test_descriptors_closed_in_the_background_are_closed():
    pipes = [os.pipe() for _ in range(3)]
    for _, write_end in pipes:
        imgconv._platform.close_in_background(write_end)
    assert imgconv._platform.wait_for_background_closes()
    for read_end, _ in pipes:
        assert os.read(read_end, 1) == b""  # end of file: the write end, its only copy, is closed
        os.close(read_end)


def test_too_many_pending_closes_are_done_at_once(monkeypatch):
    monkeypatch.setattr(imgconv._platform, "MAX_PENDING_CLOSES", 0)
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    imgconv._platform.close_in_background(write_end)
    assert os.read(read_end, 1) == b""  # closed before the call returned (else: BlockingIOError)
    os.close(read_end)


def test_a_close_is_done_at_once_where_no_thread_can_start(monkeypatch):
    def no_thread(self):
        raise RuntimeError("can't create new thread at interpreter shutdown")

    closer = imgconv._platform.PerProcess(imgconv._platform._Closer)
    monkeypatch.setattr(imgconv._platform, "_CLOSER", closer)
    monkeypatch.setattr(imgconv._platform.threading.Thread, "start", no_thread)
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    imgconv._platform.close_in_background(write_end)
    assert os.read(read_end, 1) == b""
    assert closer.get().pending() == 0  # not left waiting for a thread that never came
    os.close(read_end)


def test_the_closing_thread_ends_when_idle_and_comes_back(monkeypatch):
    closer = imgconv._platform.PerProcess(imgconv._platform._Closer)
    monkeypatch.setattr(imgconv._platform, "_CLOSER", closer)
    monkeypatch.setattr(imgconv._platform, "CLOSER_IDLE_SECONDS", 0.05)
    for _ in range(2):
        read_end, write_end = os.pipe()
        imgconv._platform.close_in_background(write_end)
        assert imgconv._platform.wait_for_background_closes()
        assert os.read(read_end, 1) == b""
        os.close(read_end)
        deadline = time.monotonic() + 10
        while closer.get()._thread is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert closer.get()._thread is None  # no thread left for a later fork to copy
