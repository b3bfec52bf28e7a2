"""--resume notices any change to the files a conversion reads, and says which files changed."""
import os
import shutil
import signal

import numpy as np
import pytest
from PIL import Image

from imgconv import stores
from imgconv.cli import main
from imgconv.convert import Interrupted, convert
from imgconv.errors import StoreError
from imgconv.sample import write_sample


def _interrupted(source, dest, after, **options):
    def progress(done, total):
        if done >= after:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        convert(source, dest, progress=progress, **options)
    assert not os.path.exists(dest) and os.path.isdir(os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}"
                                                                                              ".imgconv-partial"))


def _folder(root, count=60):
    rng = np.random.default_rng(1)
    for i in range(count):
        folder = root / f"class{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return root


def test_a_file_removed_and_another_added_in_a_class_folder_is_named(tmp_path):
    root = _folder(tmp_path / "photos")
    dest = str(tmp_path / "out")
    _interrupted(str(root), dest, 20, workers=0, batch_size=10)
    os.remove(root / "class1" / "004.png")  # the same number of images, the top folder untouched
    shutil.copy(root / "class1" / "001.png", root / "class1" / "zzz.png")
    with pytest.raises(StoreError, match=r"cannot resume: .*input changed since: "
                                         r"1 file added \(.*class1/zzz\.png\), 1 file removed \(.*class1/004\.png\)"):
        convert(str(root), dest, workers=0, batch_size=10, resume=True)
    assert os.path.isdir(tmp_path / ".out.imgconv-partial")  # refused: left as it was


def test_a_file_changed_in_one_of_several_inputs_is_named(tmp_path):
    _folder(tmp_path / "part-a", 30)
    _folder(tmp_path / "part-b", 30)
    pattern, dest = str(tmp_path / "part-*"), str(tmp_path / "out")
    _interrupted(pattern, dest, 20, workers=0, batch_size=10)
    changed = tmp_path / "part-b" / "class0" / "003.png"
    os.utime(changed, ns=(os.stat(changed).st_atime_ns, os.stat(changed).st_mtime_ns + 10**9))
    with pytest.raises(StoreError, match=r"input changed since: 1 file modified \(.*part-b/class0/003\.png\)"):
        convert(pattern, dest, workers=0, batch_size=10, resume=True)


def test_a_file_replaced_by_a_copy_with_the_same_size_and_time_is_noticed(tmp_path):
    root = _folder(tmp_path / "photos")
    dest = str(tmp_path / "out")
    _interrupted(str(root), dest, 20, workers=0, batch_size=10)
    original = root / "class2" / "005.png"
    shutil.copy2(root / "class2" / "008.png", tmp_path / "other.png")  # same size: same shape, same encoder
    os.replace(tmp_path / "other.png", original)
    stat = os.stat(original)
    os.utime(original, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(StoreError, match=r"1 file modified \(.*class2/005\.png\)"):
        convert(str(root), dest, workers=0, batch_size=10, resume=True)


def test_cifar_batch_files_replaced_under_the_parent_folder_are_noticed(tmp_path):
    data = tmp_path / "data"
    sample = write_sample(data, count=400, seed=1, archives=False)
    other = write_sample(tmp_path / "other", count=400, seed=2, archives=False)
    dest = str(tmp_path / "out.lmdb")
    # The parent of cifar-10-batches-py is given: its own size and time do not change below.
    shutil.rmtree(sample.binary_dir)  # one layout in the folder
    _interrupted(str(data), dest, 100, workers=0, batch_size=50, split="all")
    for name in ("data_batch_4", "data_batch_5"):
        shutil.copy(os.path.join(other.python_dir, name), os.path.join(sample.python_dir, name))
    with pytest.raises(StoreError, match=r"2 files modified \(.*data_batch_4, .*data_batch_5\)"):
        convert(str(data), dest, workers=0, batch_size=50, split="all", resume=True)


def test_an_unchanged_input_resumes_and_a_changed_one_is_refused_on_the_command_line(tmp_path, capsys):
    root = _folder(tmp_path / "photos")
    dest = str(tmp_path / "out")
    _interrupted(str(root), dest, 20, workers=0, batch_size=10)
    result = convert(str(root), dest, workers=0, batch_size=10, resume=True)
    assert result.resumed >= 20 and result.count == 60
    shutil.rmtree(dest)
    _interrupted(str(root), dest, 20, workers=0, batch_size=10)
    (root / "class0" / "000.png").write_bytes((root / "class0" / "003.png").read_bytes())
    assert main(["convert", str(root), dest, "--workers", "0", "--batch-size", "10", "--resume"]) == 1
    error = capsys.readouterr().err
    assert "input changed since: 1 file modified" in error and "--overwrite" in error
    assert main(["convert", str(root), dest, "--workers", "0", "--overwrite", "--resume", "--quiet"]) == 0


def test_a_source_store_changed_is_noticed(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (60, 8, 8, 3), dtype=np.uint8)
    source = str(tmp_path / "source")
    with stores.create(source) as writer:
        writer.append(images, np.arange(60))
    dest = str(tmp_path / "out")
    _interrupted(source, dest, 20, workers=0, batch_size=10)
    png = os.path.join(source, "images", "000", "000059.png")
    with open(png, "r+b") as f:
        f.seek(-13, os.SEEK_END)
        f.write(b"\0")  # a byte of the last image, where no mtime check of a folder sees it
    with pytest.raises(StoreError, match=r"1 file modified \(.*000059\.png\)"):
        convert(source, dest, workers=0, batch_size=10, resume=True)


def test_the_message_counts_and_shows_the_first_files(tmp_path):
    from imgconv.resume.inputs import InputFiles

    files = []
    for i in range(6):
        files.append(str(tmp_path / f"{i}.bin"))
        (tmp_path / f"{i}.bin").write_bytes(b"x" * i)
    before = InputFiles.of(files)
    before.save(str(tmp_path))
    for path in files[:5]:
        with open(path, "ab") as f:
            f.write(b"more")
    after = InputFiles.of(files + [str(tmp_path / "new.bin")])
    assert after.summary() != before.summary() and after.count == 7
    said = after.changes_since(str(tmp_path), before.summary())
    assert said.startswith("1 file added (") and "5 files modified (" in said and "and 2 more" in said
    InputFiles.of(files).save(str(tmp_path))
    assert InputFiles.of(list(reversed(files))).changes_since(str(tmp_path), None) == (
        "the same files are read in another order")
    os.remove(tmp_path / "inputs.gz")
    assert "files then, 6 now" in InputFiles.of(files).changes_since(str(tmp_path), {"files": 3})


def test_listing_costs_one_stat_per_file_and_no_read(tmp_path, monkeypatch):
    root = _folder(tmp_path / "photos", count=9)
    opened = []
    real_open = open

    def spy(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    from imgconv.resume.inputs import InputFiles
    from imgconv.sources import open_source

    source = open_source(str(root))
    monkeypatch.setattr("builtins.open", spy)
    inputs = InputFiles.of(source.input_files())
    assert inputs.count == 9 and not [p for p in opened if p.endswith(".png")]
