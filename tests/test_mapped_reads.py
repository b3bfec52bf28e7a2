"""Random batches from a read-only map of the store's file: the ``gather_rows`` kernel in both
backends, and LMDB and HDF5 ``read_batch`` through the map giving exactly what the per-value and
per-image paths give (random, repeated and unsorted indices, the last partial chunk), refusing
damage by the image's name, after fork too; stores the map cannot serve keep the old paths."""
import os

import h5py
import numpy as np
import pytest
from factories import make_images, target, varying_images, write

from imgconv import _pure, kernels, stores
from imgconv.errors import StoreError
from imgconv.stores.lmdb.mapped import MappedValues


def _compiled():
    return pytest.importorskip("imgconv._core")


# the kernel ---------------------------------------------------------------


def _rows_reference(data, offsets, p):
    return np.stack([data[o : o + p] for o in offsets]) if len(offsets) else np.zeros((0, p), np.uint8)


@pytest.mark.parametrize("p", [0, 1, 7, 64, 3072])
def test_gather_rows_copies_and_checksums_rows_in_both_backends(backend, p):
    rng = np.random.default_rng(p)
    data = rng.integers(0, 256, 20_000, dtype=np.uint8)
    offsets = rng.integers(0, data.size - p + 1, 57).astype(np.int64)
    offsets[:3] = [0, data.size - p, offsets[5]]  # both ends, a repeat
    rows = np.full((57, p), 7, np.uint8)
    crcs = np.zeros(57, np.uint32)
    assert kernels.gather_rows(data.tobytes(), offsets, rows, crcs) == -1
    assert np.array_equal(rows, _rows_reference(data, offsets, p))
    assert np.array_equal(crcs, [kernels.crc32c(row) for row in rows])
    plain = np.zeros((57, p), np.uint8)
    assert kernels.gather_rows(data, offsets, plain) == -1
    assert np.array_equal(plain, rows)


def test_gather_rows_continues_the_checksums_over_the_tails(backend):
    from imgconv.checksum import image_checksums
    rng = np.random.default_rng(9)
    images = rng.integers(0, 256, (30, 4, 5, 3), dtype=np.uint8)
    data = images.reshape(-1)
    labels = rng.integers(-(2**63), 2**63 - 1, 30, dtype=np.int64)
    indices = rng.permutation(30)
    offsets = indices * 60
    rows, crcs = np.zeros((30, 60), np.uint8), np.zeros(30, np.uint32)
    assert kernels.gather_rows(data, offsets, rows, crcs, np.stack([labels, indices], 1)) == -1
    assert np.array_equal(rows, data.reshape(30, 60)[indices])
    assert np.array_equal(crcs, image_checksums(images[indices], labels, indices))
    assert kernels.gather_rows(data, offsets, rows, crcs, labels[:, None]) == -1
    assert np.array_equal(crcs, image_checksums(images[indices], labels))
    with pytest.raises(ValueError, match="tails"):
        kernels.gather_rows(data, offsets, rows, None, labels[:, None])
    with pytest.raises(ValueError, match="tails"):
        kernels.gather_rows(data, offsets, rows, crcs, labels)


@pytest.mark.parametrize("bad_offset", [-1, 20_000 - 63, 20_000, 2**62])
def test_gather_rows_stops_at_the_first_row_outside_the_data(backend, bad_offset):
    data = np.arange(20_000, dtype=np.uint32).view(np.uint8)[:20_000].copy()
    offsets = np.array([5, 100, bad_offset, 7], np.int64)
    rows = np.zeros((4, 64), np.uint8)
    crcs = np.zeros(4, np.uint32)
    assert kernels.gather_rows(data, offsets, rows, crcs) == 2
    assert np.array_equal(rows[:2], _rows_reference(data, offsets[:2], 64))
    assert np.array_equal(crcs[:2], [kernels.crc32c(row) for row in rows[:2]])


def test_gather_rows_compiled_equals_the_numpy_reference():
    core = _compiled()
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, 50_000, dtype=np.uint8)
    offsets = rng.integers(-50, data.size, 500).astype(np.int64)
    offsets[offsets > data.size - 100] = 3  # all inside but the negative ones
    tails = rng.integers(-(2**63), 2**63 - 1, (500, 2), dtype=np.int64)
    results = []
    for impl in (core, _pure):
        rows, crcs = np.zeros((500, 100), np.uint8), np.zeros(500, np.uint32)
        results.append((impl.gather_rows(data, offsets, rows, crcs, tails), rows, crcs))
    (bad_c, rows_c, crcs_c), (bad_p, rows_p, crcs_p) = results
    assert bad_c == bad_p == int(np.flatnonzero(offsets < 0)[0])
    assert np.array_equal(rows_c[:bad_c], rows_p[:bad_p]) and np.array_equal(crcs_c[:bad_c], crcs_p[:bad_p])


def test_gather_rows_checks_its_arguments():
    data = np.zeros(100, np.uint8)
    with pytest.raises(TypeError, match="rows"):
        kernels.gather_rows(data, [0], np.zeros((1, 4), np.int16))
    with pytest.raises(ValueError, match="offsets"):
        kernels.gather_rows(data, [0, 1], np.zeros((1, 4), np.uint8))
    with pytest.raises(ValueError, match="crcs"):
        kernels.gather_rows(data, [0], np.zeros((1, 4), np.uint8), np.zeros(2, np.uint32))
    with pytest.raises(ValueError, match="overlap"):
        kernels.gather_rows(data, [0], data[50:54].reshape(1, 4))
    with pytest.raises(ValueError, match="writeable"):
        kernels.gather_rows(data, [0, 0], np.zeros((2, 8), np.uint8)[:, ::2])
    frozen = np.zeros((1, 4), np.uint8)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        kernels.gather_rows(data, [0], frozen)


# LMDB ---------------------------------------------------------------------

# 23 images in values of 5: the last value holds 3, and the indices touch every chunk.
N, K = 23, 5
CASES = [
    np.random.default_rng(0).permutation(N),
    np.array([22, 22, 0, 21, 20, 0, 4, 5, 22]),  # repeats, unsorted, the last partial chunk
    np.array([N - 1]),
    np.array([-1, -N, 3]),  # negative indices count from the end
    np.random.default_rng(1).integers(0, N, 300),
]


def _lmdb_store(tmp_path, shape=(5, 4, 3), **options):
    images = make_images(N, shape)
    labels = np.random.default_rng(2).integers(-5, 10**12, N)
    path = write(target(tmp_path, "lmdb"), images, labels, batch=7, records_per_value=K, **options)
    return path, images, labels


def _per_value(store, indices):
    """read_batch the way it was read before the map: LMDB value by value."""
    return store._read_many_in_txn(np.asarray(indices, np.int64) % len(store), None)


@pytest.mark.parametrize("verify", [True, False])
def test_lmdb_batches_from_the_map_equal_the_per_value_reads(tmp_path, backend, verify):
    path, images, labels = _lmdb_store(tmp_path)
    with stores.open(path, verify=verify) as store:
        for indices in CASES:
            got, got_labels = store.read_batch(indices)
            assert isinstance(store._mapped, MappedValues)  # the batch came from the map
            want, want_labels = _per_value(store, indices)
            assert np.array_equal(got, want) and np.array_equal(got, images[indices])
            assert np.array_equal(got_labels, want_labels) and np.array_equal(got_labels, labels[indices])
        out = np.zeros((4, 5, 4, 3), np.uint8)
        assert store.read_batch([3, 22, 3, 0], out=out)[0] is out
        assert np.array_equal(out, images[[3, 22, 3, 0]])


@pytest.mark.parametrize("shape, count, k", [
    ((16, 16, 3), 23, 5),  # values on overflow pages
    ((2, 2, 1), 700, 1),  # small values inside leaf pages, a tree of several leaves under a branch page
])
def test_lmdb_map_serves_values_on_overflow_and_leaf_pages(tmp_path, shape, count, k):
    images = make_images(count, shape)
    labels = np.arange(count) * 3
    path = write(target(tmp_path, "lmdb"), images, labels, batch=50, records_per_value=k)
    indices = np.random.default_rng(4).integers(0, count, 2 * count)
    with stores.open(path) as store:
        got, got_labels = store.read_batch(indices)
        assert isinstance(store._mapped, MappedValues)
        assert np.array_equal(got, images[indices]) and np.array_equal(got_labels, labels[indices])


def test_lmdb_map_offsets_point_at_each_record(tmp_path):
    path, images, labels = _lmdb_store(tmp_path)
    with stores.open(path) as store:
        store.read_batch([0])
        mapped = store._mapped
        assert mapped.starts.shape == (-(-N // K),)
        size = store._record_size
        for i in range(N):
            at = int(mapped.offsets(np.array([i]))[0])
            record = mapped.data[at : at + size]
            assert record[:4].tobytes() == b"IMGR" and np.array_equal(record[32:].reshape(5, 4, 3), images[i])


def test_lmdb_large_batches_from_the_map_split_over_threads(tmp_path, monkeypatch):
    from imgconv.stores import read_pool
    monkeypatch.setattr(read_pool, "PARALLEL_MIN_BYTES", 1)
    monkeypatch.setattr(read_pool, "read_threads", lambda: 3)
    path, images, labels = _lmdb_store(tmp_path)
    with stores.open(path) as store:
        indices = np.random.default_rng(5).integers(0, N, 100)
        got, got_labels = store.read_batch(indices)
        assert np.array_equal(got, images[indices]) and np.array_equal(got_labels, labels[indices])


def test_lmdb_single_images_from_the_map_equal_the_per_value_reads(tmp_path, backend):
    path, images, labels = _lmdb_store(tmp_path, shape=(9, 9, 3))
    _flip_pixel(os.path.join(path, "data.mdb"), images, 8)
    with stores.open(path) as store:
        store.read_batch([0])  # finds the map, which store[i] then uses
        assert isinstance(store._mapped, MappedValues)
        for i in (0, 4, 5, 22):
            image, label = store[i]
            assert np.array_equal(image, images[i]) and label == labels[i]
        with pytest.raises(StoreError, match="image 8 in chunk 1: .*checksum"):
            store[8]


def test_hdf5_single_images_from_the_map_are_checked(tmp_path):
    images = make_images(N, (9, 9, 3))
    path = write(target(tmp_path, "hdf5"), images, np.arange(N) * 7, chunk_images=K)
    _flip_pixel(path, images, 21)
    with stores.open(path) as store:
        for i in (0, 4, 5, 22):
            image, label = store[i]
            assert store._direct() is not None
            assert np.array_equal(image, images[i]) and label == 7 * i and image.flags.writeable
        with pytest.raises(StoreError, match="image 21 does not match"):
            store[21]


def test_lmdb_store_of_varying_sizes_keeps_the_per_value_reads(tmp_path):
    images = varying_images(N)
    path = write(target(tmp_path, "lmdb"), images, np.arange(N))
    with stores.open(path) as store:
        got, _ = store.read_batch([4, 0, 4])
        assert store._mapped is False
        assert all(np.array_equal(a, b.reshape(a.shape)) for a, b in zip(got, [images[4], images[0], images[4]]))


def _flip_pixel(file_path, images, i):
    """Flip a pixel byte of image ``i`` where it lies in the file (found by its bytes)."""
    with open(file_path, "rb") as f:
        raw = f.read()
    at = raw.find(images[i].tobytes())
    assert at > 0 and raw.find(images[i].tobytes(), at + 1) < 0
    with open(file_path, "r+b") as f:
        f.seek(at + 2)
        f.write(bytes([raw[at + 2] ^ 0x10]))


def _in_a_forked_child(check):
    """Whether ``check()`` is true in a forked child (False when it raises)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            ok = bool(check())
        except BaseException:
            ok = False
        os.write(write_end, b"1" if ok else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    return os.read(read_end, 1) == b"1"


def test_lmdb_a_damaged_record_read_from_the_map_is_named_as_before(tmp_path, backend):
    path, images, _ = _lmdb_store(tmp_path, shape=(9, 9, 3))
    _flip_pixel(os.path.join(path, "data.mdb"), images, 17)
    with stores.open(path) as store:
        assert np.array_equal(store.read_batch([1, 2])[0], images[[1, 2]])
        assert isinstance(store._mapped, MappedValues)
        with pytest.raises(StoreError) as from_map:
            store.read_batch([3, 17, 4])
        with pytest.raises(StoreError) as per_value:
            _per_value(store, [3, 17, 4])
        assert str(from_map.value) == str(per_value.value)
        assert "image 17 in chunk 3" in str(from_map.value) and "checksum" in str(from_map.value)
    with stores.open(path, verify=False) as store:
        got = store.read_batch([17])[0][0]
        assert not np.array_equal(got, images[17]) and np.array_equal(store.read_batch([16])[0][0], images[16])


def test_lmdb_map_is_made_again_in_a_forked_child(tmp_path):
    path, images, labels = _lmdb_store(tmp_path)
    store = stores.open(path)
    store.read_batch([0])
    parent_map = store._mapped

    def check():
        got, got_labels = store.read_batch([22, 1, 1])
        return (np.array_equal(got, images[[22, 1, 1]]) and np.array_equal(got_labels, labels[[22, 1, 1]])
                and isinstance(store._mapped, MappedValues) and store._mapped is not parent_map)

    assert _in_a_forked_child(check)
    assert np.array_equal(store.read_batch([5])[0], images[[5]])
    store.close()


def test_lmdb_readers_of_one_store_share_the_map_and_close_keeps_it_valid(tmp_path):
    path, images, _ = _lmdb_store(tmp_path)
    first, second = stores.open(path), stores.open(path)
    first.read_batch([0])
    second.read_batch([1])
    assert first._mapped is second._mapped
    data, at = first._mapped.data, int(first._mapped.offsets(np.array([2]))[0]) + 32
    first.close()
    second.close()
    # The arrays that view the map keep it mapped: reading them after close is safe.
    assert np.array_equal(data[at : at + images[2].size], images[2].reshape(-1))
    with stores.open(path) as again:
        assert np.array_equal(again.read_batch([2, 9])[0], images[[2, 9]])


def test_lmdb_without_a_sound_value_table_reads_value_by_value(tmp_path, monkeypatch):
    path, images, _ = _lmdb_store(tmp_path)
    from imgconv.stores.lmdb import mapped as mapped_module
    monkeypatch.setattr(mapped_module, "_confirmed", lambda *args: False)
    with stores.open(path) as store:
        assert np.array_equal(store.read_batch([3, 0])[0], images[[3, 0]])
        assert store._mapped is False


# HDF5 ---------------------------------------------------------------------


def _hdf5_store(tmp_path, **options):
    images = make_images(N)
    labels = np.random.default_rng(2).integers(-5, 10**12, N)
    path = write(target(tmp_path, "hdf5"), images, labels, batch=7, chunk_images=K, **options)
    return path, images, labels


@pytest.mark.parametrize("verify", [True, False])
def test_hdf5_batches_from_the_map_equal_what_h5py_reads(tmp_path, backend, verify):
    path, images, labels = _hdf5_store(tmp_path)
    with h5py.File(path, "r") as f:
        stored = f["images"][...]
    assert np.array_equal(stored, images)
    with stores.open(path, verify=verify) as store:
        for indices in CASES:
            got, got_labels = store.read_batch(indices)
            assert store._direct() is not None  # it came from the map
            assert np.array_equal(got, stored[indices]) and np.array_equal(got_labels, labels[indices])
        out = np.zeros((3, 5, 4, 3), np.uint8)
        assert store.read_batch([22, 0, 22], out=out)[0] is out
        assert np.array_equal(out, images[[22, 0, 22]])


def test_hdf5_large_batches_from_the_map_split_over_threads(tmp_path, monkeypatch):
    from imgconv.stores import read_pool
    monkeypatch.setattr(read_pool, "PARALLEL_MIN_BYTES", 1)
    monkeypatch.setattr(read_pool, "read_threads", lambda: 3)
    path, images, labels = _hdf5_store(tmp_path)
    with stores.open(path) as store:
        indices = np.random.default_rng(5).integers(0, N, 100)
        got, got_labels = store.read_batch(indices)
        assert np.array_equal(got, images[indices]) and np.array_equal(got_labels, labels[indices])


def test_hdf5_compressed_store_keeps_reading_through_h5py(tmp_path):
    path, images, labels = _hdf5_store(tmp_path, compression="gzip")
    with stores.open(path) as store:
        got, got_labels = store.read_batch(CASES[1])
        assert store._direct() is None
        assert np.array_equal(got, images[CASES[1]]) and np.array_equal(got_labels, labels[CASES[1]])


def test_hdf5_a_damaged_image_read_from_the_map_is_named(tmp_path, backend):
    images = make_images(N, (9, 9, 3))
    path = write(target(tmp_path, "hdf5"), images, np.arange(N), chunk_images=K)
    _flip_pixel(path, images, 21)
    with stores.open(path) as store:
        assert np.array_equal(store.read_batch([20, 22])[0], images[[20, 22]])
        with pytest.raises(StoreError, match=r"image 21 does not match its stored checksum"):
            store.read_batch([3, 21, 21, 4])
    with stores.open(path, verify=False) as store:
        assert not np.array_equal(store.read_batch([21])[0][0], images[21])


def test_hdf5_labels_and_positions_are_checked_on_the_map_path(tmp_path):
    path, images, labels = _hdf5_store(tmp_path)
    with h5py.File(path, "r+") as f:
        f["labels"][4] = labels[4] + 1  # a changed label
        crc = f["crc32c"][...]
        f["crc32c"][7], f["crc32c"][8] = crc[8], crc[7]  # checksums at each other's positions
    with stores.open(path) as store:
        with pytest.raises(StoreError, match="image 4 does not match"):
            store.read_batch([0, 4])
        with pytest.raises(StoreError, match="image 8 does not match"):
            store.read_batch([8, 7])
        assert np.array_equal(store.read_batch([9, 3])[0], images[[9, 3]])


def test_hdf5_map_is_made_again_in_a_forked_child(tmp_path):
    path, images, labels = _hdf5_store(tmp_path)
    store = stores.open(path)
    store.read_batch([0])
    parent = store._direct()

    def check():
        got, got_labels = store.read_batch([22, 1, 1])
        return (np.array_equal(got, images[[22, 1, 1]]) and np.array_equal(got_labels, labels[[22, 1, 1]])
                and store._direct() is not parent and store._direct().data is not parent.data)

    assert _in_a_forked_child(check)
    assert np.array_equal(store.read_batch([5])[0], images[[5]])
    store.close()
