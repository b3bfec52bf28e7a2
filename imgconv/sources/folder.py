"""A directory tree of images, any format Pillow decodes.

Two layouts, chosen from what is there:

- **class per subfolder** (torchvision's ImageFolder): ``root/cat/1.png``,
  ``root/dog/a/2.jpg``; the label is the index of the top-level folder among
  the sorted folder names (hidden ones, starting with ".", are ignored);
  images anywhere below a class folder belong to it.
- **flat**: images anywhere below ``root`` with no class folders, label -1;
  or, with ``labels_csv``, labels from a CSV file whose first column names the
  image (its path relative to ``root``, with or without the extension) and
  whose second column holds its label: integers as they are, or class names,
  numbered in sorted order. A first row is a header when it names no image and
  its label is not an integer ("file,label"); any other row naming no image is
  an error.

Only regular files are images (a FIFO or device named ``x.png`` is left out of
the scan, and refused if it replaces a file later, rather than blocking a read
forever). A class folder holding no image is an error, as in torchvision.

The scan (file names and labels) happens when the source is made and travels
with it to worker processes, so every process sees the same numbering.
Decoding happens in :meth:`FolderSource.batches`, in whichever process runs it.

Every image becomes ``mode``: "RGB" (default), "L" or "RGBA". Deliberate
choices on the way: the EXIF orientation is applied (photos come out upright,
as viewers show them); palette images are expanded (to RGBA when they have a
transparent colour); 16-bit grayscale is scaled to 8 bits (``>> 8``), not
clipped; for "RGB" and "L", transparency is composited over white rather than
dropped; multi-frame files (GIF, TIFF) give their first frame. Floating-point
(mode "F") and CIE LAB images are refused: they have no one 8-bit scale or
no faithful conversion here.

Sizes stay as they are unless ``resize=(W, H)`` is given, with
``resize_policy`` "stretch" (resize to exactly W x H) or "crop" (scale the
shorter side to fit, then cut the centre), both bicubic. Without ``resize``,
:attr:`FolderSource.shape` reads every file's header once to learn whether
all images share one size; batches are then arrays, otherwise lists. A
source whose ``shape`` was not asked before it was pickled (say, to a
worker) does not read the whole folder for a range: it reads the headers of
that range alone, and its batches are arrays when those images share a size.

Decompression bombs: an image declaring more than ``max_pixels`` pixels
(width x height; default Pillow's own limit, about 89 million), or a file
holding such an image (an ICO's PNG, an ICNS's PNG, an MPO's frame), is
refused from the headers, before any of its pixels is decoded, as a bad
image (:mod:`.pixel_limit`). The limit is per source, so a folder of genuine
huge scans can raise it without loosening Pillow for the rest of the
program.

Bad images (corrupt, truncated, empty, not an image, too many pixels): ``on_error="fail"``
(default) raises SourceError naming the first; ``on_error="skip"`` leaves them
out of the batches (which are then shorter, even empty: the k-th batch
always covers indices ``start + k * batch_size`` onwards; after ``take``,
``source.last_kept`` marks which of the indices asked were kept), appends a
:class:`~imgconv.sources.base.SkippedFile` to ``source.skipped`` and, when a
``batches`` iteration ends, issues one
:class:`~imgconv.sources.base.SkippedImageWarning` naming the files skipped
during it.
"""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

from ..errors import SourceError, SourceOptionError
from ..options import Option, show_width_by_height, whole_number, width_by_height
from .base import ON_ERROR, Batch, SkippedFile, Source, check_choice, open_input, read_input, warn_skipped
from .pixel_limit import DEFAULT_MAX_PIXELS, PixelLimitError, check_opened, pixel_limit

MODES = {"RGB": 3, "L": 1, "RGBA": 4}
RESIZE_POLICIES = ("stretch", "crop")

MODE = Option("mode", default="RGB", choices=tuple(MODES), help="the channel layout of every image")
RESIZE = Option("resize", type=width_by_height, metavar="WxH", show=show_width_by_height,
                help="make every image W pixels wide and H high")
RESIZE_POLICY = Option("resize_policy", default="stretch", choices=RESIZE_POLICIES,
                       help="stretch to the size, or scale the shorter side to it and cut the centre")
ON_ERROR_OPTION = Option("on_error", default="fail", choices=ON_ERROR,
                         help="an unreadable or refused image stops the conversion (fail) or is skipped and reported")
LABELS_CSV = Option("labels_csv", metavar="CSV", help="a CSV of image,label rows labelling a flat folder")
MAX_PIXELS = Option("max_pixels", type=whole_number(1), metavar="N",
                    help=f"refuse an image declaring more than N pixels, or holding one (a decompression bomb), "
                         f"as a bad image, before decoding it (default: Pillow's limit, {DEFAULT_MAX_PIXELS:,}); "
                         "raising it lets each image of up to N pixels be decoded, at about 15 bytes a pixel "
                         "at the peak, in each worker: for files you trust")

# Pillow registers these extensions, but only as stubs or through external
# programs (HDF5, GRIB, EPS via Ghostscript...): they are not pictures here.
_NOT_IMAGES = {".h5", ".hdf", ".bufr", ".grib", ".eps", ".ps", ".mpeg", ".mpg", ".wmf", ".emf", ".fit", ".fits"}

# A labels CSV is read whole, so it is bounded first: 1 MiB, and 4 KiB an image (a path and a label, with room
# for a few more columns); every row beyond the header names an image, so a genuine file stays well within.
LABELS_CSV_BYTES_FIXED = 1 << 20
LABELS_CSV_BYTES_PER_IMAGE = 4096

_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}
_WHITE = (255, 255, 255, 255)


def image_extensions() -> frozenset[str]:
    """The lower-case file extensions (".png", ...) of the formats Pillow can decode here."""
    Image.init()
    return frozenset(
        ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN and ext not in _NOT_IMAGES
    )


def _is_image(name, extensions):
    return os.path.splitext(name)[1].lower() in extensions and not name.startswith(".")


def _walk(directory):
    """Yield ``(folder, sorted names of its regular files)`` below ``directory``, in sorted order.

    Hidden folders are skipped; symbolic links are followed, each real
    folder once, so a link loop cannot trap the walk. FIFOs, sockets and
    devices are not files here: opening a FIFO would block forever.
    Unreadable folders are passed over, as ``os.walk`` does.
    """
    seen = set()
    pending = [directory]
    while pending:
        top = pending.pop()
        real = os.path.realpath(top)
        if real in seen:
            continue
        seen.add(real)
        try:
            with os.scandir(top) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError:
            continue
        folders, files = [], []
        for entry in entries:
            try:
                # DirEntry answers from the directory listing; it stats only symbolic links.
                if entry.is_dir():
                    if not entry.name.startswith("."):
                        folders.append(entry.name)
                elif entry.is_file():
                    files.append(entry.name)
            except OSError:
                continue
        yield top, files
        pending.extend(os.path.join(top, name) for name in reversed(folders))


def _walk_images(directory, extensions):
    """Relative paths (with "/") of the images below ``directory``, sorted."""
    found = []
    for top, files in _walk(directory):
        relative = os.path.relpath(top, directory)
        for name in files:
            if _is_image(name, extensions):
                found.append(name if relative == "." else f"{relative}/{name}".replace(os.sep, "/"))
    return found


def _top_level(root, extensions):
    """(class folder names, image file names) directly in ``root``."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise SourceError(f"{root}: cannot list the directory ({exc.strerror})") from None
    folders = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    images = [e.name for e in entries if e.is_file() and _is_image(e.name, extensions)]
    return folders, images


def scan_folder(root: str, labels_csv: str | os.PathLike[str] | None = None
                ) -> tuple[list[str], np.ndarray, list[str] | None, str]:
    """Find the images below ``root`` and their labels.

    Returns ``(files, labels, label_names, layout)``: relative paths, an int64
    array, the class names or None, and "classes" or "flat". Raises
    SourceError for a folder with no images, a top level mixing images and
    class folders, or a CSV that does not match the images.
    """
    extensions = image_extensions()
    folders, top_images = _top_level(root, extensions)
    if labels_csv is not None:
        files = _walk_images(root, extensions)
        if not files:
            raise SourceError(f"directory {root} holds no images")
        labels, names = _csv_labels(os.fspath(labels_csv), files)
        return files, labels, names, "flat"
    per_class = [_walk_images(os.path.join(root, f), extensions) for f in folders]
    if not any(per_class):
        if not top_images:
            raise SourceError(f"directory {root} holds no images")
        return top_images, np.full(len(top_images), -1, np.int64), None, "flat"
    empty = [f for f, found in zip(folders, per_class) if not found]
    if empty and not top_images:
        # Each would be a label no image has, shifting nothing but misleading every count.
        raise SourceError(
            f"directory {root}: class folder(s) {', '.join(empty[:5])}{', ...' if len(empty) > 5 else ''} "
            "hold no images; remove them or add images (torchvision's ImageFolder refuses them too)"
        )
    if top_images:
        with_images = [f for f, found in zip(folders, per_class) if found]
        raise SourceError(
            f"directory {root} mixes images at its top level ({', '.join(top_images[:3])}"
            f"{', ...' if len(top_images) > 3 else ''}) with class folders ({', '.join(with_images[:3])}"
            f"{', ...' if len(with_images) > 3 else ''}); move the images into a class folder, "
            "or pass labels_csv to read the whole tree as one flat set"
        )
    files = [f"{folder}/{name}" for folder, found in zip(folders, per_class) for name in found]
    labels = np.repeat(np.arange(len(folders), dtype=np.int64), [len(found) for found in per_class])
    return files, labels, folders, "classes"


def _csv_rows(csv_path, images):
    """``(line number, row)`` of the non-blank rows of the labels CSV at ``csv_path``, for ``images`` images.

    The file is refused unless it is a regular file of at most
    :data:`LABELS_CSV_BYTES_FIXED` plus :data:`LABELS_CSV_BYTES_PER_IMAGE`
    per image, checked before it is read; its rows are then parsed one at a
    time, so a bad row stops the reading at once.
    """
    limit = LABELS_CSV_BYTES_FIXED + LABELS_CSV_BYTES_PER_IMAGE * images
    try:
        text = read_input(csv_path, f"a labels CSV for {images:,} images", limit).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"{csv_path}: cannot read the labels CSV ({exc})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            if row and any(cell.strip() for cell in row):
                yield reader.line_num, row
    except csv.Error as exc:
        raise SourceError(f"{csv_path}: cannot read the labels CSV ({exc})") from None


def _as_int(text):
    """``text`` as an int, or None when it is not one."""
    try:
        return int(text)
    except ValueError:  # also for more digits than Python converts
        return None


def _csv_labels(csv_path, files):
    """Labels of ``files`` from the CSV at ``csv_path``: ``(int64 array, names or None)``."""
    index: dict[str, int] = {}
    for i, name in enumerate(files):
        index.setdefault(name, i)
        index.setdefault(os.path.splitext(name)[0], i)
    found: dict[int, str] = {}
    lines: dict[int, int] = {}
    first = True
    for number, row in _csv_rows(csv_path, len(files)):
        # A first row with an integer label is data even when it names no image: it must not vanish unreported.
        header = first and row[0].strip() not in index and (len(row) < 2 or _as_int(row[1].strip()) is None)
        first = False
        if header:
            continue
        if len(row) < 2:
            raise SourceError(f"{csv_path}: row {number} has {len(row)} column(s); expected image,label")
        key, value = row[0].strip().replace("\\", "/"), row[1].strip()
        if key not in index:
            raise SourceError(f"{csv_path}: row {number} names {key!r}, which is not an image in the folder")
        i = index[key]
        if found.get(i, value) != value:
            raise SourceError(f"{csv_path}: {files[i]} has two labels, {found[i]!r} and {value!r}")
        found[i], lines[i] = value, number
    missing = [files[i] for i in range(len(files)) if i not in found]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise SourceError(f"{csv_path}: {len(missing)} image(s) have no label row: {shown}")
    values = [found[i] for i in range(len(files))]
    numbers = [_as_int(v) for v in values]
    if None not in numbers:
        for i, label in enumerate(numbers):
            if not -(2**63) <= label < 2**63:
                raise SourceError(f"{csv_path}: row {lines[i]} labels {files[i]} {values[i]}, beyond a 64-bit integer")
        return np.array(numbers, np.int64), None
    names = sorted(set(values))
    number = {name: i for i, name in enumerate(names)}
    return np.array([number[v] for v in values], np.int64), names


# --- decoding ----------------------------------------------------------------


def _sixteen_to_eight(im):
    pixels = np.asarray(im)
    return Image.fromarray((np.clip(pixels.astype(np.int64), 0, 65535) >> 8).astype(np.uint8), "L")


def to_mode(im: Image.Image, mode: str) -> Image.Image:
    """Convert a Pillow image to ``mode`` ("RGB", "L", "RGBA") the way the module docstring says.

    Raises SourceError for floating-point and LAB images (see the module docstring).
    """
    if im.mode == "F":
        raise SourceError("floating-point pixels (mode F) have no one 8-bit scale; save the image with 8 or 16 bits")
    if im.mode == "LAB":
        raise SourceError("CIE LAB colour has no faithful conversion to RGB here; save the image as RGB")
    if im.mode.startswith("I"):
        im = _sixteen_to_eight(im)
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
    if mode == "RGBA":
        return im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "RGBa", "La") or "transparency" in im.info:
        im = Image.alpha_composite(Image.new("RGBA", im.size, _WHITE), im.convert("RGBA"))
    return im.convert(mode)


def _orientation(im):
    try:
        return int(im.getexif().get(_ORIENTATION, 1))
    except Exception:  # a broken EXIF block is no reason to lose the picture
        return 1


def _too_many_pixels(path, exc):
    return SourceError(
        f"{path}: {exc} (a decompression bomb?); if the image is genuine, raise the limit with max_pixels=N"
    )


def decode_image(path: str, mode: str = "RGB", resize: tuple[int, int] | None = None, resize_policy: str = "stretch",
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode the image file at ``path`` into a C-contiguous uint8 (H, W, C) array.

    Applies the EXIF orientation, converts to ``mode`` and resizes as the
    module docstring says. Raises SourceError naming the file and the
    problem, among them an image of more than ``max_pixels`` pixels.
    """
    try:
        with pixel_limit(max_pixels), _open_file(path) as f, Image.open(f) as im:
            check_opened(im, max_pixels)
            im.load()
            if _orientation(im) != 1:
                im = ImageOps.exif_transpose(im)
            try:
                im = to_mode(im, mode)
            except SourceError as exc:
                raise SourceError(f"{path}: {exc}") from None
            if resize is not None and im.size != tuple(resize):
                width, height = resize
                if resize_policy == "crop":
                    im = ImageOps.fit(im, (width, height), Image.Resampling.BICUBIC)
                else:
                    im = im.resize((width, height), Image.Resampling.BICUBIC)
            pixels = np.asarray(im, np.uint8)
    except SourceError:
        raise
    except PixelLimitError as exc:
        raise _too_many_pixels(path, exc) from None
    except Exception as exc:  # Pillow raises many kinds (OSError, SyntaxError, ValueError...) for bad files
        raise SourceError(f"{path}: {_describe_failure(path, exc)}") from None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return np.ascontiguousarray(pixels)


def _describe_failure(path, exc):
    if isinstance(exc, Image.DecompressionBombError):
        return f"refused as a decompression bomb while decoding ({exc})"
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
    except OSError as err:
        return f"cannot read ({err.strerror})"
    if isinstance(exc, Image.UnidentifiedImageError):  # its message shows a file object's repr
        return "cannot decode the image (not in a format Pillow knows, or its header is damaged)"
    return f"cannot decode the image ({type(exc).__name__}: {exc})"


def _open_file(path):
    """``path`` open for reading if it is a regular file; SourceError naming it otherwise (never blocks on a FIFO)."""
    return open_input(path, "an image file")


def _header_size(path, max_pixels=DEFAULT_MAX_PIXELS):
    """(W, H) of the image at ``path`` as it will be decoded (EXIF rotation applied)."""
    try:
        with pixel_limit(max_pixels), _open_file(path) as f, Image.open(f) as im:
            check_opened(im, max_pixels)
            width, height = im.size
            if _orientation(im) in _SWAPS_AXES:
                width, height = height, width
    except SourceError:
        raise
    except PixelLimitError as exc:
        raise _too_many_pixels(path, exc) from None
    except Exception as exc:  # see decode_image
        raise SourceError(f"{path}: {_describe_failure(path, exc)}") from None
    return width, height


def _check_resize(resize):
    if resize is None:
        return None
    try:
        width, height = (int(v) for v in resize)
    except (TypeError, ValueError):
        raise SourceOptionError(f"resize must be (width, height), got {resize!r}", ("resize",)) from None
    if width < 1 or height < 1:
        raise SourceOptionError(f"resize must be two positive integers, got {resize!r}", ("resize",))
    return width, height


def _check_max_pixels(max_pixels):
    if max_pixels is None:
        return DEFAULT_MAX_PIXELS
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise SourceOptionError(f"max_pixels must be a positive integer, got {max_pixels!r}", ("max_pixels",))
    return max_pixels


def detect(path: str) -> bool:
    """True when ``path`` is a directory with at least one image file somewhere below it."""
    if not os.path.isdir(path):
        return False
    extensions = image_extensions()
    return any(_is_image(name, extensions) for _top, files in _walk(path) for name in files)


class FolderSource(Source):
    """Images in a directory tree, class-per-subfolder or flat (see the module docstring).

    Arguments: ``path``; ``mode`` "RGB" (default), "L" or "RGBA"; ``resize``
    (W, H) or None; ``resize_policy`` "stretch" (default) or "crop";
    ``on_error`` "fail" (default) or "skip"; ``labels_csv`` a CSV of labels
    for a flat folder; ``max_pixels`` the most pixels an image may declare
    (default :data:`DEFAULT_MAX_PIXELS`, Pillow's limit; see the module
    docstring). ``length`` counts the image files found; with
    ``on_error="skip"`` the batches may hold fewer. ``skipped`` lists the
    files this process skipped. Raises SourceError for a folder with no
    images, bad options, or (under "fail") a bad image.
    """

    OPTIONS = (MODE, RESIZE, RESIZE_POLICY, ON_ERROR_OPTION, LABELS_CSV, MAX_PIXELS)
    _TRANSIENT = ("_files", "last_kept", "_headers")

    def __init__(self, path: str | os.PathLike[str], *, mode: str = MODE.default,
                 resize: tuple[int, int] | None = RESIZE.default, resize_policy: str = RESIZE_POLICY.default,
                 on_error: str = ON_ERROR_OPTION.default,
                 labels_csv: str | os.PathLike[str] | None = LABELS_CSV.default,
                 max_pixels: int | None = MAX_PIXELS.default) -> None:
        self.path = os.fspath(path)
        self.max_pixels = _check_max_pixels(max_pixels)
        self.mode = check_choice("mode", mode, tuple(MODES))
        self.resize = _check_resize(resize)
        self.resize_policy = check_choice("resize_policy", resize_policy, RESIZE_POLICIES)
        self.on_error = check_choice("on_error", on_error, ON_ERROR)
        self.labels_csv = None if labels_csv is None else os.fspath(labels_csv)
        if not os.path.isdir(self.path):
            raise SourceError(f"{self.path}: not a directory")
        files, self.labels, self.names, self.layout = scan_folder(self.path, self.labels_csv)
        # One string pickles far faster and smaller than a million small ones.
        self._joined = "\0".join(files)
        self._files = files
        self._shape = None if self.resize is None else (self.resize[1], self.resize[0], MODES[self.mode])
        self._probed = self.resize is not None
        self.skipped: list[SkippedFile] = []
        self.last_kept: np.ndarray | None = None
        self._headers: np.ndarray | None = None  # (W, H) of each image as its header says, once read

    def _file_list(self) -> list[str]:
        if self._files is None:
            self._files = self._joined.split("\0")
        return self._files

    @property
    def heavy_decoding(self) -> bool:
        """True: every image is a compressed file to decode (see :attr:`Source.heavy_decoding`)."""
        return True

    @property
    def description(self) -> str:
        """The folder, its labelling, the number of images and what is done to them."""
        if self.layout == "classes":
            labels = f"{len(self.names or ())} classes"
        elif self.labels_csv:
            labels = f"flat, labels from {self.labels_csv}"
        else:
            labels = "flat, unlabelled"
        size = f", resized to {self.resize[0]}x{self.resize[1]} ({self.resize_policy})" if self.resize else ""
        return f"image folder {self.path} ({labels}, {self.length} images, {self.mode}{size})"

    @property
    def length(self) -> int:
        """The number of image files found (under "skip" the batches may hold fewer)."""
        return len(self.labels)

    @property
    def label_names(self) -> list[str] | None:
        """The class folders, or the CSV's label names, or None."""
        return self.names

    @property
    def shape(self) -> tuple[int, int, int] | None:
        """(H, W, C) when every image has that size (read from the file headers once), else None."""
        if not self._probed:
            self._shape = self._probe_shape()
            self._probed = True
        return self._shape

    def _probe_shape(self, indices=None):
        """The shared (H, W, C) of the images at ``indices`` (all by default), or None."""
        sizes = set()
        for i in range(self.length) if indices is None else indices:
            size = self._header_size_of(i)
            if size is not None:
                sizes.add(size)
            if len(sizes) > 1:
                return None
        if not sizes:
            return None
        (width, height), = sizes
        return height, width, MODES[self.mode]

    def _header_size_of(self, i):
        """(W, H) of image ``i`` from its header (read once per process); None for an unreadable one under "skip"."""
        if self._headers is None:
            self._headers = np.full((self.length, 2), -1, np.int64)
        if self._headers[i, 0] < 0:
            try:
                self._headers[i] = _header_size(os.path.join(self.path, self._file_list()[i]), self.max_pixels)
            except SourceError:
                if self.on_error == "fail":
                    raise
                # Under "skip" it is recorded when a batch leaves it out: the
                # report of that batch (a conversion's, a worker's) names it.
                self._headers[i] = (0, 0)
        width, height = self._headers[i]
        return None if width == 0 else (int(width), int(height))

    def image_nbytes(self, indices: np.ndarray) -> np.ndarray | None:
        """Decoded bytes of the images at ``indices``, from their headers when the sizes vary (never decoded).

        See :meth:`Source.image_nbytes`. An image whose header cannot be read
        counts 0 under ``on_error="skip"`` (it will be left out) and raises
        SourceError under "fail", as reading it would.
        """
        if self.shape is not None:
            return super().image_nbytes(indices)
        pixels = [0 if size is None else size[0] * size[1] for size in map(self._header_size_of, indices)]
        return np.asarray(pixels, np.int64) * MODES[self.mode]

    def input_files(self) -> Iterator[str]:
        """The labels CSV (when given), then every image file, in index order."""
        if self.labels_csv is not None:
            yield self.labels_csv
        for name in self._file_list():
            yield os.path.join(self.path, name)

    def image_shapes(self) -> np.ndarray:
        """The (H, W, C) each image will have once decoded, as an (N, 3) int64 array, without decoding.

        From the file headers (or the ``resize``); under ``on_error="skip"``
        a file whose header cannot be read is (0, 0, C).
        """
        channels = MODES[self.mode]
        if self.resize is not None:
            return np.tile(np.array([self.resize[1], self.resize[0], channels], np.int64), (self.length, 1))
        shapes = np.zeros((self.length, 3), np.int64)
        shapes[:, 2] = channels
        for i in range(self.length):
            size = self._header_size_of(i)
            if size is not None:
                shapes[i, :2] = (size[1], size[0])
        return shapes

    def _fail_or_skip(self, path, exc):
        """Raise ``exc`` under "fail"; under "skip" record the file (once) and return its SkippedFile."""
        if self.on_error == "fail":
            raise exc
        message = str(exc)
        skipped = SkippedFile(path, message[len(path) + 2 :] if message.startswith(path + ": ") else message)
        if all(s.path != path for s in self.skipped):
            self.skipped.append(skipped)
        return skipped

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[Batch]:
        """Decode images ``start..stop`` and yield them with their int64 labels.

        Images are one uint8 (B, H, W, C) array when :attr:`shape` is known,
        else a list of (H, W, C) arrays. See :meth:`Source.batches` and the
        module docstring for ``on_error``.
        """
        start, stop = self._check_range(batch_size, start, stop)
        shape = self._shape_of(range(start, stop))
        return self._iterate(batch_size, start, stop, shape)

    def _shape_of(self, indices):
        """:attr:`shape`, or when it is not known yet and ``indices`` is not everything, their shared shape.

        A worker given a source whose shape was never asked reads the headers
        of its own images, not the whole folder's.
        """
        if self._probed or len(indices) == self.length:
            return self.shape
        return self._probe_shape(indices)

    def take(self, indices: npt.ArrayLike) -> Batch:
        """See :meth:`Source.take`; afterwards ``last_kept`` is a bool array over ``indices``.

        ``last_kept[k]`` is True when the image at ``indices[k]`` is in the
        returned batch (always, under ``on_error="fail"``); the returned
        images are those of the True entries, in order.
        """
        images, labels, kept = self._take(indices)
        self.last_kept = kept
        return images, labels

    def _iterate(self, batch_size, start, stop, shape):
        skipped: list[SkippedFile] = []
        try:
            for first in range(start, stop, batch_size):
                # Every batch covers its index range, even when all of it was skipped (then empty).
                yield self._decode_indices(range(first, min(first + batch_size, stop)), shape, skipped)[:2]
        finally:
            warn_skipped(skipped, self.description)

    def _gather(self, unique):
        skipped: list[SkippedFile] = []
        try:
            return self._decode_indices(unique, self._shape_of(unique), skipped)
        finally:
            warn_skipped(skipped, self.description)

    def _decode_indices(self, indices, shape, skipped):
        """Decode the images at ``indices``: ``(images, labels, kept)``, appending skips to ``skipped``."""
        files = self._file_list()
        images, kept = [], np.zeros(len(indices), bool)
        for k, i in enumerate(indices):
            path = os.path.join(self.path, files[i])
            try:
                image = decode_image(path, self.mode, self.resize, self.resize_policy, self.max_pixels)
                if shape is not None and image.shape != shape:
                    raise SourceError(
                        f"{path}: decoded as {'x'.join(map(str, image.shape))}, "
                        f"the folder's images are {'x'.join(map(str, shape))}"
                    )
            except SourceError as exc:
                skipped.append(self._fail_or_skip(path, exc))
                continue
            images.append(image)
            kept[k] = True
        labels = self.labels[np.asarray(indices, np.int64)[kept]]
        if shape is not None:
            return (np.stack(images) if images else np.empty((0, *shape), np.uint8)), labels, kept
        return images, labels, kept
