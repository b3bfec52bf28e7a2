"""PNG folder store: one PNG per image in shards of 1,000, a labels CSV, a manifest.

Layout (FORMAT.md, "Stores", is the full specification)::

    name/
      manifest.json        the metadata (format "png"), written last
      labels.csv           header "index,path,label,crc32c", one row per image
      images/000/000000.png ... images/000/000999.png
      images/001/001000.png ...

Image i is ``images/{i // 1000:03d}/{i:06d}.png`` (wider numbers past 999,999).
Grayscale images are PNG mode L, two channels LA, three RGB, four RGBA.

The reader also accepts the classic layout: ``0.png ... N-1.png`` with one
CSV of labels beside them (``labels.csv``, or the folder's only ``*.csv``),
either one label per row in index order or rows ``index,path,label``. Its
images are taken to share the shape of ``0.png``.

The reader opens regular files only: a FIFO, device or socket in the place of
the manifest, the labels file or an image is refused by name, never opened
(opening a FIFO blocks).
"""
import csv
import errno
import io
import os
import re
import stat
import sys
from typing import Any, Mapping, Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from .. import _validate, kernels
from .._platform import NotRegularFileError, file_kind, open_regular, open_regular_file, remove_path
from ..checksum import bind_positions, image_checksums
from ..errors import StoreArgumentError, StoreError, StoreOptionError
from . import png_decode
from .batch import VARIABLE, EncodedBatch, check_batch, shape_text
from .metadata import Metadata, dump_metadata, load_metadata
from .reader import Reader
from .writer import Writer

FORMAT_NAME = "png"
# Version 3: the crc32c column covers the label and the index (version 2: the label, version 1: the pixels only).
FORMAT_VERSION = 3
SHARD_SIZE = 1000
MANIFEST = "manifest.json"
LABELS = "labels.csv"
# The CRC32C column (of the decoded pixels continued over the label and the
# index, 8 hex digits) catches damage a PNG decoder does not: Pillow does not
# check the last bytes of the zlib stream; and it catches a changed label, and
# a row or file that belongs to another image.
HEADER = ["index", "path", "label", "crc32c"]
# zlib level 6, Pillow's default: a folder is written once and decoded every
# epoch. BENCHMARKS.md ("PNG compression level") has the measurements.
DEFAULT_COMPRESS_LEVEL = 6
_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def image_path(index):
    """The relative path of image ``index`` in an imgconv PNG folder."""
    return f"images/{index // SHARD_SIZE:03d}/{index:06d}.png"


class EncodedPngs(EncodedBatch):
    """A batch as PNG files: ``blobs`` holds the bytes of each image's PNG."""

    def __init__(self, blobs, labels, shapes, variable, checksums):
        super().__init__(labels, shapes, variable)
        self.blobs = blobs
        self.checksums = checksums


def encode_png(image, compress_level=DEFAULT_COMPRESS_LEVEL):
    """The PNG bytes of one (H, W, C) uint8 image, C in 1..4."""
    channels = image.shape[2]
    if channels not in _MODES:
        raise StoreArgumentError(f"PNG holds 1 to 4 channels, the image has {channels}")
    pil = Image.fromarray(image[:, :, 0] if channels == 1 else image, _MODES[channels])
    out = io.BytesIO()
    pil.save(out, format="PNG", compress_level=compress_level)
    return out.getvalue()


def encode_batch(images: Any, labels: Any, *, compress_level: int = DEFAULT_COMPRESS_LEVEL) -> "EncodedPngs":
    """Check a batch and encode each image as PNG (zlib ``compress_level`` 0..9).

    Returns :class:`EncodedPngs`. Raises StoreArgumentError for a bad batch or
    an image with more than 4 channels.
    """
    batch = check_batch(images, labels)
    blobs = []
    for i, image in enumerate(batch.images):
        try:
            blobs.append(encode_png(image, compress_level))
        except StoreArgumentError as exc:
            raise StoreArgumentError(f"image {i} of the batch: {exc}") from None
    checksums = image_checksums(batch.images, batch.labels)
    return EncodedPngs(blobs, batch.labels, batch.shapes(), batch.variable, checksums)


class _PngEncoder:
    """Picklable ``(images, labels) -> EncodedPngs`` with a fixed compression level."""

    def __init__(self, compress_level):
        self.compress_level = compress_level

    def __call__(self, images, labels):
        return encode_batch(images, labels, compress_level=self.compress_level)


def _write_file(path, data):
    """Create ``path`` holding ``data`` (os.open/os.write: no buffered file object per image)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


class PngFolderWriter(Writer):
    """Writes a PNG folder (see the module docstring). Option ``compress_level`` 0..9 (default 6)."""

    format_name = FORMAT_NAME
    heavy_encoding = True  # PNG compression: the pool's work
    format_version = FORMAT_VERSION

    def __init__(self, path: Any, *, compress_level: int = DEFAULT_COMPRESS_LEVEL, **common: Any) -> None:
        super().__init__(path, **common)
        self.compress_level = _validate.integer("compress_level", compress_level, minimum=0, maximum=9,
                                                error=StoreOptionError, where=f"{self.path}: ")
        self.options = {"compress_level": self.compress_level}
        self._csv_file: Any = None
        self._shard: Optional[int] = None  # the images/NNN folder made last

    def encoder(self) -> "_PngEncoder":
        """The picklable encode step: :func:`encode_batch` with this writer's level."""
        return _PngEncoder(self.compress_level)

    def _start(self):
        os.mkdir(self.temporary)  # in the partial directory, made and emptied by the base class
        os.mkdir(os.path.join(self.temporary, "images"))
        self._csv_file = open(os.path.join(self.temporary, LABELS), "w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._csv_file, lineterminator="\n")
        self._csv.writerow(HEADER)

    def _write(self, encoded):
        # Files are created here, one at a time, not by the workers or a
        # thread pool: on this project's VM (ext4 without a journal) creating
        # a file costs 25-400 us of kernel time scanning recently deleted
        # inodes, and two processes creating files at once made that cost
        # grow by 1.5-2x (FORMAT.md, "PNG folder").
        for j, blob in enumerate(encoded.blobs):
            index = self.count + j
            shard = index // SHARD_SIZE
            if shard != self._shard:
                try:
                    os.mkdir(os.path.join(self.temporary, "images", f"{shard:03d}"))
                except FileExistsError:
                    pass  # a resumed writer's shard
                self._shard = shard
            _write_file(os.path.join(self.temporary, image_path(index)), blob)
        # The workers' checksums end with the labels; the images' indices are known here.
        checksums = bind_positions(encoded.checksums, self.count)
        self._csv.writerows(
            [index, image_path(index), label, f"{crc:08x}"]
            for index, label, crc in zip(range(self.count, self.count + len(encoded)), encoded.labels.tolist(),
                                         checksums.tolist())
        )

    def format_metadata(self) -> dict:
        """The zlib level, the shard size and the labels file."""
        return {"compress_level": self.compress_level, "shard_size": SHARD_SIZE, "labels_file": LABELS}

    def _finish(self, meta: Metadata) -> None:
        try:
            self._csv_file.close()
            self._csv_file = None
            with open(os.path.join(self.temporary, MANIFEST), "wb") as f:
                f.write(dump_metadata(meta))
        except OSError as exc:
            raise StoreError(f"{self.path}: writing the PNG folder failed: {exc}") from None

    def _abort(self) -> None:
        f, self._csv_file = self._csv_file, None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass  # flushing the CSV can fail (disk full); the output is being removed anyway

    # Resumable -------------------------------------------------------------------
    # The output is trusted image by image: a row of labels.csv in order and
    # a PNG file that is whole (signature first, IEND chunk last). A file a
    # killed writer left half-written fails the second test.

    def _durable_count(self) -> int:
        if self._csv_file is not None:
            self._csv_file.flush()  # the rows reach the file as the images did
        return self.count

    def _reopen(self, state: Mapping[str, Any]) -> int:
        with open(os.path.join(self.temporary, LABELS), "rb") as f:
            lines = f.read().split(b"\n")[:-1]  # what follows the last newline is a torn row
        if not lines or lines[0].decode("utf-8", "replace").split(",") != HEADER:
            raise StoreError(f"{LABELS} has no header")
        count = 0
        for line in lines[1:]:
            fields = line.decode("utf-8", "replace").split(",")
            if (len(fields) != len(HEADER) or fields[:2] != [str(count), image_path(count)]
                    or not _whole_png(os.path.join(self.temporary, image_path(count)))):
                break
            count += 1
        self._kept_rows = lines[: count + 1]
        return count

    def _suspend(self) -> int:
        self._abort()  # closing the CSV flushes its rows: every image written is kept
        return self.count

    def _truncate(self, count: int) -> None:
        labels = os.path.join(self.temporary, LABELS)
        with open(labels + ".new", "wb") as f:
            f.write(b"".join(line + b"\n" for line in self._kept_rows[: count + 1]))
        os.replace(labels + ".new", labels)
        images = os.path.join(self.temporary, "images")
        for shard in os.listdir(images):
            if shard.isdigit() and int(shard) * SHARD_SIZE >= count:
                remove_path(os.path.join(images, shard))
            elif shard.isdigit() and (int(shard) + 1) * SHARD_SIZE > count:
                for name in os.listdir(os.path.join(images, shard)):
                    stem = name.split(".")[0]
                    if not stem.isdigit() or int(stem) >= count:
                        os.unlink(os.path.join(images, shard, name))
        self._csv_file = open(labels, "a", newline="", encoding="utf-8")
        self._csv = csv.writer(self._csv_file, lineterminator="\n")
        self._shard = None


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def _whole_png(path):
    """Whether the file at ``path`` starts and ends like a PNG file (a cheap test for a torn write)."""
    try:
        with open_regular_file(path, follow_symlinks=False) as f:
            head = f.read(len(_PNG_SIGNATURE))
            f.seek(0, os.SEEK_END)
            if f.tell() < len(_PNG_SIGNATURE) + len(_PNG_END):
                return False
            f.seek(-len(_PNG_END), os.SEEK_END)
            return head == _PNG_SIGNATURE and f.read() == _PNG_END
    except OSError:
        return False


class PngFolderReader(Reader):
    """Reads an imgconv PNG folder, or a classic ``0.png ... N-1.png`` folder with a labels CSV.

    Options: ``verify`` (default True): check every image against the
    checksum of the labels CSV; ``allow_unchecked`` (default False): read an
    imgconv folder of an older format version whose labels CSV has no
    checksums, unchecked (a folder of the current version without them is
    refused whatever this says). A classic folder has no checksums and is
    read unchecked.
    """

    format_name = FORMAT_NAME

    def _open_handles(self) -> Metadata:
        if self.metadata:
            return self.metadata  # no handles: what a forked child inherits is all it needs
        manifest = os.path.join(self.path, MANIFEST)
        if os.path.lexists(manifest):
            meta = self._open_imgconv(manifest)
        else:
            meta = self._open_classic()
        return meta

    def _open_imgconv(self, manifest):
        try:
            with open_regular_file(manifest) as f:
                meta = load_metadata(f.read(), self.path, FORMAT_NAME, FORMAT_VERSION)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot read {MANIFEST}: {exc}") from None
        labels_file = meta.get("labels_file", LABELS)
        if (not isinstance(labels_file, str) or not labels_file or os.path.isabs(labels_file)
                or ".." in labels_file.replace("\\", "/").split("/") or "\0" in labels_file):
            raise StoreError(f"{self.path}: {MANIFEST} names a labels_file outside the folder or not a file name: "
                             f"{labels_file!r}")
        labels_path = os.path.join(self.path, labels_file)
        text = _read_text(labels_path)
        parsed = _parse_as_written(text)
        if parsed is None:  # not exactly as imgconv writes it: row by row, with the reasons
            rows = _csv_rows(text, labels_path)
            header = [c.strip() for c in rows[0]] if rows else []
            if header not in (HEADER, HEADER[:3]):
                raise StoreError(f"{self.path}: {LABELS} must start with the header {','.join(HEADER)}")
            if header != HEADER:
                self._refuse_unchecked(meta["format_version"], labels_file)
            parsed = _parse_indexed(rows[1:], self.path, LABELS, len(header) == 4)
        self._paths, self._labels, self._checksums = parsed
        _check_inside(self.path, self._paths)
        self._no_links = True
        if len(self._labels) != meta["count"]:
            raise StoreError(
                f"{self.path}: {LABELS} lists {len(self._labels)} images, the manifest says {meta['count']}"
            )
        return meta

    def _refuse_unchecked(self, version, labels_file):
        """Refuse an imgconv folder whose labels file has no checksums, unless ``allow_unchecked`` (older versions)."""
        if version >= FORMAT_VERSION:
            raise StoreError(f"{self.path}: {labels_file} has no crc32c column: every folder of format version "
                             f"{FORMAT_VERSION} has one, the folder is damaged or crafted")
        if not self._options.get("allow_unchecked", False):
            raise StoreError(f"{self.path}: {labels_file} has no crc32c column (format version {version}); to read "
                             "the folder unchecked anyway, open it with imgconv.open(path, allow_unchecked=True)")

    def _open_classic(self):
        self._no_links = False  # a classic folder may be links to images kept elsewhere
        if not os.path.exists(os.path.join(self.path, "0.png")):
            raise StoreError(f"{self.path}: neither {MANIFEST} nor a classic 0.png is here")
        csv_path = _classic_csv(self.path)
        rows = [r for r in _read_csv(csv_path) if r and any(c.strip() for c in r)]
        header = [c.strip().lower() for c in rows[0]] if rows else []
        self._checksums = None
        if header[:3] == HEADER[:3]:
            self._paths, self._labels, self._checksums = _parse_indexed(
                rows[1:], self.path, os.path.basename(csv_path), header == HEADER
            )
        else:
            if header and not _is_int(rows[0][0]):
                rows = rows[1:]  # a header such as "label"
            self._labels = _parse_single(rows, csv_path)
            self._paths = [f"{i}.png" for i in range(len(self._labels))]
        n = len(self._labels)
        if n == 0:
            raise StoreError(f"{csv_path}: no labels in the CSV")
        last = os.path.join(self.path, self._paths[-1])
        if not os.path.exists(last):
            raise StoreError(f"{self.path}: {os.path.basename(csv_path)} lists {n} labels but {last} is missing")
        first, _ = self._decode(0, None)
        return {
            # Version 1: a crc32c column here is read as the pixels' CRC only.
            "format": FORMAT_NAME, "format_version": 1, "count": n, "shape": first.shape,
            "dtype": "uint8", "label_names": None, "source": f"classic PNG folder ({os.path.basename(csv_path)})",
            "imgconv_version": None,
        }

    def _close_handles(self):
        pass  # no handle stays open between reads

    def labels(self):
        """All labels as an (N,) int64 array, from the labels CSV."""
        self._ensure_open()
        return self._labels.copy()

    def checksums(self):
        """The checksum of every image from the labels CSV, or None (a classic folder).

        Format version 2 and later: the CRC32C of the pixels continued over
        the label (:func:`imgconv.checksum.image_checksums`); version 1:
        of the pixels only.
        """
        self._ensure_open()
        return self._checksums

    def _checksum_version(self):
        return min(self.metadata["format_version"], 3)

    def check_layout(self):
        """Files the labels CSV lists that are missing, or are not regular files."""
        self._ensure_open()
        missing, special = [], []
        for p in self._paths:
            try:
                mode = os.stat(os.path.join(self.path, p)).st_mode
            except OSError:
                missing.append(p)
                continue
            if not stat.S_ISREG(mode):
                special.append(f"{p} ({file_kind(mode)})")
        found = []
        if missing:
            found.append(f"{len(missing)} image file(s) listed in the labels CSV are missing, e.g. {missing[0]}")
        if special:
            found.append(f"{len(special)} image file(s) listed in the labels CSV are not regular files, e.g. "
                         f"{special[0]}")
        return found

    def _decode(self, i, shape, out=None):
        """Image ``i`` and its label; ``out``, an (H, W, C) array of the store's shape, receives the pixels
        when given. With a known shape the file is decoded by :mod:`.png_decode` when it is exactly what
        imgconv writes, by Pillow otherwise."""
        path = os.path.join(self.path, self._paths[i])
        try:
            image = self._decode_own(path, shape, out) if self._fast_shape(shape) else None
            if image is None:
                image = self._decode_pillow(path, i, shape)
        except FileNotFoundError:
            raise StoreError(f"{path}: image {i} is missing") from None
        except NotRegularFileError as exc:
            if exc.kind == "a symbolic link":
                raise StoreError(f"{path}: image {i} is a symbolic link; an imgconv PNG folder holds none, "
                                 "and a link could lead outside it") from None
            raise StoreError(f"{path}: image {i} is {exc.kind}, not a regular file; refused unopened") from None
        except Image.DecompressionBombError as exc:
            raise StoreError(f"{path}: image {i} is refused as a decompression bomb: {exc}") from None
        except (OSError, ValueError, SyntaxError) as exc:
            if getattr(exc, "errno", None) == errno.ELOOP:
                raise StoreError(f"{path}: image {i} is a symbolic link; an imgconv PNG folder holds none, "
                                 "and a link could lead outside it") from None
            raise StoreError(f"{path}: image {i} cannot be decoded (corrupt or truncated PNG): {exc}") from None
        if image.ndim == 2:
            image = image[:, :, np.newaxis]
        if shape is not None and shape != VARIABLE and image.shape != tuple(shape):
            raise StoreError(f"{path}: image {i} is {shape_text(image.shape)}, the store holds {shape_text(shape)}")
        if out is not None and image is not out:
            out[...] = image
        return image, self._labels[i]

    @staticmethod
    def _fast_shape(shape):
        """Whether images of ``shape`` go to :mod:`.png_decode` first: a fixed shape (its header is known
        before the file is read), and the compiled kernels (the NumPy unfilter is slower than Pillow)."""
        return shape is not None and shape != VARIABLE and kernels.BACKEND == "compiled"

    def _decode_own(self, path, shape, out):
        """The pixels by :func:`png_decode.decode`, or None (the file is left to Pillow)."""
        shape = tuple(shape)
        fd = open_regular(path, follow_symlinks=not self._no_links)
        try:
            data = png_decode.read_file(fd, png_decode.file_limit(shape))
        finally:
            os.close(fd)
        if data is None:
            return None
        # The decompression bomb limit Pillow applies to the header once the file is open (imgconv's
        # pixel_limit wraps this function): the same refusal as before for a store of huge images.
        Image._decompression_bomb_check((shape[1], shape[0]))
        return png_decode.decode(data, shape, out)

    def _decode_pillow(self, path, i, shape):
        """The pixels by Pillow (modes 1 and P converted), the size checked against ``shape`` first."""
        with _open_png(path, self._no_links) as f, _open_image(f, path, i) as pil:
            if shape is not None and shape != VARIABLE and pil.size != (shape[1], shape[0]):
                # Checked from the header, before decoding: a damaged or hostile file
                # declaring a huge size is refused without allocating it.
                raise StoreError(f"{path}: image {i} is {pil.size[0]}x{pil.size[1]} pixels, "
                                 f"the store holds {shape_text(shape)}")
            return np.array(_eight_bit(pil, path))  # a writeable copy: asarray would be read-only

    def _read_one(self, i):
        return self._decode(i, self.shape)

    def _read_many(self, indices, out):
        if self.variable:
            return [self._decode(i, VARIABLE)[0] for i in indices.tolist()], self._labels[indices]
        if out is None:
            out = np.empty((indices.size, *self.shape), np.uint8)
        shape = self.shape
        for k, i in enumerate(indices.tolist()):
            self._decode(i, shape, out[k])
        return out, self._labels[indices]


def _open_png(path, no_links):
    """``path`` opened for reading if it is a regular file (NotRegularFileError otherwise, "a symbolic link" too
    with ``no_links``)."""
    return open_regular_file(path, follow_symlinks=not no_links)


def _open_image(f, path, i):
    """The PNG image in the open file ``f``; StoreError when it holds another format.

    Only Pillow's PNG plugin is asked (what a store holds): trying the
    others first is a good part of the cost of one small image.
    """
    try:
        return Image.open(f, formats=_PNG_ONLY)
    except UnidentifiedImageError:
        f.seek(0)
        with Image.open(f) as other:  # UnidentifiedImageError (an OSError) again when nothing reads it
            raise StoreError(f"{path}: image {i} is {other.format}, not PNG") from None


_PNG_ONLY = ("PNG",)


def _check_inside(root, paths):
    """Refuse image paths whose folders resolve outside ``root`` (a symbolic link to elsewhere).

    One check per distinct folder, a few hundred for millions of images; the
    files themselves are opened without following links (:func:`_open_png`).
    A folder reached through no symbolic link is inside (paths with ".." are
    refused when the labels are read): one ``lstat`` per folder and parent,
    and the real path is resolved only where a link is met.
    """
    real_root = None
    linked: dict[str, bool] = {}  # folder -> whether a component of it is a symbolic link
    for folder in sorted(set(map(_folder_of, paths))):
        if not _through_link(root, folder, linked):
            continue
        if real_root is None:
            real_root = os.path.realpath(root)
        real = os.path.realpath(os.path.join(root, folder))
        if real != real_root and not real.startswith(real_root + os.sep):
            raise StoreError(f"{root}: the folder {folder} of its images leads outside the store (to {real})")


# The folder of a relative image path: os.path.dirname, without its cost where "/" is the only separator.
_folder_of = (lambda path: path.rpartition("/")[0]) if os.sep == "/" and not os.altsep else os.path.dirname


def _through_link(root, folder, linked):
    """Whether ``folder`` (relative to ``root``) or one of its parents is a symbolic link (or cannot be
    told: missing folders are left to the reads, which name the file); answers kept in ``linked``."""
    if not folder or folder == ".":
        return False
    known = linked.get(folder)
    if known is None:
        parent = os.path.dirname(folder)
        try:
            link = stat.S_ISLNK(os.lstat(os.path.join(root, folder)).st_mode)
        except OSError:
            link = True  # let realpath say where it leads
        known = linked[folder] = link or _through_link(root, parent, linked)
    return known


def _eight_bit(pil, path):
    if pil.mode in ("L", "LA", "RGB", "RGBA"):
        return pil
    if pil.mode == "P":
        return pil.convert("RGBA" if "transparency" in pil.info else "RGB")
    if pil.mode == "1":
        return pil.convert("L")
    raise StoreError(f"{path}: PNG mode {pil.mode} is not 8-bit L, LA, RGB or RGBA")


def _read_csv(path):
    return _csv_rows(_read_text(path), path)


def _read_text(path):
    """The labels file at ``path`` as text (UTF-8, line ends as they are)."""
    try:
        with open_regular_file(path) as f:
            return f.read().decode("utf-8")
    except FileNotFoundError:
        raise StoreError(f"{path}: the labels file is missing") from None
    except NotRegularFileError as exc:
        raise StoreError(f"{path}: the labels file is {exc.kind}, not a regular file; refused unopened") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path}: cannot read the labels CSV: {exc}") from None


def _csv_rows(text, path=""):
    """The rows of a labels CSV's ``text``."""
    # The classic recipe writes space-separated rows; imgconv writes commas.
    delimiter = "," if "," in text[:4096] else " "
    try:
        return list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error as exc:
        raise StoreError(f"{path}: cannot read the labels CSV: {exc}") from None


# A labels.csv exactly as imgconv writes it: the header, then rows "index,images/SSS/NNNNNN.png,label,crc32c".
_WRITTEN_HEADER = ",".join(HEADER) + "\n"
_WRITTEN_ROWS = re.compile(
    r"(?:[0-9]++,images/[0-9]++/[0-9]++\.png,-?[0-9]++,[0-9a-fA-F]{8}\n)*+" if sys.version_info >= (3, 11)
    else r"(?:[0-9]+,images/[0-9]+/[0-9]+\.png,-?[0-9]+,[0-9a-fA-F]{8}\n)*")  # possessive: 4x faster


def _parse_as_written(text):
    """Paths, labels and checksums of a labels CSV's ``text`` in imgconv's own form, all rows at once;
    None when any row is not exactly in that form (then :func:`_parse_indexed` reads it row by row).

    The same values as :func:`_parse_indexed` gives for such rows, in a fraction of its time.
    """
    if not text.startswith(_WRITTEN_HEADER):
        return None
    body = text[len(_WRITTEN_HEADER):]
    if not _WRITTEN_ROWS.fullmatch(body):
        return None
    fields = body.replace("\n", ",").split(",")  # four per row, and "" after the last
    n = len(fields) // 4
    try:
        indices = np.fromiter(map(int, fields[0:-1:4]), np.int64, n)
        labels = np.fromiter(map(int, fields[2::4]), np.int64, n)
    except OverflowError:
        return None  # a label past 64 bits: the row-by-row reading says which
    if not np.array_equal(indices, np.arange(n)):
        return None  # an index out of order: the same
    checksums = np.frombuffer(bytes.fromhex("".join(fields[3::4])), ">u4").astype(np.uint32)
    return fields[1::4], labels, checksums


def _is_int(text):
    try:
        int(text)
    except ValueError:
        return False
    return True


def _parse_indexed(rows, where, name, with_checksums):
    """Paths, labels and (when the CSV has the column) checksums of index,path,label[,crc32c] rows."""
    paths, labels, checksums = [], [], []
    for n, row in enumerate(rows):
        try:
            index, rel, label = int(row[0]), row[1].strip(), int(row[2])
            if not -(2**63) <= label < 2**63:
                raise ValueError("a label must fit in a signed 64-bit integer")
            if with_checksums:
                checksums.append(int(row[3], 16))
                if not 0 <= checksums[-1] <= 0xFFFFFFFF:
                    raise ValueError("not a 32-bit checksum")
        except (ValueError, IndexError):
            columns = ",".join(HEADER if with_checksums else HEADER[:3])
            raise StoreError(f"{where}: {name} row {n + 2} is not {columns}: {row!r}") from None
        if index != n:
            raise StoreError(f"{where}: {name} row {n + 2} has index {index}, expected {n}")
        if os.path.isabs(rel) or ".." in rel.replace("\\", "/").split("/"):
            raise StoreError(f"{where}: {name} row {n + 2} points outside the folder: {rel!r}")
        paths.append(rel)
        labels.append(label)
    return paths, np.array(labels, np.int64), (np.array(checksums, np.uint32) if with_checksums else None)


def _parse_single(rows, path):
    labels = []
    for n, row in enumerate(rows):
        cells = [c for c in row if c.strip()]
        if len(cells) != 1 or not _is_int(cells[0]) or not -(2**63) <= int(cells[0]) < 2**63:
            raise StoreError(f"{path}: row {n + 1} is not a single integer label (signed 64-bit): {row!r}")
        labels.append(int(cells[0]))
    return np.array(labels, np.int64)


def _classic_csv(folder):
    preferred = os.path.join(folder, LABELS)
    if os.path.exists(preferred):
        return preferred
    found = sorted(name for name in os.listdir(folder) if name.lower().endswith(".csv"))
    if len(found) != 1:
        what = "no CSV" if not found else f"{len(found)} CSVs ({', '.join(found[:4])})"
        raise StoreError(
            f"{folder}: a classic PNG folder needs labels.csv or exactly one *.csv of labels, found {what}")
    return os.path.join(folder, found[0])


def detect(path: str) -> bool:
    """True for a directory with manifest.json, or a classic folder (0.png and a CSV)."""
    if not os.path.isdir(path):
        return False
    if os.path.lexists(os.path.join(path, MANIFEST)):
        return True
    if not os.path.exists(os.path.join(path, "0.png")):
        return False
    return any(name.lower().endswith(".csv") for name in os.listdir(path))
