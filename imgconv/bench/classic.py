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
