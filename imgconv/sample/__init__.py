"""A built-in sample dataset in the genuine CIFAR-10 file formats.

No dataset can be downloaded on every machine, yet imgconv should run at
once. :func:`write_sample` writes ``count`` synthetic 32x32 colour images
(60,000 by default, like CIFAR-10) in all four official forms::

    DIR/cifar-10-batches-py/     data_batch_1..5, test_batch, batches.meta, readme.html
    DIR/cifar-10-batches-bin/    data_batch_1..5.bin, test_batch.bin, batches.meta.txt, readme.html
    DIR/cifar-10-python.tar.gz   the first directory, archived
    DIR/cifar-10-binary.tar.gz   the second one

:func:`generate_sample` gives the same images in memory. The pictures
(:mod:`.images`) are made to look like photographs to a compressor; the
files (:mod:`.files`) are laid out like the official ones, down to their
Python-2 pickles. Everything is deterministic: the same ``seed`` gives the
same bytes, archives included, and image ``i`` does not depend on ``count``.
"""
from .files import (
    BINARY_ARCHIVE,
    BINARY_DIR,
    MAX_COUNT,
    MIN_COUNT,
    PYTHON_ARCHIVE,
    PYTHON_DIR,
    TRAIN_BATCHES,
    SampleFiles,
    dump_py2_pickle,
    write_sample,
)
from .images import CHANNELS, LABEL_NAMES, SIZE, generate_sample

__all__ = [
    "BINARY_ARCHIVE",
    "BINARY_DIR",
    "CHANNELS",
    "LABEL_NAMES",
    "MAX_COUNT",
    "MIN_COUNT",
    "PYTHON_ARCHIVE",
    "PYTHON_DIR",
    "SIZE",
    "TRAIN_BATCHES",
    "SampleFiles",
    "dump_py2_pickle",
    "generate_sample",
    "write_sample",
]
