"""Crafted stores: HDF5 features that read outside the file, metadata the data does not bear out,
special files where a store's files should be, names that are not UTF-8.

Every case must end in an imgconv error naming the store (or, for names, in a
store that keeps them exactly), never in another file's bytes, a hang, or a
traceback.
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
from PIL import Image

import imgconv
from imgconv import stores
from imgconv.errors import StoreError
from imgconv.stores.hdf5.layout import ATTR_NAMES, attr_value
from imgconv.stores.lmdb import layout as lmdb_layout
from imgconv.stores.metadata import METADATA_CHECKSUM, metadata_checksum
from imgconv.verify import verify


def run(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "imgconv", *map(os.fsdecode, args)], capture_output=True, text=True,
                          timeout=timeout)


# HDF5 features that read outside the store -----------------------------------------------------

SECRET = bytes(range(256)) * 3  # 768 bytes: the pixels of four 8x8x3 images


def _hdf5_store(tmp_path, n=16, variable=False):
    images = varying_images(n) if variable else make_images(n, (8, 8, 3))
    return write(target(tmp_path, "hdf5"), images, np.arange(n), batch=5, chunk_images=None if variable else 4)


def _replace(f, name, **create):
    data = f[name][...]
    del f[name]
    if create:
        f.create_dataset(name, data=data, **create)
    return data


def _external_storage(f, tmp):
    name = "images" if "images" in f else "pixels"  # a store of one shape, or of varying shapes
    data = _replace(f, name)
    secret = os.path.join(tmp, "secret.bin")
    open(secret, "wb").write((SECRET * (data.nbytes // len(SECRET) + 1))[: data.nbytes])
    f.create_dataset(name, data.shape, np.uint8, external=[(secret, 0, data.nbytes)])


def _virtual(f, tmp):
    other = os.path.join(tmp, "other.h5")
    with h5py.File(other, "w") as o:
        o["labels"] = np.arange(16) + 1000
    _replace(f, "labels")
    layout = h5py.VirtualLayout(shape=(16,), dtype=np.int64)
    layout[:] = h5py.VirtualSource(other, "labels", shape=(16,))
    f.create_virtual_dataset("labels", layout)


def _external_link(f, tmp):
    other = os.path.join(tmp, "other.h5")
    with h5py.File(other, "w") as o:
        o["labels"] = np.arange(16) + 1000
    _replace(f, "labels")
    f["labels"] = h5py.ExternalLink(other, "/labels")


def _soft_link(f, tmp):
    f["elsewhere"] = _replace(f, "labels") + 1000
    f["labels"] = h5py.SoftLink("/elsewhere")


CRAFTS = {
    "external storage": (_external_storage, "/images keeps its data in external files"),
    "virtual dataset": (_virtual, "/labels is a virtual dataset"),
    "external link": (_external_link, "/labels is an external link"),
    "soft link": (_soft_link, "/labels is a soft link"),
    "shuffle filter on the labels": (lambda f, tmp: _replace(f, "labels", chunks=(8,), shuffle=True),
                                     r"/labels is filtered with HDF5 filter\(s\) \[2\]"),
    "fletcher32 on the images": (lambda f, tmp: _replace(f, "images", chunks=(4, 8, 8, 3), fletcher32=True),
                                 r"/images is filtered with HDF5 filter\(s\) \[3\]"),
    "labels of another type": (lambda f, tmp: f.__setitem__("labels2", 0) or _replace(
        f, "labels", dtype=np.float64), "/labels holds float64, not int64"),
    "no checksums": (lambda f, tmp: _replace(f, "crc32c"), "no /crc32c checksums: every store of format version 3"),
}


@pytest.mark.parametrize("craft", sorted(CRAFTS))
def test_crafted_hdf5_features_are_refused_before_any_data_is_read(tmp_path, craft):
    path = _hdf5_store(tmp_path)
    change, message = CRAFTS[craft]
    with h5py.File(path, "r+") as f:
        change(f, str(tmp_path))
    with pytest.raises(StoreError, match=message) as info:
        stores.open(path)
    assert path in str(info.value)
    with pytest.raises(StoreError, match=message):
        stores.open(path, allow_unchecked=True)  # the opt-in is for missing checksums of old files only
    out = tmp_path / "out_png"
    for done in (run("verify", path), run("info", path), run("convert", path, out)):
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert "refused" in done.stderr or "no /crc32c" in done.stderr or "holds float64" in done.stderr
    assert not out.exists()


def _evil_hdf5(path, secret, version):
    """The issue's file: /images stored in another file, no /crc32c, metadata of a valid store."""
    with h5py.File(path, "w") as f:
        f.create_dataset("images", (4, 8, 8, 3), np.uint8, external=[(secret, 0, len(SECRET))])
        f.create_dataset("labels", data=np.zeros(4, np.int64))
        meta = {"format": "hdf5", "format_version": version, "imgconv_version": "0.1.0", "count": 4,
                "shape": [8, 8, 3], "dtype": "uint8"}
        meta[METADATA_CHECKSUM] = metadata_checksum(meta)
        for key, value in meta.items():
            f.attrs[ATTR_NAMES.get(key, key)] = attr_value(value)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_the_evil_hdf5_of_the_issue_is_refused_by_open_verify_and_convert(tmp_path, version):
    secret = str(tmp_path / "secret.bin")
    open(secret, "wb").write(SECRET)
    evil = str(tmp_path / "evil.h5")
    _evil_hdf5(evil, secret, version)
    with pytest.raises(StoreError, match="no /crc32c checksums"):
        stores.open(evil)
    # The opt-in reads old files without checksums; the external storage is refused all the same.
    with pytest.raises(StoreError, match="keeps its data in external files" if version < 3 else "version 3 has them"):
        stores.open(evil, allow_unchecked=True)
    done = run("verify", evil)
    assert done.returncode == 1 and "ok:" not in done.stdout and evil in done.stderr
    done = run("convert", evil, tmp_path / "out")
    assert done.returncode == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", ["hdf5", "png"])
def test_old_stores_without_checksums_need_the_opt_in(tmp_path, fmt):
    images = make_images(6)
    path = write(target(tmp_path, fmt), images, np.arange(6))
    if fmt == "hdf5":
        with h5py.File(path, "r+") as f:
            del f["crc32c"]
            f.attrs["imgconv_format_version"] = 2
            del f.attrs[METADATA_CHECKSUM]
    else:
        name = os.path.join(path, "labels.csv")
        rows = open(name).read().splitlines()
        open(name, "w").write("\n".join(",".join(row.split(",")[:3]) for row in rows) + "\n")
        manifest = os.path.join(path, "manifest.json")
        meta = json.load(open(manifest))
        meta["format_version"] = 2
        del meta[METADATA_CHECKSUM]
        json.dump(meta, open(manifest, "w"))
    with pytest.raises(StoreError, match=r"allow_unchecked=True"):
        stores.open(path)
    with stores.open(path, allow_unchecked=True) as store:
        assert np.array_equal(store.read_all()[0], images) and not store.checked and not store.positions_checked


def test_a_png_folder_of_the_current_version_without_checksums_is_refused(tmp_path):
    path = write(target(tmp_path, "png"), make_images(4), np.arange(4))
    name = os.path.join(path, "labels.csv")
    rows = open(name).read().splitlines()
    open(name, "w").write("\n".join(",".join(row.split(",")[:3]) for row in rows) + "\n")
    for options in ({}, {"allow_unchecked": True}):
        with pytest.raises(StoreError, match="no crc32c column: every folder of format version 3"):
            stores.open(path, **options)


# Metadata compared with the data at open ----------------------------------------------------------


def _rewrite_lmdb_metadata(path, **changes):
    env = lmdb.open(path, subdir=True)
    with env.begin(write=True) as txn:
        meta = json.loads(bytes(txn.get(lmdb_layout.METADATA_KEY)))
        meta.update(changes)
        meta[METADATA_CHECKSUM] = metadata_checksum(meta)  # a valid checksum: only the data can tell
        txn.put(lmdb_layout.METADATA_KEY, json.dumps(meta).encode())
    env.close()


@pytest.mark.parametrize("changes, message", [
    ({"count": 2**63 - 1}, r"says 9223372036854775807 images in chunks of 4 \(2305843009213693952 chunks\), "
                           r"data.mdb holds 5 chunks"),
    ({"count": 21}, r"says 21 images in chunks of 4 \(6 chunks\), data.mdb holds 5 chunks"),
    ({"count": 17}, r"17 images in chunks of 4 records of 92 bytes; data.mdb holds values of 368 .. 368 bytes, "
                    r"the last of 368"),
    ({"records_per_value": 2**40}, r"invalid records_per_value 1099511627776"),
    ({"records_per_value": 5}, r"20 images in chunks of 5 \(4 chunks\), data.mdb holds 5 chunks"),
    ({"shape": [4, 4, 3]}, r"chunks of 4 records of 80 bytes; data.mdb holds values of 368 .. 368 bytes"),
])
def test_lmdb_metadata_the_data_does_not_bear_out_is_refused_at_open(tmp_path, changes, message):
    path = write(target(tmp_path, "lmdb"), make_images(20), np.arange(20), records_per_value=4)
    _rewrite_lmdb_metadata(path, **changes)
    with pytest.raises(StoreError, match=message) as info:
        stores.open(path)
    assert path in str(info.value)
    done = run("verify", path, timeout=30)  # never runs for ever, never lists 2**63 images
    assert done.returncode == 1 and path in done.stderr and len(done.stdout) < 1000


def test_lmdb_metadata_of_varying_sizes_is_compared_with_the_values(tmp_path):
    path = write(target(tmp_path, "lmdb"), varying_images(12), np.arange(12), records_per_value=4)
    _rewrite_lmdb_metadata(path, records_per_value=400, count=1200)  # 3 values could not hold 400 records each
    with pytest.raises(StoreError, match=r"chunks of 400 records, each value at least"):
        stores.open(path)


@pytest.mark.parametrize("fmt", ["hdf5", "png"])
def test_counts_the_data_does_not_bear_out_are_refused_at_open(tmp_path, fmt):
    path = write(target(tmp_path, fmt), make_images(6), np.arange(6))
    if fmt == "hdf5":
        with h5py.File(path, "r+") as f:
            meta = {k: v for k, v in stores.open(path).metadata.items() if v is not None}
            meta["count"] = 2**63 - 1
            f.attrs["count"] = meta["count"]
            f.attrs[METADATA_CHECKSUM] = metadata_checksum(meta)
        message = r"/images has shape \(6, 5, 4, 3\), the metadata says \(9223372036854775807, 5, 4, 3\)"
    else:
        manifest = os.path.join(path, "manifest.json")
        meta = json.load(open(manifest))
        meta["count"] = 2**63 - 1
        meta[METADATA_CHECKSUM] = metadata_checksum(meta)
        json.dump(meta, open(manifest, "w"))
        message = "labels.csv lists 6 images, the manifest says 9223372036854775807"
    with pytest.raises(StoreError, match=message):
        stores.open(path)


# verify's report is bounded ----------------------------------------------------------------------


def test_verify_lists_a_bounded_number_of_bad_images_and_counts_the_rest(tmp_path):
    path = write(target(tmp_path, "hdf5"), make_images(1500, (2, 2, 1)), np.arange(1500), batch=500)
    with h5py.File(path, "r+") as f:
        f["crc32c"][...] = 0  # every image fails its check
    report = verify(path, max_listed=10)
    assert [i for i, _ in report.bad] == list(range(10)) and report.unlisted == 1490
    done = run("verify", "--quiet", path)
    assert done.returncode == 1
    assert done.stdout.count(": image ") == 1000 and "and 500 more bad image(s), not listed" in done.stdout
    assert "FAILED: 1500 bad image(s) of 1500" in done.stderr


# Special files where a store's files should be -------------------------------------------------------


def _png_with_fifo(tmp_path, name):
    path = write(target(tmp_path, "png"), make_images(4), np.arange(4))
    victim = os.path.join(path, name)
    os.unlink(victim)
    os.mkfifo(victim)
    return path


def _lmdb_with_fifo(tmp_path):
    path = write(target(tmp_path, "lmdb"), make_images(4), np.arange(4))
    os.unlink(os.path.join(path, "data.mdb"))
    os.mkfifo(os.path.join(path, "data.mdb"))
    return path


def _fifo_hdf5(tmp_path):
    path = str(tmp_path / "fifo.h5")
    os.mkfifo(path)
    return path


SPECIAL = {
    "labels.csv": (lambda p: _png_with_fifo(p, "labels.csv"), "labels.csv: the labels file is a FIFO"),
    "manifest.json": (lambda p: _png_with_fifo(p, "manifest.json"), "manifest.json is a FIFO"),
    "data.mdb": (_lmdb_with_fifo, "data.mdb is a FIFO"),
    "the HDF5 file": (_fifo_hdf5, "a FIFO \\(named pipe\\), not a store"),
}


@pytest.mark.parametrize("what", sorted(SPECIAL))
def test_a_fifo_in_a_store_is_refused_by_name_never_opened(tmp_path, what):
    make, message = SPECIAL[what]
    path = make(tmp_path)
    for command in ("verify", "info"):
        done = run(command, path, timeout=20)  # opening the FIFO would block: the timeout fails the test
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert message.replace("\\", "") in done.stderr.replace("\\", "")
    with pytest.raises(imgconv.ImgconvError):
        stores.open(path)
    if what == "the HDF5 file":
        with pytest.raises(StoreError, match="a FIFO"):
            stores.open(path, format="hdf5")


def test_a_fifo_image_of_a_png_folder_fails_that_image_alone(tmp_path):
    path = _png_with_fifo(tmp_path, "images/000/000002.png")
    done = run("verify", path, timeout=20)
    assert done.returncode == 1
    assert "image 2: images/000/000002.png is a FIFO (named pipe), not a regular file" in done.stdout
    assert "not regular files, e.g. images/000/000002.png (a FIFO (named pipe))" in done.stdout
    assert run("info", path, timeout=20).returncode == 0
    with stores.open(path) as store:
        assert store[3][1] == 3
        with pytest.raises(StoreError, match="image 2 is a FIFO"):
            store[2]


def test_a_nul_byte_in_an_old_manifests_labels_file_is_an_error(tmp_path):
    path = write(target(tmp_path, "png"), make_images(4), np.arange(4))
    manifest = os.path.join(path, "manifest.json")
    meta = json.load(open(manifest))
    meta["labels_file"] = "labels\x00.csv"
    del meta[METADATA_CHECKSUM]  # an old manifest: no checksum to refuse it by
    json.dump(meta, open(manifest, "w"))
    with pytest.raises(StoreError, match="labels_file .*not a file name"):
        stores.open(path)
    done = run("verify", path)
    assert done.returncode == 1 and "Traceback" not in done.stderr


# Names that are not UTF-8 -----------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems refuse names that are not UTF-8")
@pytest.mark.parametrize("fmt, suffix", [("hdf5", ".h5"), ("lmdb", ".lmdb"), ("png", "_png")])
def test_a_folder_with_names_that_are_not_utf8_converts_into_every_format(tmp_path, fmt, suffix):
    src = os.path.join(os.fsencode(tmp_path), b"src-\xff")
    for name in (b"caf\xe9", b"dog", b"\xc3\xa9t\xc3\xa9"):
        os.makedirs(os.path.join(src, name))
        for k in range(2):
            Image.fromarray(np.full((4, 4, 3), k * 50, np.uint8)).save(os.path.join(src, name, b"%d.png" % k))
    dst = str(tmp_path / f"out{suffix}")
    imgconv.convert(os.fsdecode(src), dst)
    with stores.open(dst) as store:
        assert store.label_names == [os.fsdecode(n) for n in sorted((b"caf\xe9", b"dog", b"\xc3\xa9t\xc3\xa9"))]
        assert os.fsencode(store.label_names[0]) == b"caf\xe9"  # the bytes, exactly
        assert os.fsdecode(src) in store.metadata["source"]
        assert len(store) == 6 and verify(dst).bad == []
    shutil.rmtree(dst) if os.path.isdir(dst) else os.unlink(dst)
    done = run("convert", src, dst)
    assert done.returncode == 0, done.stderr
