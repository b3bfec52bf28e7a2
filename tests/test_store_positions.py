"""A store never answers with another image: every record is bound to its index, in every format.

Each test moves intact records to other positions, the way a damaged key,
page number, chunk index, offset table or labels file would, and checks that
the reads of the moved images fail (never another image's pixels returned)
and that ``verify`` names them by index. Stores of the older format versions
still read, without that check, and say so.
"""
import json
import os
import shutil
import subprocess
import sys

import h5py
import lmdb
import numpy as np
import pytest
from factories import make_images, target, varying_images, write
from lmdb_pages import chunk_nodes, poke

import imgconv
from imgconv import record, stores
from imgconv.checksum import image_checksums
from imgconv.errors import StoreError
from imgconv.stores.lmdb import layout as lmdb_layout
from imgconv.stores.metadata import METADATA_CHECKSUM, metadata_checksum
from imgconv.verify import verify


def _images(n=40, shape=(16, 16, 3), seed=5):
    return make_images(n, shape, seed)


def _lmdb(tmp_path, images, k=8, **options):
    return write(target(tmp_path, "lmdb"), images, np.arange(len(images)), batch=7, records_per_value=k, **options)


def _reads(path, n):
    """{index: image} of the images that read, and the indices whose reads fail, one image at a time."""
    good, failed = {}, []
    with stores.open(path) as store:
        for i in range(n):
            try:
                good[i] = store[i]
            except StoreError as exc:
                assert path in str(exc)
                failed.append(i)
    return good, failed


def _assert_never_another_image(path, images, labels, expect_failed):
    good, failed = _reads(path, len(labels))
    for i, (image, label) in good.items():
        assert np.array_equal(image, images[i]) and label == labels[i], f"image {i} answered for another"
    assert failed == expect_failed
    with stores.open(path) as store:
        with pytest.raises(StoreError):
            store.read_all()
    assert [i for i, _ in verify(path).bad] == expect_failed


# LMDB ------------------------------------------------------------------------------------------


def test_lmdb_a_flipped_key_bit_is_refused_at_open(tmp_path):
    # The case: chunk 2's key becomes chunk 3's, and store[25] answered with image 17.
    path = _lmdb(tmp_path, _images())
    data = os.path.join(path, "data.mdb")
    node = chunk_nodes(data)[2]
    poke(data, node.key_at + 7, bytes([node.key[7] ^ 1]))
    with pytest.raises(StoreError, match=r"key 0000000000000003 where the keys in order must be chunk 2"):
        stores.open(path)
    with pytest.raises(StoreError, match="must be chunk 2"):
        verify(path)


def test_lmdb_a_value_pointed_at_another_chunks_pages_is_refused_at_open(tmp_path):
    path = _lmdb(tmp_path, _images())
    data = os.path.join(path, "data.mdb")
    nodes = chunk_nodes(data)
    assert all(node.overflow for node in nodes)  # values of 8 records of 800 bytes lie on overflow pages
    poke(data, nodes[1].key_at + len(nodes[1].key), nodes[2].overflow.to_bytes(8, "little"))
    with pytest.raises(StoreError, match="two values on the same overflow pages"):
        stores.open(path)


def _put(path, key, value):
    env = lmdb.open(path, subdir=True)
    with env.begin(write=True) as txn:
        txn.put(key, value)
    env.close()


def _get(path, key):
    env = lmdb.open(path, subdir=True, readonly=True, lock=False)
    with env.begin() as txn:
        value = bytes(txn.get(key))
    env.close()
    return value


def test_lmdb_records_of_another_chunk_fail_their_check_and_verify_names_each(tmp_path):
    # The pages of chunk 3 read as chunk 2 (what any damaged pointer would do that the page
    # check cannot see, e.g. to a freed page holding old records): every record is refused.
    images = _images()
    path = _lmdb(tmp_path, images)
    _put(path, lmdb_layout.chunk_key(2), _get(path, lmdb_layout.chunk_key(3)))
    _assert_never_another_image(path, images, np.arange(40), list(range(16, 24)))
    reasons = dict(verify(path).bad)
    assert "belongs at another position" in reasons[16]
    with stores.open(path) as store:
        with pytest.raises(StoreError, match=r"image 17 in chunk 2: .*belongs at another position"):
            store.read_batch([3, 17])


def test_lmdb_an_offset_table_entry_moved_to_another_record_is_refused(tmp_path):
    images = varying_images(20)
    path = write(target(tmp_path, "lmdb"), images, np.arange(20), batch=5, records_per_value=4)
    key = lmdb_layout.chunk_key(2)
    value = bytearray(_get(path, key))
    table = np.frombuffer(bytes(value), "<u8", count=4, offset=8).copy()
    value[8 + 8 : 8 + 16] = table[2].tobytes()  # slot 1 (image 9) -> the record of slot 2 (image 10)
    _put(path, key, bytes(value))
    # Images 8 and 9: the entry between their records is wrong (the one moved reads image 10 at index 9).
    _assert_never_another_image(path, [np.atleast_3d(im) for im in images], np.arange(20), [8, 9])
    with stores.open(path) as store:
        assert all(np.array_equal(a, np.atleast_3d(b)) for a, b in zip(store.read_batch([7, 10, 11])[0],
                                                                         [images[7], images[10], images[11]]))


@pytest.mark.parametrize("entry, change, match", [
    (0, lambda offset: offset + 1, "image 4 in chunk 1: bad magic"),
    (0, lambda offset: 8, "image 4 in chunk 1: the offset table of the value puts its record at bytes 8\\.\\."),
    (3, lambda offset: offset + 1, "image 6 in chunk 1: its record does not end where the offset table"),
    (3, lambda offset: 2**64 - 1, "image 7 in chunk 1: the offset table of the value puts its record at bytes -1"),
])
def test_lmdb_offset_tables_are_checked_against_record_boundaries(tmp_path, entry, change, match):
    images = varying_images(12)
    path = write(target(tmp_path, "lmdb"), images, np.arange(12), batch=5, records_per_value=4)
    key = lmdb_layout.chunk_key(1)
    value = bytearray(_get(path, key))
    at = 8 + 8 * entry
    value[at : at + 8] = change(int.from_bytes(value[at : at + 8], "little")).to_bytes(8, "little")
    _put(path, key, bytes(value))
    good, failed = _reads(path, 12)
    assert failed == ([4] if entry == 0 else [6, 7])  # the records the damaged entry bounds
    with stores.open(path) as store:
        with pytest.raises(StoreError, match=match):
            store[failed[-1] if "7" in match else failed[0]]


# HDF5 and PNG ----------------------------------------------------------------------------------


def _swap_hdf5(path, a, b, variable):
    """Move images a and b, with their labels and checksums, each to the other's place (whole records)."""
    with h5py.File(path, "r+") as f:
        names = ["offsets", "shapes", "labels", "crc32c"] if variable else ["images", "labels", "crc32c"]
        for name in names:
            ds = f[name]
            first, second = ds[a].copy(), ds[b].copy()
            ds[a], ds[b] = second, first


@pytest.mark.parametrize("variable", [False, True])
def test_hdf5_images_moved_with_their_labels_and_checksums_are_refused(tmp_path, variable):
    images = varying_images(20) if variable else _images(20)
    labels = np.arange(20) * 3
    path = write(target(tmp_path, "hdf5"), images, labels, batch=6, chunk_images=None if variable else 4)
    _swap_hdf5(path, 5, 13, variable)
    # Varying sizes: the entries of /offsets and /shapes moved no longer fit their neighbours' either.
    _assert_never_another_image(path, [np.atleast_3d(im) for im in images], labels,
                                [4, 5, 12, 13] if variable else [5, 13])
    assert ("offset table is corrupt" if variable else "pixels, label or position") in dict(verify(path).bad)[5]


def test_png_rows_swapped_with_their_files_labels_and_checksums_are_refused(tmp_path):
    images, labels = _images(12, (6, 6, 3)), np.arange(12) + 100
    path = write(target(tmp_path, "png"), images, labels, batch=5)
    name = os.path.join(path, "labels.csv")
    rows = open(name).read().splitlines()
    cells = {i: rows[i + 1].split(",") for i in (2, 9)}
    rows[3] = ",".join(["2", *cells[9][1:]])
    rows[10] = ",".join(["9", *cells[2][1:]])
    open(name, "w").write("\n".join(rows) + "\n")
    _assert_never_another_image(path, images, labels, [2, 9])


# Older format versions -------------------------------------------------------------------------


def downgrade(path, fmt):
    """Rewrite a store as the previous format version wrote it: checksums that leave out the index."""
    with stores.open(path) as store:
        meta = dict(store.metadata)
        images, labels = store.read_all()
    meta["format_version"] = {"lmdb": 1, "hdf5": 2, "png": 2}[fmt]
    if isinstance(meta["shape"], tuple):
        meta["shape"] = list(meta["shape"])
    if fmt == "lmdb":
        meta["record_version"] = 1
        k = meta["records_per_value"]
        env = lmdb.open(path, subdir=True)
        with env.begin(write=True) as txn:
            for chunk in range(-(-len(labels) // k)):
                part = slice(chunk * k, (chunk + 1) * k)
                packed = record.pack_records(images[part], labels[part])  # version 1 records
                value = (packed.buffer.tobytes() if not isinstance(images, list)
                         else lmdb_layout.value_with_table(packed.buffer, packed.offsets))
                txn.put(lmdb_layout.chunk_key(chunk), value)
            meta[METADATA_CHECKSUM] = metadata_checksum(meta)
            txn.put(lmdb_layout.METADATA_KEY, json.dumps(meta).encode())
        env.close()
    elif fmt == "hdf5":
        with h5py.File(path, "r+") as f:
            f["crc32c"][...] = image_checksums(images, labels)
            f.attrs["imgconv_format_version"] = meta["format_version"]
            f.attrs[METADATA_CHECKSUM] = metadata_checksum(meta)
    else:
        name = os.path.join(path, "labels.csv")
        rows = open(name).read().splitlines()
        crcs = image_checksums(images, labels)
        rows[1:] = [",".join(row.split(",")[:3] + [f"{int(c):08x}"]) for row, c in zip(rows[1:], crcs)]
        open(name, "w").write("\n".join(rows) + "\n")
        meta[METADATA_CHECKSUM] = metadata_checksum(meta)
        json.dump(meta, open(os.path.join(path, "manifest.json"), "w"))


@pytest.mark.parametrize("fmt, old", [("lmdb", 1), ("hdf5", 2), ("png", 2)])
def test_stores_of_the_older_versions_still_read_and_say_positions_are_unchecked(tmp_path, fmt, old):
    images, labels = _images(20, (6, 6, 3)), np.arange(20) + 7
    path = write(target(tmp_path, fmt), images, labels, batch=6, **({"records_per_value": 4} if fmt == "lmdb" else {}))
    with stores.open(path) as store:
        assert store.positions_checked and store.checked
    assert imgconv.info(path)["positions_checked"] is True
    downgrade(path, fmt)
    with stores.open(path) as store:
        assert store.metadata["format_version"] == old and not store.positions_checked and store.checked
        got, got_labels = store.read_all()
        assert np.array_equal(got, images) and got_labels.tolist() == labels.tolist()
        assert store[19][1] == 26
    assert imgconv.info(path)["positions_checked"] is False
    assert verify(path).bad == []
    done = subprocess.run([sys.executable, "-m", "imgconv", "info", path], capture_output=True, text=True, timeout=60)
    assert f"positions are not checked (format version {old}" in done.stdout


def test_a_version_1_lmdb_store_of_varying_sizes_still_reads(tmp_path):
    images = varying_images(10)
    path = write(target(tmp_path, "lmdb"), images, np.arange(10), batch=4, records_per_value=3)
    downgrade(path, "lmdb")
    with stores.open(path) as store:
        assert not store.positions_checked
        assert all(np.array_equal(a, np.atleast_3d(b)) for a, b in zip(store.read_all()[0], images))


# Stores written by the previous versions of imgconv (tests/data/old_stores, never rewrite them).

OLD_STORES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "old_stores")
GOLDEN_VARYING = [(2, 3), (4, 1), (3, 3), (1, 5), (2, 2)]  # the shapes of old_v1_varying.lmdb


@pytest.mark.parametrize("name, fmt, old", [("old_v1.lmdb", "lmdb", 1), ("old_v2.h5", "hdf5", 2),
                                            ("old_v2_png", "png", 2), ("old_v1_varying.lmdb", "lmdb", 1)])
def test_stores_written_by_the_previous_format_versions_read_exactly(tmp_path, name, fmt, old):
    # Written by imgconv before positions were bound (commit 5aa87cb, IMGCONV_PURE=1): read on a copy.
    source = os.path.join(OLD_STORES, name)
    path = str(tmp_path / name)
    (shutil.copytree if os.path.isdir(source) else shutil.copy)(source, path)
    with stores.open(path) as store:
        assert store.metadata["format"] == fmt and store.metadata["format_version"] == old
        assert store.checked and not store.positions_checked
        images, labels = store.read_all()
        if name == "old_v1_varying.lmdb":
            assert [im.shape for im in images] == [(h, w, 3) for h, w in GOLDEN_VARYING]
            assert labels.tolist() == [0, 1, 2, 3, 0]
        else:
            expected = np.load(os.path.join(OLD_STORES, "expected.npz"))
            assert np.array_equal(images, expected["images"]) and np.array_equal(labels, expected["labels"])
            assert np.array_equal(store[4][0], expected["images"][4])
    assert verify(path).bad == [] and imgconv.info(path)["positions_checked"] is False
