"""The layout studies behind the stores' defaults: opt-in experiments of the harness.

``python -m imgconv bench --experiments lmdb-layout hdf5-layout png-level``
measures, on the largest cutoff's images:

- ``lmdb-layout``: records per LMDB value (K): disk, full read, random
  single read for each K (the default K packs about 192 KiB per value);
- ``hdf5-layout``: images per HDF5 chunk: batched write, full read, random
  single read through imgconv and through plain h5py ``ds[i]``;
- ``png-level``: PNG compression level: encode and decode time per image and
  size against the raw pixels.

Each function takes the running :class:`~imgconv.bench.harness.Harness`
and returns result rows; every store written is read back and checked.
"""
from __future__ import annotations

import functools
import io
import os
from typing import TYPE_CHECKING, Any, Callable, Dict, Hashable, List, Tuple

import h5py
import numpy as np
from PIL import Image

import imgconv

from ..stores import png_folder
from .classic import png_array
from .internals import remove_path
from .methods import METHODS, WRITE_BATCH

if TYPE_CHECKING:  # the harness imports the experiments, which import the studies
    from .harness import Harness

Row = Dict[str, Any]

LMDB_RECORDS_PER_VALUE = (1, 8, 16, 32, 64, 128, 256)
HDF5_CHUNK_IMAGES = (1, 8, 16, 32, 64, 256, 1024)
PNG_LEVELS = (0, 1, 6, 9)
PNG_LEVEL_IMAGES = 5_000  # encoding is per image: a few thousand give a steady mean
SINGLES = 2_000


def _write(path: str, images: np.ndarray, labels: np.ndarray, fmt: str, **options: Any) -> None:
    with imgconv.create(path, fmt, **options) as writer:
        for start in range(0, len(images), WRITE_BATCH):
            writer.append(images[start : start + WRITE_BATCH], labels[start : start + WRITE_BATCH])


def _encode_pngs(images: np.ndarray, level: int) -> List[bytes]:
    return [png_folder.encode_png(image, level) for image in images]


def _decode_pngs(blobs: List[bytes]) -> List[np.ndarray]:
    return [png_array(Image.open(io.BytesIO(blob))) for blob in blobs]


def _largest(harness: Harness) -> Tuple[int, np.ndarray, np.ndarray]:
    count = max(harness.cutoffs)
    return count, harness.images.images[:count], harness.images.labels[:count]


def _singles(harness: Harness, key: Hashable, count: int, read: Callable[[int], Any]) -> float:
    indices = np.random.default_rng(1).integers(0, count, SINGLES).tolist()
    timed = harness.time(key, count, lambda: [read(i) for i in indices])
    return timed.median / len(indices)


def lmdb_layout(harness: Harness) -> List[Row]:
    """Records per LMDB value K: disk (data.mdb against the raw pixels), full read, random single read."""
    count, images, labels = _largest(harness)
    rows = []
    for k in LMDB_RECORDS_PER_VALUE:
        path = os.path.join(harness.workdir, f"layout-k{k}.lmdb")
        try:
            _write(path, images, labels, "lmdb", records_per_value=k)
            with imgconv.open(path) as store:
                full = harness.time(("lmdb-layout", k), count, store.read_all)
                harness.check(full.result, images, labels, f"LMDB with K={k}", count)
                one = _singles(harness, ("lmdb-layout-one", k), count, store.__getitem__)
            disk = os.path.getsize(os.path.join(path, "data.mdb"))
        finally:
            remove_path(path)
        rows.append(harness.row("lmdb-layout", METHODS["lmdb"], count, full, setting=f"K={k} records per value",
                                single_read_us=one * 1e6, disk_ratio=disk / images.nbytes))
    return rows


def hdf5_layout(harness: Harness) -> List[Row]:
    """Images per HDF5 chunk: batched write, full read, random single read (imgconv and plain h5py)."""
    count, images, labels = _largest(harness)
    rows = []
    for k in HDF5_CHUNK_IMAGES:
        path = os.path.join(harness.workdir, f"layout-c{k}.h5")
        try:
            write_store = functools.partial(_write, path, images, labels, "hdf5", chunk_images=k, overwrite=True)
            write = harness.time(("hdf5-layout-write", k), count, write_store)
            with imgconv.open(path) as store:
                full = harness.time(("hdf5-layout", k), count, store.read_all)
                harness.check(full.result, images, labels, f"HDF5 with {k} images per chunk", count)
                one = _singles(harness, ("hdf5-layout-one", k), count, store.__getitem__)
            with h5py.File(path, "r") as f:
                plain = _singles(harness, ("hdf5-layout-h5py", k), count, f["images"].__getitem__)
        finally:
            remove_path(path)
        rows.append(harness.row("hdf5-layout", METHODS["hdf5"], count, full, setting=f"{k} images per chunk",
                                write_seconds=write.median, single_read_us=one * 1e6, h5py_single_read_us=plain * 1e6))
    return rows


def png_level(harness: Harness) -> List[Row]:
    """PNG compression level: encode and decode time per image, mean size, size against the raw pixels."""
    count = min(max(harness.cutoffs), PNG_LEVEL_IMAGES)
    images = harness.images.images[:count]
    rows = []
    for level in PNG_LEVELS:
        encode = harness.time(("png-level", level), count, functools.partial(_encode_pngs, images, level))
        blobs = encode.result
        decode = harness.time(("png-level-decode", level), count, functools.partial(_decode_pngs, blobs))
        harness.check((np.array(decode.result), harness.images.labels[:count]), images, harness.images.labels[:count],
                      f"PNG at level {level}", count)
        sizes = np.array([len(blob) for blob in blobs])
        rows.append(harness.row("png-level", METHODS["png"], count, encode, setting=f"compress_level={level}",
                                encode_us=encode.median / count * 1e6, decode_us=decode.median / count * 1e6,
                                mean_bytes=float(sizes.mean()), size_ratio=float(sizes.sum() / images.nbytes)))
    return rows
