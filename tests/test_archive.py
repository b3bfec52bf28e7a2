"""Containers of member files (sources/archive.py): a directory and a tar archive answer alike."""
import io
import os
import pickle
import tarfile
import threading

import pytest

from imgconv.errors import SourceError
from imgconv.sources import archive
from imgconv.sources.archive import Archive, Directory, OrderedMembers, read_exactly

FILES = {"a.bin": b"A" * 700, "sub/b.txt": b"bee\n", "sub/deeper/c": bytes(range(256)) * 3, "z": b""}
# The order a shard or the official CIFAR archives may keep: not sorted.
ARCHIVE_ORDER = ["sub/deeper/c", "z", "a.bin", "sub/b.txt"]


def _tar(path, members, prefix="", mode="w:gz"):
    with tarfile.open(path, mode) as tar:
        for name in members:
            data = FILES[name] if isinstance(members, list) else members[name]
            info = tarfile.TarInfo(f"{prefix}/{name}" if prefix else name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


@pytest.fixture(params=["directory", "archive", "plain tar", "prefixed"])
def container(request, tmp_path):
    if request.param == "directory":
        for name, data in FILES.items():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_bytes(data)
        return Directory(str(tmp_path))
    if request.param == "prefixed":
        return Archive(_tar(tmp_path / "x.tar.gz", ARCHIVE_ORDER, prefix="top"), "top")
    mode = "w:gz" if request.param == "archive" else "w"
    return Archive(_tar(tmp_path / "x.tar", ARCHIVE_ORDER, mode=mode))


def _read_ahead_threads(path):
    """The read-ahead threads of the archive at ``path`` (other tests may leave theirs to the collector)."""
    return [t for t in threading.enumerate() if t.name == f"imgconv read-ahead {path}"]


def test_a_directory_and_an_archive_answer_alike(container):
    for name, data in FILES.items():
        assert container.has(name) and container.size(name) == len(data)
        with container.open(name) as f:
            assert f.read() == data
        assert bytes(container.read_range(name, 5, 10)) == data[5:15]
        assert bytes(read_exactly(container, name, 0, len(data))) == data
    assert not container.has("sub") and not container.has("missing")
    assert container.where("sub/b.txt").endswith("sub/b.txt")
    assert {name: f.read() for name, f in container.each()} == FILES
    assert dict(container.read_ahead()) == FILES
    assert dict(container.read_ahead({"z", "a.bin", "nope"})) == {"z": b"", "a.bin": FILES["a.bin"]}
    container.close()
    assert not _read_ahead_threads(container.path)


def test_an_archive_is_read_in_its_own_order_and_names_members_with_the_archive(tmp_path):
    box = Archive(_tar(tmp_path / "x.tar.gz", ARCHIVE_ORDER, prefix="top"), "top")
    assert [name for name, _ in box.read_ahead()] == ARCHIVE_ORDER
    assert [name for name, _ in box.each({"a.bin", "z"})] == ["z", "a.bin"]
    assert box.where("a.bin") == f"{tmp_path / 'x.tar.gz'}:top/a.bin"
    assert box.sequential and not Directory(str(tmp_path)).sequential


def test_a_short_member_is_named(container):
    with pytest.raises(SourceError, match=r"a\.bin: truncated, 700 bytes where 710 were expected"):
        read_exactly(container, "a.bin", 10, 700)


def test_two_members_of_one_name_are_refused(tmp_path):
    path = tmp_path / "twice.tar"
    with tarfile.open(path, "w") as tar:
        for data in (b"one", b"two"):
            info = tarfile.TarInfo("same")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(SourceError, match="twice.tar:same: the archive holds two members of that name"):
        Archive(str(path)).has("same")


def test_a_pickled_archive_keeps_its_index_not_its_open_file(tmp_path):
    box = Archive(_tar(tmp_path / "x.tar.gz", ARCHIVE_ORDER))
    assert bytes(box.read_range("a.bin", 0, 3)) == b"AAA"
    copy = pickle.loads(pickle.dumps(box))
    assert copy.members.keys() == box.members.keys()
    assert copy._tar is None and copy._member is None
    assert bytes(copy.read_range("sub/b.txt", 0, 3)) == b"bee"
    box.close()
    copy.close()


def test_a_damaged_compressed_archive_and_something_else(tmp_path):
    whole = open(_tar(tmp_path / "x.tar.gz", ARCHIVE_ORDER, prefix="top"), "rb").read()
    assert archive.is_tar(str(tmp_path / "x.tar.gz"))
    (tmp_path / "cut.tar.gz").write_bytes(whole[:40])
    with pytest.raises(SourceError, match="cut.tar.gz: a damaged or truncated compressed archive"):
        archive.is_tar(str(tmp_path / "cut.tar.gz"))
    (tmp_path / "text").write_bytes(b"not an archive at all")
    assert not archive.is_tar(str(tmp_path / "text"))


def test_the_standard_library_decoder_reads_the_same_bytes(tmp_path, monkeypatch):
    path = _tar(tmp_path / "x.tar.gz", ARCHIVE_ORDER)
    fast = dict(Archive(path).read_ahead())
    monkeypatch.setattr(archive, "_igzip", None)
    assert not archive.fast_gzip_available()
    assert dict(Archive(path).read_ahead()) == fast == FILES


def test_ordered_members_come_in_the_order_asked_and_wait_on_disk(tmp_path, monkeypatch):
    aside = []
    real = archive.set_aside

    def recording(directory, number, data):
        aside.append(number)
        path = real(directory, number, data)
        assert os.path.getsize(path) == len(data)
        return path

    monkeypatch.setattr(archive, "set_aside", recording)
    box = Archive(_tar(tmp_path / "x.tar.gz", ARCHIVE_ORDER))
    with OrderedMembers(box, ["a.bin", "sub/deeper/c", "missing"], anytime={"sub/b.txt"}) as members:
        got = list(members)
    # c arrives first and waits for a.bin; b.txt, last in the archive, comes as it arrives.
    assert [name for name, _ in got] == ["a.bin", "sub/deeper/c", "sub/b.txt"]
    assert all(data == FILES[name] for name, data in got)
    assert aside == [1]  # the index of sub/deeper/c in the order asked
    assert members.delivered == ["a.bin", "sub/deeper/c"] and members.missing == ["missing"]


def test_ordered_members_stop_early_with_no_thread_and_no_file_left(tmp_path, monkeypatch):
    directories = []
    real = archive.set_aside
    monkeypatch.setattr(archive, "set_aside", lambda d, n, data: directories.append(d) or real(d, n, data))
    box = Archive(_tar(tmp_path / "x.tar.gz", ARCHIVE_ORDER))
    with OrderedMembers(box, ["z", "sub/deeper/c"]) as members:
        assert next(iter(members))[0] == "z"  # c came first and waits on disk
        assert len(_read_ahead_threads(box.path)) == 1 and os.listdir(directories[0]) == ["member-1"]
    assert not _read_ahead_threads(box.path) and not os.path.exists(directories[0])


def test_after_drop_order_only_the_anytime_members_come(tmp_path):
    box = Archive(_tar(tmp_path / "x.tar.gz", ARCHIVE_ORDER))
    members = OrderedMembers(box, ["sub/deeper/c", "a.bin"], anytime={"sub/b.txt"})
    got = []
    for name, _ in members:
        got.append(name)
        members.drop_order()
    assert got == ["sub/deeper/c", "sub/b.txt"] and members.missing == ["a.bin"]


def test_ordered_members_refuse_repeated_names(tmp_path):
    box = Directory(str(tmp_path))
    with pytest.raises(ValueError, match="distinct"):
        OrderedMembers(box, ["a", "a"])
    with pytest.raises(ValueError, match="distinct"):
        OrderedMembers(box, ["a"], anytime={"a"})
