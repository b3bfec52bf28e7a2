"""imgconv.torch.Loader: epochs, shares, resume, read-ahead threads and workers, buffers, transforms."""
import gc
import os
import signal
import sys
import tracemalloc
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from imgconv import stores  # noqa: E402
from imgconv.augment import CIFAR10_MEAN, CIFAR10_STD, CropFlipNormalize  # noqa: E402
from imgconv.epochs import EpochPlan, batch_generator  # noqa: E402
from imgconv.errors import LoaderError  # noqa: E402
from imgconv.prefetch import BufferPool, Prefetcher  # noqa: E402
from imgconv.torch import Loader  # noqa: E402

COUNT = 103
SHAPE = (8, 8, 3)
SUFFIX = {"lmdb": ".lmdb", "hdf5": ".h5", "png": "_png"}


def make_images(n=COUNT, shape=SHAPE, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


IMAGES = make_images()


def write_store(directory, fmt):
    """A store of ``fmt`` holding IMAGES; label i marks image i."""
    path = str(directory / ("store" + SUFFIX[fmt]))
    with stores.create(path) as writer:
        writer.append(IMAGES, np.arange(COUNT))
    return path


@pytest.fixture(scope="module", params=sorted(SUFFIX))
def store_path(request, tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("loader"), request.param)


@pytest.fixture(scope="module")
def lmdb_path(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("loader"), "lmdb")


@pytest.fixture(scope="module")
def png_path(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("loader"), "png")


def epoch_labels(loader):
    """Iterate one epoch; check every image against its label; return the labels batch by batch."""
    seen = []
    for images, labels in loader:
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        assert np.array_equal(images.numpy(), IMAGES[labels.numpy()])
        seen.append(labels.tolist())
    return seen


class ArrayStore:
    """Not an imgconv store: any object with len, read_batch(indices, out) and shape will do."""

    def __init__(self, images, fail_at=None):
        self.images, self.shape, self.fail_at, self.calls = images, images.shape[1:], fail_at, 0

    def __len__(self):
        return len(self.images)

    def read_batch(self, indices, out=None):
        self.calls += 1
        if self.fail_at is not None and self.calls > self.fail_at:
            raise OSError("disk on fire")
        images = np.take(self.images, indices, axis=0, out=out)
        return images, np.asarray(indices, np.int64)


def test_an_epoch_reads_every_image_once_in_a_new_order_each_time(store_path):
    with Loader(store_path, 16, seed=3) as loader:
        assert len(loader) == 7 and loader.epoch == 0
        first = epoch_labels(loader)
        assert loader.epoch == 1
        second = epoch_labels(loader)
    for seen in (first, second):
        flat = [i for batch in seen for i in batch]
        assert sorted(flat) == list(range(COUNT))
        assert [len(b) for b in seen] == [16] * 6 + [7]
    assert first != second
    expected = [b.indices.tolist() for b in EpochPlan(COUNT, 16, seed=3).batches(0)]
    assert first == expected


def test_same_seed_same_order_set_epoch_replays(lmdb_path):
    a = Loader(lmdb_path, 10, seed=1)
    b = Loader(lmdb_path, 10, seed=1)
    assert epoch_labels(a) == epoch_labels(b)
    a.set_epoch(0)
    b.set_epoch(0)
    first = epoch_labels(a)
    assert first == epoch_labels(b)
    a.set_epoch(0)
    assert epoch_labels(a) == first
    assert epoch_labels(Loader(lmdb_path, 10, seed=2)) != first
    assert epoch_labels(Loader(lmdb_path, 10, shuffle=False)) == [list(range(i, min(i + 10, COUNT)))
                                                                  for i in range(0, COUNT, 10)]


@pytest.mark.parametrize("pad", [True, False])
@pytest.mark.parametrize("drop_last", [False, True])
def test_explicit_ranks_get_equal_batches_covering_the_epoch(lmdb_path, pad, drop_last):
    shares = [epoch_labels(Loader(lmdb_path, 8, seed=4, rank=r, world_size=3, pad=pad, drop_last=drop_last))
              for r in range(3)]
    assert len({len(s) for s in shares}) == 1
    flat = [i for share in shares for batch in share for i in batch]
    if pad and not drop_last:
        assert set(flat) == set(range(COUNT)) and len(flat) == 105
    if not pad:
        assert len(flat) == len(set(flat))
    if not drop_last and not pad:
        assert len(flat) == 102


@pytest.mark.parametrize("prefetch,threads", [(1, 1), (4, 1), (6, 3)])
@pytest.mark.parametrize("k", [0, 1, 4, 7])
def test_resume_after_k_batches_yields_exactly_the_rest(store_path, prefetch, threads, k):
    loader = Loader(store_path, 16, seed=5, prefetch=prefetch, threads=threads, workers=0)
    epoch_labels(loader)  # epoch 0 done: epoch 1 is interrupted
    reference = Loader(store_path, 16, seed=5, workers=0)
    reference.set_epoch(1)
    whole = epoch_labels(reference)
    taken = []
    iterator = iter(loader)
    for _ in range(k):
        taken.append(next(iterator)[1].tolist())  # the rest are read ahead, not received
    state = loader.state_dict()
    del iterator
    assert state["epoch"] == (1 if k < 7 else 2) and state["batches_done"] == (k if k < 7 else 0)
    restarted = Loader(store_path, 16, seed=99, workers=0)  # the saved seed wins
    restarted.load_state_dict(state)
    rest = epoch_labels(restarted)
    if k < 7:
        assert taken + rest == whole
    else:
        assert taken == whole and rest != whole and sorted(sum(rest, [])) == list(range(COUNT))


def test_state_dict_before_and_after_iterations(lmdb_path):
    loader = Loader(lmdb_path, 50, seed=0)
    assert loader.state_dict()["epoch"] == 0 and loader.state_dict()["samples_done"] == 0
    epoch_labels(loader)
    assert (loader.state_dict()["epoch"], loader.state_dict()["samples_done"]) == (1, 0)
    loader.set_epoch(7)
    assert loader.state_dict()["epoch"] == 7
    with pytest.raises(ValueError, match="saved for 103 images, this dataset has 50"):
        Loader(ArrayStore(make_images(50)), 50).load_state_dict(loader.state_dict())


def test_a_restored_place_survives_set_epoch_of_the_same_epoch(lmdb_path):
    loader = Loader(lmdb_path, 10, seed=2)
    iterator = iter(loader)
    first = [next(iterator)[1].tolist() for _ in range(3)]
    state = loader.state_dict()
    restarted = Loader(lmdb_path, 10, seed=2)
    restarted.load_state_dict(state)
    restarted.set_epoch(0)  # the usual loop calls set_epoch(epoch) before iterating
    rest = epoch_labels(restarted)
    restarted.set_epoch(0)
    assert first + rest == epoch_labels(restarted)


def test_resume_on_another_batch_size_and_number_of_ranks(lmdb_path):
    loaders = [Loader(lmdb_path, 8, seed=6, rank=r, world_size=2) for r in range(2)]
    iterators = [iter(loader) for loader in loaders]
    done = [next(it)[1].tolist() for it in iterators for _ in range(3)]
    state = loaders[0].state_dict()
    assert state == {**loaders[1].state_dict(), "batches_done": 3}
    later = [Loader(lmdb_path, 5, seed=0, rank=r, world_size=3) for r in range(3)]
    for loader in later:
        loader.load_state_dict(state)
    rest = [epoch_labels(loader) for loader in later]
    assert len({len(r) for r in rest}) == 1
    flat_done = [i for batch in done for i in batch]
    flat_rest = [i for share in rest for batch in share for i in batch]
    assert set(flat_done) | set(flat_rest) == set(range(COUNT))
    assert not set(flat_done) & set(flat_rest[: COUNT - len(flat_done)])


def test_batches_held_are_never_overwritten_and_dropped_ones_are_reused(lmdb_path):
    loader = Loader(lmdb_path, 8, seed=1, prefetch=3)
    kept = [(images, labels) for images, labels in loader]  # every batch held at once
    for images, labels in kept:
        assert np.array_equal(images.numpy(), IMAGES[labels.numpy()])
    views = [images[:, :1] for images, _ in Loader(lmdb_path, 8, seed=2)]  # views keep the buffer too
    assert len({v.data_ptr() for v in views}) == len(views)
    # Dropped batches: the same few buffers serve the whole epoch.
    pointers = {images.data_ptr() for images, _ in Loader(lmdb_path, 8, seed=1, prefetch=3, threads=1)}
    assert len(pointers) <= 3 + 1 + 2


def test_memory_is_bounded_by_the_read_ahead_not_the_store():
    # A store whose reads allocate nothing but the batch: what is traced is the loader's.
    store = ArrayStore(make_images(2_000, (32, 32, 3), seed=1))
    batch_bytes = 64 * 32 * 32 * 3
    loader = Loader(store, 64, seed=0, prefetch=4, threads=2)
    assert len([labels for _, labels in loader]) == 32  # warm up (imports, first buffers)
    tracemalloc.start()
    try:
        for _ in loader:
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < (4 + 2 + 3) * batch_bytes, f"peak {peak} bytes for batches of {batch_bytes}"
    assert peak < store.images.nbytes / 3


def test_any_object_with_the_reader_interface(tmp_path):
    store = ArrayStore(make_images(40, (4, 4, 1)))
    seen = [labels.tolist() for images, labels in Loader(store, 7, seed=0)]
    assert sorted(sum(seen, [])) == list(range(40))


def test_a_read_error_is_raised_at_its_batch_and_stops_the_threads():
    store = ArrayStore(make_images(40, (4, 4, 1)), fail_at=3)
    loader = Loader(store, 4, seed=0, prefetch=2)
    received = 0
    with pytest.raises(OSError, match="disk on fire"):
        for _ in loader:
            received += 1
    assert received == 3
    calls = store.calls
    gc.collect()
    assert store.calls == calls  # nothing reads on


def test_transform_is_seeded_by_batch_whatever_the_threads(lmdb_path):
    transform = CropFlipNormalize(CIFAR10_MEAN, CIFAR10_STD, padding=2, flip=True)
    runs = []
    for threads in (1, 3):
        loader = Loader(lmdb_path, 16, seed=8, transform=transform, threads=threads, prefetch=4)
        runs.append([(x.clone(), y.clone()) for x, y in loader])
    plan = EpochPlan(COUNT, 16, seed=8)
    for (x1, y1), (x2, y2), batch in zip(runs[0], runs[1], plan.batches(0)):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        expected = transform(IMAGES[batch.indices], rng=batch_generator(8, 0, batch.position))
        assert x1.dtype == torch.float32 and x1.shape == (len(batch.indices), 3, 8, 8)
        assert np.array_equal(x1.numpy(), expected)


def test_a_callable_that_takes_rng_gets_the_batch_generator(lmdb_path):
    def noisy(images, rng):
        assert isinstance(images, np.ndarray) and isinstance(rng, np.random.Generator)
        return images.astype(np.float32) + rng.random(images.shape, dtype=np.float32)

    noisy.takes_rng = True
    runs = [[x for x, _ in Loader(lmdb_path, 32, seed=1, transform=noisy, threads=t)] for t in (1, 2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_a_callable_transform_gets_the_uint8_tensor(lmdb_path):
    calls = []

    def to_float(images):
        calls.append(images.shape)
        assert isinstance(images, torch.Tensor) and images.dtype == torch.uint8
        return images.permute(0, 3, 1, 2).float() / 255

    batches = list(Loader(lmdb_path, 50, transform=to_float))
    assert len(calls) == 3 and batches[0][0].shape == (50, 3, 8, 8) and batches[0][0].dtype == torch.float32


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_worker_processes_read_png_folders_and_persist_across_epochs(png_path, context):
    transform = CropFlipNormalize(padding=1, flip=True, dtype="uint8")
    with Loader(png_path, 16, seed=2, transform=transform, multiprocessing_context=context) as loader:
        assert loader.workers >= 1  # a PNG folder decodes: worker processes by default
        first = [(x.clone(), y.clone()) for x, y in loader]
        pool = loader._pool
        pids = set(pool._processes)
        second = [y.tolist() for _, y in loader]
        assert loader._pool is pool and set(pool._processes) == pids  # the same workers
    assert loader._pool is None
    threaded = Loader(png_path, 16, seed=2, transform=transform, workers=0)
    for (x, y), (tx, ty) in zip(first, threaded):
        assert torch.equal(x, tx) and torch.equal(y, ty)  # the same batches, read elsewhere
    assert sorted(sum(second, [])) == list(range(COUNT))


def test_a_worker_that_dies_is_an_error_not_a_hang(png_path):
    # Batches of one image: many tasks are still to come when the worker dies (PNG reads are
    # fast enough that batches of 8 could all be done before the kill lands).
    loader = Loader(png_path, 1, workers=2, multiprocessing_context="fork")
    iterator = iter(loader)
    next(iterator)
    os.kill(next(iter(loader._pool._processes)), signal.SIGKILL)
    with pytest.raises(LoaderError, match="worker process of the loader died"):
        for _ in iterator:
            pass
    assert sorted(sum(epoch_labels(loader), [])) == list(range(COUNT))  # a new pool for the next epoch
    loader.close()


def test_unpicklable_transform_with_spawn_is_named(png_path):
    loader = Loader(png_path, 8, workers=1, multiprocessing_context="spawn", transform=lambda x: x)
    with pytest.raises(LoaderError, match="need a picklable store and transform"):
        iter(loader)


def test_pin_memory_without_an_accelerator_warns_and_does_not_pin(lmdb_path):
    if torch.cuda.is_available():
        pytest.skip("an accelerator is present: pinning works here")
    with pytest.warns(UserWarning, match="no accelerator"):
        loader = Loader(lmdb_path, 32, pin_memory=True)
    images, _ = next(iter(loader))
    assert not images.is_pinned()


def test_varying_sizes_and_bad_arguments_are_refused(tmp_path, lmdb_path):
    path = str(tmp_path / "varying.lmdb")
    with stores.create(path) as writer:
        writer.append([np.zeros((2, 3, 3), np.uint8), np.zeros((4, 1, 3), np.uint8)], [0, 1])
    with pytest.raises(LoaderError, match="vary in size"):
        Loader(path, 2)
    for options, message in [(dict(batch_size=0), "batch_size"), (dict(prefetch=0), "prefetch"),
                             (dict(rank=1), "give both rank and world_size"),
                             (dict(rank=2, world_size=2), "rank must be below"),
                             (dict(transform=3), "transform must be callable"),
                             (dict(multiprocessing_context="teleport"), "multiprocessing_context")]:
        with pytest.raises((ValueError, TypeError), match=message):
            Loader(lmdb_path, **{"batch_size": 4, **options})
    with pytest.raises(TypeError, match="store must be an imgconv store"):
        Loader(42)


def test_a_new_iteration_stops_the_previous_one(lmdb_path):
    loader = Loader(lmdb_path, 10)
    first = iter(loader)
    next(first)
    second = iter(loader)
    assert list(first) == []  # stopped
    assert len(list(second)) == 11
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        next(iter(loader))


def test_buffer_pool_gives_out_only_unreferenced_arrays():
    pool = BufferPool((4,), np.uint8, keep=2)
    a = pool.take()
    pool.give_back(a)
    first = id(a)
    held = torch.from_numpy(a)[1:]  # a view of a tensor of a
    del a
    b = pool.take()
    assert id(b) != first  # the view still refers to the first array
    pool.give_back(b)
    del held
    assert id(pool.take()) == first  # nothing refers to it any more: reused
    assert pool.allocated == 2


def test_prefetcher_keeps_order_and_depth():
    running = []

    def produce(item):
        running.append(item)
        return item * 2

    prefetcher = Prefetcher(iter(range(20)), produce, depth=3, threads=2)
    assert [next(prefetcher) for _ in range(2)] == [0, 2]
    assert len(running) <= 2 + 3
    assert list(prefetcher) == [2 * i for i in range(2, 20)]


@pytest.mark.skipif(sys.platform != "linux", reason="/proc")
def test_close_leaves_no_thread_behind(lmdb_path):
    import threading

    before = {t.name for t in threading.enumerate()}
    loader = Loader(lmdb_path, 4, prefetch=4, threads=2)
    iterator = iter(loader)
    next(iterator)
    loader.close()
    after = {t.name for t in threading.enumerate() if t.name.startswith("imgconv-prefetch")}
    assert not after - before
