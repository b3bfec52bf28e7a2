"""Image folders: layouts, labels, modes, sizes, and bad images under both error policies."""
import pickle
import warnings

import numpy as np
import pytest
from factories import finishes
from PIL import Image

from imgconv.errors import SourceError
from imgconv.sources import FolderSource, SkippedImageWarning, open_source


def _solid(colour, size=(6, 4), mode="RGB"):
    return Image.new(mode, size, colour)


def _save(image, path, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def _read_all(source, batch_size=4, start=0, stop=None):
    batches = list(source.batches(batch_size, start, stop))
    images = [image for b in batches for image in b[0]]
    return batches, images, np.concatenate([b[1] for b in batches]) if batches else np.zeros(0, np.int64)


@pytest.fixture()
def classes(tmp_path):
    """root/cat (2 PNG, one nested), root/dog (BMP, WebP lossless), a hidden folder to ignore."""
    root = tmp_path / "root"
    _save(_solid((255, 0, 0)), root / "cat" / "b.png")
    _save(_solid((0, 255, 0)), root / "cat" / "deep" / "a.png")
    _save(_solid((0, 0, 255)), root / "dog" / "c.bmp")
    _save(_solid((9, 99, 199)), root / "dog" / "d.webp", lossless=True)
    _save(_solid((1, 2, 3)), root / ".cache" / "x.png")
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def test_class_per_subfolder_like_imagefolder(classes):
    source = open_source(classes)
    assert isinstance(source, FolderSource)
    assert source.label_names == ["cat", "dog"] and source.length == 4
    assert source.shape == (4, 6, 3)
    batches, images, labels = _read_all(source, batch_size=3)
    assert labels.tolist() == [0, 0, 1, 1]
    assert batches[0][0].shape == (3, 4, 6, 3) and batches[0][0].dtype == np.uint8
    # Sorted paths within a class: "b.png" before "deep/a.png".
    assert [tuple(image[0, 0]) for image in images] == [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 99, 199)]
    assert "2 classes" in source.description


def test_jpeg_decodes_close_to_its_colour(tmp_path):
    _save(_solid((200, 100, 50), (16, 16)), tmp_path / "a" / "x.jpg", quality=95)
    image = _read_all(open_source(tmp_path))[1][0]
    assert np.abs(image.astype(int) - (200, 100, 50)).max() <= 3


def test_sizes_that_differ_give_lists(tmp_path):
    _save(_solid((1, 1, 1), (5, 3)), tmp_path / "a.png")
    _save(_solid((2, 2, 2), (7, 2)), tmp_path / "b.png")
    source = open_source(tmp_path)
    assert source.shape is None and source.label_names is None
    (images, labels), = list(source.batches(10))
    assert isinstance(images, list) and [i.shape for i in images] == [(3, 5, 3), (2, 7, 3)]
    assert labels.tolist() == [-1, -1]


def test_resize_stretch_and_crop(tmp_path):
    stripes = np.zeros((32, 64, 3), np.uint8)
    stripes[:, :16] = (255, 0, 0)
    stripes[:, 16:48] = (0, 255, 0)
    stripes[:, 48:] = (0, 0, 255)
    _save(Image.fromarray(stripes), tmp_path / "s.png")
    stretched = _read_all(open_source(tmp_path, resize=(16, 16)))[1][0]
    cropped = _read_all(open_source(tmp_path, resize=(16, 16), resize_policy="crop"))[1][0]
    assert stretched.shape == cropped.shape == (16, 16, 3)
    assert tuple(stretched[8, 1]) == (255, 0, 0) and tuple(stretched[8, 14]) == (0, 0, 255)
    # Shorter side 32 -> 16, width 64 -> 32, centre 16 columns: all green.
    assert (cropped[:, 1:-1] == (0, 255, 0)).all()


def test_grayscale_mode_gives_one_channel(tmp_path):
    _save(_solid((255, 255, 255)), tmp_path / "a.png")
    source = open_source(tmp_path, mode="L")
    assert source.shape == (4, 6, 1)
    assert (source.batches(1).__next__()[0] == 255).all()


def test_transparency_is_composited_over_white(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red; the rest fully transparent black
    _save(Image.fromarray(rgba, "RGBA"), tmp_path / "t.png")
    rgb = _read_all(open_source(tmp_path))[1][0]
    assert tuple(rgb[0, 0]) == (255, 0, 0) and tuple(rgb[1, 1]) == (255, 255, 255)
    kept = _read_all(open_source(tmp_path, mode="RGBA"))[1][0]
    assert kept.shape == (2, 2, 4) and tuple(kept[1, 1]) == (0, 0, 0, 0)


def test_palette_with_transparent_index(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 0, 0, 0] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    _save(image, tmp_path / "p.png", transparency=1)
    pixels = _read_all(open_source(tmp_path))[1][0]
    assert pixels[0].tolist() == [[10, 20, 30], [255, 255, 255]]


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 256, 65535]], np.uint16)
    _save(Image.fromarray(values), tmp_path / "deep.png")
    pixels = _read_all(open_source(tmp_path, mode="L"))[1][0]
    assert pixels[0, :, 0].tolist() == [0, 1, 255]


def test_exif_orientation_is_applied(tmp_path):
    image = _solid((0, 0, 0), (20, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    _save(image, tmp_path / "r.jpg", exif=exif)
    _save(_solid((0, 0, 0), (10, 20)), tmp_path / "upright.png")
    source = open_source(tmp_path)
    assert source.shape == (20, 10, 3)
    assert _read_all(source)[1][0].shape == (20, 10, 3)


# --- flat folders and CSV labels ---------------------------------------------


@pytest.fixture()
def flat(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        _save(_solid((5, 5, 5)), tmp_path / "imgs" / name)
    return tmp_path / "imgs"


def test_labels_from_csv_integers_with_header(flat, tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("file,label\nc.png,7\na.png,3\nb,5\n")
    source = open_source(flat, labels_csv=csv)
    assert _read_all(source)[2].tolist() == [3, 5, 7] and source.label_names is None


def test_labels_from_csv_class_names(flat, tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("a.png,dog\nb.png,cat\nc.png,dog\n")
    source = open_source(flat, labels_csv=csv)
    assert source.label_names == ["cat", "dog"]
    assert _read_all(source)[2].tolist() == [1, 0, 1]


@pytest.mark.parametrize(
    "text, message",
    [
        ("a.png,1\nb.png,2\n", r"1 image\(s\) have no label row: c\.png"),
        ("a.png,1\nb.png,2\nc.png,3\nzzz.png,4\n", r"row 4 names 'zzz\.png'"),
        ("a.png,1\na.png,2\nb.png,1\nc.png,1\n", "two labels"),
        ("a.png\n", "expected image,label"),
    ],
)
def test_csv_that_does_not_match(flat, tmp_path, text, message):
    csv = tmp_path / "labels.csv"
    csv.write_text(text)
    with pytest.raises(SourceError, match=message) as info:
        open_source(flat, labels_csv=csv)
    assert "labels.csv" in str(info.value)


def test_images_mixed_with_class_folders(flat):
    _save(_solid((1, 1, 1)), flat / "cls" / "x.png")
    expected = r"mixes images at its top level \(a\.png, b\.png, c\.png\) with class folders \(cls\)"
    with pytest.raises(SourceError, match=expected):
        open_source(flat)


# --- bad images ---------------------------------------------------------------


@pytest.fixture()
def with_bad(tmp_path):
    root = tmp_path / "root"
    _save(_solid((1, 2, 3)), root / "a" / "1.png")
    (root / "a" / "2.png").write_bytes(b"")
    (root / "a" / "3.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is no jpeg")
    good = _save(_solid((4, 5, 6)), root / "b" / "4.png")
    truncated = root / "b" / "5.png"
    truncated.write_bytes(good.read_bytes()[:-30])
    return root


def test_first_bad_image_stops_with_its_name(with_bad):
    source = open_source(with_bad, resize=(6, 4))  # no header probe: the decode meets the bad file
    with pytest.raises(SourceError, match=r"2\.png: empty file \(0 bytes\)"):
        list(source.batches(10))
    with pytest.raises(SourceError, match=r"3\.jpg: cannot decode the image"):
        list(source.batches(10, 2, 3))
    with pytest.raises(SourceError, match=r"5\.png: cannot decode the image"):
        list(source.batches(10, 4, 5))


def test_shape_probe_reports_bad_headers(with_bad):
    with pytest.raises(SourceError, match=r"2\.png: empty file"):
        _ = open_source(with_bad).shape


def test_skip_policy_leaves_bad_images_out_and_reports_them(with_bad):
    source = open_source(with_bad, on_error="skip")
    with pytest.warns(SkippedImageWarning) as caught:
        batches, images, labels = _read_all(source, batch_size=2)
    # [1.png, -], [-, 4.png], [-]: every range keeps its batch, the last one empty.
    assert [len(b[1]) for b in batches] == [1, 1, 0]
    assert batches[2][0].shape == (0, 4, 6, 3)
    assert labels.tolist() == [0, 1]
    assert [tuple(i[0, 0]) for i in images] == [(1, 2, 3), (4, 5, 6)]
    skipped = sorted(s.path.rsplit("/", 1)[1] for s in source.skipped)
    assert skipped == ["2.png", "3.jpg", "5.png"]
    message = str(caught[0].message)
    assert "skipped 3" in message and "2.png (empty file (0 bytes))" in message and "5.png" in message


def test_a_file_the_shape_probe_finds_bad_is_reported_by_the_batch_that_skips_it(with_bad):
    source = open_source(with_bad, on_error="skip")
    assert source.shape == (4, 6, 3) and source.skipped == []  # the probe reads headers, it skips nothing
    with pytest.warns(SkippedImageWarning):
        _read_all(source, batch_size=2)
    assert sorted(s.path.rsplit("/", 1)[1] for s in source.skipped) == ["2.png", "3.jpg", "5.png"]


def test_no_warning_without_skips(classes):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _read_all(open_source(classes, on_error="skip"))


def test_folder_source_pickles_its_scan_and_reads_elsewhere(classes):
    source = open_source(classes)
    assert source.shape == (4, 6, 3)
    clone = pickle.loads(pickle.dumps(source))
    assert clone.length == 4 and clone.shape == (4, 6, 3)
    assert _read_all(clone)[2].tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"mode": "CMYK"}, "mode must be one of"),
        ({"resize": (0, 5)}, "positive"),
        ({"resize": "big"}, r"\(width, height\)"),
        ({"resize_policy": "pad"}, "resize_policy"),
        ({"on_error": "ignore"}, "on_error"),
    ],
)
def test_bad_options(classes, options, message):
    with pytest.raises(SourceError, match=message):
        open_source(classes, **options)


def test_take_decodes_the_images_asked_in_order(classes):
    source = open_source(classes)
    images, labels = source.take([3, 0, 3])
    assert images.shape == (3, 4, 6, 3) and labels.tolist() == [1, 0, 1]
    assert tuple(images[0, 0, 0]) == (9, 99, 199) and tuple(images[1, 0, 0]) == (255, 0, 0)


def test_take_under_skip_leaves_bad_images_out(with_bad):
    source = open_source(with_bad, on_error="skip")
    with pytest.warns(SkippedImageWarning, match="2.png"):
        images, labels = source.take([3, 1, 0])
    assert labels.tolist() == [1, 0] and [tuple(i[0, 0]) for i in images] == [(4, 5, 6), (1, 2, 3)]


# --- review findings ------------------------------------------------------------------------


def test_a_fifo_named_like_an_image_is_not_an_image(classes):
    import os

    fifo = classes / "cat" / "z.png"
    os.mkfifo(fifo)
    source = open_source(classes, on_error="skip")
    result = finishes(lambda: (source.shape, _read_all(source)[2].tolist()), fifo)
    assert result == ("ok", ((4, 6, 3), [0, 0, 1, 1]))  # left out of the scan


@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_a_fifo_put_where_an_image_was_is_refused_not_waited_on(classes, on_error):
    import os

    source = open_source(classes, on_error=on_error)
    assert source.shape == (4, 6, 3)
    (classes / "cat" / "b.png").unlink()
    os.mkfifo(classes / "cat" / "b.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedImageWarning)
        result = finishes(lambda: _read_all(source)[2].tolist(), classes / "cat" / "b.png")
    assert result is not None, "the read blocked on the FIFO"
    if on_error == "fail":
        assert result[0] == "error" and "b.png: a FIFO (named pipe), not an image file" in str(result[1])
    else:
        assert result == ("ok", [0, 1, 1]) and "a FIFO" in source.skipped[0].reason


def test_csv_label_beyond_64_bits_names_its_row(flat, tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("file,label\na.png,1\nb.png,99999999999999999999999\nc.png,2\n")
    with pytest.raises(SourceError, match=r"labels\.csv: row 3 labels b\.png 99999999999999999999999, beyond"):
        open_source(flat, labels_csv=csv)


def test_csv_first_row_with_an_integer_label_is_data_not_a_header(flat, tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("../../etc/passwd,1\na.png,1\nb.png,2\nc.png,3\n")
    with pytest.raises(SourceError, match=r"row 1 names '\.\./\.\./etc/passwd', which is not an image"):
        open_source(flat, labels_csv=csv)
    csv.write_text("image,class\na.png,dog\nb.png,cat\nc.png,dog\n")  # a real header still goes
    assert open_source(flat, labels_csv=csv).label_names == ["cat", "dog"]


def test_a_pickled_source_reads_only_its_range_headers(tmp_path, monkeypatch):
    from imgconv.sources import folder

    for i in range(12):
        _save(_solid((i, i, i)), tmp_path / "r" / "c" / f"{i:02d}.png")
    source = pickle.loads(pickle.dumps(open_source(tmp_path / "r")))  # shape never asked
    probed = []
    real = folder._header_size

    def counting(path, *limits):
        probed.append(path)
        return real(path, *limits)

    monkeypatch.setattr(folder, "_header_size", counting)
    images, _ = next(source.batches(3, 6, 9))
    assert images.shape == (3, 4, 6, 3) and len(probed) == 3
    images, _ = source.take([1, 10])
    assert images.shape == (2, 4, 6, 3) and len(probed) == 5
    assert source.shape == (4, 6, 3) and len(probed) == 12  # asked for: the rest of the folder, once
    next(source.batches(3, 0, 3))
    assert len(probed) == 12


def test_float_and_lab_images_are_refused(tmp_path):
    root = tmp_path / "odd"
    root.mkdir()
    Image.fromarray(np.full((4, 6), 0.5, np.float32)).save(root / "f.tif")
    Image.new("LAB", (6, 4), (50, 0, 0)).save(root / "lab.tif")
    source = open_source(root, mode="RGBA")
    with pytest.raises(SourceError, match=r"f\.tif: floating-point pixels \(mode F\)"):
        list(source.batches(1, 0, 1))
    with pytest.raises(SourceError, match=r"lab\.tif: CIE LAB colour"):
        list(source.batches(1, 1, 2))


def test_empty_class_folders_are_refused(classes):
    (classes / "empty").mkdir()
    (classes / "text_only").mkdir()
    (classes / "text_only" / "readme.txt").write_text("no images")
    with pytest.raises(SourceError, match=r"class folder\(s\) empty, text_only hold no images"):
        open_source(classes)


def test_take_under_skip_says_which_indices_were_kept(with_bad):
    source = open_source(with_bad, on_error="skip")
    with pytest.warns(SkippedImageWarning):
        images, labels = source.take([3, 1, 0, 3])
    assert source.last_kept.tolist() == [True, False, True, True]
    assert labels.tolist() == [1, 0, 1]
    assert pickle.loads(pickle.dumps(source)).last_kept is None
