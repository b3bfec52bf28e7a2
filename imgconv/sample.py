"""A built-in sample dataset in the genuine CIFAR-10 file formats.

No dataset can be downloaded on every machine, yet imgconv should run at
once. :func:`write_sample` writes ``count`` synthetic 32x32 colour images
(60,000 by default, like CIFAR-10) in all four official forms::

    DIR/cifar-10-batches-py/     data_batch_1..5, test_batch, batches.meta, readme.html
    DIR/cifar-10-batches-bin/    data_batch_1..5.bin, test_batch.bin, batches.meta.txt, readme.html
    DIR/cifar-10-python.tar.gz   the first directory, archived
    DIR/cifar-10-binary.tar.gz   the second one

The python batches are Python-2-style protocol-2 pickles, laid out like the
official ones: dicts with byte-string keys ``batch_label``, ``labels``,
``data`` (uint8 rows of colour planes, rebuilt by
``numpy.core.multiarray._reconstruct``) and ``filenames``. One sixth of the
images form the test batch; the rest are split evenly over five training
batches (10,000 each for 60,000 images).

The pictures are made to look like photographs to a compressor: a shaded
background with a lighting gradient and broad blotches, two or three solid
objects with anti-aliased edges and their own shading, striped textures on
some, and sensor-like noise. Each class (named like CIFAR-10's) has its own
palette and object shapes. At Pillow's default PNG compression a 32x32 image
takes about 2.3 KB (a real CIFAR-10 image about 2 KB; uniform noise 3.2 KB,
a flat colour 0.1 KB).

Everything is deterministic: the same ``seed`` gives the same bytes, archives
included (fixed timestamps and owners), and image ``i`` does not depend on
``count``. (NumPy does not promise the same random streams and float
rounding across its versions and CPUs, so compare files made by one install.)
"""
import gzip
import io
import os
import pickle
import struct
import tarfile
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import kernels

SIZE = 32
CHANNELS = 3
LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TRAIN_BATCHES = 5
MIN_COUNT = TRAIN_BATCHES + 1

PYTHON_DIR = "cifar-10-batches-py"
BINARY_DIR = "cifar-10-batches-bin"
PYTHON_ARCHIVE = "cifar-10-python.tar.gz"
BINARY_ARCHIVE = "cifar-10-binary.tar.gz"

# Images are made in chunks of this many, each from its own seeded generator,
# so image i is the same whatever the count (a smaller sample is a prefix).
_CHUNK = 256
# 2009-04-08, the date of the official archives: a fixed mtime keeps archives byte-identical.
_MTIME = 1239148800
# CIFAR pixels barely compress (level 1 and 6 both leave ~92%); level 1 is twice as fast.
_GZIP_LEVEL = 1

SampleFiles = namedtuple("SampleFiles", "python_dir binary_dir python_archive binary_archive count train test")
SampleFiles.__doc__ = """What :func:`write_sample` wrote: the two batch directories, the two archives
(None when not written), and the number of images in all, in training and in the test batch."""


# --- the pictures ------------------------------------------------------------

# A base hue per class (RGB, 0..255), so classes differ in palette.
_CLASS_COLOURS = np.array(
    [
        [120, 150, 200], [170, 60, 50], [150, 130, 90], [140, 120, 100], [110, 120, 70],
        [160, 130, 110], [70, 130, 60], [120, 80, 50], [60, 100, 150], [150, 150, 140],
    ],
    np.float32,
)

# Standard deviation of the difference of two independent uniform bytes.
_TRIANGLE_STD = np.sqrt((256**2 - 1) / 6)

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)


def _uniform(rng, low, high, size):
    return rng.uniform(low, high, size).astype(np.float32)


def _column(values):
    """(n,) per-image values as (n, 1, 1), to broadcast over a plane."""
    return np.asarray(values, np.float32)[:, None, None]


def _planes(colours):
    """(n, 3) colours as (n, 3, 1, 1), to broadcast over channel planes."""
    return colours[:, :, None, None]


class _Canvas:
    """Work arrays for one chunk of images, made once and reused.

    Every step writes into these with ``out=``: fresh full-size temporaries
    cost more in page faults than the arithmetic itself, and kept the
    generator several times slower.
    """

    def __init__(self, n):
        self.image = np.empty((n, CHANNELS, SIZE, SIZE), np.float32)  # channel planes, as CIFAR rows
        self.paint = np.empty_like(self.image)
        self.a, self.b, self.c, self.d = (np.empty((n, SIZE, SIZE), np.float32) for _ in range(4))
        self.rows = np.empty((n, CHANNELS * SIZE * SIZE), np.uint8)

    def add_smooth_field(self, rng, cells, amplitude):
        """Add smooth random blotches: a cells x cells grid of values, bilinearly upsampled."""
        n = self.image.shape[0]
        grid = rng.standard_normal((n, CHANNELS, cells, cells), dtype=np.float32)
        grid *= np.float32(amplitude)
        position = np.linspace(0, cells - 1, SIZE, dtype=np.float32)
        low = np.minimum(position.astype(int), cells - 2)
        weights = np.zeros((SIZE, cells), np.float32)
        weights[np.arange(SIZE), low] = 1 - (position - low)
        weights[np.arange(SIZE), low + 1] = position - low
        # The half-upsampled grid borrows a work plane's memory (it is smaller).
        across = self.d.reshape(-1)[: grid.size // cells * SIZE].reshape(n, CHANNELS, cells, SIZE)
        np.matmul(grid, weights.T, out=across)
        np.matmul(weights, across, out=self.paint)
        self.image += self.paint

    def paint_background(self, rng, labels):
        """A lighting gradient between two colours of the class palette, with blotches."""
        n = labels.size
        base = _CLASS_COLOURS[labels] + rng.normal(0, 35, (n, CHANNELS)).astype(np.float32)
        other = base * _uniform(rng, 0.4, 1.2, (n, 1))
        angle = _uniform(rng, 0, 2 * np.pi, n)
        t, tmp = self.a, self.b
        np.multiply(_XX, _column(np.cos(angle)), out=t)
        np.multiply(_YY, _column(np.sin(angle)), out=tmp)
        t += tmp
        t *= np.float32(1 / SIZE)
        t += np.float32(0.5)
        np.clip(t, 0, 1, out=t)
        np.multiply(_planes(other - base), t[:, None], out=self.image)
        self.image += _planes(base)
        self.add_smooth_field(rng, 5, 18)
        self.add_smooth_field(rng, 9, 7)

    def paint_object(self, rng, labels, k, present):
        """Paint one solid shape on the images where ``present``.

        An ellipse, box or diamond (by class), turned, anti-aliased, shaded
        across, and on half of them striped.
        """
        n = labels.size
        kind = (labels + k) % 3
        cx, cy = _uniform(rng, 4, 28, n), _uniform(rng, 4, 28, n)
        half_a, half_b = _uniform(rng, 3, 13, n), _uniform(rng, 3, 13, n)
        turn = _uniform(rng, 0, np.pi, n)
        cos, sin = _column(np.cos(turn)), _column(np.sin(turn))
        dx, dy, u, tmp = self.a, self.b, self.c, self.d
        np.subtract(_XX, _column(cx), out=dx)
        np.subtract(_YY, _column(cy), out=dy)
        # u, v: coordinates along the shape's axes, in units of its half-sizes.
        np.multiply(dx, cos, out=u)
        np.multiply(dy, sin, out=tmp)
        u += tmp
        np.abs(u, out=u)
        u /= _column(half_a)
        v = dy
        v *= cos
        dx *= sin
        v -= dx
        np.abs(v, out=v)
        v /= _column(half_b)
        # Distance 1 on the outline: Euclidean (ellipse), max (box) or sum (diamond).
        distance = dx
        np.multiply(u, u, out=distance)
        np.multiply(v, v, out=tmp)
        distance += tmp
        np.sqrt(distance, out=distance)
        np.maximum(u, v, out=tmp)
        np.copyto(distance, tmp, where=(kind == 1)[:, None, None])
        np.add(u, v, out=tmp)
        np.copyto(distance, tmp, where=(kind == 2)[:, None, None])
        # The mask goes from 0 to 1 over one pixel: anti-aliased edges, as a camera gives.
        mask = u
        np.subtract(1, distance, out=mask)
        mask *= _column(np.minimum(half_a, half_b))
        mask += np.float32(0.5)
        np.clip(mask, 0, 1, out=mask)
        mask *= _column(present)
        colour = _CLASS_COLOURS[(labels * 3 + k) % 10] * _uniform(rng, 0.3, 1.4, (n, 1))
        colour += rng.normal(0, 40, (n, CHANNELS)).astype(np.float32)
        shade = v
        np.minimum(shade, 1.5, out=shade)
        shade *= _column(rng.choice(np.array([-0.35, 0.35], np.float32), n))
        shade += 1
        striped = rng.random(n) < 0.5
        frequency, phase = _uniform(rng, 0.6, 2.2, n), _uniform(rng, 0, 2 * np.pi, n)
        stripes = distance
        np.multiply(_XX, cos, out=stripes)
        np.multiply(_YY, sin, out=tmp)
        stripes += tmp
        stripes *= _column(frequency)
        stripes += _column(phase)
        np.sin(stripes, out=stripes)
        stripes *= _column(_uniform(rng, 0.08, 0.3, n) * striped)
        shade += stripes
        # image += mask * (colour * shade - image)
        np.multiply(_planes(colour), shade[:, None], out=self.paint)
        self.paint -= self.image
        self.paint *= mask[:, None]
        self.image += self.paint

    def add_noise(self, rng):
        """Sensor-like noise, its strength varying from image to image.

        The difference of two uniform bytes: a triangular distribution, close
        enough to a Gaussian for a compressor and five times faster to draw.
        """
        n = self.image.shape[0]
        sigma = _uniform(rng, 3, 8, (n, 1)) / np.float32(_TRIANGLE_STD)
        first = rng.integers(0, 256, self.image.shape, dtype=np.uint8)
        second = rng.integers(0, 256, self.image.shape, dtype=np.uint8)
        np.subtract(first, second, out=self.paint, dtype=np.float32)
        self.paint *= _planes(sigma)
        self.image += self.paint

    def to_rows(self):
        """The images as uint8 CIFAR rows (n, 3072), rounded and clipped."""
        np.rint(self.image, out=self.image)
        np.clip(self.image, 0, 255, out=self.image)
        np.copyto(self.rows, self.image.reshape(self.rows.shape), casting="unsafe")
        return self.rows


def _synthesise(rng, labels, canvas):
    """Images for ``labels`` as CIFAR rows: uint8 (n, 3072), valid until the canvas is reused."""
    canvas.paint_background(rng, labels)
    everywhere = np.ones(labels.size, bool)
    for k in range(3):
        # The third object appears on half of the images only.
        canvas.paint_object(rng, labels, k, everywhere if k < 2 else rng.random(labels.size) < 0.5)
    canvas.add_noise(rng)
    return canvas.to_rows()


def generate_sample(count=60000, seed=0):
    """The sample's images and labels, in memory: ``(uint8 (count, 32, 32, 3), int64 (count,))``.

    Ordered as the CIFAR readers return ``split="all"`` of :func:`write_sample`'s
    output: the training images, then the test images. Deterministic in
    ``seed``; the first k images are the same for every count >= k.
    Raises ValueError for a negative count or seed.
    """
    count = _check_count(count, minimum=0)
    seed = _check_seed(seed)
    images = np.empty((count, SIZE, SIZE, CHANNELS), np.uint8)
    labels = np.empty(count, np.int64)
    canvas = _Canvas(_CHUNK)
    for chunk, first in enumerate(range(0, count, _CHUNK)):
        rng = np.random.default_rng([seed, chunk])
        chunk_labels = rng.integers(0, len(LABEL_NAMES), _CHUNK)
        last = min(first + _CHUNK, count)
        rows = _synthesise(rng, chunk_labels, canvas)
        kernels.chw_to_hwc_into(rows[: last - first], images[first:last])
        labels[first:last] = chunk_labels[: last - first]
    return images, labels


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_count(count, minimum):
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < minimum:
        raise ValueError(f"count must be an integer >= {minimum}, got {count!r}")
    return int(count)


# --- Python-2-style pickles --------------------------------------------------


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
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj, name=None):
        try:
            self.write(pickle.GLOBAL + self._old_names[obj])
        except KeyError:
            raise pickle.PicklingError(f"a CIFAR batch holds no {obj!r}") from None
        self.memoize(obj)

    def reducer_override(self, obj):
        if isinstance(obj, np.dtype):
            # NumPy 1 under Python 2 wrote dtype('u1', 0, 1): ints, not bools.
            function, (name, align, copy), state = obj.__reduce__()
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
    names = [(f"data_batch_{i}", f"training batch {i} of {TRAIN_BATCHES}") for i in range(1, TRAIN_BATCHES + 1)]
    names.append(("test_batch", "testing batch 1 of 1"))
    return [(name, f"{name}.bin", label, int(bounds[i]), int(bounds[i + 1])) for i, (name, label) in enumerate(names)]


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
    _write_file(os.path.join(directory, "batches.meta"), meta.getvalue())
    _write_file(os.path.join(directory, "readme.html"), _README)


def _write_binary(directory, images, labels):
    os.makedirs(directory, exist_ok=True)
    for _name, name, _label, first, last in _batches(images, labels):
        records = np.concatenate([labels[first:last, None].astype(np.uint8), _rows(images[first:last])], axis=1)
        _write_file(os.path.join(directory, name), records.tobytes())
    _write_file(os.path.join(directory, "batches.meta.txt"), ("\n".join(LABEL_NAMES) + "\n\n").encode())
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

    ``count`` (at least 6: one image per batch file) images from
    :func:`generate_sample` with ``seed``; ``archives=False`` skips the two
    ``.tar.gz`` files. Existing files of the same names are replaced. Raises
    ValueError for a bad count or seed and OSError when the files cannot be written.
    """
    count = _check_count(count, minimum=MIN_COUNT)
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
