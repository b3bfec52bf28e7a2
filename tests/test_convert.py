"""The converter: every source into every store, the same bytes whatever the pool, and failures."""
import hashlib
import importlib
import os
import signal

import numpy as np
import pytest
from PIL import Image

import imgconv
import imgconv.stores
from imgconv.convert import ConversionError, Interrupted, convert, plan_tasks
from imgconv.sample import generate_sample, write_sample
from imgconv.sources import Source

FORMATS = [("lmdb", ".lmdb"), ("hdf5", ".h5"), ("png", "")]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """A small sample in every CIFAR form: 300 images, train then test."""
    return write_sample(tmp_path_factory.mktemp("sample"), count=300, seed=3)


@pytest.fixture(scope="module")
def expected():
    images, labels = generate_sample(300, seed=3)
    return images, labels


def _tree_digest(path):
    """A digest of every file under ``path`` (or of the file), names included."""
    digest = hashlib.sha256()
    paths = [path] if os.path.isfile(path) else sorted(
        os.path.join(root, name) for root, _, names in os.walk(path) for name in names
    )
    for name in paths:
        if os.path.basename(name) == "lock.mdb":
            continue  # LMDB's reader table, not data
        digest.update(os.path.relpath(name, path).encode())
        with open(name, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


@pytest.mark.parametrize("fmt, suffix", FORMATS)
@pytest.mark.parametrize("form", ["python_dir", "python_archive", "binary_dir", "binary_archive"])
def test_cifar_into_every_store_reads_back_exactly(tmp_path, sample, expected, form, fmt, suffix):
    result = convert(getattr(sample, form), tmp_path / f"out{suffix}", format=fmt, workers=2, batch_size=64,
                     split="all")
    assert result.count == 300 and result.format == fmt and result.bytes > 0
    with imgconv.stores.open(result.path) as store:
        images, labels = store.read_all()
        assert store.label_names == list(imgconv.sample.LABEL_NAMES)
    np.testing.assert_array_equal(images, expected[0])
    np.testing.assert_array_equal(labels, expected[1])


@pytest.mark.parametrize("fmt, suffix", FORMATS)
def test_output_is_identical_for_0_1_and_2_workers_and_any_batch_size(tmp_path, sample, fmt, suffix):
    digests = set()
    # batch_bytes: 3,072 bytes an image, so 1 image, 33 and 34 images a batch.
    for workers, batch_size, batch_bytes in [(0, 1024, None), (1, 7, None), (2, 64, None), (2, 100, None),
                                             (0, 1024, 3072), (2, 1024, 100_000), (1, 20, 104_448)]:
        dest = tmp_path / f"w{workers}b{batch_size}-{batch_bytes}{suffix}"
        sizes = {} if batch_bytes is None else {"batch_bytes": batch_bytes}
        convert(sample.python_dir, dest, format=fmt, workers=workers, batch_size=batch_size, split="all", **sizes)
        digests.add(_tree_digest(str(dest)))
    assert len(digests) == 1


@pytest.mark.parametrize("fmt, suffix", FORMATS)
def test_images_of_varying_sizes_give_the_same_output_whatever_the_batch_bytes(tmp_path, fmt, suffix):
    root = _folder(tmp_path, count=30)
    digests = set()
    for workers, batch_bytes in [(0, 32 * 2**20), (2, 300), (1, 1000), (2, 5000)]:
        dest = tmp_path / f"w{workers}-{batch_bytes}{suffix}"
        convert(str(root), dest, format=fmt, workers=workers, batch_size=8, batch_bytes=batch_bytes)
        digests.add(_tree_digest(str(dest)))
    assert len(digests) == 1


def test_limit_and_split(tmp_path, sample, expected):
    result = convert(sample.binary_dir, tmp_path / "t.lmdb", split="test", limit=25, workers=0)
    images, labels = imgconv.stores.open(result.path).read_all()
    first = sample.train  # test images follow the training images
    np.testing.assert_array_equal(images, expected[0][first : first + 25])
    np.testing.assert_array_equal(labels, expected[1][first : first + 25])


def test_shuffle_is_a_seeded_permutation(tmp_path, sample, expected):
    first = convert(sample.python_dir, tmp_path / "a.h5", split="all", shuffle=True, seed=7, workers=2, batch_size=50)
    second = convert(sample.python_dir, tmp_path / "b.h5", split="all", shuffle=True, seed=7, workers=0)
    a_images, a_labels = imgconv.stores.open(first.path).read_all()
    b_images, b_labels = imgconv.stores.open(second.path).read_all()
    np.testing.assert_array_equal(a_images, b_images)
    order = np.random.default_rng(7).permutation(300)
    np.testing.assert_array_equal(a_images, expected[0][order])
    np.testing.assert_array_equal(a_labels, expected[1][order])
    assert not np.array_equal(order, np.arange(300))


def test_plan_tasks_covers_every_image_once():
    tasks = plan_tasks(1000, 64)
    assert [t.start for t in tasks][:3] == [0, 64, 128] and tasks[-1].stop == 1000
    shuffled = plan_tasks(1000, 64, shuffle=True, seed=1)
    assert sorted(np.concatenate([t.indices for t in shuffled]).tolist()) == list(range(1000))


def _folder(tmp_path, count=12, bad=None):
    root = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for i in range(count):
        cls = root / f"class{i % 3}"
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (9 + i % 4, 11, 3), dtype=np.uint8)).save(cls / f"{i:03d}.png")
    if bad:
        (root / "class1" / bad).write_bytes(b"this is not a PNG file")
    return root


def test_folder_of_varying_sizes_with_resize_and_with_variable_store(tmp_path):
    root = _folder(tmp_path)
    fixed = convert(root, tmp_path / "fixed.lmdb", resize=(8, 6), workers=2, batch_size=5)
    images, labels = imgconv.stores.open(fixed.path).read_all()
    assert images.shape == (12, 6, 8, 3)
    assert sorted(set(labels.tolist())) == [0, 1, 2]
    varied = convert(root, tmp_path / "varied.h5", workers=2, batch_size=5)
    store = imgconv.stores.open(varied.path)
    assert store.variable and len(store) == 12
    assert {image.shape[0] for image in store.read_batch(range(12))[0]} == {9, 10, 11, 12}


def test_bad_image_fails_naming_the_file_and_leaves_nothing(tmp_path):
    root = _folder(tmp_path, bad="broken.png")
    dest = tmp_path / "out.lmdb"
    with pytest.raises(imgconv.SourceError, match="broken.png"):
        convert(root, dest, resize=(8, 8), workers=2, batch_size=4)
    assert not dest.exists()
    assert os.listdir(tmp_path) == ["folder"]  # no temporary output left either


@pytest.mark.parametrize("resize", [(8, 8), None])  # None: the images share a size, probed from their headers
def test_bad_image_is_skipped_and_reported_under_skip(tmp_path, resize):
    root = _folder(tmp_path, bad="broken.png")
    if resize is None:
        for path in root.rglob("0*.png"):
            Image.new("RGB", (11, 9)).save(path)
    result = convert(root, tmp_path / "out.lmdb", resize=resize, workers=2, batch_size=4, on_error="skip")
    assert result.count == 12
    assert [os.path.basename(s.path) for s in result.skipped] == ["broken.png"]


class _FailingSource(Source):
    """Eight 2x2 images; reading image ``fail_at`` raises or kills the worker."""

    def __init__(self, fail_at, how):
        self.fail_at, self.how = fail_at, how

    description = "a test source that fails"
    length = 8
    shape = (2, 2, 1)
    heavy_decoding = True  # worth workers: the pool's handling of failures is what is tested

    def batches(self, batch_size, start=0, stop=None):
        start, stop = self._check_range(batch_size, start, stop)
        for first in range(start, stop, batch_size):
            last = min(first + batch_size, stop)
            if first <= self.fail_at < last:
                if self.how == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError("the disk went away")
            yield np.zeros((last - first, 2, 2, 1), np.uint8), np.arange(first, last)


def test_exception_in_a_worker_is_one_clear_error(tmp_path):
    dest = tmp_path / "out.lmdb"
    with pytest.raises(ConversionError, match=r"images 4\.\.5: RuntimeError: the disk went away"):
        convert(_FailingSource(5, "raise"), dest, workers=2, batch_size=2)
    assert os.listdir(tmp_path) == []


def test_killed_worker_is_one_clear_error_not_a_hang(tmp_path):
    dest = tmp_path / "out.h5"
    with pytest.raises(ConversionError, match="worker process died") as info:
        convert(_FailingSource(3, "kill"), dest, workers=2, batch_size=2)
    # Nothing at dest; the batches written before the death are kept for --resume.
    assert os.listdir(tmp_path) in ([], [".out.h5.imgconv-partial"])
    assert bool(os.listdir(tmp_path)) == ("resume=True" in str(info.value))


def test_interruption_stops_cleanly(tmp_path, sample):
    calls = []

    def progress(done, total):
        calls.append(done)
        os.kill(os.getpid(), signal.SIGINT)

    dest = tmp_path / "out.lmdb"
    # The handler the run found is the one it leaves (another test's subprocess may have left
    # this process's SIGINT ignored, so default_int_handler is set here rather than assumed).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(Interrupted) as caught:
            convert(sample.python_dir, dest, split="all", workers=2, batch_size=16, progress=progress)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
    assert caught.value.signum == signal.SIGINT
    assert calls == [16] and os.listdir(tmp_path) == []


def test_progress_reaches_the_total(tmp_path, sample):
    seen = []
    convert(sample.binary_dir, tmp_path / "p.lmdb", workers=0, batch_size=100,
            progress=lambda d, t: seen.append((d, t)))
    train = sample.train
    assert seen == [(min(done, train), train) for done in range(100, train + 100, 100)]


def test_existing_destination_needs_overwrite(tmp_path, sample):
    dest = tmp_path / "x.lmdb"
    convert(sample.binary_dir, dest, workers=0, limit=10)
    with pytest.raises(imgconv.StoreError, match="exists"):
        convert(sample.binary_dir, dest, workers=0, limit=20)
    assert len(imgconv.stores.open(dest)) == 10
    convert(sample.binary_dir, dest, workers=0, limit=20, overwrite=True)
    assert len(imgconv.stores.open(dest)) == 20


@pytest.mark.parametrize("kwargs, match", [({"workers": -1}, "workers"), ({"batch_size": 0}, "batch_size"),
                                           ({"limit": -5}, "limit")])
def test_bad_arguments(tmp_path, sample, kwargs, match):
    with pytest.raises(ValueError, match=match):
        convert(sample.binary_dir, tmp_path / "x.lmdb", **kwargs)


def test_default_workers_is_the_cpu_count():
    # imgconv.convert is the function; the module is imgconv.convert in sys.modules.
    assert importlib.import_module("imgconv.convert").default_workers() >= 1
    assert imgconv.convert is convert
