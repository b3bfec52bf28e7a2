"""--resume: an interrupted conversion continues from its last committed batch and ends
equal to an uninterrupted one; mismatched jobs are refused; stale partial output is handled."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from imgconv import record, stores
from imgconv.cli import main
from imgconv.convert import Interrupted, convert
from imgconv.errors import StoreError
from imgconv.sample import generate_sample
from imgconv.verify import verify_store

FORMATS = [("png", "out"), ("lmdb", "out.lmdb"), ("hdf5", "out.h5")]
COUNT = 9000  # LMDB commits every 16 MiB of records (about 5,400 CIFAR images): the cut must come after one


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    images, labels = generate_sample(COUNT, seed=4)
    path = tmp_path_factory.mktemp("resume-source") / "data.npz"
    np.savez(path, images=images, labels=labels)
    return str(path)


def _options(fmt):
    # PNG encoding is slow and a PNG folder keeps every image: fewer images do.
    return {"store_options": {"compress_level": 1}, "limit": 2000} if fmt == "png" else {}


def _cut(fmt, fraction):
    return int(fraction * (2000 if fmt == "png" else COUNT))


def _interrupt_after(images):
    """A progress callback that sends this process SIGINT once ``images`` are done."""

    def progress(done, total):
        if done >= images:
            os.kill(os.getpid(), signal.SIGINT)

    return progress


def _interrupted(source, dest, after, **options):
    with pytest.raises(Interrupted) as info:
        convert(source, dest, progress=_interrupt_after(after), **options)
    assert not os.path.exists(dest)
    return info.value


def _same_store(a, b, fmt):
    with stores.open(a) as x, stores.open(b) as y:
        ia, la = x.read_all()
        ib, lb = y.read_all()
        assert x.metadata == y.metadata
        if x.variable:
            assert len(ia) == len(ib) and all(np.array_equal(p, q) for p, q in zip(ia, ib))
        else:
            assert np.array_equal(ia, ib)
        assert np.array_equal(la, lb)
    assert verify_store(a).bad == [] and verify_store(a).problems == []
    if fmt == "png":  # a PNG folder resumes byte for byte
        assert _files(a) == _files(b)


def _files(root):
    out = {}
    for directory, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(directory, name), "rb") as f:
                out[os.path.relpath(os.path.join(directory, name), root)] = f.read()
    return out


@pytest.mark.parametrize("fmt, name", FORMATS)
def test_resume_after_an_interruption_equals_an_uninterrupted_conversion(tmp_path, npz, fmt, name):
    reference = convert(npz, tmp_path / ("ref-" + name), workers=2, batch_size=500, **_options(fmt))
    dest = tmp_path / name
    error = _interrupted(npz, dest, _cut(fmt, 0.75), workers=2, batch_size=500, **_options(fmt))
    assert "resume=True" in str(error) and os.path.isdir(tmp_path / f".{name}.imgconv-partial")
    # Another batch size and pool: the output does not depend on them.
    result = convert(npz, dest, workers=1, batch_size=300, resume=True, **_options(fmt))
    assert 0 < result.resumed <= _cut(fmt, 0.75) and result.restart_reason is None
    assert result.count == reference.count == _cut(fmt, 1)
    _same_store(dest, reference.path, fmt)
    assert sorted(os.listdir(tmp_path)) == sorted(["ref-" + name, name])  # no partial output left


@pytest.mark.parametrize("fmt, name", FORMATS)
def test_resume_twice_and_shuffled(tmp_path, npz, fmt, name):
    options = dict(shuffle=True, seed=5, workers=2, batch_size=400, **_options(fmt))
    reference = convert(npz, tmp_path / ("ref-" + name), **options)
    dest = tmp_path / name
    _interrupted(npz, dest, _cut(fmt, 0.66), **options)
    first = _interrupted(npz, dest, _cut(fmt, 0.9), resume=True, **options)
    assert "kept" in str(first)
    result = convert(npz, dest, resume=True, **options)
    assert result.resumed >= _cut(fmt, 0.66) - 400
    _same_store(dest, reference.path, fmt)


def _varying_folder(root, count=40):
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        size = (int(rng.integers(3, 9)), int(rng.integers(3, 9)))
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
    (root / "broken.png").write_bytes(b"not a png")
    return root


@pytest.mark.parametrize("fmt, name", [("lmdb", "v.lmdb"), ("hdf5", "v.h5"), ("png", "v")])
def test_resume_images_of_varying_sizes_with_skipped_files(tmp_path, fmt, name):
    folder = _varying_folder(tmp_path / "folder")
    options = dict(workers=2, batch_size=4, on_error="skip")
    if fmt == "lmdb":
        options["store_options"] = {"records_per_value": 2}  # chunks small enough to commit before the cut
    reference = convert(folder, tmp_path / ("ref-" + name), **options)
    assert len(reference.skipped) == 1
    dest = tmp_path / name
    _interrupted(folder, dest, 28, **options)
    result = convert(folder, dest, resume=True, **options)
    assert result.resumed > 0
    assert [s.path for s in result.skipped] == [s.path for s in reference.skipped]  # reported once, as before
    _same_store(dest, reference.path, fmt)


def test_resume_with_nothing_to_resume_is_a_normal_conversion(tmp_path, npz):
    result = convert(npz, tmp_path / "out.lmdb", workers=0, resume=True, limit=100)
    assert result.count == 100 and result.resumed == 0 and result.restart_reason is None
    assert os.listdir(tmp_path) == ["out.lmdb"]


def test_resume_with_other_options_is_refused_and_overwrite_starts_over(tmp_path, npz):
    dest = tmp_path / "out.h5"
    _interrupted(npz, dest, 7000, workers=2, batch_size=500)
    with pytest.raises(StoreError, match=r"cannot resume.*different job\.images.*overwrite"):
        convert(npz, dest, workers=2, resume=True, limit=8000)
    with pytest.raises(StoreError, match=r"different job\.seed, job\.shuffle"):
        convert(npz, dest, workers=2, resume=True, shuffle=True, seed=1)
    with pytest.raises(StoreError, match=r"different options\.chunk_images"):
        convert(npz, dest, workers=2, resume=True, store_options={"chunk_images": 3})
    assert os.path.isdir(tmp_path / ".out.h5.imgconv-partial")  # refused: left as it was
    result = convert(npz, dest, workers=2, resume=True, limit=8000, overwrite=True)
    assert result.resumed == 0 and result.count == 8000
    with stores.open(dest) as store:
        assert np.array_equal(store.labels(), np.load(npz)["labels"][:8000])


def test_a_changed_source_file_is_not_resumed(tmp_path, npz):
    source = tmp_path / "data.npz"
    source.write_bytes(open(npz, "rb").read())
    dest = tmp_path / "out.lmdb"
    _interrupted(str(source), dest, 7000, workers=2, batch_size=500)
    os.utime(source, ns=(0, 0))
    with pytest.raises(StoreError, match=r"input changed since: 1 file modified \(.*data\.npz\)"):
        convert(str(source), dest, workers=2, resume=True)


def test_without_resume_a_resumable_partial_is_an_error_naming_both_ways_out(tmp_path, npz):
    dest = tmp_path / "out"
    _interrupted(npz, dest, 1000, workers=2, batch_size=500, **_options("png"))
    with pytest.raises(StoreError, match=r"interrupted conversion left \d+ images .*resume=True.*overwrite=True"):
        convert(npz, dest, workers=2, **_options("png"))
    # A different job cannot use it: it is discarded without a word.
    result = convert(npz, dest, workers=2, limit=50, store_options={"compress_level": 1})
    assert result.count == 50 and sorted(os.listdir(tmp_path)) == ["out"]


def test_overwrite_discards_the_partial_output(tmp_path, npz):
    dest = tmp_path / "out.h5"
    _interrupted(npz, dest, 7000, workers=2, batch_size=500)
    result = convert(npz, dest, workers=2, overwrite=True)
    assert result.resumed == 0 and result.count == COUNT and sorted(os.listdir(tmp_path)) == ["out.h5"]


def test_an_hdf5_partial_that_cannot_be_reopened_is_discarded_and_said(tmp_path, npz):
    dest = tmp_path / "out.h5"
    _interrupted(npz, dest, 7000, workers=2, batch_size=500)
    partial = tmp_path / ".out.h5.imgconv-partial" / "out.h5"
    os.truncate(partial, 4096)  # what a crash of the machine could leave
    result = convert(npz, dest, workers=2, resume=True)
    assert result.resumed == 0
    assert "cannot be continued" in result.restart_reason and str(partial) in result.restart_reason
    reference = convert(npz, tmp_path / "ref.h5", workers=2)
    _same_store(dest, reference.path, "hdf5")


def test_damaged_partial_output_is_cut_back_to_what_is_intact(tmp_path, npz):
    dest = tmp_path / "out"
    _interrupted(npz, dest, 1500, workers=2, batch_size=500, **_options("png"))
    # Image 1234 half-written, as a kill in the middle of its write leaves it.
    torn = tmp_path / ".out.imgconv-partial" / "out" / "images" / "001" / "001234.png"
    os.truncate(torn, 40)
    result = convert(npz, dest, workers=2, batch_size=500, resume=True, **_options("png"))
    assert result.resumed == 1000  # the last checkpoint before the torn image
    _same_store(dest, convert(npz, tmp_path / "ref", workers=2, **_options("png")).path, "png")


def test_damaged_lmdb_records_are_not_kept(tmp_path, npz):
    dest = tmp_path / "out.lmdb"
    _interrupted(npz, dest, 7000, workers=2, batch_size=500)
    data = tmp_path / ".out.lmdb.imgconv-partial" / "out.lmdb" / "data.mdb"
    raw = bytearray(data.read_bytes())
    first = bytes(raw).find(record.MAGIC)  # the first record LMDB laid out (chunk 0 comes first)
    assert first > 0
    raw[first + record.HEADER_SIZE + 100] ^= 0xFF  # one pixel byte: the record's CRC no longer matches
    data.write_bytes(bytes(raw))
    result = convert(npz, dest, workers=2, resume=True)
    assert result.resumed == 0  # nothing before the damaged chunk to keep
    _same_store(dest, convert(npz, tmp_path / "ref.lmdb", workers=2).path, "lmdb")


def test_a_store_being_written_is_locked_against_a_second_writer(tmp_path):
    path = tmp_path / "out.lmdb"
    with stores.create(path) as first:
        first.append(np.zeros((2, 4, 4, 3), np.uint8), [0, 1])
        with pytest.raises(StoreError, match="another process is writing"):
            stores.create(path).append(np.zeros((2, 4, 4, 3), np.uint8), [0, 1])
    with stores.open(path) as store:
        assert len(store) == 2


def test_cli_resume(tmp_path, npz, capsys):
    dest = tmp_path / "out.lmdb"
    command = [sys.executable, "-m", "imgconv", "convert", npz, str(dest), "--workers", "2", "--batch-size", "500"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = tmp_path / ".out.lmdb.imgconv-partial" / "journal.jsonl"
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if journal.exists() and '"count":7000' in journal.read_text():
            process.send_signal(signal.SIGINT)
            break
        time.sleep(0.005)
    out, err = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the conversion finished before it could be interrupted")
    assert process.returncode == 130 and "--resume" in err, err
    assert main(["convert", npz, str(dest), "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert main(["convert", npz, str(dest), "--workers", "2", "--resume"]) == 0
    assert "continued after" in capsys.readouterr().out
    with stores.open(dest) as store:
        assert np.array_equal(store.labels(), np.load(npz)["labels"])


def test_resume_from_a_compressed_archive_read_in_order(tmp_path):
    """A .tar.gz is read by the parent, forward only: the resumed run starts reading mid-archive."""
    from imgconv.sample import write_sample

    sample = write_sample(tmp_path / "sample", count=300, seed=3)
    options = dict(workers=2, batch_size=32, store_options={"compress_level": 1})
    reference = convert(sample.python_archive, tmp_path / "ref", **options)
    dest = tmp_path / "out"
    _interrupted(sample.python_archive, dest, 160, **options)
    result = convert(sample.python_archive, dest, resume=True, **options)
    assert result.resumed == 160
    _same_store(dest, reference.path, "png")


def test_a_journal_left_after_the_store_was_renamed_into_place_is_removed(tmp_path):
    dest = tmp_path / "out.h5"
    with stores.create(dest) as writer:
        writer.append(np.zeros((2, 4, 4, 3), np.uint8), [0, 1])
    leftover = tmp_path / ".out.h5.imgconv-partial"  # as a kill right after the rename leaves it
    leftover.mkdir()
    (leftover / "journal.jsonl").write_text("{}\n")
    with pytest.raises(StoreError, match="already exists"):
        stores.create(dest)
    assert sorted(os.listdir(tmp_path)) == ["out.h5"]
