"""The classic methods imgconv is measured against, written the plain way.

These follow the well-known comparison of PNG files, LMDB and HDF5 for CIFAR
images: a small Python object pickled per image, rebuilt with ``np.frombuffer``
when read. They carry no handicap: the same work, done the straightforward way.
"""
import pickle

import numpy as np


class CifarImage:
    """The classic per-image object: pixel bytes, shape and label, pickled as a whole."""

    def __init__(self, image, label):
        self.channels = image.shape[2]
        self.size = image.shape[:2]
        self.image = image.tobytes()
        self.label = label

    def get_image(self):
        """The pixels as an (H, W, C) uint8 array."""
        image = np.frombuffer(self.image, dtype=np.uint8)
        return image.reshape(*self.size, self.channels)


def pickle_images(images, labels):
    """One pickled :class:`CifarImage` per image, as the classic LMDB method stores them."""
    return [pickle.dumps(CifarImage(image, int(label))) for image, label in zip(images, labels)]


def unpickle_images(blobs, out, labels_out):
    """Rebuild images from pickled :class:`CifarImage` blobs into preallocated arrays."""
    for i, blob in enumerate(blobs):
        obj = pickle.loads(blob)
        out[i] = obj.get_image()
        labels_out[i] = obj.label
    return out, labels_out


def numpy_chw_to_hwc(rows, height=32, width=32, channels=3):
    """NumPy's reshape, transpose and copy to C order: the usual one-liner."""
    return np.ascontiguousarray(rows.reshape(-1, channels, height, width).transpose(0, 2, 3, 1))


# The classic storage methods: a PNG file per image, a pickled object per LMDB
# key, one contiguous HDF5 dataset. Paths are created fresh by the caller.


def store_png_files(directory, images, labels):
    """``Image.save`` per image as ``{i}.png`` in one directory, then one CSV of labels."""
    import csv
    import os

    from PIL import Image

    for i, image in enumerate(images):
        Image.fromarray(image).save(os.path.join(directory, f"{i}.png"))
    with open(os.path.join(directory, f"{len(images)}.csv"), "w", newline="") as f:
        writer = csv.writer(f, delimiter=" ", quotechar="|", quoting=csv.QUOTE_MINIMAL)
        for label in labels:
            writer.writerow([int(label)])


def read_png_files(directory, count):
    """Read ``0.png .. count-1.png`` and the labels CSV back into arrays."""
    import csv
    import os

    from PIL import Image

    images = np.array([np.array(Image.open(os.path.join(directory, f"{i}.png"))) for i in range(count)])
    with open(os.path.join(directory, f"{count}.csv"), newline="") as f:
        labels = np.array([int(row[0]) for row in csv.reader(f, delimiter=" ", quotechar="|")], np.int64)
    return images, labels


def store_lmdb_pickles(path, images, labels):
    """One pickled :class:`CifarImage` per key ``f"{i:08}"``, all in one write transaction."""
    import lmdb

    map_size = images.nbytes * 10
    env = lmdb.open(path, map_size=map_size)
    with env.begin(write=True) as txn:
        for i, (image, label) in enumerate(zip(images, labels)):
            txn.put(f"{i:08}".encode("ascii"), pickle.dumps(CifarImage(image, int(label))))
    env.close()


def read_lmdb_pickles(path, count):
    """Read every key back with ``txn.get`` and rebuild the images from the pickles."""
    import lmdb

    env = lmdb.open(path, readonly=True)
    images, labels = [], []
    with env.begin() as txn:
        for i in range(count):
            obj = pickle.loads(txn.get(f"{i:08}".encode("ascii")))
            images.append(obj.get_image())
            labels.append(obj.label)
    env.close()
    return np.array(images), np.array(labels, np.int64)


def read_lmdb_pickle(path, index):
    """Read one image: open, get, unpickle (the classic single read)."""
    import lmdb

    env = lmdb.open(path, readonly=True)
    with env.begin() as txn:
        obj = pickle.loads(txn.get(f"{index:08}".encode("ascii")))
    env.close()
    return obj.get_image(), obj.label


def store_hdf5_contiguous(path, images, labels):
    """One ``create_dataset(data=...)`` for the images and one for the labels (contiguous)."""
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("images", np.shape(images), h5py.h5t.STD_U8BE, data=images)
        f.create_dataset("meta", np.shape(labels), h5py.h5t.STD_U8BE, data=labels)


def read_hdf5_contiguous(path):
    """Read both datasets whole."""
    import h5py

    with h5py.File(path, "r") as f:
        images = np.array(f["images"]).astype("uint8")
        labels = np.array(f["meta"]).astype("uint8")
    return images, labels
