"""Streaming sources: an archive read once, in archive order, gives the batches ``batches()`` gives."""
import io
import os
import pickle
import tarfile
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import imgconv
import imgconv.stores
from imgconv.errors import SourceError
from imgconv.sample import LABEL_NAMES, generate_sample, write_sample
from imgconv.sources import archive, open_source
from imgconv.sources.safe_pickle import _RestrictedUnpickler, load_pickle

COUNT = 60  # five training batches of 10, a test batch of 10
SCRAMBLED = ["data_batch_4", "readme.html", "test_batch", "data_batch_3", "batches.meta",
             "data_batch_2", "data_batch_5", "data_batch_1"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    return write_sample(root, count=COUNT, seed=11), generate_sample(COUNT, seed=11)


@pytest.fixture(scope="module")
def scrambled(sample, tmp_path_factory):
    """The python archive with its members in the order of the official cifar-10-python.tar.gz."""
    files, _ = sample
    archive = tmp_path_factory.mktemp("scrambled") / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in SCRAMBLED:
            tar.add(os.path.join(files.python_dir, name), arcname=f"cifar-10-batches-py/{name}")
    return archive


def _joined(batches):
    batches = list(batches)
    return batches, np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def _read_ahead_threads():
    return [t for t in threading.enumerate() if t.name.startswith("imgconv read-ahead")]


@pytest.mark.parametrize("form", ["python_archive", "binary_archive", "scrambled"])
@pytest.mark.parametrize("split, first, last", [("train", 0, 50), ("test", 50, 60), ("all", 0, 60)])
@pytest.mark.parametrize("batch_size, limit", [(7, None), (16, 23), (1000, None), (10, 50), (3, 0)])
def test_stream_cuts_the_batches_batches_cuts(sample, scrambled, form, split, first, last, batch_size, limit):
    files, (images, labels) = sample
    path = scrambled if form == "scrambled" else getattr(files, form)
    stop = last - first if limit is None else min(limit, last - first)
    reference = list(open_source(path, split=split).batches(batch_size, 0, stop))
    source = open_source(path, split=split)
    streamed = list(source.stream(batch_size, limit))
    assert [len(b[1]) for b in streamed] == [len(b[1]) for b in reference]
    for (got, got_labels), (want, want_labels) in zip(streamed, reference):
        assert got.flags.c_contiguous and got.dtype == np.uint8 and got_labels.dtype == np.int64
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got_labels, want_labels)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in streamed] or [images[:0]]),
                                  images[first : first + stop])
    assert source.label_names == list(LABEL_NAMES)
    assert not _read_ahead_threads()


def test_one_pass_learns_the_length_and_label_names(scrambled, sample, monkeypatch):
    _, (images, labels) = sample
    source = open_source(scrambled, split="all")
    opened = []
    real = archive.TarReader

    def counting(*args, **kwargs):
        opened.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(archive, "TarReader", counting)
    _, got, got_labels = _joined(source.stream(8))
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert source.length == COUNT and source.label_names == list(LABEL_NAMES)
    assert f"{COUNT} images" in source.description
    assert len(opened) == 1  # the stream's pass, and nothing after it


def test_an_archive_expects_the_official_counts_and_corrects_them_as_it_reads(tmp_path, sample):
    files, _ = sample
    for split, official in [("train", 50000), ("test", 10000), ("all", 60000)]:
        assert open_source(files.python_archive, split=split).length_hint == official  # nothing read yet
    assert open_source(files.python_dir).length_hint is None  # a directory is counted, not foreseen
    uneven = write_sample(tmp_path, count=100, seed=1)  # train files of 17, 17, 17, 17, 16; test 16
    for path in (uneven.python_archive, uneven.binary_archive):
        source = open_source(path, split="all")
        hints = [source.length_hint for _ in source.stream(5)]
        assert hints[0] == 17 * 6  # foreseen from data_batch_1 alone
        assert hints[-1] == source.length == source.length_hint == 100  # exact once read


def test_description_does_not_read_an_archive(sample, monkeypatch):
    files, _ = sample
    source = open_source(files.python_archive)
    monkeypatch.setattr(archive, "TarReader", None)  # any read would fail
    assert "CIFAR-10 python" in source.description and "images" not in source.description


def test_stopping_early_stops_the_reader_thread(sample):
    stream = open_source(sample[0].python_archive, split="all").stream(4)
    next(stream)  # data_batch_1 is out; the thread waits to hand over the next members
    assert len(_read_ahead_threads()) == 1
    stream.close()
    assert not _read_ahead_threads()


@pytest.mark.parametrize("cut", [4000, 20000])
def test_a_truncated_archive_fails_clearly_mid_stream(tmp_path, sample, cut):
    files, _ = sample
    broken = tmp_path / "cifar-10-python.tar.gz"
    data = open(files.python_archive, "rb").read()
    broken.write_bytes(data[: len(data) * cut // 40000])
    with pytest.raises(SourceError, match="cifar-10-python.tar.gz"):
        list(open_source(broken, split="all").stream(8))
    assert not _read_ahead_threads()


def test_a_missing_batch_is_named_at_the_end_of_the_stream(tmp_path, sample):
    files, _ = sample
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in SCRAMBLED:
            if name != "data_batch_2":
                tar.add(os.path.join(files.python_dir, name), arcname=f"cifar-10-batches-py/{name}")
    with pytest.raises(SourceError, match="data_batch_2: missing"):
        list(open_source(archive).stream(8))


def test_bad_stream_arguments(sample):
    files, _ = sample
    for source in (open_source(files.python_archive), open_source(files.python_dir)):
        for batch_size, limit in [(0, None), (True, None), (4, -1), (4, 2.5)]:
            with pytest.raises(ValueError):
                list(source.stream(batch_size, limit))


@pytest.mark.parametrize("workers", [0, 2])
def test_converting_an_archive_streams_it_and_records_what_it_learnt(tmp_path, scrambled, sample, workers):
    files, (images, labels) = sample
    seen = []
    result = imgconv.convert(scrambled, tmp_path / "out.lmdb", split="all", workers=workers, batch_size=16,
                             progress=lambda done, total: seen.append((done, total)))
    assert result.count == COUNT
    # The total is foreseen from the first batch file read (here all hold 10 images): a bar with an end.
    assert seen == [(16, COUNT), (32, COUNT), (48, COUNT), (60, COUNT)]
    with imgconv.stores.open(result.path) as store:
        got, got_labels = store.read_all()
        assert store.label_names == list(LABEL_NAMES)
        assert f"{COUNT} images" in store.metadata["source"]
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(got_labels, labels)
    seen.clear()
    limited = imgconv.convert(scrambled, tmp_path / "limited.h5", split="all", workers=workers, batch_size=16,
                              limit=21, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(16, 21), (21, 21)]
    with imgconv.stores.open(limited.path) as store:
        np.testing.assert_array_equal(store.read_all()[0], images[:21])
        assert store.label_names == list(LABEL_NAMES)


# --- the restricted unpickler's inline opcodes agree with the standard unpickler -------------------

_plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=300) | st.binary(max_size=300),
    lambda children: st.lists(children, max_size=8) | st.tuples(children, children)
    | st.dictionaries(st.text(max_size=8) | st.integers(0, 300), children, max_size=6),
    max_leaves=60,
)


def _outcome(load):
    try:
        return "loaded", load()
    except Exception as exc:  # the two loops must fail alike, whatever the failure
        return type(exc).__name__, str(exc)


@settings(max_examples=300, deadline=None)
@given(value=_plain, protocol=st.integers(0, 5), cut=st.integers(0, 10**6))
def test_inline_opcodes_agree_with_the_checked_standard_loop(value, protocol, cut):
    data = pickle.dumps(value, protocol=protocol)
    inline = _outcome(lambda: _RestrictedUnpickler(io.BytesIO(b""), "x").load_from(data))
    standard = _outcome(lambda: _RestrictedUnpickler(io.BytesIO(data), "x").load())
    assert inline == standard
    if inline[0] == "loaded" and b"bytes" not in data:
        assert inline[1] == pickle.loads(data, encoding="bytes")
    # A truncated copy: any error, as long as load_pickle turns it into a SourceError.
    with pytest.raises(SourceError):
        load_pickle(data[: cut % len(data)], "x")


def test_a_batch_shaped_pickle_loads_and_every_truncation_is_a_source_error():
    batch = {"batch_label": b"training batch 1 of 5", "labels": [3, 255, 70000, 1] * 40,
             "data": np.arange(6 * 3072, dtype=np.uint8).reshape(6, 3072),
             "filenames": [f"image_{i}.png".encode() for i in range(300)]}
    for protocol in (2, 4):
        data = pickle.dumps(batch, protocol=protocol)
        loaded = load_pickle(data, "batch")
        assert loaded["filenames"] == batch["filenames"] and loaded["labels"] == batch["labels"]
        np.testing.assert_array_equal(loaded["data"], batch["data"])
        for cut in range(0, len(data) - 1, 97):
            with pytest.raises(SourceError, match="batch"):
                load_pickle(data[:cut], "batch")


def test_the_standard_library_decoder_gives_the_same_stream(sample, scrambled, monkeypatch):
    _, (images, labels) = sample
    fast = _joined(open_source(scrambled, split="all").stream(9))
    monkeypatch.setattr(archive, "_igzip", None)
    assert not archive.fast_gzip_available()
    plain = _joined(open_source(scrambled, split="all").stream(9))
    np.testing.assert_array_equal(plain[1], fast[1])
    np.testing.assert_array_equal(plain[1], images)
    np.testing.assert_array_equal(plain[2], labels)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_interrupted_archive_conversion_resumes_to_the_same_folder(tmp_path, workers):
    import signal

    from imgconv.convert import Interrupted

    files = write_sample(tmp_path / "big", count=720, seed=2)
    whole = imgconv.convert(files.python_archive, tmp_path / "whole", split="all", workers=workers, batch_size=64)

    def interrupt(done, total):
        if done >= 300:
            os.kill(os.getpid(), signal.SIGINT)

    dest = tmp_path / "resumed"
    with pytest.raises(Interrupted, match="resume"):
        imgconv.convert(files.python_archive, dest, split="all", workers=workers, batch_size=64, progress=interrupt)
    assert not dest.exists()
    result = imgconv.convert(files.python_archive, dest, split="all", workers=workers, batch_size=100, resume=True)
    assert result.resumed >= 300 and result.count == 720
    with imgconv.stores.open(whole.path) as a, imgconv.stores.open(result.path) as b:
        assert a.metadata == b.metadata
    names = sorted(os.path.relpath(os.path.join(d, n), dest) for d, _, ns in os.walk(dest) for n in ns)
    for name in names:
        assert (dest / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def test_batch_files_before_their_turn_wait_on_disk_not_in_memory(scrambled, sample, monkeypatch):
    _, (images, _) = sample
    aside = []
    real = archive.set_aside

    def recording(directory, number, data):
        aside.append((directory, number))
        return real(directory, number, data)

    monkeypatch.setattr(archive, "set_aside", recording)
    _, got, _ = _joined(open_source(scrambled, split="all").stream(16))
    np.testing.assert_array_equal(got, images)
    # data_batch_4, test_batch, 3, 2, 5 arrive before data_batch_1 (the archive's last member).
    assert sorted(number for _, number in aside) == [1, 2, 3, 4, 5]
    assert not os.path.exists(aside[0][0])  # the waiting room is gone with the stream
