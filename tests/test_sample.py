"""The built-in sample: deterministic, photograph-like, in the genuine CIFAR-10 formats, and its CLI."""
import hashlib
import io
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from imgconv import cli
from imgconv.sample import LABEL_NAMES, generate_sample, write_sample
from imgconv.sources import open_source


def test_deterministic_in_the_seed_and_a_prefix_for_smaller_counts():
    images, labels = generate_sample(300, seed=1)
    again, again_labels = generate_sample(300, seed=1)
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, again_labels)
    fewer, fewer_labels = generate_sample(100, seed=1)
    np.testing.assert_array_equal(fewer, images[:100])
    np.testing.assert_array_equal(fewer_labels, labels[:100])
    other, _ = generate_sample(100, seed=2)
    assert (other != fewer).mean() > 0.5
    assert images.shape == (300, 32, 32, 3) and images.dtype == np.uint8 and labels.dtype == np.int64
    assert set(labels.tolist()) == set(range(10))


def test_pictures_compress_like_photographs():
    images, _ = generate_sample(300, seed=0)
    sizes = []
    for image in images:
        out = io.BytesIO()
        Image.fromarray(image).save(out, "PNG")
        sizes.append(len(out.getvalue()))
    assert 1500 <= np.mean(sizes) <= 2500
    # Not flat, not noise: some pixels saturate rarely, neighbours correlate strongly.
    as_float = images.astype(np.float64)
    neighbours = np.corrcoef(as_float[:, :, :-1].ravel(), as_float[:, :, 1:].ravel())[0, 1]
    assert 0.8 < neighbours < 0.99


def test_written_files_read_back_as_generated(tmp_path):
    files = write_sample(tmp_path, count=120, seed=4)
    images, labels = generate_sample(120, seed=4)
    assert (files.count, files.train, files.test) == (120, 100, 20)
    for path in (files.python_dir, files.binary_dir, files.python_archive, files.binary_archive):
        source = open_source(path, split="all")
        got = list(source.batches(50))
        np.testing.assert_array_equal(np.concatenate([b[0] for b in got]), images)
        np.testing.assert_array_equal(np.concatenate([b[1] for b in got]), labels)
        assert source.label_names == LABEL_NAMES


def test_python_batches_are_laid_out_like_the_official_ones(tmp_path):
    files = write_sample(tmp_path, count=60, seed=0, archives=False)
    assert files.python_archive is None and not os.path.exists(tmp_path / "cifar-10-python.tar.gz")
    assert sorted(os.listdir(files.python_dir)) == sorted(
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta", "readme.html"]
    )
    raw = open(os.path.join(files.python_dir, "data_batch_1"), "rb").read()
    assert raw.startswith(b"\x80\x02}q\x00(U\x0bbatch_label")  # protocol 2, Python-2 str keys
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw and b"_codecs" not in raw
    batch = pickle.loads(raw, encoding="bytes")  # how the CIFAR site says to load it
    assert set(batch) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert batch[b"batch_label"] == b"training batch 1 of 5"
    assert batch[b"data"].shape == (10, 3072) and batch[b"data"].dtype == np.uint8
    assert isinstance(batch[b"labels"], list) and isinstance(batch[b"filenames"][0], bytes)
    meta = pickle.loads(open(os.path.join(files.python_dir, "batches.meta"), "rb").read(), encoding="bytes")
    assert meta == {b"num_cases_per_batch": 10, b"label_names": [n.encode() for n in LABEL_NAMES], b"num_vis": 3072}
    binary = os.path.join(files.binary_dir, "data_batch_1.bin")
    assert os.path.getsize(binary) == 10 * 3073
    records = np.fromfile(binary, np.uint8).reshape(10, 3073)
    np.testing.assert_array_equal(records[:, 1:], batch[b"data"])
    assert records[:, 0].tolist() == batch[b"labels"]


def test_archives_are_byte_identical_for_a_seed(tmp_path):
    first = write_sample(tmp_path / "a", count=30, seed=9)
    second = write_sample(tmp_path / "b", count=30, seed=9)
    for one, two in [(first.python_archive, second.python_archive), (first.binary_archive, second.binary_archive)]:
        assert hashlib.sha256(open(one, "rb").read()).digest() == hashlib.sha256(open(two, "rb").read()).digest()


@pytest.mark.parametrize("count, seed", [(5, 0), (-1, 0), (10, -3), (2.5, 0), (60_001, 0)])
def test_bad_count_or_seed(tmp_path, count, seed):
    with pytest.raises(ValueError):
        write_sample(tmp_path, count=count, seed=seed)


def test_cli_through_a_subprocess(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "imgconv", "sample", str(tmp_path / "out"), "--count", "200"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 200 images (167 train, 33 test, seed 0)" in result.stdout
    assert open_source(tmp_path / "out" / "cifar-10-binary.tar.gz", split="all").length == 200
    np.testing.assert_array_equal(
        next(open_source(tmp_path / "out" / "cifar-10-batches-py").batches(200))[0], generate_sample(167)[0]
    )


def test_cli_usage_errors_exit_2(capsys):
    assert cli.main(["sample", "x", "--count", "3"]) == 2
    assert "at least 6 images" in capsys.readouterr().err
    assert cli.main(["sample", "x", "--count", "60001"]) == 2  # a batch file holds at most 10,000, as CIFAR-10's
    assert "at most 60000 images" in capsys.readouterr().err
    assert cli.main(["sample", "x", "--seed", "-1"]) == 2
    assert cli.main(["frobnicate"]) == 2
    assert cli.main([]) == 2


def test_cli_data_errors_exit_1_with_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    assert cli.main(["sample", str(blocker / "sub"), "--count", "6", "--no-archives"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("imgconv sample: error:") and "Traceback" not in err
