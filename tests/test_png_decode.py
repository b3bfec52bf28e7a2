"""The PNG folder's own decoder: the unfilter kernel on both backends, pixels equal to Pillow's, and
every file it does not take left to Pillow with today's result."""
import io
import os
import struct
import subprocess
import sys
import tracemalloc
import zlib

import numpy as np
import pytest
from factories import make_images, target, write
from PIL import Image

from imgconv import _pure, kernels, stores
from imgconv.errors import StoreError
from imgconv.stores import png_decode, png_folder

MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
SIZES = [(1, 1), (1, 7), (5, 1), (3, 4), (32, 32), (64, 48)]


def _kernels():
    """The unfilter kernels to check against the NumPy reference: the compiled one when it is built."""
    core = pytest.importorskip("imgconv._core")
    return core.png_unfilter


def _filter(pixels, kinds):
    """PNG-filter the rows of ``pixels`` (H, W, C) with the filter type ``kinds[r]`` for row r: the
    image data before deflate, written independently of the decoder."""
    h, w, c = pixels.shape
    rows = pixels.reshape(h, w * c).astype(np.int64)
    out = []
    for r in range(h):
        x = rows[r]
        b = rows[r - 1] if r else np.zeros_like(x)
        a = np.concatenate([np.zeros(c, np.int64), x[:-c]])
        cc = np.concatenate([np.zeros(c, np.int64), b[:-c]])
        kind = kinds[r]
        if kind == 0:
            guess = np.zeros_like(x)
        elif kind == 1:
            guess = a
        elif kind == 2:
            guess = b
        elif kind == 3:
            guess = (a + b) // 2
        else:
            pa, pb, pc = np.abs(b - cc), np.abs(a - cc), np.abs(a + b - 2 * cc)
            guess = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, cc))
        out.append(bytes([kind]) + ((x - guess) & 0xFF).astype(np.uint8).tobytes())
    return b"".join(out)


def _chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(shape, idat, *, ihdr=None, split=None, extra=()):
    """A PNG file of ``shape`` whose IDAT data is ``idat`` (compressed), in chunks of ``split`` bytes."""
    h, w, c = shape
    ihdr = ihdr or struct.pack(">IIBBBBB", w, h, 8, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    split = split or max(len(idat), 1)
    idats = [_chunk(b"IDAT", idat[k:k + split]) for k in range(0, max(len(idat), 1), split)]
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + b"".join(extra) + b"".join(idats)
            + _chunk(b"IEND", b""))


def _pillow(blob):
    image = np.array(Image.open(io.BytesIO(blob)))
    return image[:, :, np.newaxis] if image.ndim == 2 else image


def _smooth(shape, seed=0):
    """An image with gradients and noise, on which Pillow's adaptive filtering picks several filter types."""
    h, w, c = shape
    rng = np.random.default_rng(seed)
    grid = (np.arange(h)[:, None, None] * 3 + np.arange(w)[None, :, None] * 5 + np.arange(c) * 40)
    return ((grid + rng.integers(0, 3, shape)) % 256).astype(np.uint8)


# The kernel ------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_the_compiled_unfilter_equals_the_reference_on_random_data(channels):
    unfilter = _kernels()
    rng = np.random.default_rng(channels)
    for h, w in SIZES + [(17, 23)]:
        data = rng.integers(0, 256, (h, 1 + w * channels), dtype=np.uint8)
        data[:, 0] = rng.integers(0, 5, h)  # every filter type, in random order
        data[: min(h, 5), 0] = np.arange(min(h, 5))
        got, expected = np.empty((h, w * channels), np.uint8), np.empty((h, w * channels), np.uint8)
        assert unfilter(data.reshape(-1), got, channels) == -1
        assert _pure.png_unfilter(data.reshape(-1), expected, channels) == -1
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kind", [0, 1, 2, 3, 4])
def test_each_filter_type_inverts_the_filter(kind):
    unfilter = _kernels()
    pixels = make_images(1, (9, 11, 3), seed=kind)[0]
    data = np.frombuffer(_filter(pixels, [kind] * 9), np.uint8)
    for run in (unfilter, _pure.png_unfilter):
        out = np.empty((9, 33), np.uint8)
        assert run(data, out, 3) == -1
        np.testing.assert_array_equal(out.reshape(9, 11, 3), pixels)


def test_an_unknown_filter_type_gives_its_row():
    unfilter = _kernels()
    data = np.zeros((4, 1 + 6), np.uint8)
    data[2, 0] = 5
    for run in (unfilter, _pure.png_unfilter):
        assert run(data.reshape(-1), np.empty((4, 6), np.uint8), 2) == 2


def test_the_checked_wrapper_refuses_unfit_arguments():
    data = np.zeros(4 * 7, np.uint8)
    with pytest.raises(ValueError, match="holds 27 bytes"):
        kernels.png_unfilter(data[:-1], np.empty((4, 6), np.uint8), 2)
    with pytest.raises(ValueError, match="whole pixels"):
        kernels.png_unfilter(data, np.empty((4, 6), np.uint8), 4)
    with pytest.raises(TypeError, match="uint8"):
        kernels.png_unfilter(data, np.empty((4, 6), np.int16), 2)
    with pytest.raises(ValueError, match="overlap"):
        kernels.png_unfilter(data, data[:24].reshape(4, 6), 2)
    assert kernels.png_unfilter(bytes(data), np.empty((4, 6), np.uint8), 2) == -1


# The decoder -----------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("size", SIZES)
def test_decodes_what_the_store_writes_as_pillow_does(channels, size):
    _kernels()
    for image in (make_images(1, (*size, channels), seed=channels)[0], _smooth((*size, channels))):
        for level in (0, 1, 6, 9):
            blob = png_folder.encode_png(image, level)
            got = png_decode.decode(blob, (*size, channels))
            assert got is not None, (size, channels, level)
            np.testing.assert_array_equal(got, _pillow(blob))
            np.testing.assert_array_equal(got, image)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_decodes_every_filter_type_and_split_idat_chunks_as_pillow_does(channels):
    _kernels()
    shape = (12, 7, channels)
    pixels = _smooth(shape, seed=channels)
    kinds = [r % 5 for r in range(12)]
    idat = zlib.compress(_filter(pixels, kinds), 9)
    for split in (None, 1, 5, 64):
        blob = _png(shape, idat, split=split)
        got = png_decode.decode(blob, shape)
        assert got is not None, split
        np.testing.assert_array_equal(got, _pillow(blob))
        np.testing.assert_array_equal(got, pixels)


def test_decodes_into_out():
    _kernels()
    image = _smooth((6, 5, 3))
    out = np.zeros((6, 5, 3), np.uint8)
    assert png_decode.decode(png_folder.encode_png(image), (6, 5, 3), out) is out
    np.testing.assert_array_equal(out, image)


def _variants(shape):
    """PNG files of ``shape`` the decoder must leave to Pillow, by the reason."""
    h, w, c = shape
    pixels = _smooth(shape)
    raw = _filter(pixels, [1] * h)
    idat = zlib.compress(raw)
    good = _png(shape, idat)
    ihdr_at = 8 + 8
    flipped = bytearray(good)
    flipped[len(good) - 12 - 4 - 3] ^= 0x40  # inside the IDAT data: its CRC no longer matches
    bad_filter = bytearray(raw)
    bad_filter[0] = 9
    return {
        "truncated": good[:-20],
        "corrupt IDAT": bytes(flipped),
        "IDAT CRC only": good[:len(good) - 16] + bytes(4) + good[-12:],
        "IHDR CRC": good[:ihdr_at + 17] + bytes(4) + good[ihdr_at + 21:],
        "other size": _png((h + 1, w, c), zlib.compress(_filter(_smooth((h + 1, w, c)), [0] * (h + 1)))),
        "16-bit": _png(shape, idat, ihdr=struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0)),
        "interlaced": _png(shape, idat, ihdr=struct.pack(">IIBBBBB", w, h, 8, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 1)),
        "text chunk": _png(shape, idat, extra=[_chunk(b"tEXt", b"a\x00b")]),
        "short stream": _png(shape, zlib.compress(raw[:-1])),
        "long stream": _png(shape, zlib.compress(raw + b"\x00")),
        "data after the stream": _png(shape, idat + b"\x00\x00"),
        "no IEND": good[:-12],
        "after IEND": good + b"\x00",
        "chunk past the end": good[:-12] + struct.pack(">I", 1000) + b"IEND" + bytes(4),
        "unknown filter type": _png(shape, zlib.compress(bytes(bad_filter))),
        "not a PNG": b"GIF89a" + good[6:],
    }


@pytest.mark.parametrize("reason", list(_variants((4, 5, 3))))
def test_leaves_anything_unusual_to_pillow(reason):
    _kernels()
    assert png_decode.decode(_variants((4, 5, 3))[reason], (4, 5, 3)) is None


def test_a_palette_image_is_left_to_pillow():
    image = Image.fromarray(_smooth((4, 5, 3))).convert("P")
    out = io.BytesIO()
    image.save(out, format="PNG")
    assert png_decode.decode(out.getvalue(), (4, 5, 3)) is None


def _refused_within(data, shape, budget):
    """Whether decode leaves ``data`` to Pillow with a traced peak of allocations under ``budget`` bytes."""
    tracemalloc.start()
    try:
        refused = png_decode.decode(data, shape) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return refused and peak < budget


def test_a_header_declaring_a_huge_image_is_refused_before_inflating():
    _kernels()
    # A 60000 x 60000 RGBA header on a stream of 100 MB of zeros (100 kB compressed).
    bomb = _png((60000, 60000, 4), zlib.compress(bytes(100_000_000), 9))
    assert _refused_within(bomb, (32, 32, 3), 2**20)


def test_a_stream_inflating_past_the_image_stops_one_byte_after_it():
    _kernels()
    bomb = _png((32, 32, 3), zlib.compress(bytes(50_000_000), 9))
    assert _refused_within(bomb, (32, 32, 3), 2**20)


# In the store ----------------------------------------------------------------------------


def _store(tmp_path, shape=(6, 5, 3), n=4, name="store"):
    images = np.stack([_smooth(shape, seed=k) for k in range(n)])
    return write(target(tmp_path, "png", name), images, np.arange(n)), images


def test_the_store_reads_its_images_without_pillow(tmp_path, monkeypatch):
    _kernels()
    for channels in (1, 2, 3, 4):
        path, images = _store(tmp_path, (7, 9, channels), name=f"c{channels}")
        monkeypatch.setattr(png_folder, "_open_image", None)  # Pillow's path would fail
        with stores.open(path) as store:
            np.testing.assert_array_equal(store.read_batch([3, 0, 2, 0])[0], images[[3, 0, 2, 0]])
            np.testing.assert_array_equal(store[1][0], images[1])
            np.testing.assert_array_equal(np.concatenate([b for b, _ in store.batches(3)]), images)
            out = np.zeros((2, 7, 9, channels), np.uint8)
            assert store.read_batch([1, 2], out=out)[0] is out
            np.testing.assert_array_equal(out, images[1:3])
            assert store[0][0].flags.writeable
        monkeypatch.undo()


def _errors(path, indices):
    """The message of the StoreError each image of ``indices`` gives (or None), by store[i] and read_batch."""
    found = []
    with stores.open(path) as store:
        for i in indices:
            for read in (lambda i=i: store[i], lambda i=i: store.read_batch([i])):
                try:
                    read()
                    found.append(None)
                except StoreError as exc:
                    found.append(str(exc))
    return found


@pytest.mark.parametrize("reason", list(_variants((6, 5, 3))))
def test_a_file_left_to_pillow_gives_what_it_gave_before(tmp_path, monkeypatch, reason):
    _kernels()
    path, images = _store(tmp_path)
    victim = os.path.join(path, png_folder.image_path(2))
    with open(victim, "wb") as f:
        f.write(_variants((6, 5, 3))[reason])
    now = _errors(path, range(4))
    monkeypatch.setattr(png_folder.PngFolderReader, "_fast_shape", staticmethod(lambda shape: False))
    before = _errors(path, range(4))
    assert now == before
    assert now[:4] == [None] * 4 and now[6:] == [None] * 2
    assert "image 2 " in now[4] and now[5] == now[4]  # a file of other pixels, or unreadable


def test_a_huge_header_in_the_store_is_refused_with_the_size(tmp_path):
    path, _ = _store(tmp_path)
    with open(os.path.join(path, png_folder.image_path(1)), "wb") as f:
        f.write(_png((9000, 9000, 3), zlib.compress(bytes(10_000_000), 9)))
    with stores.open(path) as store:
        with pytest.raises(StoreError, match="image 1 is 9000x9000 pixels, the store holds 6x5x3"):
            store[1]


def test_a_wrong_decoding_is_caught_by_the_checksum(tmp_path, monkeypatch):
    _kernels()
    path, _ = _store(tmp_path)
    real = png_decode.decode

    def off_by_one(data, shape, out=None):
        image = real(data, shape, out)
        image[0, 0, 0] ^= 1
        return image

    monkeypatch.setattr(png_decode, "decode", off_by_one)
    with stores.open(path) as store:
        with pytest.raises(StoreError, match="does not match its stored checksum"):
            store[0]
        with pytest.raises(StoreError, match="does not match its stored checksum"):
            store.read_batch([1])


def test_the_numpy_backend_reads_a_store(tmp_path):
    path, images = _store(tmp_path, (9, 8, 4))
    code = ("import sys, numpy as np; from imgconv import stores, kernels; "
            "assert kernels.BACKEND == 'numpy'; s = stores.open(sys.argv[1]); "
            "np.save(sys.stdout.buffer, s.read_batch([0, 1, 2, 3])[0])")
    env = dict(os.environ, IMGCONV_PURE="1")
    env.pop("IMGCONV_REQUIRE_EXT", None)
    done = subprocess.run([sys.executable, "-c", code, path], env=env, capture_output=True, check=True)
    np.testing.assert_array_equal(np.load(io.BytesIO(done.stdout)), images)
