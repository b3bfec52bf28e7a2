"""Checking a finished store, and describing one: ``imgconv verify`` and ``imgconv info`` as functions.

:func:`verify` reads every record (checking every checksum the format keeps,
and so, in the current format versions, that each image is found at its
index), decodes every image, compares the count with the metadata (the
formats do at open) and asks the format for its own structural checks; it
names each bad image by index instead of stopping at the first: missing,
unreadable, damaged, or found where another image belongs. The list is
bounded (:data:`MAX_LISTED`; the report counts the rest). :func:`info`
gathers the facts ``imgconv info`` prints. Both return what the command
line prints, as data.
"""
import os
import re
import time
from collections import namedtuple
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from . import _validate, stores
from ._platform import disk_usage
from .datasets.manifest import is_dataset
from .datasets.reader import DatasetReader, dataset_facts
from .datasets.verify import verify_dataset
from .errors import ImgconvError

VerifyReport = namedtuple("VerifyReport", "path format count checked bad problems seconds unlisted",
                          defaults=(0,))
VerifyReport.__doc__ = """What :func:`verify` found: ``count`` images in the metadata, ``checked``
images read, ``bad`` a list of ``(index, reason)`` in index order (at most
``max_listed``; ``unlisted`` counts the bad images found after those),
``problems`` a list of store-wide findings (missing files, counts that
disagree), and the ``seconds`` it took. The store is sound when ``bad`` and
``problems`` are empty. A reason says what is wrong with that image, without
repeating the store's path or the index (``imgconv verify`` prints ``PATH:
image I: REASON``); a file inside the store is named relative to it."""

#: The most bad images a :class:`VerifyReport` lists by default; it counts the others.
MAX_LISTED = 1000


def verify(path: Any, *, batch_size: int = 1024, progress: Optional[Callable[[int, int], None]] = None,
           max_listed: int = MAX_LISTED) -> VerifyReport:
    """Read and check every image of the store at ``path``; returns a :class:`VerifyReport`.

    A sharded dataset is checked shard by shard, in parallel, after its
    manifest (:func:`imgconv.datasets.verify.verify_dataset`); bad images
    are named by their index in the dataset.

    Batches are read whole; a batch that fails is read again image by image,
    so that every bad image is named, not just the first (up to
    ``max_listed`` of them, the rest counted, so that the report of a store
    of millions of bad images stays small). ``progress(done, total)`` is
    called after every batch. Raises UnknownFormatError or StoreError when
    the store cannot be opened at all (its structure or metadata is damaged:
    the formats compare the metadata with the data at open).
    """
    batch_size = _validate.positive_int("batch_size", batch_size)
    max_listed = _validate.integer("max_listed", max_listed, minimum=0)
    if is_dataset(path):
        return verify_dataset(path, batch_size, progress, max_listed=max_listed)  # its shards in parallel
    started = time.perf_counter()
    with stores.open(path) as store:
        count = len(store)
        problems = list(store.check_layout())
        bad: List[Tuple[int, str]] = []
        unlisted = 0
        for start in range(0, count, batch_size):
            stop = min(start + batch_size, count)
            try:
                store.read_batch(np.arange(start, stop))
            except Exception:  # any failure: find out which images, one by one
                found = _bad_images(store, start, stop)
                room = max(0, max_listed - len(bad))
                bad.extend(found[:room])
                unlisted += len(found) - len(found[:room])
            if progress is not None:
                progress(stop, count)
        return VerifyReport(store.path, store.format_name, count, count, bad, problems,
                            time.perf_counter() - started, unlisted)


def _bad_images(store: stores.Reader, start: int, stop: int) -> List[Tuple[int, str]]:
    found = []
    for i in range(start, stop):
        try:
            store[i]
        except Exception as exc:  # corruption shows up as many libraries' errors
            found.append((i, _reason(exc, store.path, i)))
    return found


def _reason(exc: BaseException, store_path: str, index: int) -> str:
    """What is wrong with image ``index``, from the error reading it raised: said once, not twice.

    Errors name the store and the image ("x.h5: image 5 does not match ...")
    for a reader of one image; the report says both already.
    """
    text = str(exc) or type(exc).__name__
    if not isinstance(exc, ImgconvError):
        return f"{type(exc).__name__}: {text}"
    if text.startswith(store_path + ": "):
        text = text[len(store_path) + 2 :]
    elif text.startswith(store_path + os.sep):
        text = text[len(store_path) + 1 :]  # a file of the store, named from the store on
    text = re.sub(rf"^image {index}(: | )", "", text)
    return re.sub(rf"^([^:]+): image {index} ", r"\1 ", text)


def info(path: Any) -> Dict[str, Any]:
    """What ``imgconv info`` reports about the store at ``path``, as a JSON-ready dict.

    Format, image count, shape (or, for varying sizes, the range of heights
    and widths), dtype, label names and the count of each label, the size
    on disk as ``data_bytes`` (the sum of the store's file sizes; also
    ``bytes``, its older name) and ``allocated_bytes`` (the blocks the
    filesystem gave it, what ``du`` says; much larger for many small files,
    None where the system does not tell), the imgconv version that wrote it
    and the source it came from, and what a read checks: ``checksums``
    (every image against a checksum kept with it) and ``positions_checked``
    (also that each image is at its index: False for stores of older format
    versions).
    """
    with stores.open(path) as store:
        meta = dict(store.metadata)
        labels = store.labels()
        values, counts = np.unique(labels, return_counts=True)
        names = store.label_names
        usage = disk_usage(store.path)
        facts = {
            "path": store.path,
            "format": store.format_name,
            "count": len(store),
            "shape": store.shape,
            "dtype": meta.get("dtype", "uint8"),
            "label_names": names,
            "label_counts": {
                (names[v] if names is not None and 0 <= v < len(names) else str(int(v))): int(c)
                for v, c in zip(values.tolist(), counts.tolist())
            },
            "data_bytes": usage.data_bytes,
            "allocated_bytes": usage.allocated_bytes,
            "bytes": usage.data_bytes,
            "imgconv_version": meta.get("imgconv_version"),
            "format_version": meta.get("format_version"),
            "source": meta.get("source"),
            "checksums": store.checked,
            "positions_checked": store.positions_checked,
        }
        if store.variable:
            facts["shape_range"] = _shape_range(store.shapes())
        if isinstance(store, DatasetReader):
            facts.update(dataset_facts(store))
        return facts


def _shape_range(shapes: np.ndarray) -> Dict[str, Any]:
    return {
        "height": [int(shapes[:, 0].min()), int(shapes[:, 0].max())] if len(shapes) else None,
        "width": [int(shapes[:, 1].min()), int(shapes[:, 1].max())] if len(shapes) else None,
        "channels": sorted(set(shapes[:, 2].tolist())),
    }


# The names the command line and earlier code use.
verify_store = verify
store_info = info
