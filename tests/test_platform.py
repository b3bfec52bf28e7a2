"""imgconv._platform: the system calls written once, their fallbacks, and per-process state across fork."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from imgconv import _platform


def test_cpu_count_is_the_affinity_mask():
    assert _platform.cpu_count() >= 1
    if hasattr(os, "sched_getaffinity"):
        assert _platform.cpu_count() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("preadv", [True, False])
def test_pread_exact_reads_all_or_says_how_much(tmp_path, monkeypatch, preadv):
    monkeypatch.setattr(_platform, "_HAVE_PREADV", preadv)
    path = tmp_path / "data"
    path.write_bytes(bytes(range(200)))
    fd = os.open(path, os.O_RDONLY)
    try:
        out = bytearray(50)
        assert _platform.pread_exact(fd, memoryview(out), 100) == 50 and out == bytes(range(100, 150))
        short = bytearray(50)
        assert _platform.pread_exact(fd, memoryview(short), 180) == 20  # the file ends first
        assert short[:20] == bytes(range(180, 200))
    finally:
        os.close(fd)


def test_fdatasync_falls_back_to_fsync_where_missing(tmp_path, monkeypatch):
    calls = []
    monkeypatch.delattr(os, "fdatasync", raising=False)  # as on macOS
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd))
    _platform.fdatasync(7)
    assert calls == [7]


def test_disk_usage_counts_data_and_allocated_blocks(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"y" * 5000)
    os.link(tmp_path / "sub" / "b", tmp_path / "b-again")  # a hard link counts once, as du counts it
    os.symlink("/etc/passwd", tmp_path / "link")  # not followed
    usage = _platform.disk_usage(str(tmp_path))
    assert usage.data_bytes == 10 + 5000 + len("/etc/passwd")
    if usage.allocated_bytes is not None:
        # Whole blocks: a 10-byte file takes one; directories take blocks too.
        assert usage.allocated_bytes >= 4096 + 5000
        expected = int(subprocess.run(["du", "-s", "-B1", str(tmp_path)], capture_output=True, text=True,
                                      check=True).stdout.split()[0])
        assert usage.allocated_bytes == expected
    assert _platform.disk_usage(str(tmp_path / "a")).data_bytes == 10


def test_remove_path(tmp_path):
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "f").write_text("x")
    for name in ("d", "f", "missing"):
        _platform.remove_path(str(tmp_path / name))
    assert os.listdir(tmp_path) == []


def test_lock_exclusive_refuses_a_second_holder(tmp_path):
    a = os.open(tmp_path, os.O_RDONLY)
    b = os.open(tmp_path, os.O_RDONLY)
    try:
        assert _platform.lock_exclusive(a) is True
        assert _platform.lock_exclusive(b) is False
    finally:
        os.close(a)
        os.close(b)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_per_process_value_is_never_the_parents():
    made, discarded = [], []
    holder = _platform.PerProcess(lambda: made.append(os.getpid()) or object(), discard=discarded.append)
    parent_value = holder.get()
    assert holder.get() is parent_value and holder.peek() is parent_value
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports through the pipe, then leaves at once
        ok = holder.peek() is None and holder.get() is not parent_value and discarded == [parent_value]
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    os.close(read)
    assert holder.get() is parent_value and discarded == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_safe_lock_is_free_in_the_child_even_if_held_at_fork():
    lock = _platform.ForkSafeLock()
    held, release = threading.Event(), threading.Event()

    def hold():
        with lock:
            held.set()
            release.wait()

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, b"1" if lock._lock.acquire(timeout=5) else b"0")
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    release.set()
    thread.join()
    assert os.read(read, 1) == b"1"
    os.close(read)


def test_imgconv_imports_where_posix_calls_are_missing():
    """Windows has no fcntl: importing imgconv (and reading) must still work; writing says why it cannot."""
    script = (
        "import sys\n"
        "sys.modules['fcntl'] = None\n"  # import fcntl now raises ImportError
        "import imgconv, imgconv.stores\n"
        "from imgconv import _platform\n"
        "assert not _platform.CAN_LOCK_DIRECTORIES\n"
        "import numpy as np, tempfile, os\n"
        "try:\n"
        "    imgconv.create(os.path.join(tempfile.mkdtemp(), 'x.lmdb')).append(np.zeros((1, 2, 2, 3), np.uint8), [0])\n"
        "except imgconv.StoreError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Linux and macOS" in done.stdout


def test_renameat2_answers_false_where_unavailable(tmp_path, monkeypatch):
    monkeypatch.setattr(_platform, "_renameat2_function", lambda: None)
    (tmp_path / "a").write_text("x")
    assert _platform.renameat2(str(tmp_path / "a"), str(tmp_path / "b"), _platform.RENAME_NOREPLACE) is False
    assert os.path.exists(tmp_path / "a")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux's")
def test_renameat2_refuses_to_replace_with_noreplace(tmp_path):
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    if _platform._renameat2_function() is None:
        pytest.skip("no renameat2 in this libc")
    with pytest.raises(FileExistsError):
        _platform.renameat2(str(tmp_path / "a"), str(tmp_path / "b"), _platform.RENAME_NOREPLACE)
    assert np.array_equal(sorted(os.listdir(tmp_path)), ["a", "b"])


def _fifo(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


def test_open_regular_opens_a_file_blocking_and_close_on_exec(tmp_path):
    path = tmp_path / "file"
    path.write_bytes(b"abc")
    fd = _platform.open_regular(path)
    try:
        assert os.read(fd, 10) == b"abc"
        assert os.get_blocking(fd) and not os.get_inheritable(fd)
    finally:
        os.close(fd)
    with _platform.open_regular_file(path) as f:
        assert f.read() == b"abc"


def _finishes(call, timeout=10):
    """``call()`` in a thread: its result or exception, or None when it is still blocked after ``timeout`` s."""
    outcome = []

    def run():
        try:
            outcome.append(call())
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else None


def test_open_regular_refuses_a_fifo_without_blocking_and_names_it(tmp_path):
    fifo = _fifo(tmp_path)
    got = _finishes(lambda: _platform.open_regular(fifo))
    assert got is not None, "opening the FIFO blocked"
    assert isinstance(got, _platform.NotRegularFileError) and isinstance(got, OSError)
    assert got.filename == str(fifo) and got.kind == "a FIFO (named pipe)"
    assert got.strerror == "a FIFO (named pipe), not a regular file"


def test_open_regular_refuses_a_fifo_swapped_in_after_the_stat(tmp_path, monkeypatch):
    # The race: a regular file when looked at, a FIFO when opened. O_NONBLOCK keeps the open from waiting.
    fifo = _fifo(tmp_path)
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda path, **kw: real_stat(__file__, **kw) if str(path) == str(fifo)
                        else real_stat(path, **kw))
    got = _finishes(lambda: _platform.open_regular(fifo))
    assert isinstance(got, _platform.NotRegularFileError) and got.kind == "a FIFO (named pipe)"


@pytest.mark.parametrize("what, kind", [("directory", "a directory"), ("device", "a character device"),
                                        ("socket", "a socket")])
def test_open_regular_refuses_directories_devices_and_sockets(tmp_path, what, kind):
    import socket

    if what == "directory":
        path = tmp_path
    elif what == "device":
        path = "/dev/null"
    else:
        path = tmp_path / "sock"
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(path))
    with pytest.raises(_platform.NotRegularFileError) as info:
        _platform.open_regular(path)
    assert info.value.kind == kind


def test_open_regular_follows_links_unless_told_not_to(tmp_path):
    target = tmp_path / "file"
    target.write_bytes(b"x")
    link = tmp_path / "link"
    link.symlink_to(target)
    os.close(_platform.open_regular(link))
    with pytest.raises(_platform.NotRegularFileError, match="a symbolic link"):
        _platform.open_regular(link, follow_symlinks=False)
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "to-fifo").symlink_to(tmp_path / "fifo")
    with pytest.raises(_platform.NotRegularFileError, match="FIFO"):
        _platform.open_regular(tmp_path / "to-fifo")
