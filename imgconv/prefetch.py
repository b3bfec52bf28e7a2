"""Reading batches ahead in order, with bounded memory, in threads or worker processes; no torch needed.

:class:`Prefetcher` runs ``produce(item)`` for the next items of an iterator
in a pool of threads, at most ``depth`` ahead of the consumer, and hands the
results back in the order of the items. Reading a batch (the compiled gather,
``preadv``) releases the GIL, so a background thread reads the next batches
while the training step runs. Memory is bounded: ``depth`` batches in flight
plus those the consumer holds.

:class:`BufferPool` keeps the arrays batches are read into. An array goes
back to the pool when it was used, and is given out again only when no
other object refers to it any more (its reference count says so): a batch
the caller still holds, a tensor made from it with ``torch.from_numpy``, a
view of either, is never overwritten; a dropped one is reused without the
cost of faulting in fresh pages.

:class:`BatchReader` reads one planned batch: ``store.read_batch`` into a
pooled buffer, then the transform. It runs in the loader's threads, or in
worker processes (see :func:`worker_start`), where it arrives pickled: it
imports nothing heavy, so a spawned worker starts in a fraction of a second.
"""
from __future__ import annotations

import collections
import os
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from .epochs import PlannedBatch, batch_generator
from .errors import LoaderError


def _baseline_references() -> int:
    """``sys.getrefcount(pool[i])`` of an array referred to by a list slot only (interpreters differ)."""
    probe = [np.empty(1)]
    return sys.getrefcount(probe[0])


_FREE_REFERENCES = _baseline_references()


class BufferPool:
    """Arrays of one ``shape`` and ``dtype`` for batches, reused once unreferenced; at most ``keep`` kept.

    ``take()`` returns an array no one else refers to (a reused one, or a
    new one); ``give_back(array)`` returns an array the pool handed out once
    it has been used, whether or not the caller still holds it. Thread-safe.
    """

    def __init__(self, shape: Tuple[int, ...], dtype: Any, keep: int,
                 allocate: Optional[Callable[[Tuple[int, ...], Any], np.ndarray]] = None) -> None:
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.keep = max(1, int(keep))
        self._allocate = allocate or (lambda shape, dtype: np.empty(shape, dtype))
        self._used: List[np.ndarray] = []
        self._lock = threading.Lock()
        self.allocated = 0  # arrays made so far (for tests and measurements)

    def take(self) -> np.ndarray:
        """An array of the pool's shape that no other object refers to."""
        with self._lock:
            used = self._used
            for i in range(len(used)):
                if sys.getrefcount(used[i]) <= _FREE_REFERENCES:
                    return used.pop(i)
        self.allocated += 1
        return self._allocate(self.shape, self.dtype)

    def give_back(self, array: np.ndarray) -> None:
        """Keep ``array`` for reuse once nothing else refers to it (dropped when the pool is full)."""
        if array.shape != self.shape or array.dtype != self.dtype:
            return
        with self._lock:
            if len(self._used) < self.keep:
                self._used.append(array)
            else:
                # Full: forget the oldest, which a consumer most likely still holds.
                self._used.pop(0)
                self._used.append(array)


class Prefetcher:
    """``produce(item)`` for each item, run ahead in ``threads`` threads, results in item order.

    At most ``depth`` items are being produced or waiting to be taken. An
    exception raised by ``produce`` is raised by :meth:`__next__` at that
    item's turn. :meth:`close` (also on garbage collection) cancels what has
    not started and waits for what has, so nothing still runs once it
    returns (a store can then be closed safely).
    """

    def __init__(self, items: Iterable[Any], produce: Callable[[Any], Any], *, depth: int, threads: int,
                 name: str = "imgconv-prefetch") -> None:
        if depth < 1 or threads < 1:
            raise ValueError(f"depth and threads must be at least 1, got {depth} and {threads}")
        self._items: Iterator[Any] = iter(items)
        self._produce = produce
        self._depth = depth
        self._executor: Optional[ThreadPoolExecutor] = ThreadPoolExecutor(max_workers=min(threads, depth),
                                                                          thread_name_prefix=name)
        self._pending: Deque[Future] = collections.deque()
        self._fill()

    def _fill(self) -> None:
        while self._executor is not None and len(self._pending) < self._depth:
            try:
                item = next(self._items)
            except StopIteration:
                return
            self._pending.append(self._executor.submit(self._produce, item))

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> Any:
        if not self._pending:
            self.close()
            raise StopIteration
        future = self._pending.popleft()
        try:
            result = future.result()
        except BaseException:
            self.close()
            raise
        self._fill()
        return result

    def close(self) -> None:
        """Stop: cancel the items not started, wait for those running. Idempotent."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        executor.shutdown(wait=True)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass  # at interpreter exit the executor's modules may be gone


def takes_rng(transform: Any) -> bool:
    """Whether ``transform`` is called as ``transform(images, rng=generator)`` on NumPy arrays.

    True for a callable with a true ``takes_rng`` attribute, such as
    :class:`imgconv.augment.CropFlipNormalize` (which also gets ``out=``, a
    reused array); the generator is seeded from the batch's place in the
    epoch. Other callables get ``transform(images)`` with ``images`` a uint8
    (N, H, W, C) tensor.
    """
    return bool(getattr(transform, "takes_rng", False))


def _as_array(images: Any) -> np.ndarray:
    """A transform's result as a NumPy array (to cross a process boundary by value)."""
    if type(images).__module__.split(".")[0] == "torch":
        return images.detach().cpu().numpy()
    return np.asarray(images)


class BatchReader:
    """Reads the batches of a plan: ``store.read_batch`` into pooled buffers, then the transform.

    Used in the loader's threads and, pickled, in its worker processes (the
    store pickles as its path). ``read(seed, epoch, batch)`` returns
    ``(images, labels)`` as NumPy arrays (or what a torch transform returned).
    Batches of ``batch_size`` images are read into pooled buffers (at most
    ``keep`` kept); with ``batch_size=None`` every batch gets new arrays.
    """

    def __init__(self, store: Any, batch_size: Optional[int], transform: Optional[Callable], keep: int = 1) -> None:
        self.store = store
        self.batch_size = batch_size
        self.transform = transform
        self.keep = keep
        self._pools: Optional[Dict[str, BufferPool]] = None

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_pools"] = None
        return state

    def _pool(self, kind: str, shape: Tuple[int, ...], dtype: Any) -> BufferPool:
        if self._pools is None:
            self._pools = {}
        pool = self._pools.get(kind)
        if pool is None or pool.shape != tuple(shape) or pool.dtype != np.dtype(dtype):
            pool = self._pools[kind] = BufferPool(shape, dtype, self.keep)
        return pool

    def read(self, seed: int, epoch: int, batch: PlannedBatch) -> Tuple[Any, np.ndarray]:
        """``(images, labels)`` of ``batch`` of ``epoch``, transformed (randomly as ``seed`` says)."""
        return self.read_indices(batch.indices, lambda: batch_generator(seed, epoch, batch.position))

    def read_indices(self, indices: np.ndarray, rng: Callable[[], np.random.Generator]) -> Tuple[Any, np.ndarray]:
        """``(images, labels)`` of ``indices``, transformed; ``rng()`` makes the transform's generator."""
        images, labels = self._read(indices)
        transform = self.transform
        if transform is None:
            return images, labels
        if takes_rng(transform):
            augment: Any = transform  # a CropFlipNormalize, or a callable of the same kind
            out = None
            if images.shape[0] == self.batch_size and hasattr(augment, "output_size"):
                oh, ow = augment.output_size(images.shape[1], images.shape[2])
                pool = self._pool("out", (images.shape[0], images.shape[3], oh, ow), augment.dtype)
                out = pool.take()
                pool.give_back(out)
            if out is None:
                return transform(images, rng=rng()), labels
            return transform(images, rng=rng(), out=out), labels
        import torch  # only a transform written for torch tensors needs it

        return transform(torch.from_numpy(images)), labels

    def _read(self, indices: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        shape = getattr(self.store, "shape", None)
        out = None
        if indices.size == self.batch_size and isinstance(shape, (tuple, list)):
            pool = self._pool("images", (indices.size, *shape), np.uint8)
            out = pool.take()
            pool.give_back(out)  # reused once the batch made of it is dropped
        images, labels = self.store.read_batch(indices, out=out) if out is not None else \
            self.store.read_batch(indices)
        if isinstance(images, list):
            raise LoaderError(f"{getattr(self.store, 'path', self.store)}: the images vary in size and cannot "
                              "form a batch tensor; convert them to one size first (convert --resize WxH)")
        return images, labels


# Worker processes: the reader arrives once, by the initializer.
_WORKER_READER: Optional[BatchReader] = None


def worker_start(reader: BatchReader) -> None:
    """Initializer of a worker process: keep ``reader`` for :func:`worker_read`."""
    global _WORKER_READER
    _WORKER_READER = reader
    if "torch" in sys.modules:  # inherited by fork: one thread, a worker is one of several processes
        sys.modules["torch"].set_num_threads(1)


def worker_read(seed: int, epoch: int, batch: PlannedBatch) -> Tuple[np.ndarray, np.ndarray]:
    """In a worker process: ``(images, labels)`` of ``batch`` as NumPy arrays (they cross by pickle)."""
    if _WORKER_READER is None:
        raise LoaderError("worker_read called in a process that worker_start did not initialise")
    images, labels = _WORKER_READER.read(seed, epoch, batch)
    return _as_array(images), labels


def worker_ready() -> int:
    """In a worker process: its pid, once started."""
    return os.getpid()
