"""The most pixels an image file may make Pillow allocate, checked from the headers before anything is decoded.

Pillow defends against decompression bombs in one function,
``PIL.Image._decompression_bomb_check(size)``, which ``Image.open`` calls
for the size a file declares, and which the plugins call for every image
they meet inside a file before decoding it: the PNG or BMP inside an ICO
(decoded within ``Image.open`` itself), the PNG or JPEG 2000 inside an
ICNS (decoded by ``load``), the frames of MPO, GIF, DCX, MIC and SPIDER
files (when seeking to them), a TIFF's image buffer (in ``load``), a
WebP's canvas (before libwebp allocates it in ``open``), the JPEG inside a
BLP. Its limit is Pillow's global ``Image.MAX_IMAGE_PIXELS``: a warning
above it, an error above twice it. RELIABILITY.md lists what each plugin
does in ``open``.

imgconv's limit is the source's ``max_pixels`` (by default Pillow's own
limit as shipped), and it must hold at every one of those checks, not only
for the size ``Image.open`` returns: an ICO declaring 256x256 may hold a
20,000 x 20,000 PNG, which Pillow decodes inside ``open``. So while imgconv
decodes a file (inside :func:`pixel_limit`), that function refuses any size
above ``max_pixels`` with :class:`PixelLimitError`, before the pixels are
decoded; anywhere else (other threads, other code of the program) it is
Pillow's own function, called as it was. The limit lives in a context
variable: nothing global changes while an image is decoded, no lock is
held, and Pillow's global limit is never lifted.

Raising ``max_pixels`` above Pillow's limit lets images of that many
pixels be decoded, in each process that decodes: the decoded image, its
conversion to the source's mode and the array made of it take about 15
bytes a pixel at the peak (RELIABILITY.md). Do it for files you trust.
"""
from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

from PIL import Image

# Pillow's limit as shipped (its DecompressionBombWarning threshold), fixed at import.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 1024 * 1024 * 1024 // 4 // 3

_LIMIT: contextvars.ContextVar[int | None] = contextvars.ContextVar("imgconv_max_pixels", default=None)


class PixelLimitError(Image.DecompressionBombError):
    """An image (or an image inside a file) declares more pixels than the limit; nothing of it was decoded.

    ``size`` is its (width, height), ``pixels`` their product, ``limit`` the
    limit in force. A DecompressionBombError, so Pillow's own code lets it
    through as it lets its own through.
    """

    def __init__(self, size: tuple[int, int], limit: int, what: str = "") -> None:
        self.size = (int(size[0]), int(size[1]))
        self.pixels = max(1, self.size[0]) * max(1, self.size[1])
        self.limit = limit
        super().__init__(
            f"{what}{self.size[0]}x{self.size[1]} = {self.pixels:,} pixels exceeds the limit of {limit:,}"
        )


def check_size(size: tuple[int, int], limit: int, what: str = "") -> None:
    """Raise :class:`PixelLimitError` when an image of ``size`` (width, height) has more than ``limit`` pixels.

    ``what`` starts its message when the size is not the image's own ("a TIFF tile of ").
    """
    if max(1, size[0]) * max(1, size[1]) > limit:
        raise PixelLimitError(size, limit, what)


_TIFF_TILE_WIDTH, _TIFF_TILE_LENGTH = 322, 323


def check_opened(im: Image.Image, limit: int) -> None:
    """Check what an opened image will allocate when it is loaded, beyond what Pillow checks itself.

    Its size (Pillow checked it already inside :func:`pixel_limit`; checked
    again here so the limit holds whatever Pillow does), and the tile of a
    tiled TIFF: libtiff decodes a whole tile into a buffer before Pillow
    copies the part inside the image, and Pillow checks the image's size,
    not the tile's, so a 64 x 64 image in one 16,384 x 16,384 tile would
    take gigabytes. Raises :class:`PixelLimitError`.
    """
    check_size(im.size, limit)
    tags = getattr(im, "tag_v2", None)
    if tags is not None:
        width, length = tags.get(_TIFF_TILE_WIDTH), tags.get(_TIFF_TILE_LENGTH)
        if isinstance(width, int) and isinstance(length, int):
            check_size((width, length), limit, f"{im.size[0]}x{im.size[1]} pixels in TIFF tiles of ")


def _checked(pillows: Callable[..., None]) -> Callable[..., None]:
    """Pillow's check ``pillows``, made to apply imgconv's limit inside :func:`pixel_limit`."""

    def decompression_bomb_check(size: tuple[int, int], *args: Any, **kwargs: Any) -> None:
        limit = _LIMIT.get()
        if limit is None:
            pillows(size, *args, **kwargs)
        else:
            check_size(size, limit)  # error_only or not: imgconv never warns, it refuses

    decompression_bomb_check.imgconv_wraps = pillows  # type: ignore[attr-defined]
    return decompression_bomb_check


def _install() -> None:
    """Put the checking wrapper in place of Pillow's check (again, if something replaced it since)."""
    current = getattr(Image, "_decompression_bomb_check", None)
    if current is not None and getattr(current, "imgconv_wraps", None) is None:
        Image._decompression_bomb_check = _checked(current)


@contextmanager
def pixel_limit(max_pixels: int) -> Iterator[None]:
    """Within the block, in this thread, every size Pillow checks is refused above ``max_pixels``.

    Covers ``Image.open``, ``load`` and everything else done to the image
    inside the block (see the module docstring). Raises
    :class:`PixelLimitError` from Pillow's code, before the image it names
    is decoded. Nests: the innermost limit applies.
    """
    _install()
    token = _LIMIT.set(max_pixels)
    try:
        yield
    finally:
        _LIMIT.reset(token)
