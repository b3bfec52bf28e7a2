"""WebDataset: tar shards written with ``webdataset.ShardWriter``, read with ``webdataset.WebDataset``.

As the WebDataset README and FAQ show: samples are dicts of a ``__key__``
and one entry per file extension, written with ``ShardWriter(pattern,
maxcount=...)``, whose encoder turns an array into the extension's format:
``.npy`` (the raw array, ``np.save``) or ``.png`` (PIL), and the label into
``.cls``. Reading is ``WebDataset(shards, shardshuffle=False).decode(...)
.to_tuple("__key__", ext, "cls")`` iterated in one process ("a
single-threaded way of iterating over a dataset"; a DataLoader over it is
the loader experiment's business). Tar files have no index: WebDataset
reads them in order and has no random access, so the method has no reader
and the random-access experiments leave it out.

webdataset imports torch when torch is installed (its datasets are torch
``IterableDataset`` s).
"""
from __future__ import annotations

import glob
import os
from typing import Callable, Optional

import numpy as np

from ..methods import Environment, Method
from .common import BASELINE, GROUP, INSTALL, Collector, ImagesAndLabels, import_probe, versions_of

SAMPLES_PER_SHARD = 10_000
PATTERN = "shard-%06d.tar"
DOC = ("https://github.com/webdataset/webdataset (README: WebDataset(url).decode(...).to_tuple(...); "
       "FAQ: ShardWriter(pattern, maxcount=...), tar files have no random access)")


def _store(ext: str) -> Callable[..., None]:
    def store(path: str, images: np.ndarray, labels: np.ndarray, env: Optional[Environment] = None) -> None:
        """One ``ShardWriter``, sample by sample, keys the zero-padded indices."""
        import webdataset

        os.mkdir(path)
        with webdataset.ShardWriter(os.path.join(path, PATTERN), maxcount=SAMPLES_PER_SHARD, verbose=0) as sink:
            for index, (image, label) in enumerate(zip(images, labels)):
                image = np.asarray(image)
                if ext == "png" and image.shape[2] == 1:
                    image = image[:, :, 0]
                sink.write({"__key__": f"{index:09d}", ext: image, "cls": int(label)})

    return store


def _read_all(ext: str) -> Callable[..., ImagesAndLabels]:
    def read_all(path: str, count: int, env: Optional[Environment] = None) -> ImagesAndLabels:
        """Iterate the decoded shards in order; place each sample by its key."""
        import webdataset

        shards = sorted(glob.glob(os.path.join(path, "shard-*.tar")))
        dataset = webdataset.WebDataset(shards, shardshuffle=False)
        dataset = dataset.decode("rgb8") if ext == "png" else dataset.decode()
        collector = Collector(count, f"webdataset {ext} full read")
        for key, image, label in dataset.to_tuple("__key__", ext, "cls"):
            collector.add(int(key), image, label)
        return collector.result()

    return read_all


def _method(name: str, ext: str, label: str, what: str) -> Method:
    decode = '.decode("rgb8")' if ext == "png" else ".decode()"
    return Method(
        name, f"webdataset-{ext}", "peer",
        f"webdataset.ShardWriter of {what}, {SAMPLES_PER_SHARD:,} a shard / WebDataset(shardshuffle=False){decode} "
        "iterated; no random access", label,
        store=_store(ext), read_all=_read_all(ext), baseline=BASELINE, requires=("webdataset",), install=INSTALL,
        group=GROUP, versions=versions_of("webdataset", "torch"), probe=import_probe("webdataset", "webdataset"),
        doc=DOC,
    )


WEBDATASET_RAW = _method("webdataset-raw", "npy", "WebDataset", ".npy arrays")
WEBDATASET_PNG = _method("webdataset-png", "png", "WebDataset PNG", "PNG images")
