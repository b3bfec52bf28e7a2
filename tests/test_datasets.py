"""Sharded datasets: the manifest, reading one as one store, verify and info, writing one here, resuming."""
import json
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from factories import make_images, tree_digest, varying_images, write

import imgconv
from imgconv import cli
from imgconv.datasets.manifest import MANIFEST, read_manifest
from imgconv.datasets.plan import ShardSize, parse_shard_size
from imgconv.datasets.reader import DatasetReader
from imgconv.errors import OptionError, SourceOptionError, StoreError, StoreIndexError
from imgconv.sample import generate_sample, write_sample

FORMATS = [("lmdb", ".lmdb"), ("hdf5", ".h5"), ("png", "")]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """A CIFAR sample of 300 images in every form."""
    return write_sample(tmp_path_factory.mktemp("sample"), count=300, seed=5)


@pytest.fixture(scope="module")
def expected():
    return generate_sample(300, seed=5)


@pytest.fixture(scope="module")
def arrays(tmp_path_factory):
    """A .npz of 1,000 small images with labels and label names, and the arrays."""
    images = make_images(1000, (6, 5, 3), seed=1)
    labels = np.arange(1000) % 7
    path = tmp_path_factory.mktemp("npz") / "data.npz"
    np.savez(path, images=images, labels=labels, label_names=np.array([f"c{i}" for i in range(7)]))
    return str(path), images, labels


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, arrays):
    """The .npz as a dataset of shards of 128 images (the last of 104) in every format."""
    root = tmp_path_factory.mktemp("datasets")
    made = {}
    for fmt, suffix in FORMATS:
        made[fmt] = imgconv.convert(arrays[0], root / f"ds{suffix}", format=fmt, shard_size=128, workers=0).path
    return made


# --------------------------------------------------------------------------- shard sizes


@pytest.mark.parametrize("given, size", [
    (10, ShardSize(images=10)), ("10_000", ShardSize(images=10000)), ("256MB", ShardSize(bytes=256_000_000)),
    ("1GiB", ShardSize(bytes=1 << 30)), ("1.5kB", ShardSize(bytes=1500)), ("64 mib", ShardSize(bytes=64 << 20)),
    ("4096B", ShardSize(bytes=4096)),
])
def test_shard_size_is_images_or_bytes(given, size):
    assert parse_shard_size(given) == size


@pytest.mark.parametrize("given", [0, -3, "0", "ten", "256M", "1.5", "MB", True, 2.5])
def test_bad_shard_sizes_are_refused(given):
    with pytest.raises(SourceOptionError, match="shard_size"):
        parse_shard_size(given)


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("fmt", ["lmdb", "hdf5", "png"])
def test_dataset_reads_like_one_store(datasets, arrays, fmt):
    _, images, labels = arrays
    with imgconv.open(datasets[fmt]) as ds:
        assert isinstance(ds, DatasetReader) and ds.format_name == fmt
        assert len(ds) == 1000 and ds.shape == (6, 5, 3) and ds.label_names == [f"c{i}" for i in range(7)]
        assert [e.count for e in ds.shards] == [128] * 7 + [104]
        got, got_labels = ds.read_all()
        np.testing.assert_array_equal(got, images)
        np.testing.assert_array_equal(got_labels, labels)
        image, label = ds[-1]
        np.testing.assert_array_equal(image, images[-1])
        assert label == labels[-1]
        # Across shard boundaries, in any order, with repeats and negative indices.
        indices = np.array([999, 0, 127, 128, 500, 3, 128, -1, 640, 639])
        got, got_labels = ds.read_batch(indices)
        np.testing.assert_array_equal(got, images[indices])
        np.testing.assert_array_equal(got_labels, labels[indices])
        out = np.empty((indices.size, 6, 5, 3), np.uint8)
        assert ds.read_batch(indices, out=out)[0] is out
        np.testing.assert_array_equal(out, images[indices])
        batches = list(ds.batches(300, start=100, stop=900))
        assert [len(b[1]) for b in batches] == [300, 300, 200]
        np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), images[100:900])
        np.testing.assert_array_equal(ds.labels(), labels)
        full = np.empty((1000, 6, 5, 3), np.uint8)
        assert ds.read_all(out=full)[0] is full
        np.testing.assert_array_equal(full, images)


def test_random_batches_across_shards_equal_the_single_store(datasets, arrays):
    _, images, labels = arrays
    rng = np.random.default_rng(0)
    with imgconv.open(datasets["lmdb"]) as ds:
        for _ in range(20):
            indices = rng.integers(0, 1000, 256)
            got, got_labels = ds.read_batch(indices)
            np.testing.assert_array_equal(got, images[indices])
            np.testing.assert_array_equal(got_labels, labels[indices])


def test_index_errors_name_the_dataset(datasets):
    with imgconv.open(datasets["hdf5"]) as ds:
        with pytest.raises(StoreIndexError, match="out of range"):
            ds[1000]
        with pytest.raises(StoreIndexError):
            ds.read_batch([0, 1000])


def test_dataset_of_varying_sizes(tmp_path):
    images = varying_images(50, seed=3)
    store = write(str(tmp_path / "v.h5"), images, np.arange(50), batch=7)
    ds_path = imgconv.convert(store, tmp_path / "vds.lmdb", shard_size=8, workers=0).path
    with imgconv.open(ds_path) as ds, imgconv.open(store) as one:
        assert ds.variable and len(ds.shards) == 7
        order = [49, 0, 8, 7, 20, 20]
        for a, b in zip(ds.read_batch(order)[0], one.read_batch(order)[0]):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ds.shapes(), one.shapes())
        assert [x.shape for x in ds.read_all()[0]] == [x.shape for x in one.read_all()[0]]


def test_shard_size_in_bytes_for_images_of_varying_sizes(tmp_path):
    images = varying_images(40, seed=4)
    store = write(str(tmp_path / "v.h5"), images, np.full(40, -1), batch=9)
    ds_path = imgconv.convert(store, tmp_path / "bytes.h5", shard_size="150B", workers=0).path
    with imgconv.open(ds_path) as ds:
        for k in range(len(ds.shards)):
            shard = ds.open_shard(k)
            sizes = shard.shapes().prod(axis=1)
            assert sizes.sum() <= 150 or len(shard) == 1  # an image larger than the budget is a shard alone
        assert len(ds) == 40


def test_dataset_read_in_forked_children_after_use_in_parent(datasets, arrays):
    _, images, _ = arrays
    with imgconv.open(datasets["lmdb"]) as ds:
        ds.read_batch([0, 500, 999])  # every shard it touched is open in the parent
        with multiprocessing.get_context("fork").Pool(2) as pool:
            results = pool.map(_read_some, [(ds, seed) for seed in range(4)])
    for indices, got in results:
        np.testing.assert_array_equal(got, images[indices])


def test_dataset_pickles_as_its_path_for_spawned_children(datasets, arrays):
    _, images, _ = arrays
    with imgconv.open(datasets["png"]) as ds:
        again = pickle.loads(pickle.dumps(ds))
        np.testing.assert_array_equal(again[777][0], images[777])
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            indices, got = pool.apply(_read_some, ((ds, 9),))
    np.testing.assert_array_equal(got, images[indices])


def _read_some(args):
    ds, seed = args
    indices = np.random.default_rng(seed).integers(0, len(ds), 64)
    return indices, ds.read_batch(indices)[0]


# --------------------------------------------------------------------------- refusals and checks


def test_dataset_without_manifest_is_refused(datasets, tmp_path):
    import shutil

    copy = tmp_path / "copy.lmdb"
    shutil.copytree(datasets["lmdb"], copy)
    os.remove(copy / MANIFEST)
    for action in (lambda: imgconv.open(copy), lambda: imgconv.verify(copy), lambda: imgconv.info(copy),
                   lambda: imgconv.convert(copy, tmp_path / "x.h5")):
        with pytest.raises(StoreError, match=r"unfinished sharded dataset: it holds 8 shard\(s\).*no dataset.json"):
            action()
    assert cli.main(["info", str(copy)]) == 1


def test_manifest_that_is_a_fifo_is_refused_unopened(datasets, tmp_path):
    import shutil

    copy = tmp_path / "copy.lmdb"
    shutil.copytree(datasets["lmdb"], copy)
    os.remove(copy / MANIFEST)
    os.mkfifo(copy / MANIFEST)  # opened for reading, it would wait for a writer forever
    for action in (lambda: imgconv.open(copy), lambda: imgconv.verify(copy), lambda: imgconv.info(copy)):
        with pytest.raises(StoreError, match=r"cannot read the dataset manifest dataset.json: a FIFO"):
            action()


def test_damaged_manifest_is_refused(datasets, tmp_path):
    import shutil

    copy = tmp_path / "copy.h5"
    shutil.copytree(datasets["hdf5"], copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["shards"][2]["count"] += 1
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="manifest dataset.json is damaged"):
        imgconv.open(copy)


def test_manifest_cannot_point_outside_the_dataset(datasets, tmp_path):
    import shutil

    from imgconv.stores.metadata import METADATA_CHECKSUM, metadata_checksum

    copy = tmp_path / "copy.h5"
    shutil.copytree(datasets["hdf5"], copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["shards"][0]["path"] = "../elsewhere.h5"
    manifest[METADATA_CHECKSUM] = metadata_checksum(manifest)
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="invalid path"):
        read_manifest(str(copy))


def test_shard_replaced_behind_the_dataset_is_found(datasets, tmp_path, arrays):
    import shutil

    copy = tmp_path / "copy.lmdb"
    shutil.copytree(datasets["lmdb"], copy)
    shutil.rmtree(copy / "shard-00003.lmdb")
    _, images, labels = arrays
    write(str(copy / "shard-00003.lmdb"), images[:128][::-1].copy(), labels[:128], batch=64)
    with imgconv.open(copy) as ds:
        ds[0]
        with pytest.raises(StoreError, match="shard-00003.lmdb: does not match the dataset manifest"):
            ds[3 * 128]
    report = imgconv.verify(copy)
    assert any("shard-00003.lmdb: does not match the dataset manifest" in p for p in report.problems)


@pytest.mark.parametrize("fmt", ["hdf5", "png"])
def test_verify_names_a_damaged_image_by_its_index_in_the_dataset(datasets, tmp_path, fmt, capsys):
    import shutil

    from factories import change_label

    copy = tmp_path / f"copy-{fmt}"
    shutil.copytree(datasets[fmt], copy)
    shard = "shard-00005.h5" if fmt == "hdf5" else "shard-00005"
    change_label(str(copy / shard), fmt, 17, 3)  # it was 6
    report = imgconv.verify(copy)
    assert report.problems == [] and report.checked == 1000
    assert [index for index, _ in report.bad] == [5 * 128 + 17]
    assert f"in {shard} (its image 17)" in report.bad[0][1]
    assert cli.main(["verify", str(copy)]) == 1
    assert f"image {5 * 128 + 17}: in {shard} (its image 17)" in capsys.readouterr().out


def test_verify_of_a_dataset_lists_at_most_max_listed_and_counts_the_rest(datasets, tmp_path, capsys):
    import shutil

    from factories import change_label

    copy = tmp_path / "copy.h5"
    shutil.copytree(datasets["hdf5"], copy)
    for shard, base in (("shard-00002.h5", 256), ("shard-00005.h5", 640)):
        for index in range(4):
            change_label(str(copy / shard), "hdf5", index, (base + index + 1) % 7)  # labels are i % 7
    report = imgconv.verify(copy, max_listed=3)
    assert [index for index, _ in report.bad] == [256, 257, 258] and report.unlisted == 5
    full = imgconv.verify(copy)
    assert [index for index, _ in full.bad] == [256, 257, 258, 259, 640, 641, 642, 643] and full.unlisted == 0


def test_a_shard_that_is_a_fifo_is_named_as_one(datasets, tmp_path):
    import shutil

    copy = tmp_path / "copy.lmdb"
    shutil.copytree(datasets["lmdb"], copy)
    shutil.rmtree(copy / "shard-00001.lmdb")
    os.mkfifo(copy / "shard-00001.lmdb")
    report = imgconv.verify(copy)
    assert report.problems == ["shard-00001.lmdb: cannot be opened: a FIFO (named pipe), not a store "
                               "(imgconv stores are regular files and directories)"]
    with imgconv.open(copy) as dataset, pytest.raises(StoreError, match=r"shard-00001.lmdb: a FIFO \(named pipe\)"):
        dataset[200]


def test_verify_reports_missing_and_extra_shards(datasets, tmp_path):
    import shutil

    copy = tmp_path / "copy.h5"
    shutil.copytree(datasets["hdf5"], copy)
    os.rename(copy / "shard-00001.h5", copy / "stray.h5")
    report = imgconv.verify(copy)
    assert "shard-00001.h5: missing (images 128..255)" in report.problems
    assert "stray.h5: not a shard the manifest lists" in report.problems
    assert report.checked == 1000 - 128


def test_info_and_cli_describe_a_dataset(datasets, capsys):
    facts = imgconv.info(datasets["png"])
    assert facts["shards"] == 8 and facts["count"] == 1000 and facts["shard_size"] == {"images": 128}
    assert facts["label_counts"]["c0"] == 143
    assert cli.main(["info", datasets["png"]]) == 0
    assert "sharded dataset of 8 png shards" in capsys.readouterr().out
    assert cli.main(["verify", datasets["lmdb"]]) == 0


@pytest.mark.parametrize("fmt", [fmt for fmt, _ in FORMATS])
def test_info_says_a_dataset_checks_what_its_shards_check(datasets, fmt, capsys):
    facts = imgconv.info(datasets[fmt])
    assert facts["checksums"] is True and facts["positions_checked"] is True
    assert cli.main(["info", datasets[fmt]]) == 0
    assert "checks:  every image against its CRC32C, at its index" in capsys.readouterr().out


def test_each_shard_opens_on_its_own(datasets):
    for k in range(8):
        with imgconv.open(os.path.join(datasets["hdf5"], f"shard-{k:05d}.h5")) as shard:
            assert len(shard) == (128 if k < 7 else 104) and shard.label_names == [f"c{i}" for i in range(7)]
            assert "[shard %d: images %d..%d]" % (k, 128 * k, 128 * k + len(shard) - 1) in shard.metadata["source"]


# --------------------------------------------------------------------------- writing here


@pytest.mark.parametrize("fmt, suffix", FORMATS)
def test_shards_are_the_same_bytes_whatever_the_workers_and_batches(tmp_path, sample, fmt, suffix):
    digests = set()
    for workers, batch_size in [(0, 1024), (1, 7), (2, 64)]:
        dest = tmp_path / f"w{workers}b{batch_size}{suffix}"
        imgconv.convert(sample.python_dir, dest, format=fmt, workers=workers, batch_size=batch_size, split="all",
                        shard_size=70)
        digests.add(tree_digest(str(dest)))
    assert len(digests) == 1


@pytest.mark.parametrize("form", ["python_dir", "binary_archive"])
def test_cifar_into_shards_reads_back_exactly(tmp_path, sample, expected, form):
    result = imgconv.convert(getattr(sample, form), tmp_path / "c.lmdb", split="all", shard_size=64, workers=2)
    assert result.count == 300
    with imgconv.open(result.path) as ds:
        assert [e.count for e in ds.shards] == [64, 64, 64, 64, 44]
        assert ds.label_names == list(imgconv.sample.LABEL_NAMES)
        images, labels = ds.read_all()
    np.testing.assert_array_equal(images, expected[0])
    np.testing.assert_array_equal(labels, expected[1])


def test_archive_and_directory_give_the_same_images_in_the_same_shards(tmp_path, sample):
    a = imgconv.convert(sample.python_archive, tmp_path / "a.h5", split="all", shard_size="60kB", workers=0)
    b = imgconv.convert(sample.python_dir, tmp_path / "b.h5", split="all", shard_size="60kB", workers=0)
    with imgconv.open(a.path) as x, imgconv.open(b.path) as y:
        assert [e.count for e in x.shards] == [e.count for e in y.shards] == [19] * 15 + [15]  # 60 kB / 3,072 B
        np.testing.assert_array_equal(x.read_all()[0], y.read_all()[0])
        assert x.label_names == y.label_names == list(imgconv.sample.LABEL_NAMES)


def test_shuffled_shards_hold_the_permutation(tmp_path, sample, expected):
    result = imgconv.convert(sample.python_dir, tmp_path / "s.h5", split="all", shard_size=100, shuffle=True,
                             seed=4, workers=2)
    single = imgconv.convert(sample.python_dir, tmp_path / "one.h5", split="all", shuffle=True, seed=4)
    with imgconv.open(result.path) as ds, imgconv.open(single.path) as one:
        np.testing.assert_array_equal(ds.read_all()[0], one.read_all()[0])


def test_dataset_converts_to_a_single_store_and_back(tmp_path, datasets, arrays):
    _, images, labels = arrays
    single = imgconv.convert(datasets["png"], tmp_path / "one.lmdb", workers=2)
    again = imgconv.convert(single.path, tmp_path / "again.h5", shard_size=300, workers=2)
    with imgconv.open(again.path) as ds:
        assert [e.count for e in ds.shards] == [300, 300, 300, 100]
        np.testing.assert_array_equal(ds.read_all()[0], images)
        assert ds.label_names == [f"c{i}" for i in range(7)]
    loaded, loaded_labels = imgconv.load(again.path, workers=0)
    np.testing.assert_array_equal(loaded_labels, labels)


def test_limit_and_skipped_files(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(folder / f"{i:02d}.png")
    (folder / "05.png").write_bytes(b"not a png")
    result = imgconv.convert(folder, tmp_path / "f.h5", shard_size=4, on_error="skip", workers=2, limit=10)
    assert result.count == 9 and [s.path for s in result.skipped] == [str(folder / "05.png")]
    with imgconv.open(result.path) as ds:
        assert [e.count for e in ds.shards] == [4, 3, 2]
        assert ds.read_all()[0][:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9]


def test_empty_source_gives_one_empty_shard(tmp_path):
    path = tmp_path / "none.npy"
    np.save(path, np.zeros((0, 3, 3, 3), np.uint8))
    result = imgconv.convert(path, tmp_path / "e.lmdb", shard_size=5)
    with imgconv.open(result.path) as ds:
        assert len(ds) == 0 and len(ds.shards) == 1 and ds.shape == (3, 3, 3)


def test_existing_destination_and_bad_options(tmp_path, datasets, arrays):
    with pytest.raises(StoreError, match="already exists"):
        imgconv.convert(arrays[0], datasets["lmdb"], shard_size=100)
    with pytest.raises(OptionError, match="scheduler applies to engine='dask'"):
        imgconv.convert(arrays[0], tmp_path / "x.lmdb", scheduler="tcp://nowhere:1")
    with pytest.raises(OptionError, match="engine='spark' is not one of"):
        imgconv.convert(arrays[0], tmp_path / "x.lmdb", engine="spark")
    assert not os.listdir(tmp_path)


def test_overwrite_replaces_a_dataset(tmp_path, arrays):
    first = imgconv.convert(arrays[0], tmp_path / "d.lmdb", shard_size=500)
    second = imgconv.convert(arrays[0], tmp_path / "d.lmdb", shard_size=300, overwrite=True)
    assert first.path == second.path
    with imgconv.open(second.path) as ds:
        assert len(ds.shards) == 4


def test_cli_writes_a_sharded_dataset(tmp_path, sample, capsys):
    dest = tmp_path / "cli.h5"
    assert cli.main(["convert", sample.python_dir, str(dest), "--split", "all", "--shard-size", "100", "--quiet"]) == 0
    assert imgconv.info(dest)["shards"] == 3
    assert cli.main(["convert", sample.python_dir, str(tmp_path / "x"), "--shard-size", "12ZB"]) == 2
    assert "--shard-size" in capsys.readouterr().err


# --------------------------------------------------------------------------- resuming


def test_stall_seconds_reach_the_workers_of_a_sharded_conversion(tmp_path, sample, monkeypatch):
    import imgconv.datasets.convert as sharded

    asked = []

    def engine(workers, window=None, stall_seconds=None):
        asked.append(stall_seconds)
        return real(workers, window, stall_seconds)

    real = sharded.local_engine
    monkeypatch.setattr(sharded, "local_engine", engine)
    imgconv.convert(sample.python_dir, tmp_path / "s", split="all", shard_size=100, workers=2, stall_seconds=7)
    assert asked == [7]


def test_killed_conversion_resumes_keeping_the_finished_shards(tmp_path, sample):
    big = write_sample(tmp_path / "big", count=1500, seed=1, archives=False)
    command = [sys.executable, "-m", "imgconv", "convert", big.python_dir, str(tmp_path / "k"), "--split", "all",
               "--shard-size", "125", "--workers", "2", "--png-level", "1", "--quiet"]
    journal = tmp_path / ".k.imgconv-partial" / "journal.jsonl"
    process = subprocess.Popen(command, start_new_session=True)
    try:
        _wait_for(lambda: journal.exists() and len(journal.read_text().splitlines()) >= 3, process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the converter and its workers, at once
        process.wait()
    _wait_unlocked(journal.parent)
    finished = len(journal.read_text().splitlines()) - 1
    assert 2 <= finished < 12 and not (tmp_path / "k").exists()
    options = dict(split="all", shard_size=125, workers=2, store_options={"compress_level": 1})
    with pytest.raises(StoreError, match="pass resume=True to continue it"):
        imgconv.convert(big.python_dir, tmp_path / "k", **options)
    resumed = imgconv.convert(big.python_dir, tmp_path / "k", resume=True, **options)
    assert resumed.resumed == 125 * finished and resumed.count == 1500
    fresh = imgconv.convert(big.python_dir, tmp_path / "fresh", **options)
    assert tree_digest(resumed.path) == tree_digest(fresh.path)


def test_resume_redoes_a_shard_gone_or_changed_since(tmp_path, sample, expected):
    import shutil

    dest = tmp_path / "r.lmdb"
    _interrupt_after_shards(sample.python_dir, dest, 2)
    partial = tmp_path / ".r.lmdb.imgconv-partial" / "r.lmdb"
    shutil.rmtree(partial / "shard-00001.lmdb")
    resumed = imgconv.convert(sample.python_dir, dest, split="all", shard_size=100, resume=True, workers=0)
    assert resumed.resumed == 100
    assert imgconv.verify(dest).bad == []
    np.testing.assert_array_equal(imgconv.open(dest).read_all()[0], expected[0])


def test_resume_of_another_job_is_refused(tmp_path, sample):
    dest = tmp_path / "r.h5"
    _interrupt_after_shards(sample.python_dir, dest, 1)
    with pytest.raises(StoreError, match="different .*shard_size"):
        imgconv.convert(sample.python_dir, dest, split="all", shard_size=99, resume=True)
    result = imgconv.convert(sample.python_dir, dest, split="all", shard_size=99, resume=True, overwrite=True)
    assert result.resumed == 0 and result.count == 300


def test_resume_after_an_input_file_changed_is_refused_naming_it(tmp_path):
    source = write_sample(tmp_path / "in", count=300, seed=5, archives=False)
    dest = tmp_path / "r.lmdb"
    _interrupt_after_shards(source.python_dir, dest, 1)
    batch = os.path.join(source.python_dir, "data_batch_1")
    os.utime(batch, ns=(time.time_ns(), os.stat(batch).st_mtime_ns + 10**9))  # rewritten since
    with pytest.raises(StoreError, match=r"input changed since: 1 file modified \(.*data_batch_1\)"):
        imgconv.convert(source.python_dir, dest, split="all", shard_size=100, resume=True, workers=0)
    result = imgconv.convert(source.python_dir, dest, split="all", shard_size=100, resume=True, overwrite=True)
    assert result.resumed == 0 and result.count == 300


@pytest.mark.parametrize("inputs", [1, 2])
def test_resume_after_an_input_file_changed_is_refused(tmp_path, arrays, inputs):
    import shutil

    paths = [str(shutil.copy(arrays[0], tmp_path / f"in{i}.npz")) for i in range(inputs)]
    source = paths[0] if inputs == 1 else paths
    dest = tmp_path / "r.lmdb"

    def progress(done, total):
        if done >= 250:  # shards 0 and 1 (of 128 images) are closed and journalled
            raise imgconv.Interrupted(signal.SIGINT)

    with pytest.raises(imgconv.Interrupted):
        imgconv.convert(source, dest, shard_size=128, workers=0, batch_size=50, progress=progress)
    changed = os.stat(paths[-1])
    os.utime(paths[-1], ns=(changed.st_atime_ns, changed.st_mtime_ns + 10**9))  # rewritten: same bytes, new time
    with pytest.raises(StoreError, match=r"input changed since|different job"):
        imgconv.convert(source, dest, shard_size=128, workers=0, resume=True)
    result = imgconv.convert(source, dest, shard_size=128, workers=0, resume=True, overwrite=True)
    assert result.resumed == 0 and result.count == 1000 * inputs


def _interrupt_after_shards(source, dest, shards):
    """Convert ``source`` into ``dest`` in shards of 100, interrupted (as by SIGINT) after ``shards`` shards."""
    seen = []

    def progress(done, total):
        seen.append(done)
        if done >= 100 * shards + 50:  # into the next shard: the ones before are closed and journalled
            raise imgconv.Interrupted(signal.SIGINT)

    with pytest.raises(imgconv.Interrupted, match="shard"):
        imgconv.convert(source, dest, split="all", shard_size=100, workers=0, batch_size=50, progress=progress)


def _wait_unlocked(directory, seconds=10):
    """Wait until no process holds the lock of a partial output (killed workers may take a moment to go)."""
    import fcntl

    deadline = time.monotonic() + seconds
    fd = os.open(directory, os.O_RDONLY)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                assert time.monotonic() < deadline, f"{directory} is still locked"
                time.sleep(0.02)
    finally:
        os.close(fd)


def _wait_for(condition, process, seconds=60):
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, "the conversion ended before it could be interrupted"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
