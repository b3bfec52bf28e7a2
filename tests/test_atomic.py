"""Atomic output: nothing at the path until the store is whole; a replaced store is never lost."""
import json
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest
from factories import FORMATS, leftovers, make_images, run_without_write_access, target, write

from imgconv import _platform, stores
from imgconv.errors import ImgconvError, StoreError


@pytest.mark.parametrize("fmt", FORMATS)
def test_exception_in_the_with_block_leaves_nothing(tmp_path, fmt):
    path = target(tmp_path, fmt)
    with pytest.raises(RuntimeError):
        with stores.create(path) as writer:
            writer.append(make_images(5), np.arange(5))
            raise RuntimeError("interrupted")
    assert not os.path.exists(path)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_killed_writer_leaves_no_store_at_the_target(tmp_path, fmt):
    path = target(tmp_path, fmt)
    script = (
        "import os, signal, numpy as np\n"
        "from imgconv import stores\n"
        f"w = stores.create({path!r})\n"
        "w.append(np.zeros((50, 4, 4, 3), np.uint8), np.arange(50))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert result.returncode == -9, result.stderr.decode()
    assert not os.path.exists(path)
    (partial,) = leftovers(tmp_path)
    assert partial == "." + os.path.basename(path) + ".imgconv-partial"
    with pytest.raises(ImgconvError):
        stores.open(tmp_path / partial / os.path.basename(path), fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_existing_target_needs_overwrite(tmp_path, fmt):
    path = write(target(tmp_path, fmt), make_images(3), [1, 2, 3])
    with pytest.raises(StoreError, match="already exists"):
        stores.create(path)
    # An aborted replacement keeps the old store intact.
    with pytest.raises(RuntimeError):
        with stores.create(path, overwrite=True) as writer:
            writer.append(make_images(2, seed=5), [8, 9])
            raise RuntimeError
    with stores.open(path) as store:
        assert store.read_all()[1].tolist() == [1, 2, 3]
    write(path, make_images(2, seed=5), [8, 9], overwrite=True)
    with stores.open(path) as store:
        assert store.read_all()[1].tolist() == [8, 9]
    assert not leftovers(tmp_path)




def test_writing_into_a_read_only_directory_is_a_store_error(shared_dir):
    folder = os.path.join(shared_dir, "media")
    os.mkdir(folder)
    os.chmod(folder, 0o555)
    script = f"""
import json, os, numpy as np
from imgconv import stores
folder = {folder!r}
assert not os.access(folder, os.W_OK), "the directory is writable: this check would prove nothing"
found = {{}}
for fmt, name in [("png", "a"), ("lmdb", "a.lmdb"), ("hdf5", "a.h5")]:
    path = os.path.join(folder, name)
    try:
        with stores.create(path, fmt) as writer:
            writer.append(np.zeros((4, 8, 8, 3), np.uint8), [0, 1, 2, 3])
        found[fmt] = "no error"
    except Exception as exc:
        found[fmt] = [type(exc).__module__ + "." + type(exc).__name__, path in str(exc)]
found["left"] = os.listdir(folder)
print(json.dumps(found))
"""
    result = run_without_write_access(script)
    for fmt in FORMATS:
        assert result[fmt] == ["imgconv.errors.StoreError", True], (fmt, result[fmt])
    assert result["left"] == []


def test_disk_full_is_a_store_error_and_leaves_nothing(tmp_path):
    # A 3 MB tmpfs in a private mount namespace (root only): the store cannot fit.
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare to mount a tiny tmpfs")
    small = tmp_path / "small"
    small.mkdir()
    script = f"""
import json, os, numpy as np
from imgconv import stores
images = np.random.default_rng(0).integers(0, 256, (100, 32, 32, 3), dtype=np.uint8)
found = {{}}
for fmt, name in [("png", "a"), ("lmdb", "a.lmdb"), ("hdf5", "a.h5")]:
    path = os.path.join({str(small)!r}, name)
    try:
        with stores.create(path, fmt, **({{"compress_level": 0}} if fmt == "png" else {{}})) as writer:
            for _ in range(20):
                writer.append(images, np.arange(100))
        found[fmt] = "no error"
    except Exception as exc:
        found[fmt] = [type(exc).__module__ + "." + type(exc).__name__, path in str(exc)]
    found[fmt + " left"] = os.listdir({str(small)!r})
print(json.dumps(found))
"""
    shell = f"mount -t tmpfs -o size=3m tmpfs {small} && exec {sys.executable} -c \"$0\""
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", shell, script],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and "mount" in done.stderr and not done.stdout:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr[-2000:]  # a crash at exit (HDF5) fails here
    assert "Exception ignored" not in done.stderr, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for fmt in FORMATS:
        assert result[fmt] == ["imgconv.errors.StoreError", True], (fmt, result[fmt])
        assert result[fmt + " left"] == []


def _renames_interrupted_at(monkeypatch, call):
    """Make the ``call``-th os.rename raise KeyboardInterrupt (Ctrl-C), and renameat2 unavailable."""
    real, calls = os.rename, [0]

    def rename(source, target):
        calls[0] += 1
        if calls[0] == call:
            raise KeyboardInterrupt
        return real(source, target)

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(_platform, "renameat2", lambda source, target, flags: False)


@pytest.mark.parametrize("fmt", FORMATS)
def test_interrupted_overwrite_keeps_a_store_at_the_target(tmp_path, fmt, monkeypatch):
    path = write(target(tmp_path, fmt), make_images(3), [1, 2, 3])
    writer = stores.create(path, overwrite=True)
    writer.append(make_images(2, seed=5), [8, 9])
    # Without renameat2 a directory is renamed aside, then the new one in: Ctrl-C between the
    # two. (A file is replaced by one os.replace and needs no second rename.)
    _renames_interrupted_at(monkeypatch, 2)
    try:
        writer.close()
    except KeyboardInterrupt:
        pass
    monkeypatch.undo()
    with stores.open(path) as store:
        assert store.labels().tolist() in ([1, 2, 3], [8, 9])
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_overwrite_with_and_without_renameat2(tmp_path, fmt, monkeypatch):
    path = write(target(tmp_path, fmt), make_images(3), [1, 2, 3])
    write(path, make_images(2, seed=5), [8, 9], overwrite=True)  # renameat2 where the system has it
    with stores.open(path) as store:
        assert store.labels().tolist() == [8, 9]
    monkeypatch.setattr(_platform, "renameat2", lambda source, target, flags: False)
    write(path, make_images(4, seed=6), [4, 5, 6, 7], overwrite=True)
    with stores.open(path) as store:
        assert store.labels().tolist() == [4, 5, 6, 7]
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_target_appearing_while_writing_keeps_the_finished_store(tmp_path, fmt):
    path = target(tmp_path, fmt)
    writer = stores.create(path)
    writer.append(make_images(4), [0, 1, 2, 3])
    if fmt == "hdf5":
        open(path, "wb").close()
    else:
        os.makedirs(os.path.join(path, "x"))  # a non-empty directory
    with pytest.raises(StoreError, match="already exists") as info:
        writer.close()
    (kept,) = leftovers(tmp_path)
    assert os.path.join(str(tmp_path), kept) in str(info.value)
    with stores.open(tmp_path / kept, fmt) as store:
        assert store.labels().tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_failed_write_cannot_be_continued_or_finished(tmp_path, fmt, monkeypatch):
    path = target(tmp_path, fmt)
    writer = stores.create(path)
    writer.append(make_images(2), [0, 1])
    writer_class = type(writer)

    def failing(self, encoded):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer_class, "_write", failing)
    with pytest.raises(StoreError, match="No space left"):
        writer.append(make_images(2), [2, 3])
    monkeypatch.undo()
    with pytest.raises(StoreError, match="cannot be continued"):
        writer.append(make_images(2), [2, 3])
    with pytest.raises(StoreError, match="cannot be finished"):
        writer.close()
    assert os.listdir(tmp_path) == []


def test_store_permissions_after_close(tmp_path):
    path = write(target(tmp_path, "hdf5"), make_images(2), [0, 1])
    assert stat.S_ISREG(os.stat(path).st_mode)
