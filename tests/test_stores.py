"""Stores: round trips for every format, batching, atomic writes, processes, bad input."""
import hashlib
import json
import multiprocessing
import os
import pickle
import shutil
import stat
import subprocess
import sys
import threading
import time

import h5py
import lmdb
import numpy as np
import pytest

from imgconv import kernels, stores
from imgconv.errors import ImgconvError, RecordError, StoreError, UnknownFormatError
from imgconv.stores import StoreIndexError, base, hdf5_store, lmdb_store, png_folder

FORMATS = ["lmdb", "hdf5", "png"]
SUFFIX = {"lmdb": ".lmdb", "hdf5": ".h5", "png": "_png"}


def make_images(n, shape=(5, 4, 3), seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def varying_images(n, seed=0):
    """Images of varying sizes, grayscale (2-D and C=1) and colour mixed."""
    rng = np.random.default_rng(seed)
    shapes = [(rng.integers(1, 9), rng.integers(1, 9), (1, 3, 4)[i % 3]) for i in range(n)]
    return [rng.integers(0, 256, s if i % 5 else s[:2] if s[2] == 1 else s, dtype=np.uint8)
            for i, s in enumerate(shapes)]


def as_hwc(image):
    return image[:, :, None] if image.ndim == 2 else image


def target(tmp_path, fmt, name="store"):
    return str(tmp_path / (name + SUFFIX[fmt]))


def write(path, images, labels, batch=3, fmt=None, **options):
    with stores.create(path, fmt, **options) as writer:
        for start in range(0, len(images), batch):
            writer.append(images[start : start + batch], labels[start : start + batch])
    return path


def leftovers(directory):
    return [name for name in os.listdir(directory)
            if ".tmp-" in name or ".old-" in name or name.endswith(".imgconv-partial")]


# --------------------------------------------------------------------------- round trips


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
        assert meta["imgconv_version"] and meta["format_version"] == {"lmdb": 1, "hdf5": 2, "png": 2}[fmt]
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


def test_lmdb_round_trip_under_both_kernels(tmp_path, backend):
    images = make_images(20)
    path = write(target(tmp_path, "lmdb"), images, np.arange(20), batch=6, records_per_value=3)
    with stores.open(path) as store:
        assert np.array_equal(store.read_batch([19, 0, 4, 4])[0], images[[19, 0, 4, 4]])
        assert np.array_equal(store[7][0], images[7])
        assert np.array_equal(store.read_all()[0], images)


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


# --------------------------------------------------------------------------- batching


def _digest(path):
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(d, f) for d, _, names in os.walk(path) for f in names if f != "lock.mdb"
    )
    h = hashlib.sha256()
    for name in files:
        h.update(os.path.relpath(name, path).encode())
        with open(name, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


@pytest.mark.parametrize("fmt", FORMATS)
def test_output_does_not_depend_on_batch_sizes(tmp_path, fmt, monkeypatch):
    # Small transaction / write-unit sizes make the 400 images span many of them.
    monkeypatch.setattr(lmdb_store, "TXN_BYTES", 2000)
    monkeypatch.setattr(hdf5_store, "WRITE_UNIT_BYTES", 600)
    images = make_images(400, (4, 4, 3))
    labels = np.arange(400) % 7
    options = {"lmdb": {"records_per_value": 6, "map_size": 1 << 20}, "hdf5": {"chunk_images": 5}, "png": {}}[fmt]
    digests = {
        _digest(write(target(tmp_path, fmt, f"b{batch}"), images, labels, batch=batch, **options))
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
    assert _digest(first) == _digest(second)
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


# --------------------------------------------------------------------------- bad batches


@pytest.mark.parametrize("fmt", FORMATS)
def test_batch_disagreeing_with_the_store_is_refused(tmp_path, fmt):
    path = target(tmp_path, fmt)
    with stores.create(path) as writer:
        writer.append(make_images(2), [0, 1])
        with pytest.raises(StoreError, match=r"store holds 5x4x3") as info:
            writer.append(make_images(2, (5, 4, 1)), [0, 1])
        assert path in str(info.value)
        with pytest.raises(StoreError, match="uint8"):
            writer.append(make_images(2).astype(np.float32), [0, 1])
        with pytest.raises(StoreError, match="labels"):
            writer.append(make_images(2), [0, 1, 2])
        with pytest.raises(StoreError, match="varying sizes"):
            writer.append([make_images(1)[0], make_images(1, (2, 2, 3))[0]], [0, 1])
        writer.append(list(make_images(2, seed=3)), [5, 6])  # a list of the store's shape is fine
    with stores.open(path) as store:
        assert len(store) == 4 and store.read_all()[1].tolist() == [0, 1, 5, 6]


def test_png_refuses_more_than_four_channels(tmp_path):
    with pytest.raises(StoreError, match="1 to 4 channels"):
        with stores.create(target(tmp_path, "png")) as writer:
            writer.append(make_images(1, (2, 2, 5)), [0])
    assert not leftovers(tmp_path)


# --------------------------------------------------------------------------- atomic output


@pytest.mark.parametrize("fmt", FORMATS)
def test_exception_in_the_with_block_leaves_nothing(tmp_path, fmt):
    path = target(tmp_path, fmt)
    with pytest.raises(RuntimeError):
        with stores.create(path) as writer:
            writer.append(make_images(5), np.arange(5))
            raise RuntimeError("interrupted")
    assert not os.path.exists(path)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_killed_writer_leaves_no_store_at_the_target(tmp_path, fmt):
    path = target(tmp_path, fmt)
    script = (
        "import os, signal, numpy as np\n"
        "from imgconv import stores\n"
        f"w = stores.create({path!r})\n"
        "w.append(np.zeros((50, 4, 4, 3), np.uint8), np.arange(50))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert result.returncode == -9, result.stderr.decode()
    assert not os.path.exists(path)
    (partial,) = leftovers(tmp_path)
    assert partial == "." + os.path.basename(path) + ".imgconv-partial"
    with pytest.raises(ImgconvError):
        stores.open(tmp_path / partial / os.path.basename(path), fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_existing_target_needs_overwrite(tmp_path, fmt):
    path = write(target(tmp_path, fmt), make_images(3), [1, 2, 3])
    with pytest.raises(StoreError, match="already exists"):
        stores.create(path)
    # An aborted replacement keeps the old store intact.
    with pytest.raises(RuntimeError):
        with stores.create(path, overwrite=True) as writer:
            writer.append(make_images(2, seed=5), [8, 9])
            raise RuntimeError
    with stores.open(path) as store:
        assert store.read_all()[1].tolist() == [1, 2, 3]
    write(path, make_images(2, seed=5), [8, 9], overwrite=True)
    with stores.open(path) as store:
        assert store.read_all()[1].tolist() == [8, 9]
    assert not leftovers(tmp_path)


# --------------------------------------------------------------------------- processes


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


# --------------------------------------------------------------------------- plain libraries


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


# --------------------------------------------------------------------------- read-only media


def run_without_write_access(script):
    """Run Python ``script`` as a user whom a chmod 555 directory stops.

    Root ignores file modes, so as root the script runs as nobody (setpriv);
    without setpriv the test is skipped, since it could not fail.
    """
    if os.geteuid() != 0:
        command = [sys.executable, "-c", script]
    elif shutil.which("setpriv"):
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", script]
    else:
        pytest.skip("running as root without setpriv: root writes into a chmod 555 directory, "
                    "so this test could not fail")
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("fmt", FORMATS)
def test_store_on_a_read_only_directory(shared_dir, fmt):
    images = make_images(5)
    folder = os.path.join(shared_dir, "media")
    os.mkdir(folder)
    path = write(os.path.join(folder, "store" + SUFFIX[fmt]), images, np.arange(5))
    for d, dirs, files in os.walk(folder):
        for f in files:
            os.chmod(os.path.join(d, f), 0o444)
    for d, dirs, files in os.walk(folder, topdown=False):
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


def test_writing_into_a_read_only_directory_is_a_store_error(shared_dir):
    folder = os.path.join(shared_dir, "media")
    os.mkdir(folder)
    os.chmod(folder, 0o555)
    script = f"""
import json, os, numpy as np
from imgconv import stores
folder = {folder!r}
assert not os.access(folder, os.W_OK), "the directory is writable: this check would prove nothing"
found = {{}}
for fmt, name in [("png", "a"), ("lmdb", "a.lmdb"), ("hdf5", "a.h5")]:
    path = os.path.join(folder, name)
    try:
        with stores.create(path, fmt) as writer:
            writer.append(np.zeros((4, 8, 8, 3), np.uint8), [0, 1, 2, 3])
        found[fmt] = "no error"
    except Exception as exc:
        found[fmt] = [type(exc).__module__ + "." + type(exc).__name__, path in str(exc)]
found["left"] = os.listdir(folder)
print(json.dumps(found))
"""
    result = run_without_write_access(script)
    for fmt in FORMATS:
        assert result[fmt] == ["imgconv.errors.StoreError", True], (fmt, result[fmt])
    assert result["left"] == []


def test_disk_full_is_a_store_error_and_leaves_nothing(tmp_path):
    # A 3 MB tmpfs in a private mount namespace (root only): the store cannot fit.
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare to mount a tiny tmpfs")
    small = tmp_path / "small"
    small.mkdir()
    script = f"""
import json, os, numpy as np
from imgconv import stores
images = np.random.default_rng(0).integers(0, 256, (100, 32, 32, 3), dtype=np.uint8)
found = {{}}
for fmt, name in [("png", "a"), ("lmdb", "a.lmdb"), ("hdf5", "a.h5")]:
    path = os.path.join({str(small)!r}, name)
    try:
        with stores.create(path, fmt, **({{"compress_level": 0}} if fmt == "png" else {{}})) as writer:
            for _ in range(20):
                writer.append(images, np.arange(100))
        found[fmt] = "no error"
    except Exception as exc:
        found[fmt] = [type(exc).__module__ + "." + type(exc).__name__, path in str(exc)]
    found[fmt + " left"] = os.listdir({str(small)!r})
print(json.dumps(found))
"""
    shell = f"mount -t tmpfs -o size=3m tmpfs {small} && exec {sys.executable} -c \"$0\""
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", shell, script],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and "mount" in done.stderr and not done.stdout:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr[-2000:]  # a crash at exit (HDF5) fails here
    assert "Exception ignored" not in done.stderr, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for fmt in FORMATS:
        assert result[fmt] == ["imgconv.errors.StoreError", True], (fmt, result[fmt])
        assert result[fmt + " left"] == []


# --------------------------------------------------------------------------- bad stores


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


def test_truncated_hdf5(tmp_path):
    path = write(target(tmp_path, "hdf5"), make_images(200, (16, 16, 3)), np.arange(200), batch=50)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(StoreError, match=r"store\.h5"):
        with stores.open(path) as store:
            store.read_all()


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
    record = bytes(lmdb_store.record.pack_records(images[5:6], [5]).buffer)
    at = raw.find(record)
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


def test_corrupt_png(tmp_path):
    path = write(target(tmp_path, "png"), make_images(3), [0, 1, 2])
    victim = os.path.join(path, png_folder.image_path(1))
    with open(victim, "r+b") as f:
        f.truncate(30)
    with stores.open(path) as store:
        assert store[0][1] == 0
        with pytest.raises(StoreError, match=r"000001\.png.*image 1"):
            store[1]


def test_png_manifest_and_labels_checked(tmp_path):
    path = write(target(tmp_path, "png"), make_images(3), [0, 1, 2])
    with open(os.path.join(path, "labels.csv"), "a") as f:
        f.write("3,images/000/000003.png,7,00000000\n")
    with pytest.raises(StoreError, match="lists 4 images, the manifest says 3"):
        stores.open(path)
    with open(os.path.join(path, "manifest.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        stores.open(path)


# --------------------------------------------------------------------------- classic PNG folders


def write_classic_png_folder(folder, images, labels):
    """The classic layout: ``{i}.png`` per image and one labels CSV named for the count, a label per line."""
    from PIL import Image

    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i}.png")
    (folder / f"{len(images)}.csv").write_text("".join(f"{int(label)}\n" for label in labels))


def test_reads_the_classic_png_layout(tmp_path):
    images = make_images(12, (6, 5, 3))
    labels = np.arange(12) % 4
    folder = tmp_path / "classic"
    folder.mkdir()
    write_classic_png_folder(folder, images, labels)
    assert stores.detect_format(folder) == "png"
    with stores.open(folder) as store:
        assert len(store) == 12 and store.shape == (6, 5, 3)
        got, got_labels = store.read_batch([11, 0, 0])
        assert np.array_equal(got, images[[11, 0, 0]]) and got_labels.tolist() == labels[[11, 0, 0]].tolist()


@pytest.mark.parametrize("csv_text", ["label\n3\n4\n", "3\n4\n", "index,path,label\n0,0.png,3\n1,1.png,4\n"])
def test_classic_labels_csv_forms(tmp_path, csv_text):
    from PIL import Image

    images = make_images(2, (3, 3, 1))
    for i, image in enumerate(images):
        Image.fromarray(image[:, :, 0]).save(tmp_path / f"{i}.png")
    (tmp_path / "labels.csv").write_text(csv_text)
    with stores.open(tmp_path) as store:
        assert store.read_all()[1].tolist() == [3, 4]
        assert np.array_equal(store.read_all()[0], images)


def test_classic_folder_with_missing_images(tmp_path):
    from PIL import Image

    Image.fromarray(make_images(1, (2, 2, 3))[0]).save(tmp_path / "0.png")
    (tmp_path / "labels.csv").write_text("1\n2\n3\n")
    with pytest.raises(StoreError, match="lists 3 labels but .*2.png is missing"):
        stores.open(tmp_path)


# --------------------------------------------------------------------------- registry


def test_format_from_suffix_and_detection(tmp_path):
    assert stores.format_for_path("a/b.lmdb") == "lmdb"
    assert stores.format_for_path("b.HDF5") == "hdf5" and stores.format_for_path("b.h5") == "hdf5"
    assert stores.format_for_path("folder") == "png"
    path = write(str(tmp_path / "named.bin"), make_images(2), [0, 1], fmt="hdf5")
    assert stores.detect_format(path) == "hdf5"
    assert isinstance(stores.open(path), hdf5_store.Hdf5Reader)


def test_unknown_writer_option(tmp_path):
    with pytest.raises(TypeError):
        stores.create(tmp_path / "x.lmdb", chunk_images=3)


def test_store_permissions_after_close(tmp_path):
    path = write(target(tmp_path, "hdf5"), make_images(2), [0, 1])
    assert stat.S_ISREG(os.stat(path).st_mode)


def test_lmdb_gather_split_over_threads(tmp_path, monkeypatch):
    monkeypatch.setattr(base, "PARALLEL_MIN_BYTES", 1)
    monkeypatch.setattr(base, "read_threads", lambda: 3)
    monkeypatch.setattr(base, "_POOL", [None, None])
    images = make_images(50)
    path = write(target(tmp_path, "lmdb"), images, np.arange(50), batch=7, records_per_value=4)
    indices = [49, 3, 3, 17, 0, 28, 28, 41]
    with stores.open(path) as store:
        got, labels = store.read_batch(indices)
        assert np.array_equal(got, images[indices]) and labels.tolist() == indices
        assert np.array_equal(store.read_all()[0], images)
    data = os.path.join(path, "data.mdb")
    raw = bytearray(open(data, "rb").read())
    at = raw.find(bytes(lmdb_store.record.pack_records(images[41:42], [41]).buffer))
    raw[at + 33] ^= 1
    open(data, "wb").write(bytes(raw))
    with stores.open(path) as store:
        with pytest.raises(StoreError, match="image 41 .*checksum"):
            store.read_all()


@pytest.mark.parametrize("fmt", FORMATS)
def test_reader_sees_a_store_replaced_at_the_same_path(tmp_path, fmt):
    path = write(target(tmp_path, fmt), make_images(3), [0, 1, 2])
    old = stores.open(path)  # left open on purpose
    write(path, make_images(5), [5, 6, 7, 8, 9], overwrite=True)
    with stores.open(path) as new:
        assert len(new) == 5 and new[4][1] == 9
    assert len(old) == 3 and old[2][1] == 2  # the old reader keeps its own (now unlinked) store
    old.close()


# --------------------------------------------------------------------------- replacing a store


def _renames_interrupted_at(monkeypatch, call):
    """Make the ``call``-th os.rename raise KeyboardInterrupt (Ctrl-C), and renameat2 unavailable."""
    real, calls = os.rename, [0]

    def rename(source, target):
        calls[0] += 1
        if calls[0] == call:
            raise KeyboardInterrupt
        return real(source, target)

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(base, "_renameat2", lambda source, target, flags: False, raising=False)


@pytest.mark.parametrize("fmt", FORMATS)
def test_interrupted_overwrite_keeps_a_store_at_the_target(tmp_path, fmt, monkeypatch):
    path = write(target(tmp_path, fmt), make_images(3), [1, 2, 3])
    writer = stores.create(path, overwrite=True)
    writer.append(make_images(2, seed=5), [8, 9])
    # Without renameat2 a directory is renamed aside, then the new one in: Ctrl-C between the
    # two. (A file is replaced by one os.replace and needs no second rename.)
    _renames_interrupted_at(monkeypatch, 2)
    try:
        writer.close()
    except KeyboardInterrupt:
        pass
    monkeypatch.undo()
    with stores.open(path) as store:
        assert store.labels().tolist() in ([1, 2, 3], [8, 9])
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_overwrite_with_and_without_renameat2(tmp_path, fmt, monkeypatch):
    path = write(target(tmp_path, fmt), make_images(3), [1, 2, 3])
    write(path, make_images(2, seed=5), [8, 9], overwrite=True)  # renameat2 where the system has it
    with stores.open(path) as store:
        assert store.labels().tolist() == [8, 9]
    monkeypatch.setattr(base, "_renameat2", lambda source, target, flags: False)
    write(path, make_images(4, seed=6), [4, 5, 6, 7], overwrite=True)
    with stores.open(path) as store:
        assert store.labels().tolist() == [4, 5, 6, 7]
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_target_appearing_while_writing_keeps_the_finished_store(tmp_path, fmt):
    path = target(tmp_path, fmt)
    writer = stores.create(path)
    writer.append(make_images(4), [0, 1, 2, 3])
    if fmt == "hdf5":
        open(path, "wb").close()
    else:
        os.makedirs(os.path.join(path, "x"))  # a non-empty directory
    with pytest.raises(StoreError, match="already exists") as info:
        writer.close()
    (kept,) = leftovers(tmp_path)
    assert os.path.join(str(tmp_path), kept) in str(info.value)
    with stores.open(tmp_path / kept, fmt) as store:
        assert store.labels().tolist() == [0, 1, 2, 3]


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


# --------------------------------------------------------------------------- failures inside libraries


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


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_failed_write_cannot_be_continued_or_finished(tmp_path, fmt, monkeypatch):
    path = target(tmp_path, fmt)
    writer = stores.create(path)
    writer.append(make_images(2), [0, 1])
    writer_class = type(writer)

    def failing(self, encoded):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer_class, "_write", failing)
    with pytest.raises(StoreError, match="No space left"):
        writer.append(make_images(2), [2, 3])
    monkeypatch.undo()
    with pytest.raises(StoreError, match="cannot be continued"):
        writer.append(make_images(2), [2, 3])
    with pytest.raises(StoreError, match="cannot be finished"):
        writer.close()
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- index checks


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


# --------------------------------------------------------------------------- checksums over labels


def test_image_checksums_continue_over_the_label(backend):
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (50, 3, 2, 3), dtype=np.uint8)
    labels = np.concatenate([rng.integers(-2**63, 2**63 - 1, 47, dtype=np.int64), [-1, 0, 2**63 - 1]])
    expected = [kernels.crc32c(np.array(label, "<i8").tobytes(), kernels.crc32c(image))
                for image, label in zip(images, labels)]
    assert base.image_checksums(images, labels).tolist() == expected  # the vectorised way
    assert base.image_checksums(images[:3], labels[:3]).tolist() == expected[:3]  # one by one
    varying = varying_images(9)
    assert base.image_checksums(varying, np.arange(9)).tolist() == [
        kernels.crc32c(np.array(i, "<i8").tobytes(), kernels.crc32c(np.ascontiguousarray(image)))
        for i, image in enumerate(varying)]


def _change_label(path, fmt, index, label):
    if fmt == "hdf5":
        with h5py.File(path, "r+") as f:
            f["labels"][index] = label
        return
    name = os.path.join(path, "labels.csv")
    rows = open(name).read().splitlines()
    cells = rows[index + 1].split(",")
    cells[2] = str(label)
    rows[index + 1] = ",".join(cells)
    open(name, "w").write("\n".join(rows) + "\n")


@pytest.mark.parametrize("fmt", ["hdf5", "png"])
@pytest.mark.parametrize("sizes", ["fixed", "varying"])
def test_a_changed_label_is_caught(tmp_path, fmt, sizes):
    images = make_images(6) if sizes == "fixed" else varying_images(6)
    path = write(target(tmp_path, fmt), images, np.arange(6) + 10)
    _change_label(path, fmt, 3, 77)
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


# --------------------------------------------------------------------------- LMDB of varying sizes


def test_lmdb_varying_sizes_with_a_tiny_first_image_keep_values_small(tmp_path):
    rng = np.random.default_rng(0)
    images = [np.zeros((1, 1, 3), np.uint8)] + [rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)
                                                for _ in range(40)]
    path = target(tmp_path, "lmdb")
    with stores.create(path) as writer:
        for i, image in enumerate(images):
            writer.append([image], [i])
    with stores.open(path) as store:
        assert store.metadata["records_per_value"] == lmdb_store.VARIABLE_RECORDS_PER_VALUE
        assert all(np.array_equal(a, b) for a, b in zip(store.read_all()[0], images))
        assert np.array_equal(store[33][0], images[33])
    env = lmdb.open(path, readonly=True, lock=False)
    with env.begin() as txn:
        largest = max(len(v) for k, v in txn.cursor() if len(k) == 8)
    env.close()
    assert largest <= lmdb_store.VARIABLE_RECORDS_PER_VALUE * (32 + 100 * 100 * 3) + 8 + 8 * 16


# --------------------------------------------------------------------------- PNG folder checks


def test_png_labels_file_outside_the_folder_is_refused(tmp_path):
    path = write(target(tmp_path, "png"), make_images(2), [0, 1])
    (tmp_path / "elsewhere.csv").write_text(open(os.path.join(path, "labels.csv")).read())
    name = os.path.join(path, "manifest.json")
    for outside in ("../elsewhere.csv", str(tmp_path / "elsewhere.csv")):
        meta = json.load(open(name))
        meta["labels_file"] = outside
        meta["metadata_crc32c"] = base.metadata_checksum(meta)  # crafted, so with a matching checksum
        json.dump(meta, open(name, "w"))
        with pytest.raises(StoreError, match="outside the folder"):
            stores.open(path)


def test_png_checksum_above_32_bits_is_a_store_error(tmp_path):
    path = write(target(tmp_path, "png"), make_images(2), [0, 1])
    name = os.path.join(path, "labels.csv")
    rows = open(name).read().splitlines()
    rows[2] = ",".join(rows[2].split(",")[:3] + ["1" + rows[2].split(",")[3]])
    open(name, "w").write("\n".join(rows) + "\n")
    with pytest.raises(StoreError, match="row 3"):
        stores.open(path)


def test_png_decompression_bomb_is_a_store_error(tmp_path, monkeypatch):
    from PIL import Image

    path = write(target(tmp_path, "png"), make_images(2, (16, 16, 3)), [0, 1])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # 256 pixels is then over twice the limit
    with stores.open(path) as store:
        with pytest.raises(StoreError, match="decompression bomb"):
            store[1]


def test_png_label_beyond_int64_is_a_store_error(tmp_path):
    path = write(target(tmp_path, "png"), make_images(2), [0, 1])
    _change_label(path, "png", 1, 2**64)
    with pytest.raises(StoreError, match="row 3"):
        stores.open(path)


def test_lmdb_gather_threads_finish_before_the_transaction_ends(tmp_path, monkeypatch):
    monkeypatch.setattr(base, "PARALLEL_MIN_BYTES", 1)
    monkeypatch.setattr(base, "read_threads", lambda: 3)
    monkeypatch.setattr(base, "_POOL", [None, None])
    path = write(target(tmp_path, "lmdb"), make_images(30), np.arange(30), batch=30, records_per_value=4)
    finished, lock = [], threading.Lock()

    real_part = lmdb_store._gather_part

    def gather_part(*args):
        with lock:
            first = not finished and not getattr(gather_part, "failed", False)
            gather_part.failed = True
        if first:
            return args[-2]  # one part finds a bad record at once...
        time.sleep(0.2)  # ...while the others still read the transaction's buffers
        result = real_part(*args)
        with lock:
            finished.append(1)
        return result

    monkeypatch.setattr(lmdb_store, "_gather_part", gather_part)
    with stores.open(path) as store:
        with pytest.raises(StoreError):
            store.read_all()
        assert len(finished) == 2  # both were done before the read returned


# --------------------------------------------------------------------------- metadata checksum


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
            txn.put(lmdb_store.METADATA_KEY, txn.get(lmdb_store.METADATA_KEY).replace(b'"dog"', b'"dig"'))
        env.close()
    with pytest.raises(StoreError, match="metadata is damaged"):
        stores.open(path)


# --------------------------------------------------------------------------- write pipelines


def test_lmdb_missing_chunk_in_a_full_read_is_named(tmp_path):
    path = write(target(tmp_path, "lmdb"), make_images(12), np.arange(12), records_per_value=2)
    env = lmdb.open(path, subdir=True)
    with env.begin(write=True) as txn:
        txn.delete(lmdb_store.chunk_key(3))
    env.close()
    with stores.open(path) as store:
        with pytest.raises(StoreError, match="chunk 3 .*missing"):
            store.read_all()
        assert np.array_equal(store.read_batch([0, 1, 2, 3, 4, 5])[0], make_images(12)[:6])


@pytest.mark.filterwarnings("ignore::imgconv.sources.base.SkippedImageWarning")  # skipping is the point here
@pytest.mark.parametrize("workers", [0, 2])
def test_png_conversion_with_skipped_images_matches_any_pool(tmp_path, workers):
    from PIL import Image

    import imgconv

    root = tmp_path / "folder"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(11):
        Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
    (root / "004.png").write_bytes(b"not a PNG")
    (root / "008.png").write_bytes(b"not a PNG either")
    one = imgconv.convert(root, tmp_path / "one", workers=1, batch_size=11, on_error="skip")
    many = imgconv.convert(root, tmp_path / "many", workers=workers, batch_size=3, on_error="skip")
    assert one.count == many.count == 9
    assert _digest(one.path) == _digest(many.path)
    with stores.open(many.path) as store:
        assert store.check_layout() == [] and len(store.read_all()[0]) == 9


@pytest.mark.parametrize("options", [{"chunk_images": 4}, {"chunk_images": 5}, {"chunk_images": 4, "compression": "lzf"}])
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
    monkeypatch.setattr(base, "PARALLEL_MIN_BYTES", 1)
    monkeypatch.setattr(base, "read_threads", lambda: 3)
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
