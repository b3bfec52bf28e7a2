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

Those counts also bound what a batch file can be (:meth:`Layout.max_bytes`),
so that a file or archive member is never read whole without its size being
checked first: a binary batch holds at most its official count of records,
exactly; a python batch pickles, per image, its 3,072 pixel bytes, its
label(s) and a file name, a few tens of bytes with the pickle's opcodes
(the sample's ``data_batch_1``, laid out as the official one, is 30,989,681
bytes: 27 bytes an image besides the pixels), allowed here 1 KiB each, plus
1 MiB for everything else; a label-name file is allowed 1 MiB (the sample's
``batches.meta`` is 158 bytes).
"""
from __future__ import annotations

from typing import NamedTuple

from ..base import SizeLimit

HEIGHT, WIDTH, CHANNELS = 32, 32, 3
ROW_BYTES = HEIGHT * WIDTH * CHANNELS
COARSE_CLASSES = 20
LABEL_KINDS = ("fine", "coarse")

PICKLED_BYTES_PER_IMAGE = ROW_BYTES + 1024
PICKLED_BYTES_FIXED = 1 << 20
LABEL_NAMES_BYTES = 1 << 20


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

    @property
    def record_bytes(self) -> int:
        """The bytes of one record of a binary batch: its label bytes and its pixels."""
        return self.label_bytes + ROW_BYTES

    def max_bytes(self, name: str) -> SizeLimit:
        """The most bytes file ``name`` of this layout (a batch or a label-name file) can hold; see the docstring."""
        images = self.official_counts().get(name)
        if images is None:
            return SizeLimit(LABEL_NAMES_BYTES, f"a {self.name} label-name file")
        what = f"a {self.name} batch of at most {images:,} images"
        if self.kind == "binary":
            return SizeLimit(images * self.record_bytes, what)
        return SizeLimit(images * PICKLED_BYTES_PER_IMAGE + PICKLED_BYTES_FIXED, what)

    def size_limits(self) -> dict[str, SizeLimit]:
        """:meth:`max_bytes` of every file of the layout, by name."""
        return {name: self.max_bytes(name) for name in self.train + self.test + self.meta}

    def in_folder(self, names: set[str], folder: str) -> bool:
        """True when a folder called ``folder`` holding the files ``names`` holds batches of this layout.

        Any of its batch files will do, but CIFAR-100's python batches are
        called "train" and "test", common names: their folder must hold its
        meta file too, or have the official name.
        """
        if not names.intersection(self.train + self.test):
            return False
        if self.kind == "python" and self.cifar100:
            return self.meta[0] in names or folder == self.dirname
        return True


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
# Every file name any layout has: the files that make a folder a CIFAR batch folder.
FILE_NAMES = frozenset(name for layout in LAYOUTS for name in layout.train + layout.test + layout.meta)


def layout_of(names: set[str], folder: str) -> Layout | None:
    """The layout whose batches a folder called ``folder`` holding the files ``names`` holds, or None.

    The first of :data:`LAYOUTS` that fits (:meth:`Layout.in_folder`).
    """
    return next((layout for layout in LAYOUTS if layout.in_folder(names, folder)), None)
