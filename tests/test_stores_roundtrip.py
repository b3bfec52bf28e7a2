"""Every format: round trips, batching, processes, the registry, index checks, read-only media, label checksums."""
import json
import multiprocessing
import os
import pickle

import h5py
import numpy as np
import pytest
from factories import (
    FORMATS,
    SUFFIX,
    as_hwc,
    change_label,
    leftovers,
    make_images,
    run_without_write_access,
    target,
    tree_digest,
    varying_images,
    write,
)

from imgconv import kernels, stores
from imgconv.errors import StoreError, UnknownFormatError
from imgconv.stores import StoreIndexError, hdf5
from imgconv.stores.hdf5 import writer as hdf5_writer
from imgconv.stores.lmdb import writer as lmdb_writer


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", [(5, 4, 3), (6, 3, 1)], ids=["rgb", "gray"])
def test_round_trip_fixed_shape(tmp_path, fmt, shape):
    images = make_images(11, shape)
    labels = np.arange(11) * 7 - 3
    path = write(target(tmp_path, fmt), images, labels, label_names=["a", "b"], source="unit test")
    with stores.open(path) as store:
        assert len(store) == 11 and store.shape == shape and not store.variable
        meta = store.metadata
        assert meta["format"] == fmt and meta["count"] == 11 and meta["dtype"] == "uint8"
        assert meta["label_names"] == ["a", "b"] and meta["source"] == "unit test"
        assert meta["imgconv_version"] and meta["format_version"] == {"lmdb": 2, "hdf5": 3, "png": 3}[fmt]
        image, label = store[4]
        assert image.dtype == np.uint8 and np.array_equal(image, images[4]) and label == labels[4]
        assert np.array_equal(store[-1][0], images[-1])
        indices = [9, 2, 2, 0, 10, 2, 5]
        got, got_labels = store.read_batch(indices)
        assert got.shape == (7, *shape) and np.array_equal(got, images[indices])
        assert got_labels.dtype == np.int64 and np.array_equal(got_labels, labels[indices])
        everything, all_labels = store.read_all()
        assert np.array_equal(everything, images) and np.array_equal(all_labels, labels)
        parts = list(store.batches(4))
        assert [len(p[1]) for p in parts] == [4, 4, 3]
        assert np.array_equal(np.concatenate([p[0] for p in parts]), images)
        assert [int(label) for _, label in store] == labels.tolist()


def test_grayscale_given_as_three_dimensional_batch(tmp_path):
    images = make_images(4, (3, 2, 1))
    path = write(target(tmp_path, "lmdb"), images[..., 0], [0, 1, 2, 3])
    with stores.open(path) as store:
        assert store.shape == (3, 2, 1)
        assert np.array_equal(store.read_all()[0], images)


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_varying_sizes(tmp_path, fmt):
    images = varying_images(13)
    labels = np.arange(13)
    options = {"records_per_value": 4} if fmt == "lmdb" else {}
    path = write(target(tmp_path, fmt), images, labels, batch=5, **options)
    with stores.open(path) as store:
        assert store.variable and store.shape == "variable" and len(store) == 13
        got, got_labels = store.read_batch([12, 0, 5, 5, 7])
        assert isinstance(got, list)
        for image, i in zip(got, [12, 0, 5, 5, 7]):
            assert np.array_equal(image, as_hwc(images[i]))
        assert got_labels.tolist() == [12, 0, 5, 5, 7]
        assert np.array_equal(store[3][0], as_hwc(images[3]))
        assert all(np.array_equal(a, as_hwc(b)) for a, b in zip(store.read_all()[0], images))


@pytest.mark.parametrize("fmt", ["lmdb", "hdf5"])
def test_read_into_reused_array(tmp_path, fmt):
    images = make_images(9)
    path = write(target(tmp_path, fmt), images, np.arange(9))
    out = np.zeros_like(images)
    with stores.open(path) as store:
        got, _ = store.read_all(out=out)
        assert got is out and np.array_equal(out, images)
        batch_out = np.zeros((3, 5, 4, 3), np.uint8)
        store.read_batch([8, 1, 8], out=batch_out)
        assert np.array_equal(batch_out, images[[8, 1, 8]])
        with pytest.raises(StoreError, match="out must be"):
            store.read_batch([1, 2], out=batch_out)


@pytest.mark.parametrize("fmt", ["lmdb", "hdf5"])
def test_empty_store_with_declared_shape(tmp_path, fmt):
    path = target(tmp_path, fmt)
    with stores.create(path, shape=(2, 3)):
        pass
    with stores.open(path) as store:
        assert len(store) == 0 and store.shape == (2, 3, 1)
        images, labels = store.read_all()
        assert images.shape == (0, 2, 3, 1) and labels.shape == (0,)


def test_empty_store_without_shape_is_refused(tmp_path):
    path = target(tmp_path, "lmdb")
    with pytest.raises(StoreError, match="no image was appended"):
        with stores.create(path):
            pass
    assert not os.path.exists(path) and not leftovers(tmp_path)




@pytest.mark.parametrize("fmt", FORMATS)
def test_output_does_not_depend_on_batch_sizes(tmp_path, fmt, monkeypatch):
    # Small transaction / write-unit sizes make the 400 images span many of them.
    monkeypatch.setattr(lmdb_writer, "TXN_BYTES", 2000)
    monkeypatch.setattr(hdf5_writer, "WRITE_UNIT_BYTES", 600)
    images = make_images(400, (4, 4, 3))
    labels = np.arange(400) % 7
    options = {"lmdb": {"records_per_value": 6, "map_size": 1 << 20}, "hdf5": {"chunk_images": 5}, "png": {}}[fmt]
    digests = {
        tree_digest(write(target(tmp_path, fmt, f"b{batch}"), images, labels, batch=batch, **options))
        for batch in (400, 1, 7, 64)
    }
    assert len(digests) == 1


@pytest.mark.parametrize("fmt, sizes", [("png", "fixed"), ("lmdb", "fixed"), ("hdf5", "fixed"),
                                         ("png", "varying"), ("lmdb", "varying"), ("hdf5", "varying")])
def test_encoded_batches_from_workers_equal_append(tmp_path, fmt, sizes):
    images = make_images(10) if sizes == "fixed" else varying_images(10)
    options = {"compress_level": 9} if fmt == "png" else {}
    first = write(target(tmp_path, fmt, "appended"), images, np.arange(10), **options)
    second = target(tmp_path, fmt, "encoded")
    with stores.create(second, **options) as writer:
        encode = pickle.loads(pickle.dumps(writer.encoder()))  # what a worker receives
        for start, stop in ((0, 4), (4, 10)):
            encoded = encode(images[start:stop], np.arange(start, stop))
            writer.write_encoded(pickle.loads(pickle.dumps(encoded)))  # what it sends back
    assert tree_digest(first) == tree_digest(second)
    with stores.open(second) as store:
        got, labels = store.read_all()
        assert all(np.array_equal(a, as_hwc(b)) for a, b in zip(got, images)) and labels.tolist() == list(range(10))


@pytest.mark.parametrize("fmt", FORMATS)
def test_writer_does_not_keep_the_callers_buffer(tmp_path, fmt):
    images = make_images(6)
    buffer = np.empty((3, 5, 4, 3), np.uint8)
    path = target(tmp_path, fmt)
    with stores.create(path) as writer:
        for start in (0, 3):
            buffer[...] = images[start : start + 3]  # a loader refilling one buffer
            writer.append(buffer, [start, start + 1, start + 2])
        buffer[...] = 0
    with stores.open(path) as store:
        assert np.array_equal(store.read_all()[0], images)


def test_writer_cannot_be_pickled(tmp_path):
    with stores.create(target(tmp_path, "lmdb")) as writer:
        writer.append(make_images(1), [0])
        with pytest.raises(TypeError, match="only writer"):
            pickle.dumps(writer)


def _read_in_child(store):
    images, labels = store.read_batch([3, 0, 3])
    return os.getpid(), images, labels, store[1][1]


@pytest.mark.parametrize("fmt", FORMATS)
def test_store_opened_before_fork_works_in_children(tmp_path, fmt):
    images = make_images(6)
    path = write(target(tmp_path, fmt), images, np.arange(6) + 10)
    store = stores.open(path)
    store.read_batch([0, 1])  # handles are open in the parent
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = pool.map(_read_in_child, [store] * 2, chunksize=1)
    for pid, got, labels, one in results:
        assert pid != os.getpid()
        assert np.array_equal(got, images[[3, 0, 3]]) and labels.tolist() == [13, 10, 13] and one == 11
    assert np.array_equal(store.read_batch([5])[0], images[[5]])  # the parent's handles still work
    clone = pickle.loads(pickle.dumps(store))
    assert clone.path == store.path and np.array_equal(clone[2][0], images[2])
    clone.close()
    store.close()


@pytest.mark.parametrize("fmt", FORMATS)
def test_reader_sees_a_store_replaced_at_the_same_path(tmp_path, fmt):
    path = write(target(tmp_path, fmt), make_images(3), [0, 1, 2])
    old = stores.open(path)  # left open on purpose
    write(path, make_images(5), [5, 6, 7, 8, 9], overwrite=True)
    with stores.open(path) as new:
        assert len(new) == 5 and new[4][1] == 9
    assert len(old) == 3 and old[2][1] == 2  # the old reader keeps its own (now unlinked) store
    old.close()




@pytest.mark.parametrize("fmt", FORMATS)
def test_store_on_a_read_only_directory(shared_dir, fmt):
    images = make_images(5)
    folder = os.path.join(shared_dir, "media")
    os.mkdir(folder)
    path = write(os.path.join(folder, "store" + SUFFIX[fmt]), images, np.arange(5))
    for d, _dirs, files in os.walk(folder):
        for f in files:
            os.chmod(os.path.join(d, f), 0o444)
    for d, _dirs, _files in os.walk(folder, topdown=False):
        os.chmod(d, 0o555)
    script = f"""
import json, os, numpy as np
from imgconv import stores
folder, path = {folder!r}, {path!r}
def listing():
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)
before = listing()
assert not os.access(folder, os.W_OK), "the directory is writable: this check would prove nothing"
with stores.open(path) as store:
    images, labels = store.read_batch([4, 0])
print(json.dumps({{"images": images.tolist(), "labels": labels.tolist(), "same_files": listing() == before}}))
"""
    result = run_without_write_access(script)
    assert np.array_equal(np.array(result["images"], np.uint8), images[[4, 0]]) and result["labels"] == [4, 0]
    assert result["same_files"]  # a reader creates nothing (no lock file)


@pytest.mark.parametrize("fmt", FORMATS)
def test_index_out_of_range(tmp_path, fmt):
    path = write(target(tmp_path, fmt), make_images(3), [0, 1, 2])
    with stores.open(path) as store:
        with pytest.raises(StoreIndexError, match="index 3 is out of range") as info:
            store[3]
        assert isinstance(info.value, IndexError) and path in str(info.value)
        with pytest.raises(StoreIndexError, match="index -4"):
            store.read_batch([0, -4])
        with pytest.raises(TypeError):
            store.read_batch([0.5])


def test_not_a_store(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"hello, not HDF5")
    with pytest.raises(UnknownFormatError, match="junk.h5.*not an HDF5 file"):
        stores.open(junk)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnknownFormatError, match="empty directory"):
        stores.open(tmp_path / "empty")
    with pytest.raises(StoreError, match="no such file"):
        stores.open(tmp_path / "missing")
    with pytest.raises(UnknownFormatError, match="unknown store format 'zip'"):
        stores.create(tmp_path / "x", "zip")
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["images"] = np.zeros((2, 2, 2, 3), np.uint8)
    with pytest.raises(StoreError, match="without imgconv metadata"):
        stores.open(plain)


def test_format_from_suffix_and_detection(tmp_path):
    assert stores.format_for_path("a/b.lmdb") == "lmdb"
    assert stores.format_for_path("b.HDF5") == "hdf5" and stores.format_for_path("b.h5") == "hdf5"
    assert stores.format_for_path("folder") == "png"
    path = write(str(tmp_path / "named.bin"), make_images(2), [0, 1], fmt="hdf5")
    assert stores.detect_format(path) == "hdf5"
    assert isinstance(stores.open(path), hdf5.Hdf5Reader)


def test_unknown_writer_option(tmp_path):
    with pytest.raises(TypeError):
        stores.create(tmp_path / "x.lmdb", chunk_images=3)


@pytest.mark.parametrize("fmt", FORMATS)
def test_batches_range_is_checked(tmp_path, fmt):
    images = make_images(5)
    path = write(target(tmp_path, fmt), images, np.arange(5))
    with stores.open(path) as store:
        for start, stop in ((-1, None), (-3, 2), (4, 2), (6, None)):
            with pytest.raises(StoreIndexError, match="not a range"):
                store.batches(2, start, stop)
        assert list(store.batches(2, 5)) == []
        parts = list(store.batches(2, 1, 4))
        assert np.array_equal(np.concatenate([p[0] for p in parts]), images[1:4])


@pytest.mark.parametrize("fmt", FORMATS)
def test_unsigned_indices_above_int64_are_out_of_range(tmp_path, fmt):
    path = write(target(tmp_path, fmt), make_images(3), [0, 1, 2])
    with stores.open(path) as store:
        with pytest.raises(StoreIndexError, match=str(2**64 - 1)):
            store.read_batch(np.array([0, 2**64 - 1], np.uint64))  # would wrap to -1, the last image
        assert store.read_batch(np.array([2, 0], np.uint64))[1].tolist() == [2, 0]




@pytest.mark.parametrize("fmt", ["hdf5", "png"])
@pytest.mark.parametrize("sizes", ["fixed", "varying"])
def test_a_changed_label_is_caught(tmp_path, fmt, sizes):
    images = make_images(6) if sizes == "fixed" else varying_images(6)
    path = write(target(tmp_path, fmt), images, np.arange(6) + 10)
    change_label(path, fmt, 3, 77)
    with stores.open(path) as store:
        assert store[2][1] == 12
        for read in (lambda: store[3], lambda: store.read_batch([0, 3]), store.read_all):
            with pytest.raises(StoreError, match=r"image 3 .*checksum"):
                read()
    with stores.open(path, verify=False) as store:
        assert store[3][1] == 77


@pytest.mark.parametrize("fmt", ["hdf5", "png"])
def test_version_1_stores_with_pixel_only_checksums_still_read(tmp_path, fmt):
    images = make_images(5)
    path = write(target(tmp_path, fmt), images, np.arange(5) + 10)
    pixel_only = kernels.crc32c_images(images)
    if fmt == "hdf5":
        with h5py.File(path, "r+") as f:
            f["crc32c"][...] = pixel_only
            f.attrs["imgconv_format_version"] = 1
            del f.attrs["metadata_crc32c"]  # version 1 writers had no metadata checksum
    else:
        rows = open(os.path.join(path, "labels.csv")).read().splitlines()
        rows[1:] = [",".join(row.split(",")[:3] + [f"{int(c):08x}"]) for row, c in zip(rows[1:], pixel_only)]
        open(os.path.join(path, "labels.csv"), "w").write("\n".join(rows) + "\n")
        meta = json.load(open(os.path.join(path, "manifest.json")))
        meta["format_version"] = 1
        del meta["metadata_crc32c"]
        json.dump(meta, open(os.path.join(path, "manifest.json"), "w"))
    with stores.open(path) as store:
        assert store.metadata["format_version"] == 1
        got, labels = store.read_all()
        assert np.array_equal(got, images) and labels.tolist() == [10, 11, 12, 13, 14]
        assert store[4][1] == 14
