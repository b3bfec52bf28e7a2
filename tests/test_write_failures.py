"""Disk full and permission denied while converting, through the command line:
exit status 1, one line naming the path, the partial output removed, nothing at DST."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from imgconv.sample import generate_sample

FORMATS = [("png", "out"), ("lmdb", "out.lmdb"), ("hdf5", "out.h5")]


def _source(directory, count):
    images, labels = generate_sample(count, seed=2)
    path = os.path.join(directory, "data.npz")
    np.savez(path, images=images, labels=labels)
    os.chmod(path, 0o644)
    return path


def _check_one_line_error(done, dest):
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert lines[0].startswith("imgconv convert: error: ") and dest in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("fmt, name", FORMATS)
def test_disk_full_through_the_command_line(tmp_path, fmt, name):
    # A 4 MB tmpfs in a private mount namespace (root only): 3,000 images (9 MB) cannot fit.
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare to mount a tiny tmpfs")
    source = _source(str(tmp_path), 3000)
    small = tmp_path / "small"
    small.mkdir()
    dest = str(small / name)
    level = "--png-level 0" if fmt == "png" else ""
    script = (f"mount -t tmpfs -o size=4m tmpfs {small} && {sys.executable} -m imgconv convert {source} {dest} "
              f"--workers 2 --batch-size 256 {level}; status=$?; ls -A {small}; exit $status")
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=300)
    if "mount" in done.stderr and not done.stdout and done.returncode != 1:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    line = _check_one_line_error(done, dest)
    assert "No space left on device" in line or "MDB_MAP_FULL" in line or "space" in line.lower(), line
    assert done.stdout.strip() == ""  # `ls -A` of the tmpfs: no store, no partial output


@pytest.mark.parametrize("fmt, name", FORMATS)
def test_permission_denied_through_the_command_line(shared_dir, fmt, name):
    source = _source(shared_dir, 50)
    folder = os.path.join(shared_dir, "read-only")
    os.mkdir(folder)
    os.chmod(folder, 0o555)
    dest = os.path.join(folder, name)
    command = [sys.executable, "-m", "imgconv", "convert", source, dest, "--workers", "2"]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: root writes into a chmod 555 directory")
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    line = _check_one_line_error(done, dest)
    assert "Permission denied" in line, line
    assert os.listdir(folder) == []
