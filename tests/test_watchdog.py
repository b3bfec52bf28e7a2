"""A worker that makes no progress is reported (which one, its state, how to go on), and never killed for it."""
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest

from imgconv.errors import StalledWorkersWarning
from imgconv.pipeline import Job, Task, WorkerContext
from imgconv.pipeline.pool import ProcessPoolEngine
from imgconv.sample import generate_sample


def _stop_myself_once(context, n):
    if n == 1:
        os.kill(os.getpid(), signal.SIGSTOP)  # as `kill -STOP` from a terminal would
    return n


def _slowly(context, n):
    if n == 1:
        time.sleep(2.5)
    return n


def _jobs(function, count):
    return [Job(Task(n, n, n + 1, None), function, (n,)) for n in range(count)]


def _children(pid):
    """The pids of the processes whose parent is ``pid``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rindex(b")") + 2 :].split()[1]) == pid:
                found.append(int(name))
    return found


def _stopped(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 :].split()[0] in (b"T", b"t")


def _continue_stopped_children_after(seconds):
    """In a thread: after ``seconds``, SIGCONT every stopped child of this process; returns the pids continued."""
    continued = []

    def later():
        time.sleep(seconds)
        for pid in _children(os.getpid()):
            if _stopped(pid):
                continued.append(pid)
                os.kill(pid, signal.SIGCONT)

    thread = threading.Thread(target=later, daemon=True)
    thread.start()
    return continued, thread


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="process states come from /proc")
def test_a_stopped_worker_is_reported_by_pid_and_state_with_how_to_go_on():
    continued, thread = _continue_stopped_children_after(4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = ProcessPoolEngine(2, stall_seconds=1)
        jobs = _jobs(_stop_myself_once, 6)
        results = [result for _, result in engine.run(WorkerContext(None, None), jobs, "testing")]
    thread.join()
    assert results == list(range(6))  # continued, it finished its job: nothing was killed
    stalls = [w for w in caught if issubclass(w.category, StalledWorkersWarning)]
    assert len(stalls) == 1, [str(w.message) for w in caught]
    said = str(stalls[0].message)
    assert continued and f"{continued[0]} stopped (T)" in said and f"kill -CONT {continued[0]}" in said, said
    assert said.startswith("testing: no result from the workers for 1 s") and "Ctrl-C" in said and "--resume" in said


def test_a_slow_worker_is_reported_once_and_left_to_finish():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = ProcessPoolEngine(2, stall_seconds=1)
        results = [result for _, result in engine.run(WorkerContext(None, None), _jobs(_slowly, 6), "testing")]
    assert results == list(range(6))
    stalls = [str(w.message) for w in caught if issubclass(w.category, StalledWorkersWarning)]
    assert len(stalls) == 1 and "sleeping" in stalls[0] and "goes on" in stalls[0], stalls


def test_a_working_conversion_is_not_reported():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = ProcessPoolEngine(2, stall_seconds=30)
        list(engine.run(WorkerContext(None, None), _jobs(_slowly, 3), "testing"))
    assert not [w for w in caught if issubclass(w.category, StalledWorkersWarning)]


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="process states come from /proc")
def test_the_command_line_says_which_worker_is_stopped_and_finishes_once_it_goes_on(tmp_path):
    images, labels = generate_sample(3000, seed=2)
    np.savez(tmp_path / "data.npz", images=images, labels=labels)
    command = [sys.executable, "-m", "imgconv", "convert", str(tmp_path / "data.npz"), str(tmp_path / "out"),
               "--workers", "2", "--batch-size", "100", "--stall-seconds", "1", "--png-level", "1"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    stopped = []
    try:
        deadline = time.monotonic() + 60
        while len(stopped) < 2 and time.monotonic() < deadline and process.poll() is None:
            for pid in _children(process.pid):
                if pid not in stopped and _cmdline(pid) == _cmdline(process.pid):  # a forked worker
                    os.kill(pid, signal.SIGSTOP)
                    stopped.append(pid)
            time.sleep(0.01)
        assert len(stopped) == 2, "the two workers were stopped"
        lines = []
        while not any("warning" in line for line in lines) and time.monotonic() < deadline:
            lines.append(process.stderr.readline())
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    out, err = process.communicate(timeout=120)
    said = "".join(lines)
    assert process.returncode == 0, said + err
    assert said.startswith("imgconv convert: warning: converting ") and "no result from the workers for 1 s" in said
    assert all(f"{pid} stopped (T)" in said for pid in stopped) and "kill -CONT" in said and "Ctrl-C" in said
    assert "3000 images" in out


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return None
