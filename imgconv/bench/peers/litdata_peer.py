"""LitData: ``litdata.optimize`` into chunks, read back with ``litdata.StreamingDataset``.

As the LitData README's "Speed up model training" example does for images:
``optimize(fn, inputs=list(range(N)), output_dir, num_workers, chunk_bytes="64MB")``
where ``fn(i)`` returns ``{"index": i, "image": PIL.Image, "class": label}``.
A PIL image is stored as its raw pixels (LitData's PIL serializer) and read
back one item at a time; a NumPy array would be decoded in windows of 256
items, which makes every random read decode 256 (see BENCHMARKS.md).
``keep_data_ordered=True`` (``optimize``'s docstring: "each worker processes
a static slice in order") makes ``dataset[i]`` the i-th item written: by
default the workers share one queue and the order is lost, so a random
batch of indices would not name the samples written at them. The dataset is
read with ``StreamingDataset(output_dir)``: iterated for the full read
(placed by the stored index) and indexed, ``dataset[i]``, for random reads.

``optimize`` starts its workers with spawn: ``fn`` carries the path of the
harness's ``.npz`` and maps the images in each worker, and its working
files go to a temporary directory beside the store, removed after it.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..methods import Environment, Method
from .common import (
    BASELINE,
    GROUP,
    INSTALL,
    Collector,
    ImagesAndLabels,
    ItemReader,
    import_probe,
    map_npz,
    private_tempdir,
    versions_of,
)

CHUNK_BYTES = "64MB"


class _Item:
    """``fn`` of ``optimize``: item ``i`` as the README's dict, read from a memory map of the ``.npz``.

    Picklable (the workers are spawned): it carries the path, not the images.
    """

    def __init__(self, npz: str, count: int):
        self.npz = npz
        self.count = count
        self._arrays: Optional[Tuple[np.ndarray, np.ndarray]] = None

    def __getstate__(self) -> Dict[str, Any]:
        return {"npz": self.npz, "count": self.count, "_arrays": None}

    def __call__(self, index: int) -> Dict[str, Any]:
        from PIL import Image

        if self._arrays is None:
            self._arrays = map_npz(self.npz, self.count)
        images, labels = self._arrays
        image = np.asarray(images[index])
        return {"index": index, "image": Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image),
                "class": int(labels[index])}


def store(path: str, images: np.ndarray, labels: np.ndarray, env: Environment) -> None:
    """``optimize`` with ``env.workers`` worker processes (at least one), each mapping the images itself."""
    import litdata

    if env.npz is None:
        raise ValueError("litdata: optimize's workers read the images from the harness's .npz, and there is none")
    with private_tempdir(path):
        litdata.optimize(fn=_Item(env.npz, len(images)), inputs=list(range(len(images))), output_dir=path,
                         num_workers=max(1, env.workers), chunk_bytes=CHUNK_BYTES, keep_data_ordered=True,
                         verbose=False)


def read_all(path: str, count: int, env: Optional[Environment] = None) -> ImagesAndLabels:
    """Iterate ``StreamingDataset(path)``; place each item by its stored index."""
    import litdata

    collector = Collector(count, "litdata full read")
    for item in litdata.StreamingDataset(path):
        collector.add(int(item["index"]), item["image"], item["class"])
    return collector.result()


def open_reader(path: str, count: int) -> ItemReader:
    """``StreamingDataset(path)``, indexed item by item."""
    import litdata

    return ItemReader(litdata.StreamingDataset(path), "image", "class")


LITDATA = Method(
    "litdata", "litdata", "peer", "litdata.optimize (PIL images, 64 MB chunks, keep_data_ordered) / StreamingDataset",
    "LitData", store=store, read_all=read_all, open_reader=open_reader, baseline=BASELINE,
    requires=("litdata", "PIL"), install=INSTALL, group=GROUP, versions=versions_of("litdata", "torch"),
    probe=import_probe("litdata", "litdata"),
    doc="https://github.com/Lightning-AI/litdata#speed-up-model-training (README: Speed up model training); "
        "optimize(keep_data_ordered=...) docstring",
)
