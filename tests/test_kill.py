"""kill -9 of real conversions: the parent, a worker, the whole group, at moments spread over the run.

Each kill is checked: the destination is absent or a complete store equal to
the uninterrupted conversion, no process is left, and the next ``--resume``
run finishes the job with the same result. The moments are fixed fractions of
an uninterrupted run's duration, from interpreter start-up to the final
rename; tests/stress/kill_stress.py does the same at random moments, longer.
"""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from imgconv import stores
from imgconv.errors import StoreError

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "stress"))
import kill_stress  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process table in /proc")

# Per format, two chains of two kills: the second kill hits the --resume run
# that follows the first. Fractions of the uninterrupted run's duration.
CHAINS = {
    "lmdb": [[("group", 0.05), ("parent", 0.55)], [("worker", 0.3), ("parent", 0.95)]],
    "hdf5": [[("parent", 0.2), ("worker", 0.45)], [("group", 0.65), ("parent", 0.85)]],
    "png": [[("worker", 0.15), ("group", 0.4)], [("parent", 0.75), ("worker", 1.0)]],
}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return kill_stress.make_source(str(tmp_path_factory.mktemp("kill-source")), count=6000)


@pytest.mark.parametrize("fmt", sorted(CHAINS))
def test_kill_9_at_moments_spread_over_the_run(tmp_path, source, fmt):
    reference = kill_stress.make_reference(str(tmp_path), source, fmt)
    outcomes = []
    for chain in CHAINS[fmt]:
        kills = [(target, fraction * reference.seconds) for target, fraction in chain]
        chain_outcomes, final = kill_stress.run_chain(source, str(tmp_path), fmt, kills, reference)
        outcomes.extend(chain_outcomes)
        for outcome in chain_outcomes:
            assert not outcome.problems, outcome
            assert outcome.found in ("absent", "complete")
        if final is not None:
            assert not final.problems, final
    assert len(outcomes) >= 3  # a kill after the end finishes a chain early, at most once per format here
    assert all(not o.orphans for o in outcomes)


def test_workers_of_a_killed_parent_exit_by_themselves(tmp_path, source):
    """Without a death watch a worker waits on the task queue forever: this would fail."""
    dest = str(tmp_path / "out.lmdb")
    process = subprocess.Popen(kill_stress.convert_command(source, dest, "lmdb", resume=False),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    workers = []
    while time.monotonic() < deadline and not workers and process.poll() is None:
        workers = [p for p, ppid in kill_stress.processes_in_group(process.pid).items() if ppid == process.pid]
        time.sleep(0.01)
    if not workers:
        pytest.skip("the conversion ended before its workers could be seen")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed = time.monotonic()
    while kill_stress.processes_in_group(process.pid) and time.monotonic() - killed < 10:
        time.sleep(0.01)
    left = kill_stress.processes_in_group(process.pid)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"workers still running 10 s after their parent was killed: {left}"
    assert time.monotonic() - killed < 2.0
    assert not os.path.exists(dest)


@pytest.mark.slow
def test_kill_stress_100():
    """The stress script's 100 kills at random moments (slow: minutes)."""
    assert kill_stress.main(["--runs", "100"]) == 0


# --------------------------------------------------------------------------- HDF5 without a journal


def test_killed_hdf5_writer_leaves_nothing_at_the_target_and_a_clear_error_for_its_file(tmp_path):
    path = str(tmp_path / "store.h5")
    script = (
        "import os, signal, numpy as np\n"
        "from imgconv import stores\n"
        f"w = stores.create({path!r}, chunk_images=4)\n"
        "images = np.random.default_rng(0).integers(0, 256, (2000, 32, 32, 3), dtype=np.uint8)\n"
        "for i in range(3):\n"
        "    w.append(images, np.arange(2000))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert done.returncode == -9, done.stderr.decode()
    assert not os.path.exists(path)  # the rename never happened: users never see the file
    partial = os.path.join(str(tmp_path), ".store.h5.imgconv-partial", "store.h5")
    with open(partial, "rb") as f:
        assert f.read(8) == b"\x89HDF\r\n\x1a\n"  # a real, unfinished HDF5 file is there
    with pytest.raises(StoreError) as info:
        stores.open(partial)
    assert partial in str(info.value)
    # The command line says the same in one line, no traceback.
    cli = subprocess.run([sys.executable, "-m", "imgconv", "verify", partial], capture_output=True, text=True,
                         timeout=120)
    assert cli.returncode == 1 and "Traceback" not in cli.stderr
    assert partial in cli.stderr and len(cli.stderr.strip().splitlines()) == 1
    # Cut short (as by a crash while the file grew): still the package's error.
    os.truncate(partial, os.path.getsize(partial) // 3)
    with pytest.raises(StoreError, match="store.h5"):
        stores.open(partial)
    # The next writer of the target cleans up what the killed one left.
    with stores.create(path) as writer:
        writer.append(np.zeros((3, 4, 4, 3), np.uint8), [0, 1, 2])
    assert sorted(os.listdir(tmp_path)) == ["store.h5"]
