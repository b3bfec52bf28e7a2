"""CIFAR-10 and CIFAR-100 in their official layouts, python and binary.

Four layouts (:mod:`.layouts`), each readable from its extracted directory,
from the directory holding that one, or straight from the official
``.tar.gz`` (or any tar archive ``tarfile`` opens) without extracting it
(:mod:`.detect`, with the containers of :mod:`imgconv.sources.archive`).
The batch files are parsed by :mod:`.parse`, with no pickle for binary
batches and the restricted unpickler of
:mod:`imgconv.sources.safe_pickle` for python ones; :class:`CifarSource`
(:mod:`.source`) reads them by index range, by scattered indices, or as one
stream of an archive. Rows become (32, 32, 3) images through
:func:`imgconv.kernels.chw_to_hwc_into`.

Images are numbered in the official order: the training batches in order,
then the test batch (``split="all"``).
"""
from ..base import SPLITS
from .detect import detect, is_cifar
from .layouts import LABEL_KINDS, LAYOUTS, Layout
from .source import LABEL_KIND, CifarSource

__all__ = ["LABEL_KIND", "LABEL_KINDS", "LAYOUTS", "SPLITS", "CifarSource", "Layout", "detect", "is_cifar"]
