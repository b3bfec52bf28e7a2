"""Worker hand-off directories: a conversion never deletes another's, and a lost hand-off keeps the work for --resume.

Two conversions share a temp dir (TMPDIR on HPC scratch, a container's
/tmp mounted in another): the second must not take the first's hand-off
directory for a dead run's when it cannot see the first's processes.
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

from imgconv import _platform, stores
from imgconv.convert import convert
from imgconv.errors import WorkerDied
from imgconv.pipeline import pool
from imgconv.sample import generate_sample
from imgconv.verify import verify_store

COUNT = 3000

# The first conversion: converts SRC to DST (a PNG folder: encoding is work for a pool) with 2 workers, and after its
# first batch waits until the file GO exists (having said so in STARTED), so
# that the second conversion runs while its workers hand results over.
FIRST = textwrap.dedent("""
    import os, sys, time
    from imgconv.convert import convert
    src, dest, started, go = sys.argv[1:]

    def progress(done, total):
        if not os.path.exists(started):
            open(started, "w").close()
            deadline = time.monotonic() + 120
            while not os.path.exists(go) and time.monotonic() < deadline:
                time.sleep(0.05)

    result = convert(src, dest, workers=2, batch_size=100, progress=progress)
    print(result.count)
""")


@pytest.fixture()
def shared(tmp_path, monkeypatch):
    """A temp dir of its own for this test's conversions (this process's and its children's)."""
    temp = tmp_path / "shared-tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setenv("TMPDIR", str(temp))
    return temp


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    images, labels = generate_sample(COUNT, seed=5)
    path = tmp_path_factory.mktemp("handoff-source") / "data.npz"
    np.savez(path, images=images, labels=labels)
    return str(path)


# Both conversions write PNG folders: encoding PNG is the CPU work that starts a worker pool (arrays into
# LMDB or HDF5 are copies, converted without one, so without hand-off directories to compare).
def _start_first(tmp_path, npz):
    script = tmp_path / "first.py"
    script.write_text(FIRST)
    started, go = tmp_path / "started", tmp_path / "go"
    first = subprocess.Popen([sys.executable, str(script), npz, str(tmp_path / "first"), str(started), str(go)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(1200):
        if started.exists() or first.poll() is not None:
            break
        subprocess.run(["sleep", "0.05"])
    assert started.exists(), first.communicate()
    return first, go


def _first_finishes_intact(first, go, tmp_path, shared):
    handoffs = glob.glob(os.path.join(shared, pool.HANDOFF_PREFIX + "*"))
    go.touch()
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0 and out.strip() == str(COUNT), err
    assert handoffs, "the first conversion's hand-off directory was there while the second ran"
    report = verify_store(str(tmp_path / "first"))
    assert report.count == COUNT and not report.bad and not report.problems


def test_a_conversion_whose_pid_is_not_visible_keeps_its_hand_off_directory(tmp_path, shared, npz, monkeypatch):
    first, go = _start_first(tmp_path, npz)
    try:
        # As seen from another PID namespace: no process of the first is visible.
        monkeypatch.setattr(_platform, "process_exists", lambda pid: False)
        second = convert(npz, str(tmp_path / "second"), workers=2, batch_size=500)
        assert second.count == COUNT
    finally:
        _first_finishes_intact(first, go, tmp_path, shared)


@pytest.mark.skipif(not (shutil.which("unshare") and hasattr(os, "geteuid") and os.geteuid() == 0),
                    reason="needs unshare and root for a PID namespace")
def test_a_conversion_in_another_pid_namespace_leaves_the_first_intact(tmp_path, shared, npz):
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no PID namespace here: {probe.stderr.decode().strip()}")
    first, go = _start_first(tmp_path, npz)
    try:
        second = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "imgconv",
                                 "convert", npz, str(tmp_path / "second"), "--workers", "2", "--quiet"],
                                capture_output=True, text=True, timeout=300, env={**os.environ, "TMPDIR": str(shared)})
        assert second.returncode == 0, second.stderr
    finally:
        _first_finishes_intact(first, go, tmp_path, shared)


def test_a_lost_hand_off_keeps_the_partial_output_for_resume(tmp_path, shared, npz):
    dest = str(tmp_path / "out")

    def lose_the_handoff(done, total):
        if done >= 1000:
            for path in glob.glob(os.path.join(shared, pool.HANDOFF_PREFIX + f"{os.getpid()}-*")):
                shutil.rmtree(path)  # what a cleaner that took it for a dead run's did

    with pytest.raises(WorkerDied, match=r"could not be handed over.*images done are kept.*resume=True"):
        convert(npz, dest, workers=2, batch_size=100, limit=2000, progress=lose_the_handoff,
                store_options={"compress_level": 1})
    assert not os.path.exists(dest) and os.path.isdir(tmp_path / ".out.imgconv-partial")
    resumed = convert(npz, dest, workers=2, batch_size=100, limit=2000, resume=True,
                      store_options={"compress_level": 1})
    assert resumed.resumed >= 1000 and resumed.count == 2000
    images, labels = generate_sample(COUNT, seed=5)
    with stores.open(dest) as store:
        got_images, got_labels = store.read_all()
    np.testing.assert_array_equal(got_images, images[:2000])
    np.testing.assert_array_equal(got_labels, labels[:2000])
