"""Hostile input: pickles that try to run code, fuzzed records, decompression bombs, odd images, paths.

Every attack here would succeed against a naive reader (the tests check
that where they can: the pickle payloads do run under plain ``pickle``), and
every one must end in imgconv's own error naming the file, or in the image
read correctly.
"""
import builtins
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import imgconv
from imgconv import record
from imgconv.errors import RecordError, SourceError, StoreError, UnsafePickleError
from imgconv.sample import write_sample
from imgconv.sources import SkippedImageWarning, open_source

# --------------------------------------------------------------------------- pickles that run code


class _System:
    """Unpickling calls os.system("touch MARKER")."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Subprocess:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (subprocess.call, (["touch", self.marker],))


class _Exec:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').close()",))


class _Open:
    """Unpickling calls open(MARKER, "w"): creates the file without any import."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


# (payload class, a global the refusal must name)
PAYLOADS = [(_System, "system"), (_Subprocess, "subprocess.call"), (_Exec, "builtins.exec"), (_Open, "open")]


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return write_sample(tmp_path_factory.mktemp("cifar"), count=12, seed=3, archives=False)


def _hostile_batch(payload, marker):
    """A CIFAR-shaped batch whose labels hold the payload, written the way Python 2 CIFAR files are (protocol 2)."""
    batch = {"batch_label": "training batch 1 of 5", "data": np.zeros((2, 3072), np.uint8),
             "labels": [0, payload(marker)], "filenames": ["a.png", "b.png"]}
    return pickle.dumps(batch, protocol=2)


def _hostile_dir(cifar, tmp_path, data):
    directory = tmp_path / "cifar-10-batches-py"
    shutil.copytree(cifar.python_dir, directory)
    (directory / "data_batch_1").write_bytes(data)
    return directory


def _hostile_archive(cifar, tmp_path, data):
    directory = _hostile_dir(cifar, tmp_path / "staging", data)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(directory, arcname="cifar-10-batches-py")
    return archive


@pytest.mark.parametrize("payload, refused", PAYLOADS, ids=[p[0].__name__ for p in PAYLOADS])
@pytest.mark.parametrize("form", ["batch_dir", "archive"])
def test_cifar_pickle_that_runs_code_is_refused_before_it_runs(cifar, tmp_path, payload, refused, form):
    marker = tmp_path / "created-by-the-payload"
    data = _hostile_batch(payload, marker)
    make = _hostile_dir if form == "batch_dir" else _hostile_archive
    path = make(cifar, tmp_path / "in", data)
    with pytest.raises(UnsafePickleError) as info:
        source = open_source(path)
        list(source.batches(100))
    message = str(info.value)
    assert "data_batch_1" in message and refused in message, message
    assert not marker.exists()
    # The payload is real: plain pickle runs it (so a permissive loader would fail this test).
    pickle.loads(data)
    assert marker.exists()


@pytest.mark.parametrize("form", ["batch_dir", "archive"])
def test_cli_refuses_a_code_running_pickle_in_one_line(cifar, tmp_path, form):
    marker = tmp_path / "created-by-the-payload"
    make = _hostile_dir if form == "batch_dir" else _hostile_archive
    path = make(cifar, tmp_path / "in", _hostile_batch(_System, marker))
    dest = tmp_path / "out.lmdb"
    done = subprocess.run([sys.executable, "-m", "imgconv", "convert", str(path), str(dest), "--workers", "0",
                           "--quiet"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "data_batch_1" in lines[0] and "system" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not marker.exists() and not dest.exists()


# --------------------------------------------------------------------------- record parser properties


def _batch(n=3, shape=(2, 3, 3), seed=0):
    images = np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)
    labels = np.arange(n) * 7 - 3
    return images, labels, record.pack_records(images, labels).buffer.tobytes()


def _decodes_or_refuses(data, **kwargs):
    """unpack_records(data) either works or raises RecordError; returns the result or None."""
    try:
        return record.unpack_records(data, **kwargs)
    except RecordError:
        return None


_PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_PROPERTY
@given(data=st.binary(max_size=600), verify=st.booleans())
def test_random_bytes_decode_or_raise_record_error(backend, data, verify):
    _decodes_or_refuses(data, verify=verify)
    try:
        record.unpack_record(data)
    except RecordError:
        pass


@_PROPERTY
@given(changes=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1, max_size=6))
def test_changed_bytes_are_refused_or_change_nothing(backend, changes):
    images, labels, data = _batch()
    damaged = bytearray(data)
    for at, xor in changes:
        damaged[at % len(data)] ^= xor
    got = _decodes_or_refuses(bytes(damaged))
    if bytes(damaged) != data:
        assert got is None  # CRC32C over header and pixels: any change of up to 6 bytes is caught
    else:
        np.testing.assert_array_equal(got[0], images)


def test_truncation_at_every_offset(backend):
    images, labels, data = _batch()
    size = len(data) // 3
    for cut in range(len(data)):
        got = _decodes_or_refuses(data[:cut])
        if cut and cut % size == 0:  # whole records: those decode, exactly
            np.testing.assert_array_equal(got[0], images[: cut // size])
            assert got[1].tolist() == labels[: cut // size].tolist()
        else:
            assert got is None, cut
        with pytest.raises(RecordError):
            record.unpack_record(data[: min(cut, size - 1)])
        with pytest.raises(RecordError):
            record.unpack_records([data[:cut]], [size * 2], out=np.empty((1, 2, 3, 3), np.uint8))


def test_every_bit_of_every_header_field_is_checked(backend):
    _, _, data = _batch(n=2)
    for record_start in (0, len(data) // 2):
        for byte in range(record.HEADER_SIZE):
            for bit in range(8):
                damaged = bytearray(data)
                damaged[record_start + byte] ^= 1 << bit
                assert _decodes_or_refuses(bytes(damaged)) is None, (record_start, byte, bit)
                if record_start == 0:
                    with pytest.raises(RecordError):
                        record.unpack_record(bytes(damaged))


_FIELDS = {"channels": (6, "<H"), "height": (8, "<I"), "width": (12, "<I"), "length": (24, "<I")}


@_PROPERTY
@given(field=st.sampled_from(sorted(_FIELDS)), value=st.sampled_from([0, 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 20]),
       also_length=st.booleans())
def test_huge_declared_sizes_are_refused_without_allocating(backend, field, value, also_length):
    _, _, data = _batch(n=1)
    at, fmt = _FIELDS[field]
    damaged = bytearray(data)
    value = min(value, 0xFFFF) if fmt == "<H" else value
    damaged[at : at + struct.calcsize(fmt)] = struct.pack(fmt, value)
    if also_length and field != "length":
        # A header that agrees with itself about a huge image: only the buffer bound stops it.
        channels, height, width = struct.unpack_from("<HII", damaged, 6)
        damaged[24:28] = struct.pack("<I", min(channels * height * width, 0xFFFFFFFF))
    tracemalloc.start()
    try:
        got = _decodes_or_refuses(bytes(damaged))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # never an allocation of what the header claims
    if bytes(damaged) != data:
        assert got is None


@pytest.mark.parametrize("offset", [-1, -(2**63), 2**62, 2**63 - 1, 31, 1])
def test_offsets_outside_the_buffer_are_refused(backend, offset):
    _, _, data = _batch(n=1)
    with pytest.raises(RecordError):
        record.unpack_records([data], [offset], out=np.empty((1, 2, 3, 3), np.uint8))
    with pytest.raises(RecordError):
        record.unpack_record(data, offset)


def test_fuzz_script_runs_both_engines_briefly(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "fuzz", "fuzz_records.py")
    for backend in ("compiled", "numpy"):
        done = subprocess.run([sys.executable, script, "--max-inputs", "1500", "--seconds", "60", "--seed", "3",
                               "--backend", backend], capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "inputs tried: 1500" in done.stdout and "no finding" in done.stdout


# --------------------------------------------------------------------------- images


def _png_claiming(width, height):
    """A tiny, valid-looking PNG whose header declares width x height RGB pixels (a decompression bomb)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(
        b"IEND", b"")


def _folder(tmp_path, files):
    root = tmp_path / "images"
    root.mkdir(exist_ok=True)
    for name, data in files.items():
        path = root / name
        if isinstance(data, Image.Image):
            data.save(path)
        else:
            path.write_bytes(data)
    return root


@pytest.mark.parametrize("width, height", [(100_000, 100_000), (10_000, 9_000)])
def test_decompression_bomb_is_refused_under_fail_and_skipped_under_skip(tmp_path, width, height):
    root = _folder(tmp_path, {"a.png": Image.new("RGB", (4, 3), (1, 2, 3)), "bomb.png": _png_claiming(width, height)})
    tracemalloc.start()
    try:
        with pytest.raises(SourceError, match=r"bomb\.png: .*exceeds the limit of 89,478,485.*max-pixels"):
            list(open_source(root, resize=(4, 3)).batches(10))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20
    source = open_source(root, on_error="skip")
    with pytest.warns(SkippedImageWarning):
        images, labels = next(source.batches(10))
    assert images.shape == (1, 3, 4, 3) and [os.path.basename(s.path) for s in source.skipped] == ["bomb.png"]


def test_max_pixels_is_per_source_and_can_exceed_pillows_limit(tmp_path, monkeypatch):
    root = _folder(tmp_path, {"big.png": Image.new("RGB", (60, 50), (9, 8, 7))})
    with pytest.raises(SourceError, match=r"big\.png: 60x50 = 3,000 pixels exceeds the limit of 2,999"):
        list(open_source(root, max_pixels=2999).batches(1))
    # A program that made Pillow strict: a source allowing more still reads, and Pillow stays strict.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    images, _ = next(open_source(root, max_pixels=3000).batches(1))
    assert images.shape == (1, 50, 60, 3) and (images == (9, 8, 7)).all()
    assert Image.MAX_IMAGE_PIXELS == 1000
    with pytest.raises(SourceError, match="max_pixels must be a positive integer"):
        open_source(root, max_pixels=0)


def test_cli_max_pixels_flag(tmp_path):
    root = _folder(tmp_path, {"a.png": Image.new("RGB", (4, 3), (1, 2, 3)),
                              "b.png": Image.new("RGB", (40, 30), (1, 2, 3))})

    def convert(*extra):
        return subprocess.run([sys.executable, "-m", "imgconv", "convert", str(root), str(tmp_path / "o.h5"),
                               "--workers", "0", "--quiet", "--resize", "4x3", *extra], capture_output=True, text=True,
                              timeout=120)

    done = convert("--max-pixels", "1000")
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert "b.png: 40x30 = 1,200 pixels exceeds the limit of 1,000" in done.stderr
    assert not (tmp_path / "o.h5").exists()
    done = convert("--max-pixels", "1000", "--on-error", "skip")
    assert done.returncode == 0 and "b.png" in done.stderr
    assert len(imgconv.open(tmp_path / "o.h5")) == 1


def _jpeg(image, **options):
    import io

    out = io.BytesIO()
    image.save(out, format="JPEG", **options)
    return out.getvalue()


@pytest.mark.parametrize("name, data, reason", [
    ("empty.png", b"", "empty file"),
    ("text.png", b"this is a text file, not a PNG\n" * 3, "cannot decode"),
    ("html.jpg", b"<html><body>404 Not Found</body></html>", "cannot decode"),
    ("short.jpg", b"\xff\xd8\xff", "cannot decode"),
    ("cut.png", "png-cut", "cannot decode"),
    ("cut-header.png", "png-header", "cannot decode"),
    ("cut.jpg", "jpeg-cut", "cannot decode"),
    ("cut-header.jpg", "jpeg-header", "cannot decode"),
], ids=lambda v: v if isinstance(v, str) and "." in v else None)
@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_damaged_and_fake_images_follow_the_policy(tmp_path, name, data, reason, on_error):
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8))
    png = tmp_path / "whole.png"
    picture.save(png)
    cuts = {"png-cut": png.read_bytes()[:-40], "png-header": png.read_bytes()[:30],
            "jpeg-cut": _jpeg(picture)[: len(_jpeg(picture)) // 2], "jpeg-header": _jpeg(picture)[:200]}
    data = cuts.get(data, data)
    root = _folder(tmp_path, {"good.png": picture, name: data})
    source = open_source(root, resize=(40, 32), on_error=on_error)
    if on_error == "fail":
        with pytest.raises(SourceError, match=rf"{name.replace('.', '[.]')}: .*{reason}"):
            list(source.batches(10))
        return
    with pytest.warns(SkippedImageWarning):
        images, _ = next(source.batches(10))
    assert images.shape == (1, 32, 40, 3)
    assert [os.path.basename(s.path) for s in source.skipped] == [name] and reason in source.skipped[0].reason


def test_sixteen_bit_palette_and_cmyk_images_read_correctly(tmp_path):
    import io

    root = tmp_path / "images"
    root.mkdir()
    # 16-bit RGB PNG (written by hand: Pillow writes 16-bit RGB only from raw data).
    values = np.array([[[0x1234, 0xABCD, 0xFFFF], [0x0001, 0x8000, 0x7FFF]]], ">u2")
    raw = b"".join(b"\0" + row.tobytes() for row in values)
    header = struct.pack(">IIBBBBB", 2, 1, 16, 2, 0, 0, 0)

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    (root / "rgb16.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                                     + chunk(b"IEND", b""))
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.putdata([0, 1])
    palette.save(root / "palette.png")
    cmyk = Image.new("CMYK", (2, 1), (0, 255, 255, 0))  # pure red
    cmyk.save(root / "cmyk.tif")
    out = io.BytesIO()
    cmyk.save(out, format="JPEG", quality=100)
    (root / "cmyk.jpg").write_bytes(out.getvalue())
    gray16 = Image.fromarray(np.array([[0x1234, 0xFF00]], np.uint16))
    gray16.save(root / "gray16.png")
    source = open_source(root)
    got = {os.path.basename(f): image for f, (image, _) in zip(source._file_list(), _each(source))}
    assert got["rgb16.png"].tolist() == [[[0x12, 0xAB, 0xFF], [0x00, 0x80, 0x7F]]]  # the high bytes
    assert got["palette.png"].tolist() == [[[10, 20, 30], [200, 100, 50]]]
    assert got["cmyk.tif"].tolist() == [[[255, 0, 0], [255, 0, 0]]]
    assert np.abs(got["cmyk.jpg"].astype(int) - [255, 0, 0]).max() <= 8
    assert got["gray16.png"].tolist() == [[[0x12] * 3, [0xFF] * 3]]


def _each(source):
    for images, labels in source.batches(1):
        yield images[0], labels[0]


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize("named", ["../outside.png", "/etc/passwd", "a/../../outside.png", "..\\outside.png",
                                   "outside"])
def test_labels_csv_cannot_name_files_outside_the_folder(tmp_path, named):
    Image.new("RGB", (2, 2)).save(tmp_path / "outside.png")  # a real file the name would reach
    root = _folder(tmp_path, {"a.png": Image.new("RGB", (2, 2))})
    (root / "sub").mkdir()
    csv = tmp_path / "labels.csv"
    csv.write_text(f"file,label\na.png,1\n{named},2\n")
    with pytest.raises(SourceError, match=r"labels\.csv: row 3 names .*not an image in the folder"):
        open_source(root, labels_csv=csv)


def _png_store(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    path = tmp_path / "store"
    with imgconv.create(path, format="png") as writer:
        writer.append(images, [0, 1, 2])
    return path, images


@pytest.mark.parametrize("named", ["../outside.png", "/etc/passwd", "images/../../outside.png",
                                   "images\\..\\..\\outside.png"])
def test_png_store_labels_cannot_point_outside_the_store(tmp_path, named):
    path, _ = _png_store(tmp_path)
    Image.new("RGB", (5, 4)).save(tmp_path / "outside.png")
    labels = path / "labels.csv"
    rows = labels.read_text().splitlines()
    index, _, label, crc = rows[2].split(",")
    rows[2] = ",".join([index, named, label, crc])
    labels.write_text("\n".join(rows) + "\n")
    with pytest.raises(StoreError, match=r"labels\.csv row 3 points outside the folder"):
        imgconv.open(path)


def test_png_store_manifest_cannot_name_a_labels_file_outside(tmp_path):
    import json

    from imgconv.stores.metadata import metadata_checksum

    path, _ = _png_store(tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["labels_file"] = "../labels.csv"
    # A crafted manifest carries a checksum that matches (anyone can compute a CRC).
    manifest["metadata_crc32c"] = metadata_checksum(manifest)
    shutil.copy(path / "labels.csv", tmp_path / "labels.csv")
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="labels_file outside the folder"):
        imgconv.open(path)


def test_png_store_symbolic_links_cannot_lead_outside(tmp_path):
    path, images = _png_store(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.fromarray(images[1]).save(outside / "000001.png")  # a valid image that would pass every check
    image_file = path / "images" / "000" / "000001.png"
    image_file.unlink()
    image_file.symlink_to(outside / "000001.png")
    with imgconv.open(path) as store:
        with pytest.raises(StoreError, match=r"000001\.png: image 1 is a symbolic link"):
            store[1]
        np.testing.assert_array_equal(store[2][0], images[2])
    shard = path / "images" / "000"
    shutil.move(str(shard), str(outside / "000"))
    shard.symlink_to(outside / "000")
    with pytest.raises(StoreError, match=r"folder images/000 of its images leads outside the store"):
        imgconv.open(path)


def test_classic_png_folder_may_link_to_images_kept_elsewhere(tmp_path):
    elsewhere = tmp_path / "pool"
    elsewhere.mkdir()
    folder = tmp_path / "classic"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (3, 2), (i, 9, 9)).save(elsewhere / f"img{i}.png")
        (folder / f"{i}.png").symlink_to(elsewhere / f"img{i}.png")
    (folder / "labels.csv").write_text("label\n4\n5\n")
    with imgconv.open(folder) as store:
        assert store[1][0][0, 0].tolist() == [1, 9, 9] and store[1][1] == 5


def test_png_folder_names_files_from_indices_never_from_input(tmp_path):
    root = tmp_path / "src"
    # Class folders and file names a naive writer might reuse: none may reach the output's names.
    for n, (folder, name) in enumerate([("x..", "evil..png"), ("-rf", "a b.png"), ("%s%n", "é.png"),
                                        ("cls", "$(touch x).png")]):
        (root / folder).mkdir(parents=True)
        Image.new("RGB", (3, 2), (n, 0, 0)).save(root / folder / name)
    dest = tmp_path / "out"
    imgconv.convert(root, dest, workers=0, format="png")
    written = sorted(os.path.relpath(os.path.join(d, f), dest) for d, _, files in os.walk(dest) for f in files)
    assert written == ["images/000/000000.png", "images/000/000001.png", "images/000/000002.png",
                       "images/000/000003.png", "labels.csv", "manifest.json"]
    assert sorted(os.listdir(tmp_path)) == ["out", "src"]


def test_npy_object_array_is_refused_as_a_pickle(tmp_path):
    marker = tmp_path / "created-by-the-payload"
    np.save(tmp_path / "o.npy", np.array([_System(marker), 1], dtype=object), allow_pickle=True)
    with pytest.raises(SourceError, match=r"o\.npy: an array of Python objects .*allow_pickle=False"):
        open_source(tmp_path / "o.npy")
    images = np.zeros((2, 2, 2, 3), np.uint8)
    np.savez(tmp_path / "l.npz", images=images, labels=np.array([_System(marker), 1], dtype=object))
    with pytest.raises(SourceError, match=r"l\.npz:labels\.npy: an array of Python objects"):
        open_source(tmp_path / "l.npz")
    assert not marker.exists()
