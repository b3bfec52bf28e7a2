"""Decompression bombs inside containers: never weaker than plain Pillow, and imgconv's limit at every check.

Each crafted file is small on disk and declares (or holds) an image far
larger than the limit; each is read in a child process whose peak memory is
measured, and must be refused naming the file with little memory spent.
Without the checks of :mod:`imgconv.sources.pixel_limit`, the ICO is
decoded inside ``Image.open`` (hundreds of MB), the ICNS and the tiled TIFF
inside ``load``.
"""
import io
import json
import os
import struct
import subprocess
import sys
import threading
import zlib

import pytest
from PIL import Image

from imgconv.sources import pixel_limit

BUDGET_MB = 64  # over the child's baseline; the crafted images would take 140 to 400 MB


def _zeros_deflated(size):
    """``size`` zero bytes through zlib, compressed piece by piece (never held whole)."""
    co = zlib.compressobj(9)
    block = bytes(1 << 22)
    parts = [co.compress(block) for _ in range(size // len(block))]
    parts.append(co.compress(bytes(size % len(block))))
    parts.append(co.flush())
    return b"".join(parts)


def _chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width, height):
    """A black 1-bit PNG of width x height: a few KB for hundreds of millions of pixels (one byte each decoded)."""
    rows = _zeros_deflated(((width + 7) // 8 + 1) * height)
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")


def _ico(embedded):
    """An icon of one entry declaring 256x256 whose image is the PNG ``embedded``."""
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(embedded), 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + entry + embedded


def _icns(embedded):
    """A Mac icon whose 1024x1024 entry (ic10) is the PNG ``embedded``."""
    body = b"ic10" + struct.pack(">I", 8 + len(embedded)) + embedded
    return b"icns" + struct.pack(">I", 8 + len(body)) + body


def _tiff(pages):
    """A little-endian 8-bit grayscale TIFF of ``pages`` ``(width, height, tile)``, each one deflated strip or tile."""
    out = bytearray(b"II*\0" + struct.pack("<I", 8))
    for number, (width, height, tile) in enumerate(pages):
        data = _zeros_deflated((tile or width) * (tile or height))
        where = len(out)
        tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 8), (262, 3, 1), (277, 3, 1)]
        if tile:
            tags += [(322, 4, tile), (323, 4, tile), (324, 4, 0), (325, 4, len(data))]
        else:
            tags += [(273, 4, 0), (278, 4, height), (279, 4, len(data))]
        data_at = where + 2 + 12 * len(tags) + 4
        ifd = struct.pack("<H", len(tags))
        for tag, kind, value in tags:
            value = data_at if tag in (273, 324) else value
            ifd += struct.pack("<HHIHH", tag, kind, 1, value, 0) if kind == 3 else struct.pack("<HHII", tag, kind, 1,
                                                                                                  value)
        last = number == len(pages) - 1
        ifd += struct.pack("<I", 0 if last else data_at + len(data))
        out += ifd + data
    return bytes(out)


def _mpo(sizes):
    """A multi-picture JPEG whose frames are small, their SOF headers then set to ``sizes`` (width, height)."""
    frames = [Image.new("RGB", (8, 8), (200, 10, 10)) for _ in sizes]
    buffer = io.BytesIO()
    frames[0].save(buffer, "MPO", save_all=True, append_images=frames[1:])
    data = bytearray(buffer.getvalue())
    position = 0
    for width, height in sizes:
        position = data.index(b"\xff\xc0", position)
        data[position + 5 : position + 9] = struct.pack(">HH", height, width)
        position += 9
    return bytes(data)


_CHILD = """
import json, sys, warnings
from PIL import Image
from imgconv.errors import SourceError
from imgconv.sources import open_source
Image.init()
warnings.simplefilter("ignore")
folder, limit = sys.argv[1], int(sys.argv[2])
def status_kb(field):  # VmHWM, not ru_maxrss: that keeps the peak of the test runner exec replaced
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
base = status_kb("VmRSS")
try:
    source = open_source(folder, max_pixels=limit or None)
    shapes = [images.shape for images, _ in source.batches(4)]
    outcome = f"read {shapes}"
except SourceError as exc:
    outcome = f"refused: {exc}"
peak = status_kb("VmHWM")
print(json.dumps({"outcome": outcome, "mb": (peak - base) / 1024}))
"""


def _read_in_child(folder, max_pixels=None):
    done = subprocess.run([sys.executable, "-c", _CHILD, str(folder), str(max_pixels or 0)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


CRAFTED = {
    "ico of a 20000x20000 png": ("bomb.ico", lambda: _ico(_png(20_000, 20_000)), None, "20000x20000"),
    "ico of a 12000x12000 png, limit 1e6": ("bomb.ico", lambda: _ico(_png(12_000, 12_000)), 1_000_000, "12000x12000"),
    "icns of a 12000x12000 png": ("bomb.icns", lambda: _icns(_png(12_000, 12_000)), None, "12000x12000"),
    "tiff of 64x64 in a 16384x16384 tile": ("bomb.tif", lambda: _tiff([(64, 64, 16_384)]), None, "16384x16384"),
    "tiff of a 20000x20000 first page": ("bomb.tif", lambda: _tiff([(20_000, 20_000, None)]), None, "20000x20000"),
    "mpo of a 30000x30000 first frame": ("bomb-mpo.jpg", lambda: _mpo([(30_000, 30_000), (8, 8)]), None, "30000x30000"),
}


@pytest.mark.parametrize("case", CRAFTED, ids=list(CRAFTED))
def test_a_crafted_container_is_refused_from_its_headers(tmp_path, case):
    name, make, max_pixels, declared = CRAFTED[case]
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / name).write_bytes(make())
    assert (folder / name).stat().st_size < 2_000_000
    got = _read_in_child(folder, max_pixels)
    limit = f"{max_pixels or pixel_limit.DEFAULT_MAX_PIXELS:,}"
    assert got["outcome"].startswith(f"refused: {folder / name}: "), got
    assert declared in got["outcome"] and f"exceeds the limit of {limit}" in got["outcome"], got
    assert got["mb"] < BUDGET_MB, got


@pytest.mark.parametrize("name, data", [
    ("pages.tif", lambda: _tiff([(8, 8, None), (20_000, 20_000, None)])),
    ("frames-mpo.jpg", lambda: _mpo([(8, 8), (30_000, 30_000)])),
], ids=["tiff second page", "mpo second frame"])
def test_pages_and_frames_after_the_first_are_never_decoded(tmp_path, name, data):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / name).write_bytes(data())
    got = _read_in_child(folder)
    assert got["outcome"].startswith("read [(1, 8, 8, 3)]"), got
    assert got["mb"] < BUDGET_MB, got


def test_the_limit_holds_in_its_own_thread_only_and_pillow_keeps_its_own():
    before = Image.MAX_IMAGE_PIXELS
    outside = []

    def plain_pillow():
        try:
            Image._decompression_bomb_check((20_000, 20_000))
        except Image.DecompressionBombError as exc:
            outside.append(exc)

    with pixel_limit.pixel_limit(10**12):
        Image._decompression_bomb_check((20_000, 20_000))  # allowed here
        assert Image.MAX_IMAGE_PIXELS == before  # nothing global was lifted
        thread = threading.Thread(target=plain_pillow)
        thread.start()
        thread.join()
        with pixel_limit.pixel_limit(100), pytest.raises(pixel_limit.PixelLimitError, match="10x11 = 110 pixels"):
            Image._decompression_bomb_check((10, 11))
        Image._decompression_bomb_check((10, 11))  # the outer limit again
    assert len(outside) == 1 and not isinstance(outside[0], pixel_limit.PixelLimitError)  # Pillow's own error
    with pytest.raises(Image.DecompressionBombError):
        Image._decompression_bomb_check((20_000, 20_000))


def test_a_limit_above_pillows_reads_a_genuine_large_icon(tmp_path):
    # 12000x12000 is over Pillow's warning limit: the ICO's PNG decodes when the source allows it.
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "large.ico").write_bytes(_ico(_png(12_000, 12_000)))
    got = _read_in_child(folder, 200_000_000)
    assert got["outcome"] == "read [(1, 12000, 12000, 3)]", got
    assert os.path.exists(folder / "large.ico")
