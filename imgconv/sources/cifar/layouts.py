"""The four official CIFAR layouts, written once: names, batch files, label files and image counts.

================  =====================  ==========================================
layout            directory              batches (train / test), label names
================  =====================  ==========================================
CIFAR-10 python   cifar-10-batches-py    data_batch_1..5 / test_batch, batches.meta
CIFAR-100 python  cifar-100-python       train / test, meta (fine and coarse)
CIFAR-10 binary   cifar-10-batches-bin   data_batch_1..5.bin / test_batch.bin,
                                         batches.meta.txt
CIFAR-100 binary  cifar-100-binary       train.bin / test.bin,
                                         fine_label_names.txt, coarse_label_names.txt
================  =====================  ==========================================

Each is distributed as ``<archive>``, a ``.tar.gz`` of its directory. The
official batches hold 10,000 images each for CIFAR-10 and 50,000 / 10,000
for CIFAR-100's train / test files: 50,000 training and 10,000 test images
either way. The reader (:mod:`imgconv.sources.cifar`) and the sample writer
(:mod:`imgconv.sample`) both take the names from here.
"""
from __future__ import annotations

from typing import NamedTuple

HEIGHT, WIDTH, CHANNELS = 32, 32, 3
ROW_BYTES = HEIGHT * WIDTH * CHANNELS
COARSE_CLASSES = 20
LABEL_KINDS = ("fine", "coarse")


class Layout(NamedTuple):
    """One official CIFAR layout.

    ``name`` says what it is ("CIFAR-10 python"); ``dirname`` and
    ``archive`` are the official directory and ``.tar.gz`` names; ``kind`` is
    "python" or "binary"; ``classes`` the number of (fine) classes;
    ``train``/``test`` the batch file names; ``meta`` the label-name file(s);
    ``label_bytes`` the label bytes before each binary record (0 for python
    batches); ``counts`` the images of each batch file of the official
    dataset, training files then test files.
    """

    name: str
    dirname: str
    archive: str
    kind: str
    classes: int
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: tuple[str, ...]
    label_bytes: int
    counts: tuple[int, ...]

    @property
    def cifar100(self) -> bool:
        """True for the CIFAR-100 layouts (fine and coarse labels)."""
        return self.classes == 100

    def batch_names(self, split: str) -> tuple[str, ...]:
        """The batch files of ``split`` ("train", "test" or "all": train then test), in image order."""
        return {"train": self.train, "test": self.test}.get(split, self.train + self.test)

    def official_counts(self) -> dict[str, int]:
        """The images each batch file holds in the official dataset, by file name."""
        return dict(zip(self.train + self.test, self.counts))

    def meta_name(self, label_kind: str) -> str:
        """The file holding the label names of ``label_kind``."""
        if self.kind == "binary" and self.cifar100:
            return f"{label_kind}_label_names.txt"
        return self.meta[0]


_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))

CIFAR10_PYTHON = Layout(
    "CIFAR-10 python", "cifar-10-batches-py", "cifar-10-python.tar.gz", "python", 10,
    _CIFAR10_TRAIN, ("test_batch",), ("batches.meta",), 0, (10000,) * 6,
)
CIFAR100_PYTHON = Layout(
    "CIFAR-100 python", "cifar-100-python", "cifar-100-python.tar.gz", "python", 100,
    ("train",), ("test",), ("meta",), 0, (50000, 10000),
)
CIFAR10_BINARY = Layout(
    "CIFAR-10 binary", "cifar-10-batches-bin", "cifar-10-binary.tar.gz", "binary", 10,
    tuple(f"{name}.bin" for name in _CIFAR10_TRAIN), ("test_batch.bin",), ("batches.meta.txt",), 1, (10000,) * 6,
)
CIFAR100_BINARY = Layout(
    "CIFAR-100 binary", "cifar-100-binary", "cifar-100-binary.tar.gz", "binary", 100,
    ("train.bin",), ("test.bin",), ("fine_label_names.txt", "coarse_label_names.txt"), 2, (50000, 10000),
)

LAYOUTS = (CIFAR10_PYTHON, CIFAR100_PYTHON, CIFAR10_BINARY, CIFAR100_BINARY)
