"""HDF5 stores: plain HDF5, compression, damaged files, direct reads, files independent of batch sizes."""
import hashlib
import os

import h5py
import numpy as np
import pytest
from factories import as_hwc, make_images, target, varying_images, write

from imgconv import stores
from imgconv.errors import StoreError
from imgconv.stores import read_pool


def test_hdf5_file_is_plain_hdf5(tmp_path):
    images = make_images(10)
    path = write(target(tmp_path, "hdf5"), images, np.arange(10), label_names=["cat", "dog"], chunk_images=4)
    with h5py.File(path, "r") as f:
        assert f["images"].shape == (10, 5, 4, 3) and f["images"].dtype == np.uint8
        assert f["images"].chunks == (4, 5, 4, 3) and f["images"].maxshape == (None, 5, 4, 3)
        assert np.array_equal(f["images"][...], images)
        assert f["labels"].dtype == np.int64 and f["labels"][...].tolist() == list(range(10))
        assert f.attrs["imgconv_format"] == "hdf5" and f.attrs["count"] == 10
        assert f.attrs["shape"].tolist() == [5, 4, 3]
        assert [n.decode() if isinstance(n, bytes) else n for n in f.attrs["label_names"]] == ["cat", "dog"]


def test_hdf5_varying_sizes_are_plain_hdf5(tmp_path):
    images = varying_images(7)
    path = write(target(tmp_path, "hdf5"), images, np.arange(7))
    with h5py.File(path, "r") as f:
        for i, image in enumerate(images):
            h, w, c = f["shapes"][i]
            start = f["offsets"][i]
            assert np.array_equal(f["pixels"][start : start + h * w * c].reshape(h, w, c), as_hwc(image))


@pytest.mark.parametrize("compression", [("gzip", 9), ("lzf", None)])
def test_hdf5_compression(tmp_path, compression):
    images = np.zeros((20, 8, 8, 3), np.uint8)
    path = write(target(tmp_path, "hdf5"), images, np.arange(20), compression=compression[0],
                 compression_level=compression[1])
    with stores.open(path) as store:
        assert store.metadata["compression"] == compression[0]
        assert np.array_equal(store.read_batch([19, 2, 2])[0], images[[19, 2, 2]])
    with h5py.File(path, "r") as f:
        assert f["images"].compression == compression[0]


def test_truncated_hdf5(tmp_path):
    path = write(target(tmp_path, "hdf5"), make_images(200, (16, 16, 3)), np.arange(200), batch=50)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(StoreError, match=r"store\.h5"):
        with stores.open(path) as store:
            store.read_all()


def test_hdf5_reader_keeps_reading_its_own_file_after_a_replacement(tmp_path):
    path = target(tmp_path, "hdf5")
    write(path, np.full((40, 8, 8, 3), 1, np.uint8), np.arange(40), batch=40)
    old = stores.open(path, verify=False)  # direct reads are set up lazily, after the replacement
    # Same layout, so the old file's chunk offsets are valid in the new one: only the file differs.
    write(path, np.full((40, 8, 8, 3), 2, np.uint8), np.arange(40) + 100, batch=40, overwrite=True)
    image, label = old[5]
    assert (image == 1).all() and label == 5
    assert (old.read_all()[0] == 1).all()
    old.close()


def test_hdf5_userblock_is_detected_and_read(tmp_path):
    images = make_images(30, (8, 8, 3))
    source = write(target(tmp_path, "hdf5", "plain"), images, np.arange(30), chunk_images=10)
    path = str(tmp_path / "ub.bin")
    with h5py.File(source, "r") as f, h5py.File(path, "w", userblock_size=4096) as g:
        for name in f:
            f.copy(name, g)
        for key, value in f.attrs.items():
            g.attrs[key] = value
    assert stores.detect_format(path) == "hdf5"
    with stores.open(path) as store:
        assert np.array_equal(store.read_all()[0], images) and np.array_equal(store[7][0], images[7])


def test_hdf5_with_a_damaged_object_header_is_a_store_error(tmp_path):
    path = write(target(tmp_path, "hdf5"), make_images(4, (2, 2, 3)), [0, 1, 2, 3])
    raw = open(path, "rb").read()
    headers = [i for i in range(len(raw)) if raw.startswith(b"OHDR", i)]
    assert len(headers) >= 3
    for at in headers:
        damaged = bytearray(raw)
        damaged[at + 8] ^= 1  # HDF5 finds the header checksum wrong
        victim = tmp_path / f"damaged{at}.h5"
        victim.write_bytes(bytes(damaged))
        with pytest.raises(StoreError, match=f"damaged{at}"):
            with stores.open(victim) as store:
                store.read_all()


@pytest.mark.parametrize("options", [{"chunk_images": 4}, {"chunk_images": 5},
                                     {"chunk_images": 4, "compression": "lzf"}])
def test_hdf5_file_bytes_do_not_depend_on_batch_sizes(tmp_path, options):
    # Several write units of images, chunks filled across batches: the same bytes whatever the batching.
    images = np.random.default_rng(3).integers(0, 256, (3000, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(3000) % 10
    digests = set()
    for batch in (7, 100, 1024, 3000):
        path = tmp_path / f"b{batch}.h5"
        with stores.create(path, **options) as writer:
            for i in range(0, 3000, batch):
                chunk = images[i : i + batch].copy()
                writer.append(chunk, labels[i : i + batch])
                chunk[...] = 0  # the caller refills its array: what the writer kept must not change
        with stores.open(path) as store:
            got, got_labels = store.read_all()
            assert np.array_equal(got, images) and np.array_equal(got_labels, labels)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_hdf5_large_reads_split_over_threads_read_and_check_every_part(tmp_path, monkeypatch):
    monkeypatch.setattr(read_pool, "PARALLEL_MIN_BYTES", 1)
    monkeypatch.setattr(read_pool, "read_threads", lambda: 3)
    images = make_images(50, shape=(6, 5, 3), seed=9)
    path = write(target(tmp_path, "hdf5"), images, np.arange(50), chunk_images=4)
    with stores.open(path) as store:
        got, labels = store.read_all()
        assert np.array_equal(got, images) and labels.tolist() == list(range(50))
        assert np.array_equal(np.concatenate([b for b, _ in store.batches(20)]), images)
    with h5py.File(path, "r+") as f:
        f["images"][41, 2, 2, 1] ^= 0xFF  # in the last of the three parts
    with stores.open(path) as store:
        with pytest.raises(StoreError, match="image 41 "):
            store.read_all()
