"""Batches in flight are bounded in bytes, not in images: planned from shapes or headers, never by decoding."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

import imgconv
from imgconv.convert import convert
from imgconv.sample import write_sample


def _plan(*args, **kwargs):
    from imgconv.pipeline.plan import plan_tasks

    return plan_tasks(*args, **kwargs)


def test_tasks_of_one_size_hold_what_fits_in_the_bytes():
    tasks = _plan(1000, 1024, nbytes=3072, batch_bytes=100_000)
    assert {t.stop - t.start for t in tasks[:-1]} == {32} and tasks[-1].stop == 1000
    assert [t.stop - t.start for t in _plan(10, 4, nbytes=1, batch_bytes=10**9)] == [4, 4, 2]  # batch_size bounds
    assert [t.stop - t.start for t in _plan(3, 8, nbytes=10**8, batch_bytes=10)] == [1, 1, 1]  # one image at least


def test_tasks_of_varying_sizes_never_exceed_the_bytes_unless_one_image_does():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 5000, 2000).astype(np.int64)
    sizes[[5, 700, 1999]] = 20_000  # larger than a batch: alone
    for shuffle in (False, True):
        tasks = _plan(2000, 64, shuffle=shuffle, seed=3, start=17, nbytes=sizes, batch_bytes=10_000)
        covered = np.concatenate([np.arange(t.start, t.stop) if t.indices is None else t.indices for t in tasks])
        order = np.random.default_rng(3).permutation(2000) if shuffle else np.arange(2000)
        assert np.array_equal(covered, order[17:])
        for task in tasks:
            held = sizes[task.indices if shuffle else np.arange(task.start, task.stop)]
            assert len(held) <= 64 and (held.sum() <= 10_000 or len(held) == 1)
        # Greedy: a task ends only where the next image would not fit.
        for task, after in zip(tasks, tasks[1:]):
            held = sizes[order[task.start : task.stop]]
            assert len(held) == 64 or held.sum() + sizes[order[after.start]] > 10_000


def _photos(root, sizes):
    """Smooth images of the (width, height) in ``sizes``, as JPEG, in one class folder."""
    folder = root / "photos"
    folder.mkdir(parents=True)
    for i, (width, height) in enumerate(sizes):
        x = np.linspace(0, 255, width, dtype=np.float32)
        y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
        pixels = np.stack([x + 0 * y, y + 0 * x, (x + y + 40 * i) % 256], axis=2).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.jpg", quality=90)
    return root


def _task_sizes(total_images):
    """A progress callback recording how many images each batch written held."""
    done_before = [0]
    sizes = []

    def progress(done, total):
        sizes.append(done - done_before[0])
        done_before[0] = done

    return sizes, progress


@pytest.mark.parametrize("shard_size", [None, 10])
@pytest.mark.parametrize("workers", [0, 2])
def test_a_folder_of_photos_goes_in_batches_bounded_in_bytes(tmp_path, workers, shard_size):
    shapes = [(300, 200), (40, 30), (40, 30), (600, 400), (40, 30), (300, 200), (300, 200), (40, 30)] * 3
    root = _photos(tmp_path / "src", shapes)
    held, progress = _task_sizes(len(shapes))
    result = convert(str(root), str(tmp_path / "out.h5"), workers=workers, batch_bytes=400_000, progress=progress,
                     shard_size=shard_size)
    held = [count for count in held if count]  # the end of a shard says nothing new
    assert result.count == len(shapes) and sum(held) == len(shapes)
    position = 0
    for count in held:
        batch = shapes[position : position + count]
        assert count == 1 or sum(w * h * 3 for w, h in batch) <= 400_000, (held, position)
        position += count
    assert max(held) > 1  # small images still travel together
    images, _ = imgconv.load(str(root), workers=workers, batch_bytes=400_000)
    with imgconv.open(result.path) as store:
        stored = store.read_batch(range(len(shapes)))[0]
    assert all(np.array_equal(a, b) for a, b in zip(images, stored))


def test_a_shard_written_on_a_worker_is_read_in_batches_bounded_in_bytes(tmp_path):
    from imgconv.datasets.plan import Shard, shard_batches

    shapes = [(300, 200), (40, 30), (40, 30), (600, 400), (40, 30), (300, 200), (300, 200), (40, 30)]
    source = imgconv.open_source(str(_photos(tmp_path / "src", shapes)))
    for shard in (Shard(0, 0, 8), Shard(0, 0, 8, np.arange(8)[::-1].copy())):
        batches = [images for images, _ in shard_batches(source, shard, 1024, 400_000)]
        assert sum(len(images) for images in batches) == 8
        assert all(len(images) == 1 or sum(image.nbytes for image in images) <= 400_000 for images in batches)
        assert len(batches) > 1


def test_an_archive_into_shards_is_cut_to_the_bytes_as_it_streams(tmp_path):
    sample = write_sample(tmp_path / "data", count=300, seed=1)
    held, progress = _task_sizes(300)
    convert(sample.python_archive, str(tmp_path / "out.lmdb"), split="all", workers=0, batch_bytes=10 * 3072,
            shard_size=100, progress=progress)
    assert [count for count in held if count] == [10] * 30


def test_several_inputs_of_varying_sizes_say_their_images_bytes(tmp_path):
    for name, side in (("part-a", 8), ("part-b", 64)):
        folder = tmp_path / name / "c"
        folder.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.zeros((side, side + i, 3), np.uint8)).save(folder / f"{i}.png")
    source = imgconv.open_source(str(tmp_path / "part-*"))
    assert source.shape is None
    assert source.image_nbytes(np.array([5, 0, 7])).tolist() == [64 * 65 * 3, 8 * 8 * 3, 64 * 67 * 3]


def test_an_archive_is_cut_to_the_bytes_as_it_streams(tmp_path):
    sample = write_sample(tmp_path / "data", count=300, seed=1)
    held, progress = _task_sizes(300)
    convert(sample.python_archive, str(tmp_path / "out.lmdb"), split="all", workers=0, batch_bytes=10 * 3072,
            progress=progress)
    assert held == [10] * 30


def test_a_source_store_of_varying_sizes_in_hdf5_plans_from_its_shapes(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, 10, 3), dtype=np.uint8) for h in rng.integers(5, 50, 40)]
    with imgconv.create(str(tmp_path / "v.h5")) as writer:
        writer.append(images, np.arange(40))
    held, progress = _task_sizes(40)
    convert(str(tmp_path / "v.h5"), str(tmp_path / "out.lmdb"), workers=0, batch_bytes=3000, progress=progress)
    position = 0
    for count in held:
        assert count == 1 or sum(i.nbytes for i in images[position : position + count]) <= 3000
        position += count
    assert position == 40 and len(held) > 5


# A conversion of large images in a child process, which says how much its
# processes grew: RSS after the imports, then the peaks of the parent and of
# its largest worker (workers are forked after the imports).
CONVERT = textwrap.dedent("""
    import resource, sys
    from imgconv.convert import convert

    def status_kb(name):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(name + ":"))

    base = status_kb("VmRSS")
    convert(sys.argv[1], sys.argv[2], workers=int(sys.argv[3]), batch_bytes=int(sys.argv[4]))
    # VmHWM, not ru_maxrss: ru_maxrss survives exec, so it would count the RSS of the process
    # that started this one (pytest, hundreds of MB once torch is imported).
    print(base, status_kb("VmHWM"), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="RSS from /proc, ru_maxrss in kB as Linux has it")
@pytest.mark.parametrize("workers", [0, 2])
def test_peak_memory_of_large_images_stays_within_the_batch_bytes(tmp_path, workers):
    # 24 images of 1,600 x 1,200 (5.8 MB decoded, 138 MB in all): by count alone, one batch of them all.
    root = _photos(tmp_path / "src", [(1600, 1200)] * 24)
    done = subprocess.run([sys.executable, "-c", CONVERT, str(root), str(tmp_path / "out.lmdb"), str(workers),
                           str(8 * 2**20)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    base, parent, worker = (int(kb) / 1024 for kb in done.stdout.split())
    # A batch is one image here (two would pass 8 MiB); a process holds it a few times over
    # (Pillow's decoding, the array, the encoded records) and the parent LMDB's 16 MiB transaction.
    # All 24 images at once would be 138 MB, and as much again for each copy.
    assert parent - base < 100 and (workers == 0 or worker - base < 100), (base, parent, worker)
