"""`imgconv verify` and `imgconv info`: a flipped byte is found in every format, facts parse as JSON."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import imgconv
from imgconv.verify import store_info, verify_store

FORMATS = [("lmdb", ".lmdb"), ("hdf5", ".h5"), ("png", "")]


def run(*args):
    return subprocess.run([sys.executable, "-m", "imgconv", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def _images(n=40):
    images, labels = imgconv.sample.generate_sample(n, seed=2)
    return images, labels


def _write(path, images, labels):
    with imgconv.create(path, label_names=list(imgconv.sample.LABEL_NAMES)) as writer:
        writer.append(images, labels)
    return str(path)


def _flip_pixels_of(path, image):
    """Flip one byte inside ``image``'s stored pixels, wherever the format keeps them."""
    files = [path] if os.path.isfile(path) else glob.glob(os.path.join(path, "**", "*.mdb"), recursive=True)
    needle = image.tobytes()[:64]
    for name in files:
        with open(name, "r+b") as f:
            data = f.read()
            at = data.find(needle)
            if at >= 0:
                f.seek(at + 40)
                f.write(bytes([data[at + 40] ^ 0x01]))
                return
    raise AssertionError(f"the pixels of the image were not found in {path}")


@pytest.mark.parametrize("fmt, suffix", FORMATS)
def test_sound_store_verifies(tmp_path, fmt, suffix):
    images, labels = _images()
    path = _write(tmp_path / f"s{suffix}", images, labels)
    report = verify_store(path)
    assert (report.count, report.bad, report.problems) == (40, [], [])
    done = run("verify", path)
    assert done.returncode == 0 and done.stdout.startswith("ok: 40 images")


@pytest.mark.parametrize("fmt, suffix", FORMATS)
def test_flipped_byte_is_found_and_named(tmp_path, fmt, suffix):
    images, labels = _images()
    path = _write(tmp_path / f"s{suffix}", images, labels)
    if fmt == "png":
        name = os.path.join(path, "images", "000", "000017.png")
        with open(name, "r+b") as f:
            data = bytearray(f.read())
            data[len(data) // 2] ^= 0x01  # inside the compressed pixel data
            f.seek(0)
            f.write(data)
    else:
        _flip_pixels_of(path, images[17])
    report = verify_store(path)
    assert [index for index, _ in report.bad] == [17]
    done = run("verify", path)
    assert done.returncode == 1
    assert "image 17:" in done.stdout and "FAILED: 1 bad image(s) of 40" in done.stderr
    # Reading the damaged image fails loudly; its neighbours still read.
    store = imgconv.open(path)
    with pytest.raises(imgconv.ImgconvError):
        store[17]
    np.testing.assert_array_equal(store[16][0], images[16])
    np.testing.assert_array_equal(store[18][0], images[18])


def test_missing_png_file_is_a_store_problem(tmp_path):
    images, labels = _images()
    path = _write(tmp_path / "s", images, labels)
    os.remove(os.path.join(path, "images", "000", "000003.png"))
    report = verify_store(path)
    assert [index for index, _ in report.bad] == [3]
    assert report.problems and "missing" in report.problems[0]


def test_not_a_store_is_one_line_and_status_1(tmp_path):
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    for command in ("verify", "info"):
        done = run(command, tmp_path / "junk.h5")
        assert done.returncode == 1 and "Traceback" not in done.stderr and "junk.h5" in done.stderr


@pytest.mark.parametrize("fmt, suffix", FORMATS)
def test_info_json_parses_and_counts_labels(tmp_path, fmt, suffix):
    images, labels = _images()
    path = _write(tmp_path / f"s{suffix}", images, labels)
    done = run("info", path, "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["format"] == fmt and info["count"] == 40 and info["shape"] == [32, 32, 3]
    assert info["imgconv_version"] == imgconv.__version__ and info["bytes"] > 40 * 3072 * 0.4
    names = imgconv.sample.LABEL_NAMES
    expected = {names[v]: int((labels == v).sum()) for v in np.unique(labels)}
    assert info["label_counts"] == expected
    text = run("info", path)
    assert text.returncode == 0 and "40 of 32x32x3 uint8" in text.stdout


def test_info_of_varying_sizes_gives_the_range(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(4, 9), (7, 2), (5, 5)]]
    with imgconv.create(tmp_path / "v.h5") as writer:
        writer.append(images, [0, 1, 1])
    info = store_info(tmp_path / "v.h5")
    assert info["shape"] == "variable"
    assert info["shape_range"] == {"height": [4, 7], "width": [2, 9], "channels": [3]}
    assert info["label_counts"] == {"0": 1, "1": 2}


@pytest.mark.parametrize("fmt, suffix", FORMATS)
def test_verify_says_the_path_and_the_image_once(tmp_path, fmt, suffix):
    images, labels = _images()
    path = _write(tmp_path / f"s{suffix}", images, labels)
    if fmt == "png":
        os.remove(os.path.join(path, "images", "000", "000005.png"))
    else:
        _flip_pixels_of(path, images[5])
    (index, reason), = verify_store(path).bad
    assert index == 5 and path not in reason and not reason.startswith("image 5")
    line = next(line for line in run("verify", path).stdout.splitlines() if "image 5" in line)
    assert line.count(path) == 1 and line.count("image 5") == 1, line
    if fmt == "png":
        assert line.endswith("images/000/000005.png is missing"), line


def test_info_of_a_png_folder_says_data_and_allocated_size(tmp_path):
    images, labels = _images()
    path = _write(tmp_path / "s", images, labels)
    facts = imgconv.info(path)
    expected = int(subprocess.run(["du", "-s", "-B1", path], capture_output=True, text=True,
                                  check=True).stdout.split()[0])
    assert facts["allocated_bytes"] == expected  # what du says: whole blocks per small file
    assert facts["data_bytes"] == facts["bytes"] < facts["allocated_bytes"]
    text = run("info", path).stdout
    assert "of data" in text and "allocated on disk" in text
    assert json.loads(run("info", path, "--json").stdout)["allocated_bytes"] == expected


def test_verify_checks_its_batch_size(tmp_path):
    images, labels = _images(3)
    path = _write(tmp_path / "s.h5", images, labels)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        verify_store(path, batch_size=0)
    assert verify_store(path, batch_size=2).checked == 3
