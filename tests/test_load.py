"""load(): a whole dataset or store into memory through the pool, the same whatever the workers."""
import os
import warnings

import numpy as np
import pytest
from PIL import Image

import imgconv
from imgconv.load import load
from imgconv.pipeline import pool
from imgconv.sample import generate_sample, write_sample

COUNT = 90


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("load")
    files = write_sample(root / "sample", count=COUNT, seed=4)
    images, labels = generate_sample(COUNT, seed=4)
    png = imgconv.convert(files.python_dir, root / "png", split="all", workers=0).path
    return files, png, images, labels


@pytest.mark.parametrize("workers", [0, 1, 2])
@pytest.mark.parametrize("batch_size", [7, 1024])
def test_png_folder_reads_back_whatever_the_workers(dataset, workers, batch_size):
    _, png, images, labels = dataset
    got, got_labels = load(png, workers=workers, batch_size=batch_size)
    assert got.dtype == np.uint8 and got.shape == images.shape and got.flags.c_contiguous
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert pool.current_context() is None  # this process is no worker: nothing of the run is kept here


@pytest.mark.parametrize("form", ["python_archive", "binary_dir"])
def test_cifar_forms_load_too(dataset, form):
    files, _, images, labels = dataset
    got, got_labels = load(getattr(files, form), workers=2, batch_size=16, split="all")
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(got_labels, labels)


@pytest.fixture(scope="module")
def folder_with_bad_files(tmp_path_factory, dataset):
    """30 good 32x32 images in two class folders, with unreadable files among them."""
    root = tmp_path_factory.mktemp("bad")
    _, _, images, _ = dataset
    expected, expected_labels = [], []
    for i in range(30):
        label = i % 2
        directory = root / f"class{label}"
        directory.mkdir(exist_ok=True)
        name = directory / f"{i:03}.png"
        if i % 7 == 3:
            name.write_bytes(b"not a png at all")
            continue
        Image.fromarray(images[i]).save(name)
    # The folder source orders files by class folder, then name.
    for label in (0, 1):
        for i in range(30):
            if i % 2 == label and i % 7 != 3:
                expected.append(images[i])
                expected_labels.append(label)
    return root, np.stack(expected), np.array(expected_labels)


@pytest.mark.parametrize("workers", [0, 2])
def test_skipped_files_leave_no_gap(folder_with_bad_files, workers):
    root, expected, expected_labels = folder_with_bad_files
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got, got_labels = load(root, workers=workers, batch_size=4, on_error="skip")
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got_labels, expected_labels)


@pytest.mark.parametrize("name", ["var.h5", "var"])  # read in this process; decoded by the pool
def test_images_of_varying_sizes_come_back_as_a_list(tmp_path, name):
    sizes = [(5, 7), (9, 4), (6, 6), (3, 11), (8, 2)]
    with imgconv.create(tmp_path / name) as writer:
        writer.append([np.full((h, w, 3), i, np.uint8) for i, (h, w) in enumerate(sizes)], list(range(5)))
    got, got_labels = load(tmp_path / name, workers=2, batch_size=2)
    assert isinstance(got, list) and [g.shape[:2] for g in got] == sizes
    assert all((g == i).all() for i, g in enumerate(got))
    np.testing.assert_array_equal(got_labels, np.arange(5))


def test_a_worker_failure_is_one_clear_error(dataset, tmp_path):
    _, png, _, _ = dataset
    broken = tmp_path / "png"
    os.symlink(png, broken)
    victim = next(os.path.join(root, n) for root, _, names in os.walk(png) for n in sorted(names) if n.endswith(".png"))
    saved = open(victim, "rb").read()
    try:
        with open(victim, "wb") as f:
            f.write(saved[:40])
        with pytest.raises(imgconv.ImgconvError, match=os.path.basename(victim)):
            load(broken, workers=2, batch_size=8)
    finally:
        with open(victim, "wb") as f:
            f.write(saved)
    assert pool.current_context() is None
