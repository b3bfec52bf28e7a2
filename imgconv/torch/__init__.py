"""Training with PyTorch: shuffled batches from any imgconv store, across processes, resumable.

Needs the optional extra: ``pip install "imgconv[torch]"``. ``import imgconv``
never imports torch; this package does.

- :class:`Loader`: an iterable of ``(images, labels)`` tensors, shuffled per
  epoch, split evenly across the ranks of a distributed job, prefetched in
  background threads (or worker processes for PNG folders, whose decoding is
  heavy), with an optional batch ``transform`` and ``state_dict()`` /
  ``load_state_dict()`` to resume in the middle of an epoch.
- For the standard ``torch.utils.data.DataLoader``: the map-style
  :class:`Dataset` (batched reads through ``__getitems__``), the
  :class:`BatchSampler` with the same shuffling, split and resume rules,
  and :func:`collate` that hands the batch over without copying it.

The shuffling and split arithmetic is :mod:`imgconv.epochs` (no torch
needed); the compiled batch augmentation is :mod:`imgconv.augment`.
"""
try:
    import torch as _torch  # noqa: F401 - fails here, with the hint below, when torch is missing
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        f'imgconv.torch needs PyTorch, which cannot be imported ({exc}); install it with: pip install "imgconv[torch]"'
    ) from exc

from .dataset import BatchSampler, Dataset, collate
from .loader import Loader

__all__ = ["BatchSampler", "Dataset", "Loader", "collate"]
