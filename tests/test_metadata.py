"""Store metadata: written last, checked on open, covered by its own CRC32C."""
import json
import os

import h5py
import lmdb
import pytest
from factories import make_images, target

from imgconv import stores
from imgconv.errors import StoreError
from imgconv.stores import metadata
from imgconv.stores.lmdb import layout as lmdb_layout


@pytest.mark.parametrize("fmt", ["png", "lmdb", "hdf5"])
def test_a_changed_label_name_is_caught_by_the_metadata_checksum(tmp_path, fmt):
    path = target(tmp_path, fmt)
    with stores.create(path, label_names=["cat", "dog"]) as writer:
        writer.append(make_images(3), [0, 1, 0])
    if fmt == "hdf5":
        with h5py.File(path, "r+") as f:
            f.attrs["label_names"] = json.dumps(["cat", "dig"])
    elif fmt == "png":
        name = os.path.join(path, "manifest.json")
        data = open(name, "rb").read()
        open(name, "wb").write(data.replace(b'"dog"', b'"dig"'))
    else:
        env = lmdb.open(path, subdir=os.path.isdir(path), lock=False)
        with env.begin(write=True) as txn:
            txn.put(lmdb_layout.METADATA_KEY, txn.get(lmdb_layout.METADATA_KEY).replace(b'"dog"', b'"dig"'))
        env.close()
    with pytest.raises(StoreError, match="metadata is damaged"):
        stores.open(path)


def test_metadata_round_trips_and_is_checked():
    meta = metadata.make_metadata("lmdb", 1, 5, (4, 4, 3), ["cat"], "somewhere", records_per_value=2)
    loaded = metadata.load_metadata(metadata.dump_metadata(meta), "x.lmdb", "lmdb", 1)
    assert loaded["shape"] == (4, 4, 3) and loaded["label_names"] == ["cat"] and loaded["records_per_value"] == 2
    with pytest.raises(StoreError, match="x.lmdb: metadata says format 'lmdb', expected 'png'"):
        metadata.check_metadata(dict(meta), "x.lmdb", "png", 1)
    with pytest.raises(StoreError, match=r"lmdb store format version 1; this imgconv .* reads versions up to 0"):
        metadata.check_metadata(dict(meta), "x.lmdb", "lmdb", 0)
    with pytest.raises(StoreError, match="not valid JSON"):
        metadata.load_metadata(b"{", "x.lmdb", "lmdb", 1)


def test_the_checksum_covers_every_field_and_reads_back_from_any_form():
    meta = metadata.make_metadata("hdf5", 2, 5, "variable", None, None, compression=None)
    # HDF5 attributes cannot hold None and give tuples back as lists: the same checksum.
    assert metadata.metadata_checksum({k: v for k, v in meta.items() if v is not None}) == meta["metadata_crc32c"]
    for key, value in [("count", 6), ("shape", [1, 2, 3]), ("label_names", ["x"])]:
        with pytest.raises(StoreError, match="damaged"):
            metadata.check_metadata({**meta, key: value}, "x.h5", "hdf5", 2)
    older = {k: v for k, v in meta.items() if k != metadata.METADATA_CHECKSUM}
    assert metadata.check_metadata(older, "x.h5", "hdf5", 2)["count"] == 5  # written before the checksum existed
