"""Many processes reading one store at once: every image read equals what was written.

Two ways a training job shares a store with its data-loading workers:

* **fork** (PyTorch's DataLoader on Linux): the store is opened, and used, in
  the parent; the children inherit the object, not a pickle of it, and must
  not use the parent's LMDB environment or HDF5 handle;
* **spawn** (macOS, Windows, or asked for): the store travels to each child
  as a pickle, which holds its path and options only.

Each child reads random single images, random batches (repeats, any order)
and ranges through ``batches`` for a while, comparing every image and label
with the arrays written. The suite runs 4 processes for about a second and
a half per format and start method; ``pytest -m slow`` runs 8 processes for
20 seconds each, over all three stores at once.
"""
import multiprocessing
import os
import pickle
import time

import numpy as np
import pytest

import imgconv

FORMATS = {"lmdb": ".lmdb", "hdf5": ".h5", "png": ""}
COUNT = 300


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """{format: store path} of three stores holding the same images, and the arrays' .npz."""
    root = tmp_path_factory.mktemp("concurrent")
    rng = np.random.default_rng(21)
    images = rng.integers(0, 256, (COUNT, 12, 10, 3), dtype=np.uint8)
    labels = rng.integers(-5, 1000, COUNT)
    paths = {}
    for fmt, suffix in FORMATS.items():
        paths[fmt] = str(root / f"store{suffix}")
        # Small chunks: a batch spans many LMDB values and HDF5 chunks.
        options = {"lmdb": {"records_per_value": 7}, "hdf5": {"chunk_images": 9}, "png": {}}[fmt]
        with imgconv.create(paths[fmt], format=fmt, **options) as writer:
            for start in range(0, COUNT, 64):
                writer.append(images[start : start + 64], labels[start : start + 64])
    expected = str(root / "expected.npz")
    np.savez(expected, images=images, labels=labels)
    return paths, expected


_START = []


def _set_start(barrier):
    """Pool initializer: the barrier every reader waits at, so that all of them read at once."""
    _START[:] = [barrier]


def _pool(method, processes):
    barrier = multiprocessing.get_context(method).Barrier(processes)
    return multiprocessing.get_context(method).Pool(processes, initializer=_set_start, initargs=(barrier,))


def hammer(store, expected_path, seconds, seed):
    """Read ``store`` at random for ``seconds``; returns (pid, start, end, images checked, mismatches)."""
    if _START:
        # Spawned processes start one by one, slowly on a loaded machine: wait for all of them.
        _START[0].wait(timeout=120)
    data = np.load(expected_path)
    images, labels = data["images"], data["labels"]
    rng = np.random.default_rng(seed)
    n = len(labels)
    checked, wrong = 0, []
    started = time.time()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        kind = int(rng.integers(3))
        if kind == 0:
            i = int(rng.integers(-n, n))
            image, label = store[i]
            got = [(i % n, image, label)]
        elif kind == 1:
            indices = rng.integers(0, n, int(rng.integers(1, 65)))
            batch, batch_labels = store.read_batch(indices)
            got = list(zip(indices.tolist(), batch, batch_labels))
        else:
            start = int(rng.integers(n))
            stop = min(n, start + int(rng.integers(1, 120)))
            size = int(rng.integers(1, 40))
            got = []
            for first, (batch, batch_labels) in zip(range(start, stop, size), store.batches(size, start, stop)):
                got.extend(zip(range(first, first + len(batch_labels)), batch, batch_labels))
        for i, image, label in got:
            checked += 1
            if not (np.array_equal(image, images[i]) and int(label) == int(labels[i])):
                wrong.append(i)
    return os.getpid(), started, time.time(), checked, wrong[:10]


_INHERITED = {}


def hammer_inherited(name, expected_path, seconds, seed):
    """:func:`hammer` on a store the parent opened before forking (never pickled)."""
    return hammer(_INHERITED[name], expected_path, seconds, seed)


def _check(results, processes):
    pids = {pid for pid, *_ in results}
    assert len(pids) == processes and os.getpid() not in pids
    # They really read at the same time: every one started before any finished.
    assert max(start for _, start, *_ in results) < min(end for _, _, end, *_ in results)
    for pid, _, _, checked, wrong in results:
        assert checked > 0 and wrong == [], (pid, checked, wrong)
    return sum(checked for *_, checked, _ in results)


def _run_forked(paths, expected, formats, processes, seconds):
    stores = {fmt: imgconv.open(paths[fmt]) for fmt in formats}
    try:
        for store in stores.values():
            store.read_batch([0, COUNT - 1])  # handles open and in use in the parent
        _INHERITED.update(stores)
        jobs = [(formats[k % len(formats)], expected, seconds, k) for k in range(processes)]
        with _pool("fork", processes) as pool:
            results = pool.starmap(hammer_inherited, jobs, chunksize=1)
        total = _check(results, processes)
        for store in stores.values():  # the parent's handles still work afterwards
            image, label = store[5]
            data = np.load(expected)
            assert np.array_equal(image, data["images"][5]) and label == data["labels"][5]
        return total
    finally:
        _INHERITED.clear()
        for store in stores.values():
            store.close()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_forked_readers_of_a_store_opened_before_fork(written, fmt):
    paths, expected = written
    assert _run_forked(paths, expected, [fmt], processes=4, seconds=1.5) > 100


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_spawned_readers_get_the_store_as_path_and_options(written, fmt):
    paths, expected = written
    store = imgconv.open(paths[fmt], verify=True)
    store.read_batch([1, 2])
    state = pickle.dumps(store)
    assert len(state) < 1024 and paths[fmt].encode() in state  # no handles, no data
    with _pool("spawn", 4) as pool:
        results = pool.starmap(hammer, [(store, expected, 1.0, 100 + k) for k in range(4)], chunksize=1)
    assert _check(results, 4) > 50
    store.close()


@pytest.mark.slow
def test_eight_readers_for_twenty_seconds_over_all_stores(written):
    paths, expected = written
    total = _run_forked(paths, expected, sorted(FORMATS), processes=8, seconds=20)
    print(f"{total} images read and checked by 8 processes in 20 s")
