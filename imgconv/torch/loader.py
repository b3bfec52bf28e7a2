"""``imgconv.torch.Loader``: shuffled batches of any store as tensors, read ahead, resumable.

How a batch is made: the :class:`~imgconv.epochs.EpochPlan` says which
indices; a background thread calls ``store.read_batch(indices, out=buffer)``
(LMDB and HDF5 gather in compiled code without the GIL, so the thread reads
while the training step runs), applies the ``transform``, wraps the arrays
with ``torch.from_numpy`` (no copy) and, with ``pin_memory``, copies them
into pinned memory. For stores whose reads are decoding (a PNG folder), the
reads and the transform run in worker processes instead, and the batch
crosses to the loader as one pickled array.

Memory: at most ``prefetch`` batches are read ahead; the arrays they are
read into are reused once no tensor, array or view of them is held any more
(see :class:`~imgconv.prefetch.BufferPool`), so a batch you keep
(a list of batches, a tensor still being copied) is never overwritten.

Resume: ``state_dict()`` counts the batches the loop has *received*;
batches read ahead but not yet handed out are not counted, so a job
restarted with ``load_state_dict(state)`` gets exactly the batches its
predecessor had not received.
"""
from __future__ import annotations

import multiprocessing
import os
import pickle
import weakref
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor
from typing import Any, Callable, Iterator, Optional, Tuple, Union

import numpy as np
import torch

from .. import stores
from ..epochs import EpochPlan, EpochState
from ..errors import LoaderError
from ..prefetch import BatchReader, Prefetcher, worker_read, worker_ready, worker_start
from ..stores import Reader
from .ranks import pinning, resolve_ranks

# Formats whose reads are decoding, worth worker processes (the others are copies).
DECODING_FORMATS = ("png",)
DEFAULT_PREFETCH = 4
MAX_AUTO_WORKERS = 4


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _whole(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class Loader:
    """Shuffled batches of a store as ``(images, labels)`` tensors, for a training loop.

    ``store`` is an open store (anything with ``len``, ``read_batch(indices,
    out=None)`` and ``shape``, such as ``imgconv.open(...)``) or a path to
    open. Each iteration is one epoch of this process's share:

    - ``batch_size`` images per batch; ``shuffle`` with ``seed`` (the same on
      every rank) draws a new order every epoch; ``drop_last`` drops the
      last, smaller batch.
    - ``rank`` and ``world_size`` (default: from ``torch.distributed`` when
      it is initialised, else 0 and 1) split every epoch so that every rank
      gets the same number of batches: ``pad=True`` repeats a few images to
      even the shares, ``pad=False`` leaves the last ``len % world_size``
      out. See :mod:`imgconv.epochs` for the exact rules.
    - ``transform``: None (uint8 NHWC batches), an
      :class:`imgconv.augment.CropFlipNormalize` (seeded per batch from
      ``seed``, the epoch and the batch's place, so runs are reproducible
      whatever the threads or workers), or any callable taking the uint8
      (N, H, W, C) tensor (one with a true ``takes_rng`` attribute gets the
      NumPy array and ``rng=``, the batch's seeded generator, instead).
    - ``prefetch`` batches are read ahead by ``threads`` background threads
      (more than one calls ``read_batch`` from several threads at once, which
      imgconv's stores allow; one was as fast or faster in the measurements,
      BENCHMARKS.md), or by ``workers`` processes (default: one per CPU, at
      most 4, for PNG folders, whose reads decode; none for LMDB and HDF5). The worker
      processes are started once and kept for every epoch; ``close()`` (or
      ``with Loader(...)``) stops them. ``multiprocessing_context`` picks how
      they start ("fork", "spawn", "forkserver"; default the platform's).
    - ``pin_memory`` puts each batch in pinned memory for faster copies to
      the GPU (a warning, and no pinning, when no accelerator is present).

    Batches are yours to keep: the loader never writes into an array a
    yielded batch, or anything made from it, still refers to.

    ``len(loader)`` is the number of batches of a whole epoch. Each complete
    iteration moves to the next epoch; ``set_epoch(e)`` chooses one.
    ``state_dict()`` and ``load_state_dict()`` save and restore the place in
    the epoch (see the module docstring).
    """

    def __init__(self, store: Any, batch_size: int = 256, *, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, pad: bool = True, rank: Optional[int] = None,
                 world_size: Optional[int] = None, transform: Optional[Callable] = None,
                 prefetch: int = DEFAULT_PREFETCH, threads: int = 1, workers: Optional[int] = None,
                 pin_memory: bool = False, multiprocessing_context: Union[None, str, Any] = None) -> None:
        self._owns_store = isinstance(store, (str, os.PathLike))
        self.store = stores.open(store) if self._owns_store else store
        if not hasattr(self.store, "read_batch") or not hasattr(self.store, "__len__"):
            raise TypeError(f"store must be an imgconv store or a path to one, got {type(store).__name__}")
        if getattr(self.store, "variable", False):
            raise LoaderError(f"{getattr(self.store, 'path', store)}: the images vary in size and cannot form a "
                              "batch tensor; convert them to one size first (convert --resize WxH)")
        self.batch_size = _whole("batch_size", batch_size, 1)
        self.prefetch = _whole("prefetch", prefetch, 1)
        self.threads = _whole("threads", threads, 1)
        self.workers = self._workers(workers)
        self.shuffle, self.drop_last, self.pad = bool(shuffle), bool(drop_last), bool(pad)
        self.seed = _whole("seed", seed, 0)
        self._rank, self._world_size = rank, world_size
        if (rank is None) != (world_size is None):
            resolve_ranks(rank, world_size)  # raises the error
        if rank is not None and world_size is not None:
            EpochPlan(0, 1, rank=rank, world_size=world_size)  # checks them now
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform).__name__}")
        self.transform = transform
        self.pin_memory = pinning(pin_memory)
        self._context = self._mp_context(multiprocessing_context)
        self._epoch = 0
        self._resume_at = 0  # samples_done at which the next iteration of _epoch starts
        self._progress: Optional[Tuple[int, int, int]] = None  # (epoch, start, batches received)
        self._live: Optional[weakref.ref] = None
        self._pool: Optional[ProcessPoolExecutor] = None
        self._pool_pid: Optional[int] = None

    # configuration ----------------------------------------------------------

    def _workers(self, workers):
        if workers is None:
            decoding = getattr(self.store, "format_name", None) in DECODING_FORMATS
            return min(_usable_cpus(), MAX_AUTO_WORKERS) if decoding else 0
        return _whole("workers", workers, 0)

    @staticmethod
    def _mp_context(context):
        if context is None or not isinstance(context, str):
            return context
        try:
            return multiprocessing.get_context(context)
        except ValueError:
            raise ValueError(f"multiprocessing_context must be one of {multiprocessing.get_all_start_methods()}, "
                             f"got {context!r}") from None

    def plan(self) -> EpochPlan:
        """The :class:`~imgconv.epochs.EpochPlan` of this rank (the ranks resolved now)."""
        rank, world_size = resolve_ranks(self._rank, self._world_size)
        return EpochPlan(len(self.store), self.batch_size, shuffle=self.shuffle, seed=self.seed, pad=self.pad,
                         drop_last=self.drop_last, rank=rank, world_size=world_size)

    @property
    def epoch(self) -> int:
        """The epoch the next iteration reads (advanced by each complete iteration)."""
        return self._epoch

    def __len__(self) -> int:
        return self.plan().num_batches()

    def __repr__(self) -> str:
        return (f"<Loader of {len(self.store):,} images in batches of {self.batch_size}, epoch {self._epoch}, "
                f"{'workers=' + str(self.workers) if self.workers else 'threads=' + str(self.threads)}>")

    # epochs and resume ------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Read ``epoch`` next, from its start, or from the point ``load_state_dict`` restored in it."""
        epoch = _whole("epoch", epoch, 0)
        self._stop_live()
        if epoch != self._epoch:
            self._resume_at = 0
        self._epoch = epoch
        self._progress = None

    def state_dict(self) -> dict:
        """Where the loop is: epoch, batches received, seed and the loader's settings (plain values).

        Saved with the model's checkpoint and given to :meth:`load_state_dict`
        after a restart, the loader yields exactly the batches of the epoch
        not yet received (read-ahead batches are not counted as received).
        """
        plan = self.plan()
        if self._progress is None:
            epoch, samples_done, received = self._epoch, self._resume_at, 0
        else:
            epoch, start, received = self._progress
            epoch, samples_done = plan.position_after(epoch, start, received)
        batches_done = 0 if samples_done == 0 else samples_done // plan.step_size
        return EpochState.as_dict(plan, epoch, samples_done, batches_done)

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (from :meth:`state_dict`): its epoch, seed and place in the epoch.

        The store must have the same number of images and ``shuffle`` the
        same setting; the batch size and the number of ranks may differ
        (the job goes on from the same place in the epoch's order). Raises
        ValueError naming what does not fit.
        """
        epoch, samples_done, seed = EpochState.from_dict(state, self.plan())
        self._stop_live()
        self.seed = seed
        self._epoch, self._resume_at, self._progress = epoch, samples_done, None

    # iteration --------------------------------------------------------------

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        self._stop_live()
        plan = self.plan()
        epoch, start = self._epoch, self._resume_at
        self._resume_at = 0  # a restored place serves the next iteration only
        self._progress = (epoch, start, 0)
        if self.workers:
            produce = self._from_workers()
            threads = self.workers
        else:
            produce = self._from_threads()
            threads = self.threads
        items = ((plan.seed, epoch, batch) for batch in plan.batches(epoch, start))
        depth = max(self.prefetch, threads)
        iterator = _EpochIterator(self, Prefetcher(items, produce, depth=depth, threads=threads), epoch)
        self._live = weakref.ref(iterator)
        return iterator

    def _reader(self):
        keep = self.prefetch + self.threads + 2
        return BatchReader(self.store, self.batch_size, self.transform, keep)

    def _from_threads(self):
        if isinstance(self.store, Reader):
            # Open this process's handles (after a fork: new ones) before two threads race to.
            self.store.read_batch(np.empty(0, np.int64))
        reader = self._reader()

        def produce(item):
            images, labels = reader.read(*item)
            return self._tensors(images, labels)

        return produce

    def _from_workers(self):
        pool = self._worker_pool()

        def produce(item):
            seed, epoch, batch = item
            try:
                images, labels = pool.submit(worker_read, seed, epoch, batch).result()
            except BrokenExecutor:
                self._pool = None
                raise LoaderError(f"a worker process of the loader died (killed, or out of memory) while reading "
                                  f"batch {batch.number} of epoch {epoch}") from None
            return self._tensors(images, labels)

        return produce

    def _worker_pool(self):
        if self._pool is not None and self._pool_pid == os.getpid():
            return self._pool
        self._close_pool()
        reader = self._reader()
        context = self._context or multiprocessing.get_context()
        if context.get_start_method() != "fork":
            try:
                pickle.dumps(reader)
            except Exception as exc:
                raise LoaderError(f"worker processes started by {context.get_start_method()!r} need a picklable "
                                  f"store and transform ({exc}); define the transform at module level, use "
                                  "multiprocessing_context='fork', or workers=0") from None
        pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=worker_start, initargs=(reader,))
        # Start every worker now, from this thread, before the prefetch threads exist.
        for future in [pool.submit(worker_ready) for _ in range(self.workers)]:
            future.result()
        self._pool, self._pool_pid = pool, os.getpid()
        return pool

    def _tensors(self, images, labels):
        images = images if isinstance(images, torch.Tensor) else torch.from_numpy(images)
        labels = torch.from_numpy(labels)
        if self.pin_memory:
            images, labels = images.pin_memory(), labels.pin_memory()
        return images, labels

    def _received(self, iterator: "_EpochIterator", count: int) -> None:
        if self._live is not None and self._live() is iterator and self._progress is not None:
            epoch, start, _ = self._progress
            self._progress = (epoch, start, count)

    def _finished(self, iterator, epoch):
        if self._live is not None and self._live() is iterator and self._epoch == epoch:
            self._epoch, self._resume_at, self._progress = epoch + 1, 0, None
            self._live = None

    def _stop_live(self):
        live = self._live() if self._live is not None else None
        self._live = None
        if live is not None:
            live.close()

    # life cycle -------------------------------------------------------------

    def _close_pool(self):
        pool, self._pool = self._pool, None
        if pool is not None and self._pool_pid == os.getpid():
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        """Stop reading ahead, stop the worker processes, close the store if the loader opened it."""
        self._stop_live()
        self._close_pool()
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> "Loader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self):
        try:
            self._stop_live()
            self._close_pool()
        except Exception:
            pass  # at interpreter exit the modules these need may be gone


class _EpochIterator:
    """One epoch of a :class:`Loader`: yields the prefetched batches and tells the loader each one received."""

    def __init__(self, loader: Loader, prefetcher: Prefetcher, epoch: int) -> None:
        self._loader = weakref.ref(loader)
        self._prefetcher = prefetcher
        self._epoch = epoch
        self._count = 0
        self._closed = False

    def __iter__(self) -> "_EpochIterator":
        return self

    def __next__(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if self._closed:
            raise StopIteration
        try:
            batch = next(self._prefetcher)
        except StopIteration:
            self._closed = True
            loader = self._loader()
            if loader is not None:
                loader._finished(self, self._epoch)
            raise
        self._count += 1
        loader = self._loader()
        if loader is not None:
            loader._received(self, self._count)
        return batch

    def close(self) -> None:
        """Stop this iteration (the next ``iter(loader)`` starts a new one)."""
        self._closed = True
        self._prefetcher.close()

    def __del__(self):
        try:
            self._prefetcher.close()
        except Exception:
            pass
