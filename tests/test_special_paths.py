"""SRC and DST: a FIFO or device is refused by name, never opened; DST never is, holds or lies inside SRC."""
import os
import socket
import stat
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import imgconv
from imgconv.convert import convert

TIMEOUT = 60  # a command blocked on a FIFO never ends: the test fails instead of hanging


def _imgconv(*args, cwd=None):
    """``python -m imgconv ARGS``: (exit status, stderr); fails the test if it blocks."""
    try:
        done = subprocess.run([sys.executable, "-m", "imgconv", *map(str, args)], capture_output=True, text=True,
                              timeout=TIMEOUT, cwd=cwd)
    except subprocess.TimeoutExpired:
        pytest.fail(f"imgconv {' '.join(map(str, args))} blocked for {TIMEOUT} s")
    return done.returncode, done.stderr


def _folder(root, count=6):
    for i in range(count):
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(folder / f"{i}.png")
    return root


def _snapshot(root):
    return {os.path.relpath(os.path.join(d, n), root): os.path.getsize(os.path.join(d, n))
            for d, _, names in os.walk(root) for n in names}


# --------------------------------------------------------------------------- FIFOs and devices


@pytest.mark.parametrize("name", ["data.npy", "store.h5", "folder"])
def test_a_fifo_as_source_is_refused_by_name(tmp_path, name):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    status, error = _imgconv("convert", fifo, tmp_path / "out.lmdb")
    assert status == 1 and f"{fifo}: a FIFO (named pipe), not a dataset" in error, error
    with pytest.raises(imgconv.SourceError, match="a FIFO"):
        imgconv.load(str(fifo))


@pytest.mark.parametrize("command", ["info", "verify"])
def test_a_fifo_as_store_is_refused_by_info_and_verify(tmp_path, command):
    fifo = tmp_path / "store.h5"
    os.mkfifo(fifo)
    status, error = _imgconv(command, fifo)
    assert status == 1 and "a FIFO (named pipe), not a store" in error, error
    for fmt in ("hdf5", None):
        with pytest.raises(imgconv.StoreError, match=r"a FIFO \(named pipe\), not a store"):
            imgconv.open(str(fifo), format=fmt)


@pytest.mark.parametrize("name", ["out.lmdb", "out.h5", "out"])
def test_a_fifo_at_dest_is_neither_opened_nor_replaced(tmp_path, name):
    source = _folder(tmp_path / "photos")
    fifo = tmp_path / name
    os.mkfifo(fifo)
    status, error = _imgconv("convert", source, fifo, "--overwrite", "--workers", "0")
    assert status == 1 and "a FIFO (named pipe) is there, not a store" in error, error
    assert os.path.exists(fifo) and not os.path.isfile(fifo) and not os.path.isdir(fifo)


def test_a_socket_at_dest_is_refused(tmp_path):
    # Not /dev/null: a converter without the check would replace it.
    source = _folder(tmp_path / "photos")
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(tmp_path / "out.h5"))
    try:
        with pytest.raises(imgconv.StoreError, match=r"out\.h5: a socket is there"):
            convert(str(source), str(tmp_path / "out.h5"), overwrite=True, workers=0)
        assert stat.S_ISSOCK(os.stat(tmp_path / "out.h5").st_mode)
    finally:
        listening.close()


# --------------------------------------------------------------------------- DST apart from SRC


def test_dest_equal_to_the_source_is_refused_and_the_input_kept(tmp_path):
    source = _folder(tmp_path / "photos")
    before = _snapshot(source)
    status, error = _imgconv("convert", source, source, "--format", "png", "--overwrite", "--workers", "0")
    assert status == 2 and "is the source" in error, error
    assert _snapshot(source) == before


def test_dest_holding_the_source_is_refused_and_the_input_kept(tmp_path):
    source = _folder(tmp_path / "data" / "photos")
    before = _snapshot(source)
    status, error = _imgconv("convert", source, tmp_path / "data", "--format", "png", "--overwrite", "--workers", "0")
    assert status == 2 and "holds the source" in error, error
    assert _snapshot(source) == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_dest_inside_the_source_is_refused(tmp_path, overwrite):
    source = _folder(tmp_path / "photos")
    before = _snapshot(source)
    with pytest.raises(ValueError, match="lies inside the source"):
        convert(str(source), str(source / "class0" / "more"), format="png", overwrite=overwrite, workers=0)
    assert _snapshot(source) == before and not os.path.exists(source / "class0" / ".more.imgconv-partial")


def test_paths_are_compared_with_symbolic_links_resolved(tmp_path):
    source = _folder(tmp_path / "photos")
    os.symlink(source, tmp_path / "link")
    before = _snapshot(source)
    status, error = _imgconv("convert", tmp_path / "link", source, "--format", "png", "--overwrite",
                             "--workers", "0")
    assert status == 2 and "is the source" in error, error
    with pytest.raises(ValueError, match="lies inside the source"):
        convert(str(source), str(tmp_path / "link" / "out.lmdb"), workers=0)
    assert _snapshot(source) == before


def test_dest_holding_a_file_the_source_reads_is_refused(tmp_path):
    # The labels CSV of a flat folder lies elsewhere: DST is its folder.
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(photos / f"{i}.png")
    (tmp_path / "labels").mkdir()
    csv = tmp_path / "labels" / "labels.csv"
    csv.write_text("".join(f"{i}.png,{i % 2}\n" for i in range(4)))
    with pytest.raises(ValueError, match=r"holds .*labels\.csv, a file the source reads"):
        convert(str(photos), str(tmp_path / "labels"), format="png", overwrite=True, workers=0, labels_csv=str(csv))
    assert csv.exists()


def test_a_dest_beside_the_source_is_fine(tmp_path):
    source = _folder(tmp_path / "photos")
    result = convert(str(source), str(tmp_path / "photos.lmdb"), workers=0)
    assert result.count == 6
