"""The engines: results in task order, a bounded window, failures as the package's errors, nothing left behind."""
import fcntl
import multiprocessing
import os
import shutil
import signal
import tempfile
import time

import pytest

from imgconv.errors import ConversionError, WorkerDied
from imgconv.pipeline import Engine, Job, Task, WorkerContext, local_engine, pool
from imgconv.pipeline.pool import InProcessEngine, ProcessPoolEngine


def _square_slowly(context, n):
    time.sleep(0.02 * (5 - n % 5))  # later tasks often finish first
    return context.encoder(n, None)


def _fail_on_three(context, n):
    if n == 3:
        raise ValueError("three is bad")
    return n


def _die_on_two(context, n):
    if n == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return n


def _jobs(function, count, pulled=None):
    for n in range(count):
        if pulled is not None:
            pulled.append(n)
        yield Job(Task(n, n, n + 1, None), function, (n,))


def _context():
    return WorkerContext(source=None, encoder=lambda n, _: n * n)


@pytest.mark.parametrize("engine", [InProcessEngine(), ProcessPoolEngine(3)], ids=["in-process", "pool"])
def test_results_come_in_task_order(engine):
    assert isinstance(engine, Engine)
    got = [(task.number, result) for task, result in engine.run(_context(), _jobs(_square_slowly, 12), "squaring")]
    assert got == [(n, n * n) for n in range(12)]


def test_the_pool_keeps_a_bounded_window_of_jobs_in_flight():
    pulled = []
    results = ProcessPoolEngine(2, window=3).run(_context(), _jobs(_square_slowly, 20, pulled), "squaring")
    next(results)
    assert len(pulled) <= 3 + 1  # the window, and the one submitted as the first result came back
    results.close()


def test_local_engine_picks_this_process_for_zero_workers():
    assert isinstance(local_engine(0), InProcessEngine) and local_engine(0).shares_memory
    engine = local_engine(4)
    assert isinstance(engine, ProcessPoolEngine) and engine.window == 8


def test_a_failing_job_is_one_conversion_error_naming_its_images():
    with pytest.raises(ConversionError, match=r"images 3\.\.3: ValueError: three is bad"):
        list(ProcessPoolEngine(2).run(_context(), _jobs(_fail_on_three, 8), "testing"))
    assert not multiprocessing.active_children()


def test_a_killed_worker_is_worker_died_never_a_hang():
    started = time.monotonic()
    with pytest.raises(WorkerDied, match="killing: a worker process died unexpectedly"):
        list(ProcessPoolEngine(2).run(_context(), _jobs(_die_on_two, 8), "killing"))
    assert time.monotonic() - started < 60
    assert not multiprocessing.active_children()


def test_stopping_early_ends_the_workers_and_removes_the_handoff_directory():
    before = set(os.listdir(tempfile.gettempdir()))
    results = ProcessPoolEngine(2).run(_context(), _jobs(_square_slowly, 50), "squaring")
    next(results)
    mine = f"{pool.HANDOFF_PREFIX}{os.getpid()}-"  # other conversions may share the temporary directory
    ours = [n for n in set(os.listdir(tempfile.gettempdir())) - before if n.startswith(mine)]
    assert len(ours) == 1
    results.close()
    assert not multiprocessing.active_children()
    assert not os.path.exists(os.path.join(tempfile.gettempdir(), ours[0]))
    assert pool.current_context() is None  # the parent is no worker


def _dead_pid():
    dead = multiprocessing.get_context("fork").Process(target=os._exit, args=(0,))
    dead.start()
    dead.join()
    return dead.pid  # a pid that no longer exists


@pytest.fixture()
def private_tmp(tmp_path, monkeypatch):
    """A temp dir of the test's own: other conversions on the machine tidy the shared one."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_hand_off_directories_of_dead_runs_are_removed(private_tmp):
    stale = tempfile.mkdtemp(prefix=f"{pool.HANDOFF_PREFIX}{os.getpid()}-")  # its lock is free: its run is over
    list(InProcessEngine().run(_context(), _jobs(_square_slowly, 1), "squaring"))
    assert not os.path.exists(stale)


def test_a_hand_off_directory_whose_lock_is_held_is_kept_whatever_its_pid(private_tmp):
    # A run in another PID namespace: its pid means nothing here, or is dead.
    held = tempfile.mkdtemp(prefix=f"{pool.HANDOFF_PREFIX}{_dead_pid()}-")
    fd = os.open(held, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        list(InProcessEngine().run(_context(), _jobs(_square_slowly, 1), "squaring"))
        list(ProcessPoolEngine(2).run(_context(), _jobs(_square_slowly, 4), "squaring"))
        assert os.path.isdir(held)
    finally:
        os.close(fd)
        os.rmdir(held)


def test_hand_off_directories_of_older_versions_go_when_idle_and_their_pid_is_gone(private_tmp):
    dead = _dead_pid()
    idle = tempfile.mkdtemp(prefix=f"{pool.OLD_HANDOFF_PREFIX}{dead}-")
    recent = tempfile.mkdtemp(prefix=f"{pool.OLD_HANDOFF_PREFIX}{dead}-")
    mine = tempfile.mkdtemp(prefix=f"{pool.OLD_HANDOFF_PREFIX}{os.getpid()}-")
    long_ago = time.time() - pool.OLD_HANDOFF_IDLE - 60
    for path in (idle, mine):
        os.utime(path, (long_ago, long_ago))
    try:
        list(InProcessEngine().run(_context(), _jobs(_square_slowly, 1), "squaring"))
        assert not os.path.exists(idle) and os.path.isdir(recent) and os.path.isdir(mine)
    finally:
        os.rmdir(recent)
        os.rmdir(mine)


def test_the_directory_is_locked_while_the_pool_runs(private_tmp):
    before = set(os.listdir(tempfile.gettempdir()))
    results = ProcessPoolEngine(2).run(_context(), _jobs(_square_slowly, 20), "squaring")
    next(results)
    ours = [n for n in set(os.listdir(tempfile.gettempdir())) - before if n.startswith(pool.HANDOFF_PREFIX)]
    fd = os.open(os.path.join(tempfile.gettempdir(), ours[0]), os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
        results.close()


def _lose_the_handoff(context, n):
    if n == 2:
        shutil.rmtree(pool._WORKER.handoff)  # what a cleaner of another run did
    return n


def test_a_lost_hand_off_is_worker_died_never_a_job_failure():
    with pytest.raises(WorkerDied, match="could not be handed over"):
        list(ProcessPoolEngine(2).run(_context(), _jobs(_lose_the_handoff, 8), "handing"))
    assert not multiprocessing.active_children()
