"""Which images each training process reads, in which batches, epoch after epoch: no torch needed.

An :class:`EpochPlan` turns a dataset length and a few choices into batches
of indices for one process (a *rank*) of a distributed job:

1. **The epoch's order.** ``shuffle=True`` gives a permutation of
   ``0 .. length - 1`` drawn from ``(seed, epoch)`` alone: the same on every
   rank, every machine and every NumPy version (the keys come from PCG64's
   raw output, whose stream NumPy keeps stable, and are sorted). A new epoch
   gives a new order. ``shuffle=False`` keeps the store's order.
2. **Equal shares.** The order is cut to a multiple of ``world_size`` so that
   every rank gets exactly as many images, hence as many batches, and no rank
   waits at the end of an epoch for a batch that never comes: ``pad=True``
   repeats images from the start of the order (every image is read at least
   once), ``pad=False`` drops the last ``length % world_size`` (none is read
   twice).
3. **Global steps.** Step ``g`` takes the next ``world_size * batch_size``
   positions of the order; rank ``r`` reads the ``r``-th run of
   ``batch_size`` of them. The last step, if shorter, is split evenly (every
   rank gets the same smaller batch) or dropped with ``drop_last=True``. So
   after ``k`` batches on each rank the job has read exactly the first
   ``k * world_size * batch_size`` positions of the order, whatever the
   ranks: a job can resume on another number of processes.
4. **Resume.** A position in an epoch is ``samples_done``, the number of
   positions of the order consumed by all ranks together; the plan of an
   epoch started there yields exactly the batches that were not yet read.

:func:`worker_share` splits one rank's batches among data-loading workers
(batch ``j`` to worker ``j % workers``, so that taking one batch from each
worker in turn restores the rank's order). :func:`batch_generator` seeds the
random augmentation of a batch from its place in the epoch, so augmentations
do not depend on the number of workers, threads or ranks. :class:`EpochState`
is the bookkeeping of ``state_dict``/``load_state_dict``.
"""
from __future__ import annotations

import itertools
import numbers
from typing import Any, Iterable, Iterator, NamedTuple, TypeVar

import numpy as np

__all__ = ["EpochPlan", "EpochState", "PlannedBatch", "batch_generator", "epoch_order", "worker_share"]

# Keys the SeedSequence of an order and of a batch's augmentation apart, so
# that the two streams never coincide for equal numbers.
_ORDER_STREAM = 0x0DE5
_AUGMENT_STREAM = 0xA46

STATE_VERSION = 1
T = TypeVar("T")


def _whole(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def epoch_order(length: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The order of the images in ``epoch``: a permutation of ``0 .. length - 1`` (int64).

    Drawn from ``(seed, epoch)`` only; ``shuffle=False`` gives ``arange(length)``.
    """
    length = _whole("length", length, 0)
    if not shuffle:
        return np.arange(length, dtype=np.int64)
    entropy = [_whole("seed", seed, 0), _whole("epoch", epoch, 0), _ORDER_STREAM]
    keys = np.random.PCG64(np.random.SeedSequence(entropy)).random_raw(length)
    # Equal keys (one chance in 2**64 per pair) are broken by position: stable.
    return np.argsort(keys, kind="stable").astype(np.int64, copy=False)


def batch_generator(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The random generator of the batch that starts at ``position`` of ``epoch``'s order.

    Every batch of an epoch starts at a different position (see
    :attr:`PlannedBatch.position`), so every batch gets its own stream, and
    the same one in every run, resumed or not, whatever the number of
    workers, threads or ranks that read it.
    """
    entropy = [_whole("seed", seed, 0), _whole("epoch", epoch, 0), _whole("position", position, 0), _AUGMENT_STREAM]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


class PlannedBatch(NamedTuple):
    """One batch of one rank: ``number`` counts this rank's batches from the start of the
    epoch, ``position`` is where the batch starts in the epoch's order (unique within the
    epoch, the key of its random augmentation), ``indices`` the images to read (int64)."""

    number: int
    position: int
    indices: np.ndarray


class EpochPlan:
    """The batches one rank reads, epoch by epoch (see the module docstring for the rules).

    ``length`` images, ``batch_size`` per batch; ``shuffle`` and ``seed``
    choose the order (every rank must pass the same seed); ``pad`` makes the
    shares equal by repeating images (True) or dropping some (False);
    ``drop_last`` drops the last, smaller batch of each rank; ``rank`` of
    ``world_size`` processes. Raises TypeError or ValueError for bad arguments.
    """

    def __init__(self, length: int, batch_size: int, *, shuffle: bool = True, seed: int = 0, pad: bool = True,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1) -> None:
        self.length = _whole("length", length, 0)
        self.batch_size = _whole("batch_size", batch_size, 1)
        self.seed = _whole("seed", seed, 0)
        self.world_size = _whole("world_size", world_size, 1)
        self.rank = _whole("rank", rank, 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be below world_size ({self.world_size}), got {self.rank}")
        self.shuffle = bool(shuffle)
        self.pad = bool(pad)
        self.drop_last = bool(drop_last)

    def __repr__(self) -> str:
        return (f"EpochPlan(length={self.length}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"seed={self.seed}, pad={self.pad}, drop_last={self.drop_last}, rank={self.rank}, "
                f"world_size={self.world_size})")

    @property
    def step_size(self) -> int:
        """Positions of the order one global step consumes: ``world_size * batch_size``."""
        return self.world_size * self.batch_size

    def _share(self, samples_done: int) -> int:
        """Positions of the order left from ``samples_done``, made a multiple of the world size."""
        left = max(0, self.length - samples_done)
        if self.pad:
            return -(-left // self.world_size) * self.world_size
        return left // self.world_size * self.world_size

    def _steps(self, samples_done: int) -> tuple[int, int]:
        """(full steps, images per rank in the last shorter step or 0) left from ``samples_done``."""
        share = self._share(samples_done)
        full, rest = divmod(share, self.step_size)
        tail = 0 if self.drop_last else rest // self.world_size
        return full, tail

    def num_batches(self, samples_done: int = 0) -> int:
        """Batches this rank (and every other) reads in an epoch started at ``samples_done``."""
        full, tail = self._steps(_whole("samples_done", samples_done, 0))
        return full + (1 if tail else 0)

    def num_samples(self, samples_done: int = 0) -> int:
        """Images this rank reads in an epoch started at ``samples_done`` (the same on every rank)."""
        full, tail = self._steps(_whole("samples_done", samples_done, 0))
        return full * self.batch_size + tail

    def position_after(self, epoch: int, samples_done: int, batches: int) -> tuple[int, int]:
        """``(epoch, samples_done)`` once every rank has read ``batches`` batches of an epoch started at
        ``samples_done``: the start of the next epoch once they are all read."""
        batches = _whole("batches", batches, 0)
        if batches >= self.num_batches(samples_done):
            return epoch + 1, 0
        return epoch, samples_done + batches * self.step_size  # every batch but the last is a full step

    def order(self, epoch: int) -> np.ndarray:
        """The whole order of ``epoch``, before it is cut into shares (see :func:`epoch_order`)."""
        return epoch_order(self.length, self.seed, epoch, self.shuffle)

    def batches(self, epoch: int, samples_done: int = 0) -> Iterator[PlannedBatch]:
        """This rank's batches of ``epoch``, in order, from the global position ``samples_done``.

        ``samples_done`` is 0 for a whole epoch, or a value saved by
        :class:`EpochState` to resume one: the batches yielded are exactly
        those not read before it. The order is computed once, here.
        """
        samples_done = _whole("samples_done", samples_done, 0)
        full, tail = self._steps(samples_done)
        if full == 0 and tail == 0:
            return iter(())
        order = self.order(epoch)
        share = self._share(samples_done)
        left = order[samples_done:]
        if share > left.size:  # pad: repeat the order from its start
            left = np.concatenate([left, np.resize(order, share - left.size)])
        first_number = samples_done // self.step_size
        return self._cut(left[:share], samples_done, full, tail, first_number)

    def _cut(self, left, samples_done, full, tail, first_number):
        step, size, rank = self.step_size, self.batch_size, self.rank
        for g in range(full):
            start = g * step + rank * size
            yield PlannedBatch(first_number + g, samples_done + start, left[start : start + size])
        if tail:
            start = full * step + rank * tail
            yield PlannedBatch(first_number + full, samples_done + start, left[start : start + tail])


def worker_share(batches: Iterable[T], worker: int, workers: int) -> Iterator[T]:
    """The batches of ``worker`` (0-based) of ``workers``: every ``workers``-th, starting at ``worker``.

    Taking one batch from each worker in turn (as torch's DataLoader does with
    the workers of an iterable dataset) gives back the original order.
    """
    workers = _whole("workers", workers, 1)
    worker = _whole("worker", worker, 0)
    if worker >= workers:
        raise ValueError(f"worker must be below workers ({workers}), got {worker}")
    return itertools.islice(batches, worker, None, workers)


class EpochState:
    """Where a rank is in its epochs: ``epoch`` and ``samples_done`` (global positions consumed).

    ``as_dict(plan, batches_done)`` is what ``state_dict()`` returns: plain
    ints, bools and strings (``torch.save`` and JSON both take it).
    ``from_dict(state, plan)`` checks a saved state against the plan it
    resumes and returns the ``(epoch, samples_done, seed)`` to start from:
    the saved seed is taken (a restarted job continues the saved order);
    the number of images and the shuffle must match (else the saved
    position names other images); the batch size and the number of ranks
    may change (the job goes on from the same global position).
    """

    KEYS = ("version", "epoch", "samples_done", "batches_done", "seed", "shuffle", "length", "batch_size",
            "world_size", "pad", "drop_last")

    @staticmethod
    def as_dict(plan: EpochPlan, epoch: int, samples_done: int, batches_done: int) -> dict:
        """The saved state of a rank at ``(epoch, samples_done)`` having read ``batches_done`` batches."""
        return {"version": STATE_VERSION, "epoch": int(epoch), "samples_done": int(samples_done),
                "batches_done": int(batches_done), "seed": plan.seed, "shuffle": plan.shuffle,
                "length": plan.length, "batch_size": plan.batch_size, "world_size": plan.world_size,
                "pad": plan.pad, "drop_last": plan.drop_last}

    @staticmethod
    def from_dict(state: Any, plan: EpochPlan) -> tuple[int, int, int]:
        """``(epoch, samples_done, seed)`` to resume from ``state``; ValueError naming what does not fit."""
        if not isinstance(state, dict):
            raise TypeError(f"a loader state is a dict from state_dict(), got {type(state).__name__}")
        missing = [key for key in ("version", "epoch", "samples_done", "seed", "shuffle", "length") if key not in state]
        if missing:
            raise ValueError(f"not a loader state from state_dict(): no {', '.join(missing)}")
        if state["version"] != STATE_VERSION:
            raise ValueError(f"loader state version {state['version']!r} is not known here (this imgconv writes "
                             f"{STATE_VERSION})")
        if state["length"] != plan.length:
            raise ValueError(f"the state was saved for {state['length']} images, this dataset has {plan.length}: "
                             "its position would name other images")
        if bool(state["shuffle"]) != plan.shuffle:
            raise ValueError(f"the state was saved with shuffle={bool(state['shuffle'])}, the loader has "
                             f"shuffle={plan.shuffle}")
        epoch = _whole("epoch of the state", state["epoch"], 0)
        samples_done = _whole("samples_done of the state", state["samples_done"], 0)
        seed = _whole("seed of the state", state["seed"], 0)
        return epoch, samples_done, seed
