"""open_source and the reader registry: what it picks, and what it says when nothing fits."""
import numpy as np
import pytest
from PIL import Image

from imgconv.errors import ImgconvError, SourceError
from imgconv.sources import READERS, FolderSource, NumpySource, Source, SourceKind, open_source
from imgconv.sources.base import plan_segments


def test_every_reader_is_a_source_with_the_options_it_declares():
    import inspect

    for reader in READERS:
        assert issubclass(reader.source, Source)
        accepted = set(inspect.signature(reader.source).parameters) - {"path"}
        assert accepted == set(reader.options), reader.name


def test_missing_path(tmp_path):
    with pytest.raises(SourceError, match="no such file or directory"):
        open_source(tmp_path / "nope")


def test_empty_directory(tmp_path):
    with pytest.raises(SourceError, match=r"is empty"):
        open_source(tmp_path)


def test_directory_without_anything_readable_says_what_it_holds(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    with pytest.raises(SourceError) as info:
        open_source(tmp_path)
    message = str(info.value)
    assert "holds no images, no CIFAR batches (data_batch_1..5, test_batch" in message
    assert "no .npy/.npz files" in message and "notes.txt" in message and "1 folder(s) (sub)" in message
    assert isinstance(info.value, ImgconvError)


def test_directory_of_numpy_files_points_at_them(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(SourceError, match=r"holds NumPy files \(a\.npy\).*open the file itself"):
        open_source(tmp_path)


def test_unknown_file_kinds(tmp_path):
    (tmp_path / "data_batch_1").write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(SourceError, match=r"is a single CIFAR batch; open its directory"):
        open_source(tmp_path / "data_batch_1")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(SourceError, match=r"empty \(0 bytes\)"):
        open_source(tmp_path / "empty")
    (tmp_path / "x.bin").write_bytes(b"whatever")
    with pytest.raises(SourceError, match=r"not a CIFAR archive .*starts with b'whatever'"):
        open_source(tmp_path / "x.bin")


def test_detection_picks_the_right_reader(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((1, 2, 2), np.uint8))
    Image.new("RGB", (2, 2)).save(tmp_path / "img.png")
    assert isinstance(open_source(tmp_path / "a.npy"), NumpySource)
    assert isinstance(open_source(tmp_path), FolderSource)


def test_options_that_do_not_apply(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((1, 2, 2), np.uint8))
    # Defaults and None pass through, as a command line sends every option.
    open_source(tmp_path / "a.npy", mode="RGB", on_error="fail", resize=None, label_kind="fine")
    expected = r"read as numpy, which takes no option mode \(set to 'L'; it applies to: folder\)"
    with pytest.raises(SourceError, match=expected):
        open_source(tmp_path / "a.npy", mode="L")
    with pytest.raises(TypeError, match="unknown option"):
        open_source(tmp_path / "a.npy", colour="blue")


def test_registry_is_extensible(tmp_path, monkeypatch):
    class Fixed(Source):
        description = "fixed"
        length = 1
        shape = (1, 1, 1)

        def __init__(self, path):
            self.path = path

        def batches(self, batch_size, start=0, stop=None):
            yield np.zeros((1, 1, 1, 1), np.uint8), np.zeros(1, np.int64)

    (tmp_path / "x.fixed").write_text("")
    fixed = SourceKind("fixed", lambda p: p.endswith(".fixed"), Fixed, ())
    monkeypatch.setattr("imgconv.sources.READERS", [fixed] + READERS)
    assert isinstance(open_source(tmp_path / "x.fixed"), Fixed)


def test_len_without_a_known_length():
    class Unknown(Source):
        description = "a stream"
        length = None
        shape = None

        def batches(self, batch_size, start=0, stop=None):
            return iter(())

    with pytest.raises(TypeError, match="not known"):
        len(Unknown())
    with pytest.raises(ValueError, match="stop is required"):
        Unknown()._check_range(4, 0, None)


def test_plan_segments_crosses_parts():
    plan = list(plan_segments([3, 0, 4, 2], 1, 9, 4))
    assert plan == [
        (4, [(0, 1, 3, 0), (2, 0, 2, 2)]),
        (4, [(2, 2, 4, 0), (3, 0, 2, 2)]),
    ]
    assert list(plan_segments([5], 2, 5, 10)) == [(3, [(0, 2, 5, 0)])]


def test_default_take_reads_runs_with_batches():
    class Counting(Source):
        description = "ten images"
        length = 10
        shape = (1, 1, 1)

        def __init__(self):
            self.calls = []

        def batches(self, batch_size, start=0, stop=None):
            self.calls.append((start, stop))
            values = np.arange(start, stop, dtype=np.uint8)
            yield values.reshape(-1, 1, 1, 1), values.astype(np.int64)

    source = Counting()
    images, labels = source.take([7, 2, 3, 9, 2])
    assert labels.tolist() == [7, 2, 3, 9, 2] and images[:, 0, 0, 0].tolist() == [7, 2, 3, 9, 2]
    assert source.calls == [(2, 4), (7, 8), (9, 10)]
    with pytest.raises(ValueError, match="1-D sequence of integers"):
        source.take([[1]])
