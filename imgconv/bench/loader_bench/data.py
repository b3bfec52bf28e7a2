"""The images on disk that the loaders read: a ``.npy`` (the floor's), LMDB, HDF5, a PNG folder, LitData chunks.

LMDB, HDF5 and the PNG folder are written by the harness's own methods
(``METHODS["lmdb"].store`` ...), as every other experiment writes them; the
``.npy`` with ``np.save``; LitData's chunks with ``litdata.optimize`` into
chunks of :data:`LITDATA_CHUNK_BYTES`, the way its documentation writes
arrays, when litdata is installed.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import numpy as np

from ..internals import remove_path
from ..methods import METHODS, Environment
from ..timing import failure_text

LITDATA_CHUNK_BYTES = "64MB"


class Data(NamedTuple):
    """The ``size`` images on disk: ``npy`` (the images, for the floor's memmap) and ``labels`` (``.npy``),
    ``lmdb``, ``hdf5``, ``png`` (the stores) and ``litdata`` (LitData's chunks, None when not written);
    ``litdata_error`` says why they could not be written (None when they were, or litdata is missing)."""

    size: int
    npy: str
    labels: str
    lmdb: str
    hdf5: str
    png: str
    litdata: Optional[str] = None
    litdata_error: Optional[str] = None

    def store(self, fmt: str) -> str:
        """The path of the store of ``fmt`` ("lmdb", "hdf5" or "png")."""
        return {"lmdb": self.lmdb, "hdf5": self.hdf5, "png": self.png}[fmt]


def prepare(workdir: str, images: np.ndarray, labels: np.ndarray, env: Environment, stack: contextlib.ExitStack,
            note: Callable[[str], None]) -> Data:
    """Write ``images`` and ``labels`` in every form the loaders read, in ``workdir``; ``stack`` removes them.

    ``env`` is the harness's :class:`~imgconv.bench.methods.Environment` (the
    PNG pool's workers, the stored ``.npz`` the PNG method converts from);
    ``note(text)`` says what is being written.
    """
    count = len(labels)
    paths = {name: os.path.join(workdir, f"loader{suffix}") for name, suffix in
             (("npy", "-images.npy"), ("labels", "-labels.npy"), ("lmdb", ".lmdb"), ("hdf5", ".h5"),
              ("png", "-png"), ("litdata", "-litdata"))}
    for path in paths.values():
        stack.callback(remove_path, path)
    np.save(paths["npy"], images)
    np.save(paths["labels"], labels)
    for fmt in ("lmdb", "hdf5", "png"):
        note(f"loader: writing {count:,} images as {fmt}")
        store = METHODS[fmt].store
        assert store is not None  # imgconv's own methods all write
        store(paths[fmt], images, labels, env)
    litdata: Tuple[Optional[str], Optional[str]] = (None, None)
    if importlib.util.find_spec("litdata") is not None:
        note(f"loader: optimising {count:,} images for litdata")
        litdata = _write_litdata(paths["npy"], paths["labels"], paths["litdata"], count, env.workers)
    return Data(count, paths["npy"], paths["labels"], paths["lmdb"], paths["hdf5"], paths["png"], *litdata)


_LITDATA_SOURCE: Dict[str, Any] = {}  # the arrays litdata.optimize's forked workers read items from


def _litdata_item(index: int) -> Dict[str, Any]:
    images, labels = _LITDATA_SOURCE["arrays"]
    return {"image": np.ascontiguousarray(images[index]), "label": int(labels[index])}


def _write_litdata(npy: str, labels: str, dest: str, count: int,
                   workers: int) -> Tuple[Optional[str], Optional[str]]:
    """``(dest, None)`` once ``litdata.optimize`` has written the chunks, ``(None, why)`` when it failed."""
    import litdata

    _LITDATA_SOURCE["arrays"] = (np.load(npy, mmap_mode="r"), np.load(labels))
    try:
        litdata.optimize(fn=_litdata_item, inputs=list(range(count)), output_dir=dest,
                         chunk_bytes=LITDATA_CHUNK_BYTES, num_workers=max(1, workers), verbose=False,
                         start_method="fork")
    except Exception as exc:  # a peer's failure skips its sides, it does not end the run
        return None, f"litdata.optimize failed: {failure_text(exc)}"
    finally:
        _LITDATA_SOURCE.clear()
    return dest, None
