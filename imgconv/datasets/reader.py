"""Reading a sharded dataset as one store: the Reader interface over every shard, in order.

Image ``i`` of the dataset is image ``i - start(k)`` of the shard ``k`` whose
range holds it (``start`` is the running sum of the shard counts the manifest
gives). Shards open lazily, each on its first read, and are checked against
the manifest then (metadata checksum, count, shape): a dataset of a
thousand shards opens in the time it takes to read one JSON file. Each shard
is an ordinary store reader, which reopens its own handles in a forked child,
so a dataset opened before ``fork`` works in DataLoader-style workers; a
dataset pickles as its path and options (spawned workers).
"""
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .. import _platform
from ..errors import StoreError
from ..stores.batch import VARIABLE
from ..stores.metadata import METADATA_CHECKSUM, Metadata
from ..stores.reader import Reader, ReadResult
from .manifest import MANIFEST, ShardEntry, read_manifest


class DatasetReader(Reader):
    """A sharded dataset read as one store (see the module docstring).

    The same interface as every store reader: ``len``, ``store[i]``,
    ``read_batch(indices, out=)`` (indices in any order and across shard
    boundaries: each shard is read once per call, results come back in the
    order asked), ``batches``, ``read_all``, ``labels``, ``shapes``,
    ``metadata`` (the manifest), ``label_names``, ``shape``. ``options`` go to
    each shard's reader (``verify``, ``readahead``, ``cache_bytes``).
    ``format_name`` is the shards' format. Also: ``shards`` (the manifest's
    :class:`~imgconv.datasets.manifest.ShardEntry` list), ``bounds`` (the
    first image of each shard, and the count at the end) and
    :meth:`open_shard`. Raises StoreError for a manifest that is missing,
    damaged or newer than this imgconv, and, when a shard is first read,
    for a shard that is missing or does not match the manifest.
    """

    def __init__(self, path: Any, **options: Any) -> None:
        self._manifest: Optional[Metadata] = None
        self._readers: List[Optional[Reader]] = []
        self._lock = _platform.ForkSafeLock()
        super().__init__(path, **options)

    # what the dataset adds to the interface ------------------------------------

    @property
    def shards(self) -> List[ShardEntry]:
        """The shards, in order, as the manifest lists them."""
        return list(self.metadata["shards"])

    @property
    def bounds(self) -> np.ndarray:
        """An (K + 1,) int64 array: shard ``k`` holds images ``bounds[k] .. bounds[k + 1] - 1``."""
        return self._bounds.copy()

    def shard_path(self, k: int) -> str:
        """The path of shard ``k``."""
        return os.path.join(self.path, self.metadata["shards"][k].path)

    def open_shard(self, k: int) -> Reader:
        """The reader of shard ``k`` (opened on first use and checked against the manifest)."""
        reader = self._readers[k]
        if reader is None:
            with self._lock:
                reader = self._readers[k]
                if reader is None:
                    reader = self._readers[k] = self._open_checked(k)
        return reader

    # the Reader contract ------------------------------------------------------

    def _open_handles(self) -> Metadata:
        if self._manifest is None:
            manifest = read_manifest(self.path)
            from ..stores import get_format

            get_format(manifest["format"])  # a format this imgconv does not know: said now
            self.format_name = manifest["format"]
            counts = [entry.count for entry in manifest["shards"]]
            self._bounds = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
            self._readers = [None] * len(counts)
            self._manifest = manifest
        return self._manifest

    def _close_handles(self) -> None:
        for reader in self._readers:
            if reader is not None:
                reader.close()

    def _read_one(self, i: int) -> Tuple[np.ndarray, int]:
        k = self._shard_of(i)
        return self.open_shard(k)[i - int(self._bounds[k])]

    def _read_many(self, indices: np.ndarray, out: Optional[np.ndarray]) -> ReadResult:
        shards = np.searchsorted(self._bounds, indices, side="right") - 1
        first = int(shards[0])
        if (shards == first).all():  # one shard: its reader fills ``out`` itself
            return self.open_shard(first).read_batch(indices - self._bounds[first], out=out)
        order = np.argsort(shards, kind="stable")
        groups = np.split(order, np.flatnonzero(np.diff(shards[order])) + 1)
        labels = np.empty(indices.size, np.int64)
        if self.variable:
            images: List[Any] = [None] * indices.size
            for positions in groups:
                k = int(shards[positions[0]])
                part, labels[positions] = self.open_shard(k).read_batch(indices[positions] - self._bounds[k])
                for position, image in zip(positions.tolist(), part):
                    images[position] = image
            return images, labels
        if out is None:
            out = np.empty((indices.size, *self.shape), np.uint8)
        for positions in groups:
            k = int(shards[positions[0]])
            local = indices[positions] - self._bounds[k]
            a, b = int(positions[0]), int(positions[0]) + positions.size
            if int(positions[-1]) + 1 == b:  # a run of the output (stable order: increasing)
                labels[a:b] = self.open_shard(k).read_batch(local, out=out[a:b])[1]
            else:
                part, labels[positions] = self.open_shard(k).read_batch(local)
                out[positions] = part  # gathered per shard, put in the order asked
        return out, labels

    def _read_range(self, start: int, stop: int, out: Optional[np.ndarray]) -> ReadResult:
        if self.variable:
            images: List[np.ndarray] = []
            labels = []
            for k, a, b in self._pieces(start, stop):
                part, part_labels = self._read_piece(k, a, b, None)
                images.extend(part)
                labels.append(part_labels)
            return images, np.concatenate(labels) if labels else np.empty(0, np.int64)
        if out is None:
            out = np.empty((stop - start, *self.shape), np.uint8)
        labels_out = np.empty(stop - start, np.int64)
        for k, a, b in self._pieces(start, stop):
            offset = int(self._bounds[k]) + a - start
            labels_out[offset : offset + b - a] = self._read_piece(k, a, b, out[offset : offset + b - a])[1]
        return out, labels_out

    def labels(self) -> np.ndarray:
        """All labels as an (N,) int64 array, in image order (each shard's, one after another)."""
        parts = [self.open_shard(k).labels() for k in range(len(self._readers))]
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def shapes(self) -> np.ndarray:
        """The (H, W, C) of every image as an (N, 3) int64 array."""
        if not self.variable:
            return super().shapes()
        return np.concatenate([self.open_shard(k).shapes() for k in range(len(self._readers))])

    @property
    def checked(self) -> bool:
        """Whether every shard keeps a checksum of every image, checked on every read (opens every shard)."""
        return all(self.open_shard(k).checked for k in range(len(self._readers)))

    @property
    def positions_checked(self) -> bool:
        """Whether every shard checks each image at its index (opens every shard)."""
        return all(self.open_shard(k).positions_checked for k in range(len(self._readers)))

    def check_layout(self) -> List[str]:
        """Dataset-wide problems: shards missing, extra, different from what the manifest says, or
        with problems of their own (each named by its path in the dataset)."""
        problems = self.manifest_problems()
        for k, entry in enumerate(self.metadata["shards"]):
            if os.path.lexists(self.shard_path(k)):
                try:
                    with self._shard_reader(k) as reader:
                        problems.extend(f"{entry.path}: {problem}" for problem in reader.check_layout())
                except StoreError:
                    pass  # said by manifest_problems
        return problems

    def manifest_problems(self) -> List[str]:
        """What differs between the manifest and the directory: shards missing, extra, not opening, or
        not the ones the manifest describes (metadata checksum, count, shape, size in bytes)."""
        problems = []
        for k in range(len(self._readers)):
            problems.extend(self.shard_problems(k)[0])
        return problems + self.unlisted()

    def unlisted(self) -> List[str]:
        """The entries of the dataset directory that are neither a shard the manifest lists nor the manifest."""
        try:
            present = os.listdir(self.path)
        except OSError as exc:
            return [f"cannot list the dataset directory: {exc.strerror or exc}"]
        listed = {entry.path for entry in self.metadata["shards"]} | {MANIFEST}
        return [f"{name}: not a shard the manifest lists" for name in sorted(set(present) - listed)]

    def __repr__(self) -> str:
        shape = self.shape if isinstance(self.shape, str) else "x".join(map(str, self.shape))
        return (f"<{type(self).__name__} {self.path!r}: {len(self)} images of {shape} in "
                f"{len(self._readers)} {self.format_name} shards>")

    # helpers ---------------------------------------------------------------

    def _shard_of(self, i: int) -> int:
        return int(np.searchsorted(self._bounds, i, side="right")) - 1

    def _pieces(self, start: int, stop: int) -> List[Tuple[int, int, int]]:
        """``(k, a, b)`` for each shard holding images of ``start .. stop - 1``: its images ``a .. b - 1``."""
        pieces = []
        k = self._shard_of(start) if stop > start else len(self._readers)
        while k < len(self._readers) and self._bounds[k] < stop:
            base = int(self._bounds[k])
            a, b = max(start, base) - base, min(stop, int(self._bounds[k + 1])) - base
            if b > a:
                pieces.append((k, a, b))
            k += 1
        return pieces

    def _read_piece(self, k: int, a: int, b: int, out: Optional[np.ndarray]) -> ReadResult:
        """Images ``a .. b - 1`` of shard ``k``, checked, into ``out`` when given."""
        shard = self.open_shard(k)
        if a == 0 and b == len(shard):
            return shard.read_all(out=out)
        shard._ensure_open()  # a reader of the same family: its range read, not a gather
        return shard._read_range_checked(a, b, out)

    def _shard_reader(self, k: int) -> Reader:
        """A new reader of shard ``k``, unchecked (for the checks themselves)."""
        from ..stores import get_format, refuse_special

        refuse_special(self.shard_path(k))  # a FIFO is no shard: said as such, never opened
        return get_format(self.format_name).reader(self.shard_path(k), **self._options)

    def _open_checked(self, k: int) -> Reader:
        """Open shard ``k`` and check it is the one the manifest describes."""
        from ..stores import get_format, refuse_special

        entry = self.metadata["shards"][k]
        path = os.path.join(self.path, entry.path)
        if not os.path.lexists(path):
            raise StoreError(f"{path}: shard {k} of the dataset {self.path} is missing (images "
                             f"{self._bounds[k]}..{self._bounds[k + 1] - 1})")
        refuse_special(path)  # a FIFO is no shard: said as such, never opened
        reader = get_format(self.format_name).reader(path, **self._options)
        found = _mismatch(reader, entry, self.shape)
        if found:
            reader.close()
            raise StoreError(f"{path}: does not match the dataset manifest ({found}): the shard was replaced "
                             "or damaged after the dataset was written")
        return reader

    def shard_problems(self, k: int) -> Tuple[List[str], bool]:
        """What differs between shard ``k`` and its manifest entry (sentences naming it), and whether
        it opens at all."""
        entry = self.metadata["shards"][k]
        path = self.shard_path(k)
        if not os.path.lexists(path):
            return [f"{entry.path}: missing (images {self._bounds[k]}..{self._bounds[k + 1] - 1})"], False
        try:
            with self._shard_reader(k) as reader:
                found = _mismatch(reader, entry, self.shape)
        except StoreError as exc:
            return [f"{entry.path}: cannot be opened: {_without_prefix(str(exc), path)}"], False
        problems = []
        if found:
            problems.append(f"{entry.path}: does not match the dataset manifest ({found})")
        size = _platform.disk_usage(path).data_bytes
        if size != entry.bytes:
            problems.append(f"{entry.path}: holds {size} bytes, the dataset manifest says {entry.bytes}")
        return problems, True


def _mismatch(reader: Reader, entry: ShardEntry, shape: Any) -> str:
    """What differs between an open shard and its manifest entry, or "" when they agree."""
    differences = []
    if reader.metadata.get(METADATA_CHECKSUM) != entry.metadata_crc32c:
        differences.append("its metadata checksum differs")
    if len(reader) != entry.count:
        differences.append(f"it holds {len(reader)} images, the manifest says {entry.count}")
    if reader.shape != shape and not (shape == VARIABLE and len(reader) == 0):
        differences.append(f"its images are {reader.shape}, the dataset's {shape}")
    return "; ".join(differences)


def _without_prefix(message: str, path: str) -> str:
    return message[len(path) + 2 :] if message.startswith(path + ": ") else message


def dataset_facts(reader: DatasetReader) -> Dict[str, Any]:
    """What ``imgconv info`` adds for a sharded dataset: the shards and the size asked for them."""
    return {
        "shards": len(reader.shards),
        "shard_counts": [entry.count for entry in reader.shards],
        "shard_size": reader.metadata.get("shard_size"),
    }
