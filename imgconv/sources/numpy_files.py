"""NumPy files: a ``.npy`` array of images, or a ``.npz`` with images and labels.

Images are uint8 (N, H, W, C), or (N, H, W) read as one channel. They are
never read whole: the rows a batch asks for are read in place (``preadv`` at
their offset; a Fortran-order array through a memory map), from a ``.npy``
directly or from a ``.npz`` member saved with ``np.savez`` (stored) at its
offset inside the zip. A member of ``np.savez_compressed`` cannot be read in
place; its rows are decompressed as the
batches ask for them, from one stream kept open between calls (reading on
continues it, reading backwards restarts it). Compressed images must be
C-ordered: the rows of a Fortran-order array are spread over the whole
member. Labels (one int per image, small) are read whole.

Which arrays of a ``.npz``: ``images_key`` and ``labels_key`` name them;
without them the first present of these is used, by ``split``:

=========  =======================================  =======================================
split      images                                   labels (optional: -1 when absent)
=========  =======================================  =======================================
train      images, x, x_train, data, arr_0          labels, y, y_train, targets, arr_1
test       x_test, images_test, test_images         y_test, labels_test, test_labels
all        train then test, both required
=========  =======================================  =======================================

A string array ``label_names`` in the ``.npz``, when present, gives the class
names. A ``.npy`` has no labels (-1).

Arrays are read from their ``.npy`` headers and raw bytes, never unpickled:
an array of Python objects (whose data is a pickle) is refused, as
``np.load(allow_pickle=False)`` refuses it.
"""
from __future__ import annotations

import os
import struct
import tokenize
import zipfile
import zlib
from collections import namedtuple
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import numpy as np

from .._platform import pread_exact
from ..errors import SourceError, SourceOptionError
from ..options import Option
from .base import SPLIT, SPLITS, Batch, Source, check_choice, check_input_size, group_by_part, open_input, plan_segments

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"

IMAGE_KEYS = {
    "train": ("images", "x", "x_train", "data", "arr_0"),
    "test": ("x_test", "images_test", "test_images"),
}
LABEL_KEYS = {
    "train": ("labels", "y", "y_train", "targets", "arr_1"),
    "test": ("y_test", "labels_test", "test_labels"),
}

# What zipfile raises for a damaged or unusual member: an unknown compression
# method (NotImplementedError), encryption (RuntimeError), corrupt deflate data.
_ZIP_ERRORS = (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError, RuntimeError)

IMAGES_KEY = Option("images_key", metavar="KEY",
                    help="the array of images in a .npz (default: the first present of the usual names)")
LABELS_KEY = Option("labels_key", metavar="KEY",
                    help="the array of labels in a .npz (default: the first present of the usual names)")

# label_names are read whole: a few MB of names is already a very large number of classes.
LABEL_NAMES_BYTES = 1 << 24

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., name length, extra length

ArrayRef = namedtuple("ArrayRef", "path member offset shape dtype fortran stored")
ArrayRef.__doc__ = """Where an array's data lies: ``member`` of the zip at ``path`` (None for a .npy),
``offset`` of the data (in the file when ``stored``, else in the decompressed member),
and its ``shape``, ``dtype`` and ``fortran`` order from the .npy header."""


def _read_npy_header(f, where):
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError, zlib.error) as exc:
        # NumPy parses the header as a Python literal: a damaged one fails in the tokenizer too.
        raise SourceError(f"{where}: not a readable .npy array ({exc})") from None
    if dtype.hasobject:
        # The data of such an array is a pickle: np.load(allow_pickle=False) refuses it, and so do we.
        raise SourceError(
            f"{where}: an array of Python objects (dtype {dtype}) is stored as a pickle, which could run code; "
            "imgconv reads NumPy files as np.load(allow_pickle=False) does: save numbers (uint8 images, integer labels)"
        )
    return shape, fortran, dtype, f.tell()


def _open(path):
    """The NumPy file at ``path`` open for reading; SourceError for a FIFO, socket or device (never opened)."""
    return open_input(path, "a .npy or .npz file")


@contextmanager
def _zip_file(path):
    """The .npz at ``path`` open as a zip archive (OSError and the zip errors as ``zipfile``)."""
    with _open(path) as f, zipfile.ZipFile(f) as archive:
        yield archive


def _npy_ref(path):
    """ArrayRef of a .npy file, checking that its data is all there."""
    with _open(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise SourceError(f"{path}: empty file (0 bytes), not a .npy array")
        shape, fortran, dtype, offset = _read_npy_header(f, path)
    _check_size(path, shape, dtype, size - offset)
    return ArrayRef(path, None, offset, shape, dtype, fortran, True)


def _check_size(where, shape, dtype, available):
    needed = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if available < needed:
        raise SourceError(
            f"{where}: truncated, the header says {shape} {dtype} = {needed} bytes of data, "
            f"the file holds {available}"
        )


def _zip_ref(path, archive, member):
    """ArrayRef of member ``member`` (an ``.npy`` name) of the open zip ``archive``."""
    info = archive.getinfo(member)
    where = f"{path}:{member}"
    try:
        with archive.open(info) as f:
            shape, fortran, dtype, header = _read_npy_header(f, where)
    except _ZIP_ERRORS as exc:
        raise SourceError(f"{where}: cannot read ({exc})") from None
    _check_size(where, shape, dtype, info.file_size - header)
    stored = info.compress_type == zipfile.ZIP_STORED
    offset = header
    if stored:
        with _open(path) as raw:
            raw.seek(info.header_offset)
            signature, name_length, extra_length = _LOCAL_HEADER.unpack(raw.read(_LOCAL_HEADER.size))
        if signature != ZIP_MAGIC:
            raise SourceError(f"{where}: corrupt zip, no local header at offset {info.header_offset}")
        offset = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length + header
    return ArrayRef(path, member, offset, shape, dtype, fortran, stored)


def _check_images(ref, where):
    if ref.dtype != np.uint8:
        raise SourceError(f"{where}: images must be uint8, got {ref.dtype} (scale and convert them first)")
    if ref.fortran and not ref.stored:
        raise SourceError(
            f"{where}: a compressed Fortran-order array: its rows are spread over the whole member, so every "
            "batch would decompress all of it; save it C-ordered (np.ascontiguousarray) or uncompressed (np.savez)"
        )
    if len(ref.shape) not in (3, 4) or 0 in ref.shape[1:]:
        raise SourceError(f"{where}: images must be (N, H, W, C) or (N, H, W), got shape {ref.shape}")
    if len(ref.shape) == 4 and ref.shape[1] in (1, 3, 4) and ref.shape[3] > 4:
        n, c, h, w = ref.shape
        raise SourceError(
            f"{where}: shape {ref.shape} looks channels-first (N, C, H, W); imgconv reads (N, H, W, C): "
            f"save np.transpose(a, (0, 2, 3, 1)) instead (shape ({n}, {h}, {w}, {c}))"
        )


def _image_shape(ref):
    return tuple(int(v) for v in ref.shape[1:]) if len(ref.shape) == 4 else (*map(int, ref.shape[1:]), 1)


class _ArrayReader:
    """Rows of one array: read in place, from a memory map (Fortran order) or a stream over a compressed member.

    The stream stays open between calls: a zip member's ``seek`` reads on to
    a later position and restarts the member only to go back. A process
    forked with the stream open opens its own (a shared file position would
    mix up the reads of both).
    """

    def __init__(self, ref):
        self.ref = ref
        self._map = None
        self._fd = None
        self._fd_pid = None  # the process that opened _fd
        self._zip_file = None
        self._zip = None
        self._stream = None
        self._pid = None  # the process that opened the stream

    def rows(self, lo, hi):
        ref = self.ref
        if ref.stored and not ref.fortran:
            return self._read_rows(lo, hi)
        if ref.stored:
            if self._map is None:
                # An empty array cannot be mapped; np.memmap needs at least one byte.
                self._map = self._memory_map() if ref.shape[0] else np.zeros(ref.shape, ref.dtype)
            return self._map[lo:hi]
        row = int(np.prod(ref.shape[1:], dtype=np.int64)) * ref.dtype.itemsize
        if self._pid != os.getpid():
            self._zip_file, self._zip, self._stream = None, None, None  # the parent's: leave them to it
        try:
            if self._stream is None:
                self._pid = os.getpid()
                self._zip_file = _open(ref.path)
                self._zip = zipfile.ZipFile(self._zip_file)
                self._stream = self._zip.open(ref.member)
            self._stream.seek(ref.offset + lo * row)
            data = self._stream.read((hi - lo) * row)
        except BaseException:
            self.close()  # a stream that failed midway is not read from again
            raise
        if len(data) != (hi - lo) * row:
            self.close()
            raise SourceError(f"{ref.path}:{ref.member}: truncated while reading rows {lo}..{hi}")
        return np.frombuffer(data, ref.dtype).reshape(hi - lo, *ref.shape[1:])

    def _memory_map(self):
        ref = self.ref
        with _open(ref.path) as f:  # the map keeps its own descriptor
            return np.memmap(f, ref.dtype, "r", ref.offset, ref.shape, "F" if ref.fortran else "C")

    def _read_rows(self, lo, hi):
        """Rows ``lo..hi`` of a stored C-order array, read with ``preadv`` into a new array.

        Read, not memory-mapped: pages of a map stay in the reading process's
        resident memory (a worker that read a 3 GB file would show 3 GB of
        RSS), and a file truncated under a map kills the process with SIGBUS
        instead of raising.
        """
        ref = self.ref
        out = np.empty((hi - lo, *ref.shape[1:]), ref.dtype)
        view = out.reshape(-1).view(np.uint8).data
        if self._fd_pid != os.getpid():
            self._fd = None  # the parent's descriptor: its position is not shared, but keep ownership clear
        if self._fd is None:
            with _open(ref.path) as f:
                self._fd, self._fd_pid = os.dup(f.fileno()), os.getpid()  # a descriptor of its own, kept open
        row = int(np.prod(ref.shape[1:], dtype=np.int64)) * ref.dtype.itemsize
        if pread_exact(self._fd, view, ref.offset + lo * row) < len(view):
            raise SourceError(f"{ref.path}: truncated: rows {lo}..{hi - 1} end past the end of the file")
        return out

    def close(self):
        """Close the file, the zip stream and drop the memory map; they are reopened when next needed."""
        self._map = None
        if self._fd is not None and self._fd_pid == os.getpid():
            os.close(self._fd)
        self._fd = None
        opened = (self._stream, self._zip, self._zip_file)
        self._stream, self._zip, self._zip_file = None, None, None
        for f in opened:
            if f is not None:
                f.close()


def _read_whole(ref):
    """The whole array ``ref`` (labels, names: small), in any order."""
    if ref.stored or not ref.fortran:
        reader = _ArrayReader(ref)
        try:
            return np.array(reader.rows(0, ref.shape[0]))
        finally:
            reader.close()
    with _zip_file(ref.path) as archive, archive.open(ref.member) as f:
        f.seek(ref.offset)
        count = int(np.prod(ref.shape, dtype=np.int64))
        data = f.read(count * ref.dtype.itemsize)
    if len(data) != count * ref.dtype.itemsize:
        raise SourceError(f"{ref.path}:{ref.member}: truncated")
    return np.frombuffer(data, ref.dtype, count).reshape(ref.shape, order="F")


def _as_int64_labels(values, ref):
    """Integer (or bool) ``values`` of the labels array ``ref`` as int64; SourceError for one beyond int64."""
    if values.dtype.kind == "u" and values.size and values.max() > np.iinfo(np.int64).max:
        position = int(np.argmax(values > np.iinfo(np.int64).max))
        raise SourceError(
            f"{ref.path}:{ref.member}: label {position} is {values[position]}, beyond a 64-bit signed integer "
            "(labels are int64)"
        )
    return values.astype(np.int64)


def _is_npz(path):
    try:
        with _zip_file(path) as archive:
            names = archive.namelist()
    except _ZIP_ERRORS:
        return False
    return bool(names) and all(n.endswith(".npy") for n in names)


def detect(path: str) -> bool:
    """True when ``path`` is (or claims by its name to be) a .npy or .npz file."""
    if not os.path.isfile(path):
        return False
    if path.lower().endswith((".npy", ".npz")):
        return True
    with _open(path) as f:
        head = f.read(len(NPY_MAGIC))
    return head == NPY_MAGIC or (head[:4] == ZIP_MAGIC and _is_npz(path))


class NumpySource(Source):
    """Images from a ``.npy`` file or arrays in a ``.npz`` file, read batch by batch in place.

    Arguments: ``path``; for a ``.npz``, ``images_key`` and ``labels_key``
    name the arrays (defaults in the module docstring) and ``split`` picks
    "train" (default), "test" or "all" among the default names. A ``.npy``
    has labels -1 and accepts split "train" or "all" (the whole array).
    Raises SourceError for a file that is empty, truncated, not NumPy, holds
    no such arrays, non-uint8 images, or labels that do not match the images.
    """

    OPTIONS = (SPLIT, IMAGES_KEY, LABELS_KEY)
    _TRANSIENT = ("_readers", "_labels")
    _READ_ERRORS = _ZIP_ERRORS

    def __init__(self, path: str | os.PathLike[str], *, split: str = SPLIT.default,
                 images_key: str | None = IMAGES_KEY.default, labels_key: str | None = LABELS_KEY.default) -> None:
        self.path = os.fspath(path)
        self.split = check_choice("split", split, SPLITS)
        with _open(self.path) as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise SourceError(f"{self.path}: empty file (0 bytes), not a .npy or .npz file")
            head = f.read(len(NPY_MAGIC))
        if head == NPY_MAGIC:
            if images_key is not None or labels_key is not None:
                raise SourceOptionError(
                    f"{self.path}: images_key and labels_key apply to .npz files, this is a .npy array",
                    ("images_key", "labels_key"),
                )
            if split == "test":
                raise SourceOptionError(
                    f"{self.path}: a .npy array has no test part; use split='train' (or 'all', the same here)",
                    ("split",),
                )
            self.parts = [(_npy_ref(self.path), None)]
            self._names = None
            self.keys = None
        elif head[:4] == ZIP_MAGIC:
            self.parts, self.keys, self._names = self._open_npz(images_key, labels_key)
        else:
            raise SourceError(f"{self.path}: not a .npy or .npz file (it starts with {head!r})")
        for ref, _ in self.parts:
            where = ref.path if ref.member is None else f"{ref.path}:{ref.member}"
            _check_images(ref, where)
        if len({_image_shape(ref) for ref, _ in self.parts}) > 1:
            shapes = " and ".join(str(_image_shape(ref)) for ref, _ in self.parts)
            raise SourceError(f"{self.path}: the train and test images differ in shape ({shapes})")
        self._readers: list[_ArrayReader] | None = None
        self._labels: dict[int, np.ndarray] | None = None

    def _open_npz(self, images_key, labels_key):
        with ExitStack() as stack:
            try:
                archive = stack.enter_context(_zip_file(self.path))
            except _ZIP_ERRORS as exc:
                raise SourceError(f"{self.path}: not a readable .npz file ({exc})") from None
            arrays = {n[:-4]: n for n in archive.namelist() if n.endswith(".npy")}
            present = ", ".join(sorted(arrays)) or "no arrays"
            if images_key is not None and self.split != "train":
                raise SourceOptionError(
                    f"{self.path}: split picks among the default array names; images_key names the array itself",
                    ("split", "images_key"),
                )
            parts, keys = [], []
            for split in ("train", "test") if self.split == "all" else (self.split,):
                image_name = images_key or next((k for k in IMAGE_KEYS[split] if k in arrays), None)
                label_name = labels_key or next((k for k in LABEL_KEYS[split] if k in arrays), None)
                if image_name not in arrays:
                    wanted = image_name or " or ".join(IMAGE_KEYS[split])
                    raise SourceError(f"{self.path}: no {split} images array {wanted} (the file holds: {present})")
                if label_name is not None and label_name not in arrays:
                    raise SourceError(f"{self.path}: no labels array {label_name} (the file holds: {present})")
                images = _zip_ref(self.path, archive, arrays[image_name])
                labels = _zip_ref(self.path, archive, arrays[label_name]) if label_name else None
                self._check_labels(images, labels, label_name)
                parts.append((images, labels))
                keys.append((image_name, label_name))
            names = None
            if "label_names" in arrays:
                ref = _zip_ref(self.path, archive, arrays["label_names"])
                if ref.dtype.kind in "US" and len(ref.shape) == 1:
                    check_input_size(f"{self.path}:{ref.member}", "a label_names array",
                                     ref.shape[0] * ref.dtype.itemsize, LABEL_NAMES_BYTES)
                    names = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                             for v in _read_whole(ref)]
        return parts, keys, names

    def _check_labels(self, images, labels, name):
        if labels is None:
            return
        where = f"{self.path}:{labels.member}"
        shape = labels.shape
        if len(shape) == 2 and shape[1] == 1:
            shape = shape[:1]
        if len(shape) != 1 or labels.dtype.kind not in "iub":
            raise SourceError(
                f"{where}: labels must be integers of shape (N,), got {labels.dtype} of shape {labels.shape}"
            )
        if shape[0] != images.shape[0]:
            raise SourceError(
                f"{self.path}: the arrays disagree in length: {images.shape[0]} images ({images.member[:-4]}) "
                f"but {shape[0]} labels ({name})"
            )

    @property
    def description(self) -> str:
        """The arrays read, the split, and the number and shape of the images."""
        shape = "x".join(map(str, self.shape))
        if self.keys is None:
            return f"NumPy array {self.path} ({self.length} images of {shape})"
        arrays = ", ".join(f"{images}/{labels}" if labels else images for images, labels in self.keys)
        return f"NumPy arrays {arrays} in {self.path} ({self.split}, {self.length} images of {shape})"

    @property
    def length(self) -> int:
        """The number of images, from the arrays' headers."""
        return int(sum(ref.shape[0] for ref, _ in self.parts))

    @property
    def shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image (C = 1 for an (N, H, W) array)."""
        return _image_shape(self.parts[0][0])

    @property
    def label_names(self) -> list[str] | None:
        """The ``label_names`` array of a .npz, or None."""
        return self._names

    def _part_labels(self, part):
        if self._labels is None:
            self._labels = {}
        if part not in self._labels:
            images, labels = self.parts[part]
            if labels is None:
                self._labels[part] = np.full(images.shape[0], -1, np.int64)
            else:
                self._labels[part] = _as_int64_labels(np.asarray(_read_whole(labels)).reshape(-1), labels)
        return self._labels[part]

    def _reader(self, part):
        if self._readers is None:
            self._readers = [_ArrayReader(ref) for ref, _ in self.parts]
        return self._readers[part]

    def close(self) -> None:
        """Close the files, zip streams and memory maps kept between calls; the source stays usable."""
        for reader in self._readers or ():
            reader.close()
        self._readers = None

    def _gather(self, unique):
        # Indices are sorted: each array is read once, over the span its indices cover.
        images = np.empty((unique.size, *self.shape), np.uint8)
        labels = np.empty(unique.size, np.int64)
        try:
            for part, out, local in group_by_part([ref.shape[0] for ref, _ in self.parts], unique):
                lo, hi = int(local[0]), int(local[-1]) + 1
                rows = self._reader(part).rows(lo, hi)
                images[out] = rows[local - lo].reshape(local.size, *self.shape)
                labels[out] = self._part_labels(part)[local]
        except self._READ_ERRORS as exc:
            raise SourceError(f"{self.path}: cannot read ({exc})") from None
        return images, labels, np.ones(unique.size, bool)

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[Batch]:
        """Yield uint8 (B, H, W, C) images and int64 (B,) labels for images ``start..stop``.

        See :meth:`Source.batches`. Raises SourceError if the file changed
        or was truncated since it was opened.
        """
        start, stop = self._check_range(batch_size, start, stop)
        return self._iterate(batch_size, start, stop)

    def _iterate(self, batch_size, start, stop):
        shape = self.shape
        try:
            for size, segments in plan_segments([r.shape[0] for r, _ in self.parts], start, stop, batch_size):
                images = np.empty((size, *shape), np.uint8)
                labels = np.empty(size, np.int64)
                for part, lo, hi, offset in segments:
                    rows = self._reader(part).rows(lo, hi)
                    images[offset : offset + hi - lo] = rows.reshape(hi - lo, *shape)
                    labels[offset : offset + hi - lo] = self._part_labels(part)[lo:hi]
                yield images, labels
        except self._READ_ERRORS as exc:
            raise SourceError(f"{self.path}: cannot read ({exc})") from None
