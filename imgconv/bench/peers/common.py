"""What the peers' adapters share: their registration defaults, import probes, versions, the images'
memory map, gathering samples into one array, and item-by-item readers.

Nothing here imports a peer: each adapter imports its library inside its
functions, so that registering the peers costs nothing and ``imgconv --help``
never needs them.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import tempfile
import zipfile
from importlib import metadata
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..internals import npz_member_ref, remove_path
from ..methods import BenchCheckError

GROUP = "peers"  # the opt-in group: --peers, or --methods peers
BASELINE = "lmdb"  # each peer is timed side by side with imgconv's LMDB store, its ratio against it
INSTALL = 'pip install "imgconv[peers]"'

ImagesAndLabels = Tuple[np.ndarray, np.ndarray]


def versions_of(*distributions: str) -> Callable[[], Dict[str, Optional[str]]]:
    """A ``Method.versions``: the installed version of each distribution (None: not installed), without importing."""

    def versions() -> Dict[str, Optional[str]]:
        found: Dict[str, Optional[str]] = {}
        for name in distributions:
            try:
                found[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                found[name] = None
        return found

    return versions


def import_probe(distribution: str, *modules: str) -> Callable[[], Optional[str]]:
    """A ``Method.probe``: imports ``modules``; a failure is the reason to skip (a broken install, a torch mismatch)."""

    def probe() -> Optional[str]:
        for module in modules:
            try:
                importlib.import_module(module)
            except Exception as exc:  # a broken install fails in many ways (torchvision built for another torch)
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                return f"{distribution} is installed but `import {module}` fails: {type(exc).__name__}: {first}"
        return None

    return probe


def map_npz(path: str, count: int) -> ImagesAndLabels:
    """``(images, labels)``: the first ``count`` of the harness's stored ``.npz`` at ``path``, memory-mapped read-only.

    A writer given these reads the images from the page cache as it goes, as
    ``imgconv.convert`` reads the same file: none of the images count as its
    own memory.
    """
    arrays = []
    with zipfile.ZipFile(path) as archive:
        for member in ("images.npy", "labels.npy"):
            ref = npz_member_ref(path, archive, member)
            if not ref.stored or ref.fortran:
                raise ValueError(f"{path}: {member} is compressed or in Fortran order; the harness saves it stored")
            arrays.append(np.memmap(path, dtype=ref.dtype, mode="r", offset=ref.offset, shape=ref.shape))
    images, labels = arrays
    return images[:count], labels[:count]


@contextlib.contextmanager
def private_tempdir(beside: str) -> Iterator[str]:
    """Point this process's temporary directory (and ``TMPDIR`` for its children) at a new directory beside
    ``beside`` for the block; remove that directory after it.

    For a library that keeps working files in the system temp dir (LitData's
    ``optimize``): they go with the store's scratch instead of staying in the
    user's ``/tmp``.
    """
    scratch = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(os.path.abspath(beside)))
    saved_env, saved_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = scratch, scratch
    try:
        yield scratch
    finally:
        tempfile.tempdir = saved_tempdir
        if saved_env is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = saved_env
        remove_path(scratch)


def _hwc(image: Any) -> np.ndarray:
    """An image as (H, W, C): a one-channel image may arrive as (H, W) (a PIL "L" image)."""
    array = np.asarray(image)
    return array[:, :, np.newaxis] if array.ndim == 2 else array


class Collector:
    """Gathers samples that arrive in any order into one array, by the index each carries.

    ``add(index, image, label)`` places a sample; ``result()`` returns
    ``(images, labels)`` once every index from 0 to ``count - 1`` arrived
    exactly once. A sample out of range, twice or missing is wrong data:
    :class:`~imgconv.bench.methods.BenchCheckError` naming ``what``.
    """

    def __init__(self, count: int, what: str):
        self.count = count
        self.what = what
        self.images: Optional[np.ndarray] = None
        self.labels = np.empty(count, np.int64)
        self.seen = np.zeros(count, bool)

    def add(self, index: int, image: Any, label: Any) -> None:
        """Place one sample at ``index``."""
        if not 0 <= index < self.count or self.seen[index]:
            where = "out of range" if not 0 <= index < self.count else "twice"
            raise BenchCheckError(f"{self.what}: sample {index} {where} ({self.count:,} written): the run fails")
        array = _hwc(image)
        if self.images is None:
            self.images = np.empty((self.count, *array.shape), array.dtype)
        self.images[index] = array
        self.labels[index] = label
        self.seen[index] = True

    def result(self) -> ImagesAndLabels:
        """``(images, labels)``; raises BenchCheckError unless every index arrived."""
        missing = self.count - int(self.seen.sum())
        if missing:
            raise BenchCheckError(f"{self.what}: {missing:,} of {self.count:,} samples missing: the run fails")
        if self.images is None:
            return np.empty((0, 0, 0, 0), np.uint8), self.labels
        return self.images, self.labels


class ItemReader:
    """A dataset opened for random reads item by item: ``dataset[i]`` is a mapping holding an image and a label.

    The :class:`~imgconv.bench.methods.Reader` of LitData's and MosaicML
    streaming's ``StreamingDataset``: both document ``dataset[i]`` as their
    random access.
    """

    def __init__(self, dataset: Any, image_key: str, label_key: str):
        self.dataset = dataset
        self._keys = image_key, label_key

    def _item(self, index: int) -> Tuple[np.ndarray, int]:
        item: Mapping[str, Any] = self.dataset[int(index)]
        image_key, label_key = self._keys
        return _hwc(item[image_key]), int(item[label_key])

    def read_one(self, index: int) -> Tuple[np.ndarray, int]:
        """``(image, label)`` of item ``index``."""
        return self._item(index)

    def read_batch(self, indices: Sequence[int]) -> ImagesAndLabels:
        """``(images, labels)`` of ``indices`` in their order: one ``dataset[i]`` each, gathered into one array."""
        pairs = [self._item(index) for index in indices]
        if not pairs:
            return np.empty((0, 0, 0, 0), np.uint8), np.empty(0, np.int64)
        return np.stack([image for image, _ in pairs]), np.array([label for _, label in pairs], np.int64)

    def close(self) -> None:
        """Drop the dataset (the libraries release what it holds when it is collected)."""
        self.dataset = None
