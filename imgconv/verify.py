"""Checking a finished store, and describing one: ``imgconv verify`` and ``imgconv info``.

:func:`verify_store` reads every record (checking every checksum the format
keeps), decodes every image, compares the count with the metadata and asks
the format for its own structural checks; it names each bad record instead
of stopping at the first. :func:`store_info` gathers what ``imgconv info``
prints.
"""
import time
from collections import namedtuple

import numpy as np

from . import stores
from ._platform import disk_usage
from .errors import ImgconvError

VerifyReport = namedtuple("VerifyReport", "path format count checked bad problems seconds")
VerifyReport.__doc__ = """What :func:`verify_store` found: ``count`` images in the metadata,
``checked`` images read, ``bad`` a list of ``(index, reason)``, ``problems`` a
list of store-wide findings (missing files, counts that disagree), and the
``seconds`` it took. The store is sound when ``bad`` and ``problems`` are empty."""


def _reason(exc):
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, ImgconvError) else f"{type(exc).__name__}: {text}"


def verify_store(path, *, batch_size=1024, progress=None):
    """Read and check every image of the store at ``path``; returns a :class:`VerifyReport`.

    Batches are read whole; a batch that fails is read again image by image,
    so that every bad image is named, not just the first. ``progress(done,
    total)`` is called after every batch. Raises UnknownFormatError or
    StoreError when the store cannot be opened at all.
    """
    started = time.perf_counter()
    with stores.open(path) as store:
        count = len(store)
        problems = list(store.check_layout())
        bad = []
        for start in range(0, count, batch_size):
            stop = min(start + batch_size, count)
            try:
                store.read_batch(np.arange(start, stop))
            except Exception:  # any failure: find out which images, one by one
                bad.extend(_bad_images(store, start, stop))
            if progress is not None:
                progress(stop, count)
        return VerifyReport(store.path, store.format_name, count, count, bad, problems,
                            time.perf_counter() - started)


def _bad_images(store, start, stop):
    found = []
    for i in range(start, stop):
        try:
            store[i]
        except Exception as exc:  # corruption shows up as many libraries' errors
            found.append((i, _reason(exc)))
    return found


def store_info(path):
    """What ``imgconv info`` reports about the store at ``path``, as a JSON-ready dict.

    Format, image count, shape (or, for varying sizes, the range of heights
    and widths), dtype, label names and the count of each label, bytes on
    disk, the imgconv version that wrote it and the source it came from.
    """
    with stores.open(path) as store:
        meta = dict(store.metadata)
        labels = store.labels()
        values, counts = np.unique(labels, return_counts=True)
        names = store.label_names
        info = {
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
            "bytes": disk_usage(store.path).data_bytes,
            "imgconv_version": meta.get("imgconv_version"),
            "format_version": meta.get("format_version"),
            "source": meta.get("source"),
        }
        if store.variable:
            shapes = store.shapes()
            info["shape_range"] = {
                "height": [int(shapes[:, 0].min()), int(shapes[:, 0].max())] if len(shapes) else None,
                "width": [int(shapes[:, 1].min()), int(shapes[:, 1].max())] if len(shapes) else None,
                "channels": sorted(set(shapes[:, 2].tolist())),
            }
        return info
