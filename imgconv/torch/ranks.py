"""Which process of a distributed job this is, and whether pinned memory can be had."""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import torch


def resolve_ranks(rank: Optional[int], world_size: Optional[int]) -> Tuple[int, int]:
    """``(rank, world_size)``: as given, else from ``torch.distributed`` when initialised, else ``(0, 1)``.

    Raises ValueError when only one of the two is given.
    """
    if rank is None and world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1
    if rank is None or world_size is None:
        raise ValueError(f"give both rank and world_size, or neither (got rank={rank}, world_size={world_size})")
    return rank, world_size


def accelerator_available() -> bool:
    """Whether a device that pinned memory serves (CUDA, or another accelerator torch knows) is present."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None:
        return bool(accelerator.is_available())
    return bool(torch.cuda.is_available())


def pinning(pin_memory: bool, stacklevel: int = 3) -> bool:
    """Whether to pin batches: ``pin_memory`` when an accelerator is present; else False, with a warning."""
    if not pin_memory:
        return False
    if accelerator_available():
        return True
    warnings.warn("pin_memory=True but no accelerator (CUDA) is present: batches are not pinned "
                  "(pinned memory only speeds up copies to a device)", UserWarning, stacklevel=stacklevel)
    return False
