"""LMDB stores: the documented layout, shared environments, damaged files, gathers over threads."""
import os
import threading
import time

import lmdb
import numpy as np
import pytest
from factories import make_images, target, varying_images, write

from imgconv import _platform, record, stores
from imgconv.errors import RecordError, StoreError
from imgconv.stores import read_pool
from imgconv.stores.lmdb import layout as lmdb_layout


def test_lmdb_round_trip_under_both_kernels(tmp_path, backend):
    images = make_images(20)
    path = write(target(tmp_path, "lmdb"), images, np.arange(20), batch=6, records_per_value=3)
    with stores.open(path) as store:
        assert np.array_equal(store.read_batch([19, 0, 4, 4])[0], images[[19, 0, 4, 4]])
        assert np.array_equal(store[7][0], images[7])
        assert np.array_equal(store.read_all()[0], images)


def test_inherited_handles_are_replaced_in_a_forked_child(tmp_path):
    path = write(target(tmp_path, "lmdb"), make_images(4), np.arange(4))
    store = stores.open(path)
    parent_env = store._env
    read, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            store[0]
            ok = store._env is not parent_env
        except BaseException:
            ok = False
        os.write(write_end, b"1" if ok else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    store.close()


def test_two_readers_of_one_lmdb_store_in_one_process(tmp_path):
    path = write(target(tmp_path, "lmdb"), make_images(4), np.arange(4))
    first, second = stores.open(path), stores.open(path)
    first.close()
    assert second[3][1] == 3
    second.close()


def test_lmdb_layout_is_documented(tmp_path):
    images = make_images(7)
    path = write(target(tmp_path, "lmdb"), images, np.arange(7), records_per_value=3)
    env = lmdb.open(path, readonly=True, lock=False)
    with env.begin() as txn:
        keys = [bytes(k) for k, _ in txn.cursor()]
        assert keys == [(0).to_bytes(8, "big"), (1).to_bytes(8, "big"), (2).to_bytes(8, "big"), b"imgconv.metadata"]
        value = txn.get((1).to_bytes(8, "big"))
        assert len(value) == 3 * (32 + 60) and value[:4] == b"IMGR"
    env.close()


def test_lmdb_map_grows_and_file_stays_close_to_the_data(tmp_path):
    images = make_images(300, (64, 64, 3))  # 3.7 MB into a 1 MiB initial map
    path = write(target(tmp_path, "lmdb"), images, np.arange(300), batch=100, map_size=1 << 20)
    size = os.path.getsize(os.path.join(path, "data.mdb"))
    assert size < 1.1 * images.nbytes
    with stores.open(path) as store:
        assert np.array_equal(store.read_all()[0], images)


def test_truncated_lmdb_is_refused_not_a_crash(tmp_path):
    path = write(target(tmp_path, "lmdb"), make_images(200, (16, 16, 3)), np.arange(200), batch=50)
    data = os.path.join(path, "data.mdb")
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) - 8192)
    with pytest.raises(StoreError, match="truncated"):
        stores.open(path)


def test_corrupt_lmdb_file(tmp_path):
    path = tmp_path / "bad.lmdb"
    path.mkdir()
    (path / "data.mdb").write_bytes(os.urandom(20000))
    with pytest.raises(StoreError, match="bad.lmdb"):
        stores.open(path)


def test_lmdb_record_with_a_bad_checksum(tmp_path):
    images = make_images(8)
    path = write(target(tmp_path, "lmdb"), images, np.arange(8), records_per_value=4)
    data = os.path.join(path, "data.mdb")
    raw = bytearray(open(data, "rb").read())
    packed = bytes(record.pack_records(images[5:6], [5], positions=5).buffer)
    at = raw.find(packed)
    assert at > 0
    raw[at + 40] ^= 0xFF  # one pixel of image 5
    open(data, "wb").write(bytes(raw))
    with stores.open(path) as store:
        assert np.array_equal(store[4][0], images[4])
        for read in (lambda: store[5], lambda: store.read_batch([0, 5]), store.read_all):
            with pytest.raises(StoreError, match=r"image 5 .*checksum") as info:
                read()
            assert str(path) in str(info.value)
    with stores.open(path, verify=False) as store:
        assert store[5][1] == 5


def test_lmdb_gather_split_over_threads(tmp_path, monkeypatch):
    monkeypatch.setattr(read_pool, "PARALLEL_MIN_BYTES", 1)
    monkeypatch.setattr(read_pool, "read_threads", lambda: 3)
    monkeypatch.setattr(read_pool, "_POOL", _platform.PerProcess(read_pool._new_pool))
    images = make_images(50)
    path = write(target(tmp_path, "lmdb"), images, np.arange(50), batch=7, records_per_value=4)
    indices = [49, 3, 3, 17, 0, 28, 28, 41]
    with stores.open(path) as store:
        got, labels = store.read_batch(indices)
        assert np.array_equal(got, images[indices]) and labels.tolist() == indices
        assert np.array_equal(store.read_all()[0], images)
    data = os.path.join(path, "data.mdb")
    raw = bytearray(open(data, "rb").read())
    at = raw.find(bytes(record.pack_records(images[41:42], [41], positions=41).buffer))
    raw[at + 33] ^= 1
    open(data, "wb").write(bytes(raw))
    with stores.open(path) as store:
        with pytest.raises(StoreError, match="image 41 .*checksum"):
            store.read_all()


class _CorruptEnv:
    """Stands in for an LMDB environment whose database pages are damaged."""

    def begin(self, **kwargs):
        raise lmdb.CorruptedError("mdb_get: MDB_CORRUPTED: Located page was wrong type")


@pytest.mark.parametrize("variable", [False, True])
def test_lmdb_errors_while_reading_are_store_errors(tmp_path, variable):
    images = varying_images(6) if variable else make_images(6)
    path = write(target(tmp_path, "lmdb"), images, np.arange(6))
    store = stores.open(path)
    real, store._env = store._env, _CorruptEnv()
    try:
        for read in (lambda: store[1], lambda: store.read_batch([0, 3]), store.read_all,
                     lambda: list(store.batches(4))):
            with pytest.raises(StoreError, match="store.lmdb.*corrupt"):
                read()
    finally:
        store._env = real
        store.close()


def test_lmdb_varying_sizes_with_a_tiny_first_image_keep_values_small(tmp_path):
    rng = np.random.default_rng(0)
    images = [np.zeros((1, 1, 3), np.uint8)] + [rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)
                                                for _ in range(40)]
    path = target(tmp_path, "lmdb")
    with stores.create(path) as writer:
        for i, image in enumerate(images):
            writer.append([image], [i])
    with stores.open(path) as store:
        assert store.metadata["records_per_value"] == lmdb_layout.VARIABLE_RECORDS_PER_VALUE
        assert all(np.array_equal(a, b) for a, b in zip(store.read_all()[0], images))
        assert np.array_equal(store[33][0], images[33])
    env = lmdb.open(path, readonly=True, lock=False)
    with env.begin() as txn:
        largest = max(len(v) for k, v in txn.cursor() if len(k) == 8)
    env.close()
    assert largest <= lmdb_layout.VARIABLE_RECORDS_PER_VALUE * (32 + 100 * 100 * 3) + 8 + 8 * 16


def test_lmdb_gather_threads_finish_before_the_transaction_ends(tmp_path, monkeypatch):
    monkeypatch.setattr(read_pool, "PARALLEL_MIN_BYTES", 1)
    monkeypatch.setattr(read_pool, "read_threads", lambda: 3)
    monkeypatch.setattr(read_pool, "_POOL", _platform.PerProcess(read_pool._new_pool))
    path = write(target(tmp_path, "lmdb"), make_images(30), np.arange(30), batch=30, records_per_value=4)
    finished, lock = [], threading.Lock()

    real_into = record.Gather.into

    def into(*args):
        with lock:
            first = not finished and not getattr(into, "failed", False)
            into.failed = True
        if first:
            raise RecordError("one part finds a bad record at once...")
        time.sleep(0.2)  # ...while the others still read the transaction's buffers
        result = real_into(*args)
        with lock:
            finished.append(1)
        return result

    monkeypatch.setattr(record.Gather, "into", into)
    with stores.open(path) as store:
        with pytest.raises(StoreError):
            store.read_all()
        assert len(finished) == 2  # both were done before the read returned


def test_lmdb_missing_chunk_is_refused_at_open_by_its_number(tmp_path):
    path = write(target(tmp_path, "lmdb"), make_images(12), np.arange(12), records_per_value=2)
    env = lmdb.open(path, subdir=True)
    with env.begin(write=True) as txn:
        txn.delete(lmdb_layout.chunk_key(3))
    env.close()
    with pytest.raises(StoreError, match=r"key 0000000000000004 where .* must be chunk 3 \(0000000000000003\)"):
        stores.open(path)
