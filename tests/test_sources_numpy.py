"""NumPy sources: .npy and .npz (stored and compressed), memory-mapped, and their bad forms."""
import os
import pickle
import zipfile

import numpy as np
import pytest

from imgconv.errors import SourceError
from imgconv.sources import NumpySource, open_source
from imgconv.sources.numpy_files import _ArrayReader


def _images(n, h=4, w=5, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def _read_all(source, batch_size=4, start=0, stop=None):
    batches = list(source.batches(batch_size, start, stop))
    return batches, np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def test_npy_nhwc_is_read_in_place_and_unlabelled(tmp_path, monkeypatch):
    images = _images(10)
    path = tmp_path / "a.npy"
    np.save(path, images)
    source = open_source(path)
    assert isinstance(source, NumpySource)
    assert (source.length, source.shape, source.label_names) == (10, (4, 5, 3), None)
    batches, got, labels = _read_all(source, 4, 1, 10)
    assert [len(b[0]) for b in batches] == [4, 4, 1]
    np.testing.assert_array_equal(got, images[1:])
    assert (labels == -1).all() and labels.dtype == np.int64
    assert batches[0][0].flags.c_contiguous
    # Only the rows asked for are read, at their place in the file; no map stays in memory.
    read = []
    real = os.preadv
    monkeypatch.setattr(os, "preadv", lambda fd, buffers, offset: read.append(offset) or real(fd, buffers, offset))
    reader = _ArrayReader(source.parts[0][0])
    rows = reader.rows(3, 5)
    np.testing.assert_array_equal(rows, images[3:5])
    assert not isinstance(rows, np.memmap) and not isinstance(rows.base, np.memmap)
    assert read == [source.parts[0][0].offset + 3 * 4 * 5 * 3]
    reader.close()


def test_npy_truncated_under_a_reader_is_a_source_error(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, _images(10))
    source = open_source(path)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    with pytest.raises(SourceError, match="a.npy"):
        list(source.batches(4))


def test_npy_grayscale_becomes_one_channel(tmp_path):
    images = _images(3, c=1)[..., 0]
    np.save(tmp_path / "g.npy", images)
    source = open_source(tmp_path / "g.npy")
    assert source.shape == (4, 5, 1)
    np.testing.assert_array_equal(_read_all(source)[1][..., 0], images)


def test_fortran_order_npy(tmp_path):
    images = np.asfortranarray(_images(6))
    np.save(tmp_path / "f.npy", images)
    np.testing.assert_array_equal(_read_all(open_source(tmp_path / "f.npy"), 4, 2, 6)[1], images[2:])


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
@pytest.mark.parametrize("keys", [("images", "labels"), ("x", "y"), ("x_train", "y_train")])
def test_npz_default_names(tmp_path, save, keys):
    images, labels = _images(9), np.arange(9) * 3
    path = tmp_path / "d.npz"
    save(path, **{keys[0]: images, keys[1]: labels})
    source = open_source(path)
    assert source.length == 9
    _, got, got_labels = _read_all(source, 4, 2, 9)
    np.testing.assert_array_equal(got, images[2:])
    np.testing.assert_array_equal(got_labels, labels[2:])
    assert keys[0] in source.description


def test_stored_npz_members_are_read_in_place(tmp_path):
    images = _images(4)
    np.savez(tmp_path / "d.npz", images=images, labels=np.arange(4))
    ref = open_source(tmp_path / "d.npz").parts[0][0]
    assert ref.stored and ref.offset > 0  # the member's data inside the zip file
    reader = _ArrayReader(ref)
    np.testing.assert_array_equal(reader.rows(1, 3), images[1:3])
    reader.close()


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_train_test_and_all(tmp_path, save):
    train, test = _images(5, seed=1), _images(3, seed=2)
    path = tmp_path / "keras.npz"
    save(path, x_train=train, y_train=np.arange(5), x_test=test, y_test=np.arange(3) + 10,
         label_names=np.array(["a", "b"]))
    assert open_source(path, split="test").length == 3
    source = open_source(path, split="all")
    _, got, labels = _read_all(source, 3)
    np.testing.assert_array_equal(got, np.concatenate([train, test]))
    assert labels.tolist() == [0, 1, 2, 3, 4, 10, 11, 12]
    assert source.label_names == ["a", "b"]


def test_npz_explicit_keys_and_labels_column(tmp_path):
    path = tmp_path / "k.npz"
    np.savez(path, pics=_images(4), classes=np.arange(4).reshape(4, 1))
    source = open_source(path, images_key="pics", labels_key="classes")
    assert _read_all(source)[2].tolist() == [0, 1, 2, 3]


def test_npz_without_labels_gives_minus_one(tmp_path):
    np.savez(tmp_path / "n.npz", images=_images(2))
    assert _read_all(open_source(tmp_path / "n.npz"))[2].tolist() == [-1, -1]


def test_pickles_without_data_and_reads_after(tmp_path):
    np.savez(tmp_path / "d.npz", images=_images(50, 8, 8), labels=np.arange(50))
    source = open_source(tmp_path / "d.npz")
    list(source.batches(10))
    data = pickle.dumps(source)
    assert len(data) < 2000
    np.testing.assert_array_equal(_read_all(pickle.loads(data), 10)[2], np.arange(50))


# --- bad input ---------------------------------------------------------------


def test_npz_without_the_named_arrays_lists_what_it_holds(tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, pictures=_images(2), tags=np.arange(2))
    with pytest.raises(SourceError, match=r"w\.npz: no train images array .* holds: pictures, tags"):
        open_source(path)
    with pytest.raises(SourceError, match=r"no labels array nope .*pictures, tags"):
        open_source(path, images_key="pictures", labels_key="nope")
    with pytest.raises(SourceError, match=r"no test images array"):
        open_source(path, split="test")


def test_labels_that_disagree_in_length(tmp_path):
    np.savez(tmp_path / "l.npz", images=_images(4), labels=np.arange(3))
    with pytest.raises(SourceError, match=r"l\.npz: the arrays disagree in length: 4 images .* but 3 labels"):
        open_source(tmp_path / "l.npz")


@pytest.mark.parametrize("compress", [False, True])
def test_uint64_labels_beyond_int64_are_refused_not_made_negative(tmp_path, compress):
    save = np.savez_compressed if compress else np.savez
    save(tmp_path / "u.npz", images=_images(3), labels=np.array([1, 2**63 - 1, 5], np.uint64))
    assert _read_all(open_source(tmp_path / "u.npz"))[2].tolist() == [1, 2**63 - 1, 5]
    save(tmp_path / "u.npz", images=_images(3), labels=np.array([1, 2**63, 2**64 - 1], np.uint64))
    with pytest.raises(SourceError, match=r"u\.npz:labels\.npy: label 1 is 9223372036854775808, beyond a 64-bit"):
        _read_all(open_source(tmp_path / "u.npz"))


def test_label_names_over_their_limit_are_refused(tmp_path):
    names = np.array(["x" * 1000] * 5000)  # 20 MB of UTF-32 names
    np.savez(tmp_path / "n.npz", images=_images(2), labels=np.arange(2), label_names=names)
    with pytest.raises(SourceError, match=r"n\.npz:label_names\.npy: 20,000,000 bytes, more than a label_names array"):
        open_source(tmp_path / "n.npz")


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((2, 4, 4, 3), np.float32), "must be uint8, got float32"),
        (np.zeros((2, 3, 32, 32), np.uint8), "channels-first"),
        (np.zeros((2, 4), np.uint8), r"\(N, H, W, C\) or \(N, H, W\)"),
    ],
)
def test_wrong_images(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(SourceError, match=message) as info:
        open_source(tmp_path / "bad.npy")
    assert "bad.npy" in str(info.value)


def test_truncated_npy(tmp_path):
    path = tmp_path / "t.npy"
    np.save(path, _images(10))
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(SourceError, match=r"t\.npy: truncated, .* 600 bytes of data, the file holds 593"):
        open_source(path)


def test_zero_byte_and_non_numpy_files(tmp_path):
    (tmp_path / "z.npy").write_bytes(b"")
    with pytest.raises(SourceError, match=r"z\.npy: empty file"):
        open_source(tmp_path / "z.npy")
    (tmp_path / "fake.npz").write_bytes(b"hello world")
    with pytest.raises(SourceError, match=r"fake\.npz: not a \.npy or \.npz file"):
        open_source(tmp_path / "fake.npz")


def test_corrupt_npz_member(tmp_path):
    path = tmp_path / "c.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images.npy", b"\x93NUMPY garbage")
    with pytest.raises(SourceError, match=r"c\.npz:images\.npy: not a readable \.npy"):
        open_source(path)


def test_object_arrays_are_refused(tmp_path):
    np.save(tmp_path / "o.npy", np.array([[[1]], [[2]]], dtype=object), allow_pickle=True)
    with pytest.raises(SourceError, match="uint8"):
        open_source(tmp_path / "o.npy")


def test_npy_has_no_test_split_or_keys(tmp_path):
    np.save(tmp_path / "a.npy", _images(2))
    with pytest.raises(SourceError, match="no test part"):
        open_source(tmp_path / "a.npy", split="test")
    with pytest.raises(SourceError, match="apply to .npz"):
        open_source(tmp_path / "a.npy", images_key="x")


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_take_across_train_and_test(tmp_path, save):
    train, test = _images(5, seed=1), _images(3, seed=2)
    save(tmp_path / "k.npz", x_train=train, y_train=np.arange(5), x_test=test, y_test=np.arange(3) + 10)
    images, labels = open_source(tmp_path / "k.npz", split="all").take([6, 2, 7, 2])
    np.testing.assert_array_equal(images, np.concatenate([train, test])[[6, 2, 7, 2]])
    assert labels.tolist() == [11, 2, 12, 2]


def test_compressed_npz_reads_on_from_one_stream_across_calls(tmp_path, monkeypatch):
    images, labels = _images(40), np.arange(40)
    path = tmp_path / "c.npz"
    np.savez_compressed(path, images=images, labels=labels)
    source = open_source(path)
    source.take([0])  # labels are read once, whole; count only the image stream from here
    opened = []
    real_open = zipfile.ZipFile.open

    def counting_open(self, name, *args, **kwargs):
        opened.append(name)
        return real_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", counting_open)
    got = [b[0] for lo, hi in [(0, 9), (9, 30), (30, 40)] for b in source.batches(4, lo, hi)]
    np.testing.assert_array_equal(np.concatenate(got), images)
    assert opened == []  # the stream opened by take() read on, once per batch before
    np.testing.assert_array_equal(source.take([35, 2])[0], images[[35, 2]])  # backwards: reopens
    copy = pickle.loads(pickle.dumps(source))
    assert copy._readers is None
    np.testing.assert_array_equal(next(copy.batches(3, 5, 8))[0], images[5:8])
    source.close()
    assert source._readers is None
    np.testing.assert_array_equal(next(source.batches(3, 0, 3))[0], images[:3])


def test_compressed_fortran_order_images_are_refused_with_the_remedy(tmp_path):
    path = tmp_path / "f.npz"
    np.savez_compressed(path, images=np.asfortranarray(_images(6)), labels=np.arange(6))
    with pytest.raises(SourceError, match=r"f\.npz:images\.npy: a compressed Fortran-order array.*C-ordered"):
        open_source(path)
    np.savez(path, images=np.asfortranarray(_images(6)), labels=np.asfortranarray(np.arange(6)))
    np.testing.assert_array_equal(_read_all(open_source(path))[1], _images(6))  # stored: memory-mapped, fine


@pytest.mark.parametrize("damage", ["header", "method"])
def test_damaged_npz_is_a_source_error(tmp_path, damage):
    path = tmp_path / "d.npz"
    np.savez_compressed(path, images=_images(4), labels=np.arange(4))
    data = bytearray(path.read_bytes())
    if damage == "method":  # an unknown compression method in the central directory
        at = data.index(b"PK\x01\x02")
        data[at + 10 : at + 12] = b"\x63\x00"
    else:  # the .npy header text cut short inside the member
        np.savez(path, images=_images(4))
        data = bytearray(path.read_bytes())
        at = data.index(b"{'descr'")
        data[at + 5 : at + 30] = b"(" * 25
    path.write_bytes(bytes(data))
    with pytest.raises(SourceError, match="d.npz"):
        open_source(path)
