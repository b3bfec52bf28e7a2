"""The classic methods imgconv is measured against, written the plain way.

These follow the well-known comparison of PNG files, LMDB and HDF5 for CIFAR
images: a small Python object pickled per image, rebuilt with ``np.frombuffer``
when read. They carry no handicap: the same work, done the straightforward way.
"""
from __future__ import annotations

import os
import pickle
import tarfile
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import numpy as np


class CifarImage:
    """The classic per-image object: pixel bytes, shape and label, pickled as a whole."""

    def __init__(self, image: np.ndarray, label: int):
        self.channels = image.shape[2]
        self.size = image.shape[:2]
        self.image = image.tobytes()
        self.label = label

    def get_image(self) -> np.ndarray:
        """The pixels as an (H, W, C) uint8 array."""
        image = np.frombuffer(self.image, dtype=np.uint8)
        return image.reshape(*self.size, self.channels)


def pickle_images(images: np.ndarray, labels: np.ndarray) -> List[bytes]:
    """One pickled :class:`CifarImage` per image, as the classic LMDB method stores them."""
    return [pickle.dumps(CifarImage(image, int(label))) for image, label in zip(images, labels)]


def unpickle_images(blobs: Sequence[bytes], out: np.ndarray, labels_out: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Rebuild images from pickled :class:`CifarImage` blobs into preallocated arrays."""
    for i, blob in enumerate(blobs):
        obj = pickle.loads(blob)
        out[i] = obj.get_image()
        labels_out[i] = obj.label
    return out, labels_out


def numpy_chw_to_hwc(rows: np.ndarray, height: int = 32, width: int = 32, channels: int = 3) -> np.ndarray:
    """NumPy's reshape, transpose and copy to C order: the usual one-liner."""
    return np.ascontiguousarray(rows.reshape(-1, channels, height, width).transpose(0, 2, 3, 1))


# The classic storage methods: a PNG file per image, a pickled object per LMDB
# key, one contiguous HDF5 dataset. Paths are created fresh by the caller.


def _png_image(image: np.ndarray) -> np.ndarray:
    # Pillow saves (H, W) as grayscale; a one-channel (H, W, 1) array it refuses.
    return image[:, :, 0] if image.shape[2] == 1 else image


def png_array(pil: Any) -> np.ndarray:
    """A decoded PNG as an (H, W, C) uint8 array (grayscale as C = 1)."""
    array = np.array(pil)
    return array[:, :, np.newaxis] if array.ndim == 2 else array


def store_png_files(directory: str, images: np.ndarray, labels: np.ndarray) -> None:
    """``Image.save`` per image as ``{i}.png`` in one directory, then one CSV of labels."""
    import csv
    import os

    from PIL import Image

    for i, image in enumerate(images):
        Image.fromarray(_png_image(image)).save(os.path.join(directory, f"{i}.png"))
    with open(os.path.join(directory, f"{len(images)}.csv"), "w", newline="") as f:
        writer = csv.writer(f, delimiter=" ", quotechar="|", quoting=csv.QUOTE_MINIMAL)
        for label in labels:
            writer.writerow([int(label)])


def read_png_labels(directory: str, count: int) -> np.ndarray:
    """The labels CSV of a folder of ``count`` images, as an (N,) int64 array."""
    import csv
    import os

    with open(os.path.join(directory, f"{count}.csv"), newline="") as f:
        return np.array([int(row[0]) for row in csv.reader(f, delimiter=" ", quotechar="|")], np.int64)


def read_png_files(directory: str, count: int) -> Tuple[np.ndarray, np.ndarray]:
    """Read ``0.png .. count-1.png`` and the labels CSV back into arrays."""
    import os

    from PIL import Image

    images = np.array([png_array(Image.open(os.path.join(directory, f"{i}.png"))) for i in range(count)])
    return images, read_png_labels(directory, count)


def store_lmdb_pickles(path: str, images: np.ndarray, labels: np.ndarray) -> None:
    """One pickled :class:`CifarImage` per key ``f"{i:08}"``, all in one write transaction."""
    import lmdb

    # Ten times the pixels, as the classic recipe sets it; at least 64 MiB, so that
    # tiny images, whose pickles are mostly overhead, fit too.
    map_size = max(images.nbytes * 10, 1 << 26)
    env = lmdb.open(path, map_size=map_size)
    with env.begin(write=True) as txn:
        for i, (image, label) in enumerate(zip(images, labels)):
            txn.put(f"{i:08}".encode("ascii"), pickle.dumps(CifarImage(image, int(label))))
    env.close()


def read_lmdb_pickles(path: str, count: int) -> Tuple[np.ndarray, np.ndarray]:
    """Read every key back with ``txn.get`` and rebuild the images from the pickles."""
    import lmdb

    env = lmdb.open(path, readonly=True)
    images, labels = [], []
    with env.begin() as txn:
        for i in range(count):
            obj = pickle.loads(txn.get(f"{i:08}".encode("ascii")))  # type: ignore[arg-type]  # as the recipe does
            images.append(obj.get_image())
            labels.append(obj.label)
    env.close()
    return np.array(images), np.array(labels, np.int64)


def store_hdf5_contiguous(path: str, images: np.ndarray, labels: np.ndarray) -> None:
    """One ``create_dataset(data=...)`` for the images and one for the labels (contiguous)."""
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("images", np.shape(images), h5py.h5t.STD_U8BE, data=images)
        f.create_dataset("meta", np.shape(labels), h5py.h5t.STD_U8BE, data=labels)


def read_hdf5_contiguous(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """Read both datasets whole."""
    import h5py

    with h5py.File(path, "r") as f:
        images = np.array(f["images"]).astype("uint8")
        labels = np.array(f["meta"]).astype("uint8")
    return images, labels


# Random access the classic way: open once, then one lookup per index, as a
# PyTorch ``Dataset.__getitem__`` over these stores does.


class PngFilesReader:
    """A classic PNG folder opened for random reads: labels read once, one ``Image.open`` per image."""

    def __init__(self, directory: str, count: int):
        self.directory = directory
        self.labels = read_png_labels(directory, count)

    def read_one(self, index: int) -> Tuple[np.ndarray, int]:
        """``(image, label)`` of image ``index``."""
        import os

        from PIL import Image

        return png_array(Image.open(os.path.join(self.directory, f"{index}.png"))), int(self.labels[index])

    def close(self) -> None:
        """Nothing is held open between reads."""


class LmdbPicklesReader:
    """A classic pickled-object LMDB opened for random reads: one read transaction, ``get`` + unpickle per image."""

    def __init__(self, path: str, count: int):
        import lmdb

        self.env = lmdb.open(path, readonly=True, lock=False)
        self.txn = self.env.begin()

    def read_one(self, index: int) -> Tuple[np.ndarray, int]:
        """``(image, label)`` of image ``index``."""
        obj = pickle.loads(self.txn.get(f"{index:08}".encode("ascii")))  # type: ignore[arg-type]
        return obj.get_image(), obj.label

    def close(self) -> None:
        """End the transaction and close the environment."""
        self.txn.abort()
        self.env.close()


class Hdf5ContiguousReader:
    """A classic contiguous HDF5 file opened for random reads: ``ds[i]`` per image."""

    def __init__(self, path: str, count: int):
        import h5py

        self.file = h5py.File(path, "r")
        self.images = self.file["images"]
        self.labels = self.file["meta"]

    def read_one(self, index: int) -> Tuple[np.ndarray, int]:
        """``(image, label)`` of image ``index``."""
        return self.images[index].astype("uint8"), int(self.labels[index])

    def close(self) -> None:
        """Close the file."""
        self.file.close()


def read_batch(reader: Any, indices: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` for ``indices`` through a classic reader, one image at a time."""
    pairs = [reader.read_one(int(i)) for i in indices]
    return np.array([image for image, _ in pairs]), np.array([label for _, label in pairs], np.int64)


# The classic conversion of the CIFAR-10 python version to LMDB.


def _is_python_batch(name: str) -> bool:
    # data_batch_1 .. data_batch_5; the binary version's are data_batch_1.bin ...
    return name.startswith("data_batch_") and name[len("data_batch_"):].isdigit()


def has_python_batches(path: str) -> bool:
    """True when ``path`` (a directory or a .tar.gz) holds CIFAR-10 python-version training batches."""
    if os.path.isdir(path):
        return any(_is_python_batch(name) for name in os.listdir(path))
    try:
        with tarfile.open(path, "r:*") as tar:
            return any(_is_python_batch(os.path.basename(name)) for name in tar.getnames())
    except (tarfile.TarError, OSError):
        return False


def _classic_batches(path: str) -> Iterator[Dict[bytes, Any]]:
    """Yield the training batches of the CIFAR-10 python version at ``path`` (.tar.gz or directory), unpickled."""
    if os.path.isdir(path):
        for name in sorted(n for n in os.listdir(path) if _is_python_batch(n)):
            with open(os.path.join(path, name), "rb") as f:
                yield pickle.load(f, encoding="bytes")
        return
    with tarfile.open(path, "r:gz") as tar:
        members = sorted((m for m in tar.getmembers() if _is_python_batch(os.path.basename(m.name))),
                         key=lambda m: m.name)
        for member in members:
            yield pickle.load(tar.extractfile(member), encoding="bytes")  # type: ignore[arg-type]


def classic_cifar_to_lmdb(archive: str, path: str) -> int:
    """The classic recipe: every training batch of the CIFAR-10 python version to LMDB.

    ``archive`` is the ``.tar.gz`` or the ``cifar-10-batches-py`` directory.
    ``pickle.load(f, encoding="bytes")`` per batch, each row rebuilt as
    ``np.dstack((r, g, b))`` of its three 32x32 planes, and one pickled
    :class:`CifarImage` per key ``f"{i:08}"``, all in
    one write transaction; the map size is set once, generously (the
    classic recipe's ten times the pixels of 60,000 images). Returns the
    number of images written.
    """
    import lmdb

    count = 0
    env = lmdb.open(path, map_size=10 * 60000 * 3072)
    with env.begin(write=True) as txn:
        for batch in _classic_batches(archive):
            for row, label in zip(batch[b"data"], batch[b"labels"]):
                r, g, b = (row[k * 1024 : (k + 1) * 1024].reshape(32, 32) for k in range(3))
                image = np.dstack((r, g, b))
                txn.put(f"{count:08}".encode("ascii"), pickle.dumps(CifarImage(image, label)))
                count += 1
    env.close()
    return count
