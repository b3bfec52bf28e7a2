"""CIFAR readers: every official layout, from directories and archives, and every kind of bad batch."""
import io
import multiprocessing
import os
import pickle
import shutil
import tarfile

import numpy as np
import pytest

from imgconv import _pure
from imgconv.errors import SourceError, UnsafePickleError
from imgconv.sample import dump_py2_pickle, generate_sample, write_sample
from imgconv.sources import CifarSource, open_source

COUNT = 60  # five training batches of 10, a test batch of 10


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    files = write_sample(root, count=COUNT, seed=5)
    images, labels = generate_sample(COUNT, seed=5)
    return files, images, labels


def _read_all(source, batch_size=16, start=0, stop=None):
    batches = list(source.batches(batch_size, start, stop))
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    return batches, images, labels


def _hwc(rows):
    out = np.empty((len(rows), 32, 32, 3), np.uint8)
    _pure.chw_to_hwc_into(rows, out)
    return out


FORMS = ["python_dir", "binary_dir", "python_archive", "binary_archive"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("split, first, last", [("train", 0, 50), ("test", 50, 60), ("all", 0, 60)])
def test_every_form_reads_back_what_the_sample_generated(sample, form, split, first, last):
    files, images, labels = sample
    source = open_source(getattr(files, form), split=split)
    assert isinstance(source, CifarSource)
    assert source.length == len(source) == last - first
    assert source.shape == (32, 32, 3)
    assert source.label_names[:2] == ["airplane", "automobile"] and len(source.label_names) == 10
    _, got, got_labels = _read_all(source)
    np.testing.assert_array_equal(got, images[first:last])
    np.testing.assert_array_equal(got_labels, labels[first:last])


def test_batches_are_contiguous_uint8_and_int64_with_a_short_last_one(sample, backend):
    files, images, labels = sample
    source = open_source(files.binary_dir)
    batches, got, _ = _read_all(source, batch_size=16)
    assert [len(b[0]) for b in batches] == [16, 16, 16, 2]
    for image_batch, label_batch in batches:
        assert image_batch.dtype == np.uint8 and image_batch.flags.c_contiguous and image_batch.ndim == 4
        assert label_batch.dtype == np.int64
    np.testing.assert_array_equal(got, images[:50])


@pytest.mark.parametrize("form", ["python_dir", "binary_archive"])
def test_subranges_cross_batch_files(sample, form):
    files, images, labels = sample
    source = open_source(getattr(files, form), split="all")
    batches, got, got_labels = _read_all(source, batch_size=7, start=3, stop=55)
    assert [len(b[0]) for b in batches] == [7] * 7 + [3]
    np.testing.assert_array_equal(got, images[3:55])
    np.testing.assert_array_equal(got_labels, labels[3:55])
    assert list(source.batches(4, 20, 20)) == []


def test_split_work_between_ranges_covers_everything(sample):
    files, images, _ = sample
    source = open_source(files.python_archive, split="all")
    parts = [_read_all(source, 8, lo, hi)[1] for lo, hi in [(0, 17), (17, 40), (40, 60)]]
    np.testing.assert_array_equal(np.concatenate(parts), images)


def _read_range_in_worker(args):
    source, start, stop = args
    return np.concatenate([images for images, _ in source.batches(9, start, stop)])


def test_source_pickles_small_and_reads_in_a_spawned_process(sample):
    files, images, _ = sample
    source = open_source(files.python_archive, split="all")
    assert source.length == COUNT  # counted here, so the worker does not count again
    data = pickle.dumps(source)
    assert len(data) < 4096
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        got = pool.map(_read_range_in_worker, [(source, 5, 33)])[0]
    np.testing.assert_array_equal(got, images[5:33])


def test_parent_directory_of_one_layout_is_found(tmp_path, sample):
    files, images, _ = sample
    with tarfile.open(files.binary_archive) as tar:
        tar.extractall(tmp_path, filter="data")
    source = open_source(tmp_path)
    assert source.path == str(tmp_path) and source.container.path.endswith("cifar-10-batches-bin")
    np.testing.assert_array_equal(_read_all(source)[1], images[:50])


def test_a_directory_with_two_layouts_asks_which(sample):
    files, _, _ = sample
    with pytest.raises(SourceError, match=r"holds 2 sets of CIFAR batch files, in .*cifar-10-batches-bin and "
                                          r".*cifar-10-batches-py; open the one to read"):
        open_source(os.path.dirname(files.python_dir))


# --- CIFAR-100 --------------------------------------------------------------

FINE_NAMES = [f"fine{i}" for i in range(100)]
COARSE_NAMES = [f"coarse{i}" for i in range(20)]


def _cifar100(n, seed):
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    return rows, rng.integers(0, 100, n), rng.integers(0, 20, n)


@pytest.fixture()
def cifar100_python(tmp_path):
    directory = tmp_path / "cifar-100-python"
    directory.mkdir()
    parts = {"train": _cifar100(12, 1), "test": _cifar100(5, 2)}
    for name, (rows, fine, coarse) in parts.items():
        batch = {
            "data": rows,
            "fine_labels": fine.tolist(),
            "coarse_labels": coarse.tolist(),
            "filenames": [f"{i}.png" for i in range(len(rows))],
        }
        with open(directory / name, "wb") as f:
            dump_py2_pickle(batch, f)
    with open(directory / "meta", "wb") as f:
        pickle.dump({"fine_label_names": FINE_NAMES, "coarse_label_names": COARSE_NAMES}, f)  # a Python-3 pickle
    archive = tmp_path / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(directory, arcname="cifar-100-python")
    return directory, archive, parts


@pytest.mark.parametrize("use_archive", [False, True])
@pytest.mark.parametrize("label_kind", ["fine", "coarse"])
def test_cifar100_python_fine_and_coarse(cifar100_python, use_archive, label_kind):
    directory, archive, parts = cifar100_python
    source = open_source(archive if use_archive else directory, split="all", label_kind=label_kind)
    assert source.length == 17
    assert source.label_names == (FINE_NAMES if label_kind == "fine" else COARSE_NAMES)
    _, images, labels = _read_all(source, batch_size=5)
    rows = np.concatenate([parts["train"][0], parts["test"][0]])
    column = 1 if label_kind == "fine" else 2
    np.testing.assert_array_equal(images, _hwc(rows))
    np.testing.assert_array_equal(labels, np.concatenate([parts["train"][column], parts["test"][column]]))
    assert "CIFAR-100 python" in source.description and label_kind in source.description


def test_cifar100_binary_records_coarse_then_fine(tmp_path):
    directory = tmp_path / "cifar-100-binary"
    directory.mkdir()
    parts = {"train.bin": _cifar100(6, 3), "test.bin": _cifar100(4, 4)}
    for name, (rows, fine, coarse) in parts.items():
        records = np.concatenate([coarse[:, None].astype(np.uint8), fine[:, None].astype(np.uint8), rows], axis=1)
        (directory / name).write_bytes(records.tobytes())
    (directory / "fine_label_names.txt").write_text("\n".join(FINE_NAMES) + "\n")
    (directory / "coarse_label_names.txt").write_text("\n".join(COARSE_NAMES) + "\n")
    fine = open_source(directory, split="test")
    coarse = open_source(directory, split="test", label_kind="coarse")
    np.testing.assert_array_equal(_read_all(fine)[1], _hwc(parts["test.bin"][0]))
    np.testing.assert_array_equal(_read_all(fine)[2], parts["test.bin"][1])
    np.testing.assert_array_equal(_read_all(coarse)[2], parts["test.bin"][2])
    assert coarse.label_names == COARSE_NAMES and fine.label_names == FINE_NAMES


def test_coarse_labels_do_not_apply_to_cifar10(sample):
    with pytest.raises(SourceError, match="CIFAR-100"):
        open_source(sample[0].python_dir, label_kind="coarse")


# --- bad input ---------------------------------------------------------------


def _copy_layout(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_truncated_binary_batch_names_file_and_byte_counts(tmp_path, sample):
    directory = _copy_layout(sample[0].binary_dir, tmp_path / "bin")
    path = directory / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[:-100])
    expected = r"data_batch_2\.bin: truncated .*30630 bytes is 9 records of 3073 bytes and 2973"
    with pytest.raises(SourceError, match=expected):
        _ = open_source(directory).length


def test_zero_byte_binary_batch(tmp_path, sample):
    directory = _copy_layout(sample[0].binary_dir, tmp_path / "bin")
    (directory / "test_batch.bin").write_bytes(b"")
    with pytest.raises(SourceError, match=r"test_batch\.bin: empty file"):
        _ = open_source(directory, split="test").length


def test_truncated_pickle_batch(tmp_path, sample):
    directory = _copy_layout(sample[0].python_dir, tmp_path / "py")
    path = directory / "data_batch_4"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(SourceError, match=r"data_batch_4: truncated"):
        _ = open_source(directory).length


def _write_py2(path, batch):
    with open(path, "wb") as f:
        dump_py2_pickle(batch, f)


def test_arrays_that_disagree_in_length(tmp_path, sample):
    directory = _copy_layout(sample[0].python_dir, tmp_path / "py")
    _write_py2(directory / "test_batch", {"data": np.zeros((5, 3072), np.uint8), "labels": [1, 2, 3, 4]})
    with pytest.raises(SourceError, match=r"test_batch: the arrays disagree in length: 5 images but 4 labels"):
        _ = open_source(directory, split="test").length


@pytest.mark.parametrize(
    "batch, message",
    [
        ({"labels": [1]}, "no data"),
        ({"data": np.zeros((2, 3072), np.int16), "labels": [1, 2]}, "uint8 array"),
        ({"data": np.zeros((2, 100), np.uint8), "labels": [1, 2]}, r"\(N, 3072\)"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [1, 10]}, r"labels holds 10, outside 0\.\.9"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": ["a", "b"]}, "integers"),
        ([1, 2, 3], "not the dict"),
    ],
)
def test_malformed_python_batches(tmp_path, sample, batch, message):
    directory = _copy_layout(sample[0].python_dir, tmp_path / "py")
    _write_py2(directory / "test_batch", batch)
    with pytest.raises(SourceError, match=message) as info:
        _ = open_source(directory, split="test").length
    assert "test_batch" in str(info.value)


def test_hostile_batch_is_refused_and_nothing_runs(tmp_path, sample):
    directory = _copy_layout(sample[0].python_dir, tmp_path / "py")
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (directory / "data_batch_1").write_bytes(pickle.dumps({"data": Payload()}, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"data_batch_1: the pickle asks for (posix|os)\.system"):
        _ = open_source(directory).length
    assert not marker.exists()


def test_missing_batch_file(tmp_path, sample):
    directory = _copy_layout(sample[0].python_dir, tmp_path / "py")
    (directory / "data_batch_3").unlink()
    with pytest.raises(SourceError, match=r"data_batch_3: missing"):
        _ = open_source(directory).length
    assert open_source(directory, split="test").length == 10  # the test split is whole


def test_tar_archive_of_something_else(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "a.txt").write_text("hi")
    archive = tmp_path / "other.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "stuff", arcname="stuff")
    with pytest.raises(SourceError, match=r"other.tar.gz is a tar archive holding no CIFAR batch files"):
        open_source(archive)


def test_corrupt_archive(tmp_path, sample):
    data = open(sample[0].binary_archive, "rb").read()
    broken = tmp_path / "cifar-10-binary.tar.gz"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match="cifar-10-binary.tar.gz"):
        _ = open_source(broken).length


def test_bad_options_and_ranges(sample):
    files = sample[0]
    with pytest.raises(SourceError, match="split must be one of"):
        open_source(files.python_dir, split="validation")
    source = open_source(files.binary_dir)
    with pytest.raises(ValueError, match="batch_size"):
        source.batches(0)
    with pytest.raises(ValueError, match="past the end"):
        source.batches(4, 0, 51)
    with pytest.raises(ValueError, match="stop"):
        source.batches(4, 10, 5)


@pytest.mark.parametrize("form", FORMS)
def test_take_gathers_scattered_indices_in_order(sample, form, backend):
    files, images, labels = sample
    source = open_source(getattr(files, form), split="all")
    indices = [59, 0, 31, 31, 12, 58, 1]
    got, got_labels = source.take(indices)
    assert got.flags.c_contiguous and got.dtype == np.uint8
    np.testing.assert_array_equal(got, images[indices])
    np.testing.assert_array_equal(got_labels, labels[indices])
    empty, empty_labels = source.take([])
    assert empty.shape == (0, 32, 32, 3) and empty_labels.shape == (0,)
    with pytest.raises(ValueError, match="index 60 is outside 0..59"):
        source.take([3, 60])


def test_archive_members_in_the_official_scrambled_order(tmp_path, sample):
    # cifar-10-python.tar.gz stores data_batch_4 first and data_batch_1 last; images still come in batch order.
    files, images, labels = sample
    order = ["data_batch_4", "readme.html", "test_batch", "data_batch_3", "batches.meta",
             "data_batch_2", "data_batch_5", "data_batch_1"]
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in order:
            tar.add(os.path.join(files.python_dir, name), arcname=f"cifar-10-batches-py/{name}")
    source = open_source(archive, split="all")
    _, got, got_labels = _read_all(source, batch_size=13)
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(got_labels, labels)
    np.testing.assert_array_equal(source.take([55, 3, 41])[0], images[[55, 3, 41]])


# --- review findings: hostile labels, damaged and unusual archives, state kept between calls -----


def test_shared_label_lists_are_refused_without_building_them(tmp_path, sample):
    # [inner] * n pickles as n references to one list: a small file that np.asarray would expand to n * n.
    import tracemalloc

    directory = _copy_layout(sample[0].python_dir, tmp_path / "py")
    inner = list(range(3000))
    for rows, labels in [(1, [inner] * 3000), (2, [inner, inner])]:
        (directory / "test_batch").write_bytes(
            pickle.dumps({"data": np.zeros((rows, 3072), np.uint8), "labels": labels}, protocol=2)
        )
        assert len((directory / "test_batch").read_bytes()) < 30_000
        tracemalloc.start()
        try:
            with pytest.raises(SourceError, match="test_batch: "):
                _ = open_source(directory, split="test").length
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 16 << 20


@pytest.mark.parametrize(
    "labels, message",
    [
        ([2**70, 1], "beyond 64 bits"),
        ([True, False], r"labels\[0\] is a bool"),
        ((1, 2), "a tuple"),
        (np.array([1, 2], np.uint8), None),
        (np.array([1.0, 2.0]), "float64"),
        ([np.int64(1), np.uint8(2)], None),  # NumPy integers in a list, as a batch written from NumPy data holds
        ([np.uint64(2**64 - 1), 1], "beyond 64 bits"),
        ([np.bool_(True), 1], r"labels\[0\] is a bool"),
        ([np.float32(1), 1], r"labels\[0\] is a float32"),
    ],
)
def test_labels_are_a_list_of_ints_or_an_integer_array(tmp_path, sample, labels, message):
    directory = _copy_layout(sample[0].python_dir, tmp_path / "py")
    (directory / "test_batch").write_bytes(
        pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": labels}, protocol=2)
    )
    source = open_source(directory, split="test")
    if message is None:
        assert _read_all(source)[2].tolist() == [1, 2]
    else:
        with pytest.raises(SourceError, match=message):
            _ = source.length


@pytest.mark.parametrize("cut", [20, 100, 600])
def test_truncated_archive_is_a_source_error(tmp_path, sample, cut):
    broken = tmp_path / "cifar-10-python.tar.gz"
    broken.write_bytes(open(sample[0].python_archive, "rb").read()[:cut])
    with pytest.raises(SourceError, match="cifar-10-python.tar.gz"):
        _ = open_source(broken).length


@pytest.mark.parametrize("arcname", ["./cifar-10-batches-py", "."])
def test_archive_members_named_with_dot_slash(tmp_path, sample, arcname):
    files, images, labels = sample
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        if arcname == ".":  # what `tar -C parent .` writes: "." first, then "./cifar-10-batches-py/..."
            tar.add(os.path.dirname(files.python_dir), arcname=".", filter=lambda info: (
                info if info.name == "." or info.name.startswith("./cifar-10-batches-py") else None))
        else:
            tar.add(files.python_dir, arcname=arcname)
    source = open_source(archive, split="all")
    _, got, got_labels = _read_all(source)
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert source.label_names[0] == "airplane"


def test_archive_with_two_members_of_one_name_is_refused(tmp_path, sample):
    files = sample[0]
    archive = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(files.binary_dir, arcname="cifar-10-batches-bin")
        tar.add(os.path.join(files.binary_dir, "data_batch_2.bin"), arcname="cifar-10-batches-bin/data_batch_1.bin")
    with pytest.raises(SourceError, match=r"data_batch_1\.bin: the archive holds two members of that name"):
        _ = open_source(archive).length


@pytest.mark.parametrize("form", ["python_archive", "binary_archive"])
def test_archive_stays_open_between_calls_until_pickled_or_closed(sample, form, monkeypatch):
    files, images, _ = sample
    source = open_source(getattr(files, form), split="all")
    assert source.length == COUNT
    opened = []
    real_open = tarfile.open

    def counting_open(*args, **kwargs):
        opened.append(args)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(tarfile, "open", counting_open)
    # Forward reads in separate calls continue one stream: one opening, not one per call.
    got = [b[0] for lo, hi in [(0, 7), (7, 25), (25, 60)] for b in source.batches(8, lo, hi)]
    np.testing.assert_array_equal(np.concatenate(got), images)
    np.testing.assert_array_equal(source.take([40, 41])[0], images[[40, 41]])
    assert len(opened) == 1
    copy = pickle.loads(pickle.dumps(source))  # the open archive does not travel
    assert copy.container._tar is None and copy._cache is None
    np.testing.assert_array_equal(next(copy.batches(5, 10, 15))[0], images[10:15])
    source.close()
    assert source.container._tar is None
    np.testing.assert_array_equal(next(source.batches(5, 0, 5))[0], images[:5])


def test_take_on_python_batches_keeps_the_last_batches_loaded(sample, monkeypatch):
    from imgconv.sources.cifar import parse

    files, images, _ = sample
    source = open_source(files.python_dir, split="all")
    assert source.length == COUNT
    loads = []
    real_load = parse.load_pickle

    def counting_load(data, where):
        loads.append(os.path.basename(where))
        return real_load(data, where)

    monkeypatch.setattr(parse, "load_pickle", counting_load)
    for indices in ([3, 14], [1, 17], [12, 5]):
        np.testing.assert_array_equal(source.take(indices)[0], images[indices])
    assert sorted(loads) == ["data_batch_1", "data_batch_2"]  # each loaded once over three calls
    source.take([55, 3])
    assert loads[-1] == "test_batch" and loads.count("data_batch_1") == 1
    assert len(source._cache) <= CifarSource.CACHED_BATCHES


def _read_in_forked_child(source, queue):
    images = next(source.batches(5, 20, 25))[0]
    queue.put((images, source.container._pid == os.getpid()))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_a_forked_process_opens_the_archive_again(sample):
    files, images, _ = sample
    source = open_source(files.binary_archive, split="all")
    next(source.batches(5, 0, 5))  # the parent has the archive open now
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_read_in_forked_child, args=(source, queue))
    child.start()
    got, own = queue.get(timeout=60)
    child.join(60)
    np.testing.assert_array_equal(got, images[20:25])
    assert own  # not the file object (and position) it shares with this process
    np.testing.assert_array_equal(next(source.batches(5, 5, 10))[0], images[5:10])


# --- sizes checked before reading (issue 12, item 4) -------------------------


def _sparse_member(name, data, hole):
    """A GNU sparse tar member ``name``: ``data``, then a hole of ``hole`` zero bytes stored as nothing."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0
    block = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    header = block[-512:]

    def octal(value):
        return (oct(value)[2:].rjust(11, "0") + "\0").encode()

    header[156:157] = tarfile.GNUTYPE_SPARSE
    header[386:410] = octal(0) + octal(len(data))  # one stored run: the data, at offset 0
    header[483:495] = octal(len(data) + hole)  # the size the member declares
    header[148:156] = b" " * 8
    header[148:156] = (oct(sum(header))[2:].rjust(6, "0") + "\0 ").encode()
    block[-512:] = header
    return bytes(block) + data + bytes(-len(data) % 512)


def _archive_with_sparse_batch(path, python_dir, hole):
    """A .tar.gz of the sample's python batches whose data_batch_1 is followed by a hole of ``hole`` bytes."""
    import gzip
    import io

    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in sorted(os.listdir(python_dir)):
            if name != "data_batch_1":
                tar.add(os.path.join(python_dir, name), arcname=f"cifar-10-batches-py/{name}")
    body = plain.getvalue().rstrip(b"\0")
    body += bytes(-len(body) % 512)
    data = open(os.path.join(python_dir, "data_batch_1"), "rb").read()
    body += _sparse_member("cifar-10-batches-py/data_batch_1", data, hole) + bytes(1024)
    with gzip.open(path, "wb") as f:
        f.write(body)
    return path


_MEASURED_CLI = """
import json, sys
from imgconv.cli import main
def status_kb(field):  # VmHWM, not ru_maxrss: that keeps the peak of the test runner exec replaced
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
base = status_kb("VmRSS")
code = main(sys.argv[1:])
print(json.dumps({"code": code, "mb": (status_kb("VmHWM") - base) / 1024}))
"""


def _convert_measured(source, dest):
    """``imgconv convert SOURCE DEST`` in a child: (exit status, MB of peak memory over its start, stderr)."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _MEASURED_CLI, "convert", str(source), str(dest), "--workers", "0",
                           "--quiet"], capture_output=True, text=True, timeout=300)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["code"], result["mb"], done.stderr


@pytest.mark.parametrize("form", ["archive", "directory"])
def test_a_batch_declaring_a_gigabyte_is_refused_before_it_is_read(tmp_path, sample, form):
    # A valid pickle followed by a sparse 1 GiB hole: small on disk, a gigabyte when read.
    files = sample[0]
    if form == "archive":
        source = _archive_with_sparse_batch(tmp_path / "cifar-10-python.tar.gz", files.python_dir, 1 << 30)
        assert source.stat().st_size < 500_000
        member = f"{source}:cifar-10-batches-py/data_batch_1"
    else:
        source = _copy_layout(files.python_dir, tmp_path / "cifar-10-batches-py")
        with open(source / "data_batch_1", "ab") as f:
            f.truncate(f.tell() + (1 << 30))
        member = str(source / "data_batch_1")
    code, mb, stderr = _convert_measured(source, tmp_path / "out.lmdb")
    assert code == 1 and len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr, stderr
    assert f"{member}: 1,073,7" in stderr and "more than a CIFAR-10 python batch of at most 10,000 images" in stderr
    assert mb < 64, mb
    assert not (tmp_path / "out.lmdb").exists()


def test_bytes_after_the_pickle_are_refused(tmp_path, sample):
    directory = _copy_layout(sample[0].python_dir, tmp_path / "py")
    with open(directory / "data_batch_2", "ab") as f:
        f.write(bytes(1000))
    with pytest.raises(SourceError, match=r"data_batch_2: 1,000 bytes follow the end of the pickle"):
        _ = open_source(directory).length


def test_binary_batches_hold_at_most_their_official_count_exactly(tmp_path, sample):
    directory = _copy_layout(sample[0].binary_dir, tmp_path / "bin")
    for records, fits in [(10_000, True), (10_001, False)]:
        with open(directory / "test_batch.bin", "wb") as f:
            f.truncate(records * 3073)  # whole records of label 0: a valid batch of that many images
        if fits:
            assert open_source(directory, split="test").length == 10_000
        else:
            with pytest.raises(SourceError, match=r"test_batch\.bin: 30,733,073 bytes, more than a CIFAR-10 binary "
                                                  r"batch of at most 10,000 images can hold \(30,730,000\)"):
                _ = open_source(directory, split="test").length


@pytest.mark.parametrize("form", ["python_dir", "binary_dir"])
def test_a_label_name_file_over_its_limit_is_refused(tmp_path, sample, form):
    directory = _copy_layout(getattr(sample[0], form), tmp_path / "batches")
    meta = directory / ("batches.meta" if form == "python_dir" else "batches.meta.txt")
    with open(meta, "ab") as f:
        f.truncate(2 << 20)
    with pytest.raises(SourceError, match=rf"{meta.name}: 2,097,152 bytes, more than a CIFAR-10 \w+ label-name file"):
        _ = open_source(directory).label_names


# --- any archive or directory holding one set of batch files (issue 12, item 7) ------------------------------


def _packed(path, python_dir, arcname, before=()):
    """A .tar.gz of the sample's python batches in folder ``arcname`` ("." for `tar -C dir .`), ``before`` first."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in before:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        tar.add(python_dir, arcname=arcname)
    return path


@pytest.mark.parametrize("arcname, before, shown", [
    ("my-cifar", (), "my-cifar/"),
    (".", (), "./"),
    ("deep/down/batches", (), "deep/down/batches/"),
    ("cifar-10-batches-py", [("README.txt", b"read me"), ("photos/a.png", b"x" * 5000)], "cifar-10-batches-py/"),
], ids=["another name", "tar -C dir .", "nested", "other members first"])
def test_an_archive_of_one_set_is_read_whatever_its_folder_and_says_which(tmp_path, sample, arcname, before, shown):
    files, images, labels = sample
    archive = _packed(tmp_path / "any.tar.gz", files.python_dir, arcname, before)
    source = open_source(archive, split="all")
    _, got, got_labels = _read_all(source)
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert f"batches at {archive}:{shown} (all, 60 images)" in source.description
    # The same files extracted are read from the directory that holds them.
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "out", filter="data")
    top = tmp_path / "out" / arcname.split("/")[0] if arcname != "." else tmp_path / "out"
    holder = top if arcname != "deep/down/batches" else tmp_path / "out" / "deep" / "down"
    np.testing.assert_array_equal(_read_all(open_source(holder, split="all"))[1], images)


def test_two_sets_in_an_archive_are_refused_naming_both(tmp_path, sample):
    files = sample[0]
    archive = tmp_path / "two.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(files.python_dir, arcname="first")
        tar.add(files.python_dir, arcname="second/copy")
    source = open_source(archive)  # the first set found; the second shows when the archive is read
    assert "batches at " + f"{archive}:first/" in source.description
    with pytest.raises(SourceError, match=r"two.tar.gz holds 2 sets of CIFAR batch files, in first/ and second/copy/"):
        _ = source.length
    with pytest.raises(SourceError, match="in first/ and second/copy/"):
        list(open_source(archive).stream(16))


def test_two_sets_in_a_directory_are_refused_naming_both(tmp_path, sample):
    files = sample[0]
    shutil.copytree(files.python_dir, tmp_path / "a")
    shutil.copytree(files.python_dir, tmp_path / "b")
    with pytest.raises(SourceError, match=r"holds 2 sets of CIFAR batch files, in .*/a and .*/b; open the one"):
        open_source(tmp_path)
    assert open_source(tmp_path / "b").description.startswith(f"CIFAR-10 python batches at {tmp_path / 'b'} ")
