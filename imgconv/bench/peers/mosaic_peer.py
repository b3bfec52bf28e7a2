"""MosaicML streaming: ``streaming.MDSWriter`` shards, read back with ``streaming.StreamingDataset``.

As the streaming documentation's "Basic Dataset Conversion" guide says for
arrays of one dtype and shape ("more efficient than ... dynamic shape"): the
image column is ``ndarray:uint8:H,W,C``, the label ``int64``, one
``MDSWriter`` with its default shard size (67 MB) and no compression; the
same guide reads a dataset back with ``StreamingDataset(local=dir,
batch_size=...)`` and ``dataset[i] for i in range(dataset.num_samples)``,
which is the full read here (iterating the dataset instead took 3.7 s
against 1.0 s for 10,000 images, see BENCHMARKS.md); random reads are
``dataset[i]`` too.

Each ``StreamingDataset`` registers shared memory in ``/dev/shm`` (names
``NNNNNN_locals`` and so on), which streaming itself removes when the
process exits; the harness removes none of it.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..methods import BenchCheckError, Environment, Method
from .common import BASELINE, GROUP, INSTALL, ImagesAndLabels, ItemReader, import_probe, versions_of

BATCH_SIZE = 64


def store(path: str, images: np.ndarray, labels: np.ndarray, env: Optional[Environment] = None) -> None:
    """One ``MDSWriter``, sample by sample."""
    import streaming

    height, width, channels = images.shape[1:]
    columns = {"image": f"ndarray:uint8:{height},{width},{channels}", "label": "int64"}
    with streaming.MDSWriter(out=path, columns=columns) as writer:
        for image, label in zip(images, labels):
            writer.write({"image": np.asarray(image), "label": np.int64(label)})


def open_reader(path: str, count: int) -> ItemReader:
    """``StreamingDataset(local=path, batch_size=64)``, indexed sample by sample."""
    import streaming

    return ItemReader(streaming.StreamingDataset(local=path, batch_size=BATCH_SIZE), "image", "label")


def read_all(path: str, count: int, env: Optional[Environment] = None) -> ImagesAndLabels:
    """``dataset[i]`` for every ``i``, into one array."""
    reader = open_reader(path, count)
    try:
        held = reader.dataset.num_samples
        if held != count:
            raise BenchCheckError(f"mosaic-mds: the dataset holds {held:,} samples, {count:,} were written: "
                                  "the run fails")
        return reader.read_batch(range(count))
    finally:
        reader.close()


MOSAIC_MDS = Method(
    "mosaic-mds", "mds", "peer", "streaming.MDSWriter (ndarray:uint8:H,W,C) / StreamingDataset, dataset[i]", "MDS",
    store=store, read_all=read_all, open_reader=open_reader, baseline=BASELINE, requires=("streaming",),
    install=INSTALL, group=GROUP, versions=versions_of("mosaicml-streaming", "torch", "torchvision"),
    probe=import_probe("mosaicml-streaming", "streaming"),
    doc="https://docs.mosaicml.com/projects/streaming/en/stable/preparing_datasets/basic_dataset_conversion.html "
        "(Basic Dataset Conversion: fixed shape, fixed dtype)",
)
