"""For the standard ``torch.utils.data.DataLoader``: a map-style Dataset, a sampler, a collate function.

::

    dataset = Dataset(store, transform=train_transform)
    sampler = BatchSampler(dataset, batch_size=256, seed=0)      # ranks from torch.distributed
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                        num_workers=2, persistent_workers=True)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for images, labels in loader:
            ...

The DataLoader asks the dataset for a whole batch at once
(``__getitems__``, one ``read_batch``), and :func:`collate` turns it into
two tensors without copying. The DataLoader gives each batch of the sampler
to one of its workers in turn and yields them in the sampler's order, so a
rank's batches are split across its workers with nothing left out or read
twice. The sampler follows the rules of :mod:`imgconv.epochs`.
"""
from __future__ import annotations

import collections.abc
import os
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import Sampler
from torch.utils.data._utils.collate import default_collate

from .. import stores
from ..epochs import EpochPlan, EpochState, batch_generator
from ..prefetch import BatchReader
from .ranks import resolve_ranks


class BatchIndices(list):
    """The indices of one batch from :class:`BatchSampler`, with where the batch stands:
    ``seed``, ``epoch`` and ``position`` (its start in the epoch's order), which seed its
    random augmentation in the worker that reads it."""

    def __init__(self, indices: List[int], seed: int, epoch: int, position: int) -> None:
        super().__init__(indices)
        self.seed, self.epoch, self.position = seed, epoch, position

    def __reduce__(self):
        return (BatchIndices, (list(self), self.seed, self.epoch, self.position))


class SampleBatch(collections.abc.Sequence):
    """A batch as :meth:`Dataset.__getitems__` returns it: ``images`` and ``labels`` arrays.

    :func:`collate` turns it into two tensors without a copy. It is also a
    sequence of ``(image, label)`` samples, so the DataLoader's default
    collate works too (one copy per image, slower).
    """

    def __init__(self, images: Any, labels: np.ndarray) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        return self.images[k], int(self.labels[k])


def collate(batch: Any) -> Any:
    """``collate_fn`` for the DataLoader: a :class:`SampleBatch` becomes ``(images, labels)`` tensors, no copy.

    Anything else goes to torch's ``default_collate``.
    """
    if isinstance(batch, SampleBatch):
        images = batch.images if isinstance(batch.images, torch.Tensor) else torch.from_numpy(batch.images)
        return images, torch.from_numpy(batch.labels)
    return default_collate(batch)


class Dataset(TorchDataset):
    """A store as a map-style dataset: ``dataset[i]`` is ``(image, label)``, a batch is read at once.

    ``store`` is an open store (anything with ``len``, ``store[i]`` and
    ``read_batch``) or a path to open. ``dataset[i]`` returns the (H, W, C)
    uint8 tensor and the int label; ``__getitems__(indices)``, which the
    DataLoader calls for a whole batch, reads it with one ``read_batch`` and
    applies ``transform`` (see :class:`~imgconv.torch.Loader` for what a
    transform may be). An :class:`imgconv.augment.CropFlipNormalize` is
    seeded from the batch's place in the epoch when :class:`BatchSampler`
    made the batch (reproducible whatever the workers), else from torch's
    random generator (which the DataLoader seeds in each worker).

    The store pickles as its path, so the dataset works in DataLoader workers
    started by fork or spawn.
    """

    def __init__(self, store: Any, transform: Optional[Callable] = None) -> None:
        self.store = stores.open(store) if isinstance(store, (str, os.PathLike)) else store
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform).__name__}")
        self.transform = transform
        self._reader = BatchReader(self.store, None, transform)

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        image, label = self.store[index]
        return torch.from_numpy(image), label

    def __getitems__(self, indices: List[int]) -> SampleBatch:
        if isinstance(indices, BatchIndices):
            def rng():
                return batch_generator(indices.seed, indices.epoch, indices.position)
        else:
            def rng():
                return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        images, labels = self._reader.read_indices(np.asarray(indices, dtype=np.int64), rng)
        return SampleBatch(images, labels)


class BatchSampler(Sampler):
    """Batches of indices for a DataLoader: shuffled per epoch, split evenly across ranks, resumable.

    ``data`` is the dataset (or its length). ``batch_size``, ``shuffle``,
    ``seed``, ``drop_last``, ``pad``, ``rank`` and ``world_size`` mean what
    they mean for :class:`~imgconv.torch.Loader` (ranks default to
    ``torch.distributed``'s). Give it to the DataLoader as
    ``batch_sampler=``. Each complete pass moves to the next epoch;
    ``set_epoch(e)`` chooses one.

    The DataLoader reads ahead of the loop, so the sampler cannot know how
    many batches the loop has received: :meth:`state_dict` takes that
    number.
    """

    def __init__(self, data: Any, batch_size: int, *, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 pad: bool = True, rank: Optional[int] = None, world_size: Optional[int] = None) -> None:
        self._data = data
        self._options: Dict[str, Any] = dict(batch_size=batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                                             pad=pad)
        self._rank, self._world_size = rank, world_size
        self.plan()  # checks the arguments now
        self._epoch = 0
        self._resume_at = 0  # where the next pass of _epoch starts (load_state_dict)
        self._pass: Optional[Tuple[int, int]] = None  # (epoch, start) of the pass under way or last made
        self._pass_complete = False

    def _length(self) -> int:
        return int(self._data) if isinstance(self._data, (int, np.integer)) else len(self._data)

    def plan(self) -> EpochPlan:
        """The :class:`~imgconv.epochs.EpochPlan` of this rank (ranks resolved now)."""
        rank, world_size = resolve_ranks(self._rank, self._world_size)
        return EpochPlan(self._length(), rank=rank, world_size=world_size, **self._options)

    @property
    def epoch(self) -> int:
        """The epoch of the next pass."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass ``epoch``, from its start or from the point ``load_state_dict`` restored in it."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be an integer >= 0, got {epoch!r}")
        if epoch != self._epoch:
            self._resume_at = 0
        self._epoch = int(epoch)
        self._pass = None

    def __len__(self) -> int:
        return self.plan().num_batches()

    def __iter__(self) -> Iterator[BatchIndices]:
        plan = self.plan()
        if self._pass is not None and self._pass_complete:
            # The last pass went through: this one is the next epoch (set_epoch clears _pass).
            self._epoch, self._resume_at = self._pass[0] + 1, 0
        epoch, start = self._epoch, self._resume_at
        self._resume_at = 0  # a restored place serves the next pass only
        self._pass, self._pass_complete = (epoch, start), False
        return self._batches(plan, epoch, start)

    def _batches(self, plan, epoch, start):
        for batch in plan.batches(epoch, start):
            yield BatchIndices(batch.indices.tolist(), plan.seed, epoch, batch.position)
        if self._pass == (epoch, start):
            self._pass_complete = True

    def state_dict(self, batches_done: int) -> dict:
        """The place of a loop that has received ``batches_done`` batches of the current pass.

        Raises ValueError when the pass has fewer batches.
        """
        plan = self.plan()
        if isinstance(batches_done, bool) or not isinstance(batches_done, (int, np.integer)) or batches_done < 0:
            raise ValueError(f"batches_done must be the number of batches received (>= 0), got {batches_done!r}")
        epoch, start = self._pass if self._pass is not None else (self._epoch, self._resume_at)
        if batches_done > plan.num_batches(start):
            raise ValueError(f"batches_done={batches_done} but this pass has {plan.num_batches(start)} batches")
        epoch, samples_done = plan.position_after(epoch, start, int(batches_done))
        return EpochState.as_dict(plan, epoch, samples_done, samples_done // plan.step_size)

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (from :meth:`state_dict`) at the next pass; see ``Loader.load_state_dict``."""
        epoch, samples_done, seed = EpochState.from_dict(state, self.plan())
        self._options["seed"] = seed
        self._epoch, self._resume_at, self._pass = epoch, samples_done, None
