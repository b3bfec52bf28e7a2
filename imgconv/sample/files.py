"""The sample's files: CIFAR-10 python and binary batch directories, and their .tar.gz archives.

The python batches are Python-2-style protocol-2 pickles, laid out like the
official ones: dicts with byte-string keys ``batch_label``, ``labels``,
``data`` (uint8 rows of colour planes, rebuilt by
``numpy.core.multiarray._reconstruct``) and ``filenames``. One sixth of the
images form the test batch; the rest are split evenly over five training
batches (10,000 each for 60,000 images, the official counts). Names come
from :mod:`imgconv.sources.cifar.layouts`, which the reader uses too.

Everything is deterministic: the same ``seed`` gives the same bytes, archives
included (fixed timestamps and owners).
"""
from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..sources.cifar.layouts import CIFAR10_BINARY, CIFAR10_PYTHON
from .images import CHANNELS, LABEL_NAMES, SIZE, check_count, generate_sample

TRAIN_BATCHES = len(CIFAR10_PYTHON.train)
MIN_COUNT = TRAIN_BATCHES + len(CIFAR10_PYTHON.test)
# The official 60,000: a batch file holds at most its official 10,000 images (what the reader accepts).
MAX_COUNT = sum(CIFAR10_PYTHON.counts)

PYTHON_DIR = CIFAR10_PYTHON.dirname
BINARY_DIR = CIFAR10_BINARY.dirname
PYTHON_ARCHIVE = CIFAR10_PYTHON.archive
BINARY_ARCHIVE = CIFAR10_BINARY.archive

# 2009-04-08, the date of the official archives: a fixed mtime keeps archives byte-identical.
_MTIME = 1239148800
# CIFAR pixels barely compress (level 1 and 6 both leave ~92%); level 1 is twice as fast.
_GZIP_LEVEL = 1

SampleFiles = namedtuple("SampleFiles", "python_dir binary_dir python_archive binary_archive count train test")
SampleFiles.__doc__ = """What :func:`write_sample` wrote: the two batch directories, the two archives
(None when not written), and the number of images in all, in training and in the test batch."""




class _Py2Pickler(pickle._Pickler):
    """Writes protocol 2 as Python 2 did: ``str`` and ``bytes`` as byte strings
    (``SHORT_BINSTRING``/``BINSTRING``), NumPy under its old ``numpy.core`` names,
    dtype arguments as ints.

    Python 3's own pickler writes bytes as ``_codecs.encode`` calls in
    protocol 2, which no Python-2 file contains.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, file):
        super().__init__(file, protocol=2)
        reconstruct = np.ndarray.__reduce__(np.zeros(1, np.uint8))[0]
        self._old_names = {
            reconstruct: b"numpy.core.multiarray\n_reconstruct\n",
            np.ndarray: b"numpy\nndarray\n",
            np.dtype: b"numpy\ndtype\n",
        }

    def save_py2_str(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("latin-1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)  # type: ignore[attr-defined]  # pickle._Pickler's, untyped
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)  # type: ignore[attr-defined]  # pickle._Pickler's, untyped
        self.memoize(obj)  # type: ignore[attr-defined]

    dispatch[bytes] = save_py2_str  # type: ignore[assignment]
    dispatch[str] = save_py2_str  # type: ignore[assignment]

    def save_global(self, obj, name=None):
        try:
            self.write(pickle.GLOBAL + self._old_names[obj])  # type: ignore[attr-defined]  # pickle._Pickler's, untyped
        except KeyError:
            raise pickle.PicklingError(f"a CIFAR batch holds no {obj!r}") from None
        self.memoize(obj)  # type: ignore[attr-defined]

    def reducer_override(self, obj):
        if isinstance(obj, np.dtype):
            # NumPy 1 under Python 2 wrote dtype('u1', 0, 1): ints, not bools.
            function, (name, align, copy), state = obj.__reduce__()  # type: ignore[str-unpack]
            return function, (name, int(align), int(copy)), state
        return NotImplemented


def dump_py2_pickle(obj, file):
    """Write ``obj`` (dicts, lists, strings, ints, uint8 arrays) as a Python-2 protocol-2 pickle to ``file``."""
    _Py2Pickler(file).dump(obj)


# --- the files ---------------------------------------------------------------


def _split(count):
    """Sizes of the five training batches and of the test batch for ``count`` images."""
    test = count // 6
    train = [len(part) for part in np.array_split(np.arange(count - test), TRAIN_BATCHES)]
    return train, test


def _rows(images):
    """(N, 32, 32, 3) images as CIFAR's rows: all red, then all green, then all blue."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), -1)


def _write_file(path, data):
    # Written beside and renamed, so an interrupted run leaves no half file.
    partial = path + ".partial"
    with open(partial, "wb") as f:
        f.write(data)
    os.replace(partial, path)


_README = (
    "<html><body><p>A synthetic sample written by imgconv (python -m imgconv sample) in the "
    "file formats of CIFAR-10 (https://www.cs.toronto.edu/~kriz/cifar.html). The images are "
    "generated, not photographs; the class names are CIFAR-10's.</p></body></html>\n"
).encode()


def _batches(images, labels):
    """(python name, binary name, batch label, first, last) for every batch file."""
    train, test = _split(len(images))
    bounds = np.concatenate([[0], np.cumsum(train + [test])])
    batch_labels = [f"training batch {i} of {TRAIN_BATCHES}" for i in range(1, TRAIN_BATCHES + 1)]
    batch_labels.append("testing batch 1 of 1")
    names = zip(CIFAR10_PYTHON.train + CIFAR10_PYTHON.test, CIFAR10_BINARY.train + CIFAR10_BINARY.test, batch_labels)
    return [(name, binary, label, int(bounds[i]), int(bounds[i + 1])) for i, (name, binary, label) in enumerate(names)]


def _write_python(directory, images, labels):
    os.makedirs(directory, exist_ok=True)
    train, _ = _split(len(images))
    for name, _binary, batch_label, first, last in _batches(images, labels):
        batch = {
            "batch_label": batch_label,
            "labels": [int(v) for v in labels[first:last]],
            "data": _rows(images[first:last]),
            "filenames": [f"{LABEL_NAMES[v]}_s_{i:06d}.png" for i, v in enumerate(labels[first:last], first)],
        }
        out = io.BytesIO()
        dump_py2_pickle(batch, out)
        _write_file(os.path.join(directory, name), out.getvalue())
    meta = io.BytesIO()
    meta_dict = {"num_cases_per_batch": train[0], "label_names": LABEL_NAMES, "num_vis": SIZE * SIZE * CHANNELS}
    dump_py2_pickle(meta_dict, meta)
    _write_file(os.path.join(directory, CIFAR10_PYTHON.meta[0]), meta.getvalue())
    _write_file(os.path.join(directory, "readme.html"), _README)


def _write_binary(directory, images, labels):
    os.makedirs(directory, exist_ok=True)
    for _name, name, _label, first, last in _batches(images, labels):
        records = np.concatenate([labels[first:last, None].astype(np.uint8), _rows(images[first:last])], axis=1)
        _write_file(os.path.join(directory, name), records.tobytes())
    _write_file(os.path.join(directory, CIFAR10_BINARY.meta[0]), ("\n".join(LABEL_NAMES) + "\n\n").encode())
    _write_file(os.path.join(directory, "readme.html"), _README)


def _tar_info(name, size=None):
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = _MTIME, 0, 0, "", ""
    if size is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    else:
        info.size, info.mode = size, 0o644
    return info


def _write_archive(path, directory):
    """Archive ``directory`` (its files, sorted) as ``path``, a reproducible .tar.gz."""
    top = os.path.basename(directory)
    partial = path + ".partial"
    with open(partial, "wb") as raw:
        # filename="" and mtime=0: the gzip header then depends on nothing but the data.
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=_GZIP_LEVEL) as compressed:
            with tarfile.open(fileobj=compressed, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                tar.addfile(_tar_info(top))
                for name in sorted(os.listdir(directory)):
                    full = os.path.join(directory, name)
                    with open(full, "rb") as f:
                        tar.addfile(_tar_info(f"{top}/{name}", os.path.getsize(full)), f)
    os.replace(partial, path)


def write_sample(directory, count=60000, seed=0, *, archives=True):
    """Write the sample dataset into ``directory`` (created if needed) and return :class:`SampleFiles`.

    ``count`` (at least 6: one image per batch file; at most 60,000, the
    official count, as no batch file holds more than 10,000) images from
    :func:`generate_sample` with ``seed``; ``archives=False`` skips the two
    ``.tar.gz`` files. Existing files of the same names are replaced. Raises
    ValueError for a bad count or seed and OSError when the files cannot be written.
    """
    count = check_count(count, minimum=MIN_COUNT, maximum=MAX_COUNT)
    directory = os.fspath(directory)
    images, labels = generate_sample(count, seed)
    python_dir = os.path.join(directory, PYTHON_DIR)
    binary_dir = os.path.join(directory, BINARY_DIR)
    _write_python(python_dir, images, labels)
    _write_binary(binary_dir, images, labels)
    python_archive = binary_archive = None
    if archives:
        python_archive = os.path.join(directory, PYTHON_ARCHIVE)
        binary_archive = os.path.join(directory, BINARY_ARCHIVE)
        # zlib lets go of the GIL while it compresses: the two archives are made side by side.
        with ThreadPoolExecutor(2) as pool:
            jobs = [
                pool.submit(_write_archive, python_archive, python_dir),
                pool.submit(_write_archive, binary_archive, binary_dir),
            ]
            for job in jobs:
                job.result()
    train, test = _split(count)
    return SampleFiles(python_dir, binary_dir, python_archive, binary_archive, count, sum(train), test)

