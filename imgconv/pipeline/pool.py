"""The local engines: jobs run in this process, or in an ordered window over a pool of worker processes.

Workers report, the parent decides: an exception in a worker comes back as
the task's result and stops the run; a worker that dies breaks the pool,
which the parent sees at once (never a hang); a worker whose parent dies
(even by SIGKILL) ends itself at once (:func:`imgconv._platform.die_with_parent`).
Results travel back as files in a private directory, not through the pool's
pipe, so that a worker killed mid-message cannot leave the pipe half-written.
SIGINT and SIGTERM stop a run: the workers are killed and
:class:`~imgconv.errors.Interrupted` raised in the parent.
"""
import glob
import multiprocessing
import os
import pickle
import shutil
import signal
import tempfile
import threading
import time
import warnings
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Tuple

from .. import _platform
from ..errors import ConversionError, ImgconvError, Interrupted, StalledWorkersWarning, WorkerDied
from .engine import Engine, Results, WorkerContext
from .plan import Job, Task

# Seconds without a result, while jobs are in flight, before the workers' states are reported:
# far beyond any batch of a working conversion (a batch holds at most batch_bytes).
DEFAULT_STALL_SECONDS = 300.0

HANDOFF_PREFIX = "imgconv-handoff-"
# What imgconv before the hand-off lock named its directories (by pid alone).
OLD_HANDOFF_PREFIX = "imgconv-results-"
OLD_HANDOFF_IDLE = 3600.0  # seconds unchanged after which such a directory of an invisible pid is stale


class InProcessEngine(Engine):
    """Runs every job here, in order (``workers=0``): no pool, no copies."""

    shares_memory = True

    def run(self, context: WorkerContext, jobs: Iterable[Job], what: str) -> Results:
        """See :meth:`Engine.run`; a signal raises Interrupted before the next job (a second one at once).

        The caller writes each result while this generator waits: a signal
        raised inside that write would leave a batch half-written, and the
        partial output could not be resumed; so the first signal is noted
        and raised between batches, which are bounded in bytes.
        """
        with _StopOnSignal(deferred=True) as stop:
            _remove_stale_handoffs()  # every run tidies what killed runs left, whatever its engine
            for job in jobs:
                stop.check()
                try:
                    result = job.function(context, *job.args)
                except ImgconvError:
                    raise  # already says which file or record
                except Exception as exc:
                    # As from a worker: one error naming the images, whichever engine ran the job.
                    raise job_failed(job.task, exc, "") from exc
                stop.check()
                yield job.task, result
            stop.check()


class ProcessPoolEngine(Engine):
    """A pool of ``workers`` processes with at most ``window`` jobs in flight (default ``2 * workers``).

    Results come back in task order whatever order the workers finish in, so
    the output does not depend on the number of workers; memory stays flat
    whatever the number of jobs. When no result has come back for
    ``stall_seconds`` while jobs are in flight, a
    :class:`~imgconv.errors.StalledWorkersWarning` names each worker and
    its state (a stopped one, say) and how to go on; the run goes on
    (a slow batch is no failure).
    """

    def __init__(self, workers: int, window: Optional[int] = None,
                 stall_seconds: float = DEFAULT_STALL_SECONDS) -> None:
        self.workers = workers
        self.window = 2 * workers if window is None else window
        self.stall_seconds = stall_seconds

    @property
    def shares_memory(self) -> bool:  # type: ignore[override]
        """True where workers are forked (they inherit what the parent set up before the run)."""
        return start_method() == "fork"

    def run(self, context: WorkerContext, jobs: Iterable[Job], what: str) -> Results:
        """See :meth:`Engine.run`."""
        pool = handoff = None
        stop = _StopOnSignal()
        try:
            with stop:
                _remove_stale_handoffs()
                handoff = Handoff()
                pool = stop.pool = _start_pool(self.workers, context, handoff.path)
                watchdog = _Watchdog(pool, self.stall_seconds, what)
                for item in _ordered_results(pool, jobs, self.window, watchdog):
                    stop.check()
                    yield item
                stop.check()
                stop.pool = None
                pool.shutdown(wait=True)
                pool = None
        except (BrokenProcessPool, ConversionError, HandoffFailed) as exc:
            stop.check()  # workers killed on purpose by a signal: that is the story
            if isinstance(exc, ConversionError):
                raise
            if isinstance(exc, HandoffFailed):
                raise WorkerDied(f"{what}: the workers' results could not be handed over through "
                                 f"{handoff.path if handoff else 'the temporary directory'} ({exc})") from None
            raise WorkerDied(f"{what}: a worker process died unexpectedly ({exc})") from None
        finally:
            if pool is not None:
                _stop_pool(pool)
            if handoff is not None:
                handoff.remove()


class HandoffFailed(Exception):
    """A result could not travel from a worker to the parent (its file could not be written or read back)."""


class Handoff:
    """A run's private hand-off directory in the system temp dir, locked by the run for its whole life.

    Directories of runs killed by SIGKILL are removed by later runs
    (:func:`_remove_stale_handoffs`), and a run's own must never be: the
    proof of life is a ``flock`` on the directory, held from before the
    directory can be taken for stale until it is removed. Its pid would
    not do: a run in another PID namespace (a container, a batch job)
    sharing the temp dir sees none of this one's processes. The kernel
    drops the lock when the run dies, however it dies; forked workers
    share the lock's open file, and die with the run.
    """

    def __init__(self) -> None:
        self.path, self._fd = _locked_directory()

    def remove(self) -> None:
        """Remove the directory, then let go of the lock."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _locked_directory() -> Tuple[str, Optional[int]]:
    """A new private directory (mode 0700) named for this process, and the descriptor locking it."""
    while True:
        path = tempfile.mkdtemp(prefix=f"{HANDOFF_PREFIX}{os.getpid()}-")
        if not _platform.CAN_LOCK_DIRECTORIES:
            return path, None  # no flock (Windows): nothing else removes it either
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            locked = _platform.lock_exclusive(fd) and os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            locked = False
        if locked:
            return path, fd
        # Another run's cleaner took the new, not yet locked directory for
        # stale in the moment between mkdtemp and flock: make another.
        os.close(fd)


def start_method() -> str:
    """How worker processes start: fork where the system has it, else spawn."""
    # fork starts workers in milliseconds and shares the parent's imports
    # (and load()'s shared output); the parent holds no threads when it
    # forks, and no open store except, when resuming, the writer's own
    # output, which workers never touch.
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


# --------------------------------------------------------------------------- in the workers


class _Worker:
    """This worker process's part of the pool, set once by :func:`_init_worker`."""

    def __init__(self, context: WorkerContext, handoff: str) -> None:
        self.context = context
        self.handoff = handoff
        self.sent = 0

    def hand_over(self, result: Any) -> str:
        """Write ``result`` to a file of the hand-off directory; returns its path (HandoffFailed if it cannot)."""
        self.sent += 1
        path = os.path.join(self.handoff, f"{os.getpid()}-{self.sent}.pickle")
        try:
            with open(path, "wb") as f:
                pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)
        except OSError as exc:  # the directory removed, the temp dir full: no fault of the job's
            raise HandoffFailed(f"writing {path}: {exc.strerror or exc}") from None
        return path


_WORKER: Optional[_Worker] = None  # set in worker processes only


def current_context() -> Optional[WorkerContext]:
    """The context of the run this process works for, when it is a pool's worker; else None."""
    return None if _WORKER is None else _WORKER.context


def _init_worker(context: WorkerContext, handoff: str, parent: int) -> None:
    # Ctrl-C reaches the whole process group; the parent alone decides what
    # happens, and it stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _platform.die_with_parent(parent)
    global _WORKER
    _WORKER = _Worker(context, handoff)


def _in_worker(function: Callable[..., Any], *args: Any) -> str:
    """Run a job and hand its result over through a file; returns the file's path.

    A worker killed while it writes a large result into the pool's pipe
    leaves half a message there, and the executor then waits for the rest
    forever. A path is a message short enough to be written whole (pipe
    writes of up to PIPE_BUF bytes are atomic), so a killed worker can only
    break the pool, never hang it.
    """
    assert _WORKER is not None, "a pool job runs in a worker the pool initialised"
    return _WORKER.hand_over(function(_WORKER.context, *args))


# --------------------------------------------------------------------------- in the parent


def _received(path: str) -> Any:
    """The result a worker handed over at ``path`` (a file in this run's private directory); HandoffFailed if lost."""
    try:
        with open(path, "rb") as f:
            result = pickle.load(f)
        os.remove(path)
    except (OSError, EOFError, pickle.UnpicklingError) as exc:
        raise HandoffFailed(f"reading {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return result


def _ordered_results(pool: ProcessPoolExecutor, jobs: Iterable[Job], window: int,
                     watchdog: "_Watchdog") -> Iterator[Tuple[Task, Any]]:
    """Job results in task order, with at most ``window`` jobs submitted ahead."""
    pending: Deque[Tuple[Task, Future]] = deque()
    jobs = iter(jobs)

    def submit_next() -> bool:
        for job in jobs:
            future = pool.submit(_in_worker, job.function, *job.args)
            future.add_done_callback(watchdog.arrived)
            pending.append((job.task, future))
            return True
        return False

    while len(pending) < window and submit_next():
        pass
    while pending:
        task, future = pending.popleft()
        result = _task_result(task, future, watchdog, len(pending) + 1)
        submit_next()
        yield task, result


def _task_result(task: Task, future: "Future[str]", watchdog: "_Watchdog", in_flight: int) -> Any:
    """The result of ``future`` (``in_flight`` jobs waited for); a worker's unexpected exception becomes one
    ConversionError."""
    try:
        path = watchdog.wait(future, in_flight)
    except (ImgconvError, BrokenProcessPool, HandoffFailed):
        raise  # already says which file or record, or handled by the engine
    except Exception as exc:
        raise job_failed(task, exc, "a worker ") from exc
    return _received(path)


class _Watchdog:
    """Reports workers that return nothing for ``seconds`` while jobs are in flight (see ProcessPoolEngine).

    Each stall is reported once, when it reaches ``seconds``; a result
    arriving ends it. Only a report: a worker busy with a slow batch is
    never stopped.
    """

    def __init__(self, pool: ProcessPoolExecutor, seconds: float, what: str) -> None:
        self.pool = pool
        self.seconds = seconds
        self.what = what
        self.last = time.monotonic()  # when a result last arrived (or the run started)
        self.reported = -1.0  # the ``last`` of the stall reported

    def arrived(self, future: Future) -> None:
        """A job ended (called in the pool's thread: one assignment)."""
        self.last = time.monotonic()

    def wait(self, future: "Future[str]", in_flight: int) -> str:
        """``future.result()``, reporting a stall while waiting for it."""
        while True:
            quiet = time.monotonic() - self.last
            try:
                return future.result(timeout=self.seconds - quiet if quiet < self.seconds else self.seconds)
            except FutureTimeout:
                last = self.last
                quiet = time.monotonic() - last
                if quiet >= self.seconds and self.reported != last:
                    self.reported = last
                    warnings.warn(StalledWorkersWarning(self._report(quiet, in_flight)), stacklevel=2)

    def _report(self, quiet: float, in_flight: int) -> str:
        states = [(process.pid, _platform.process_state(process.pid)) for process in _pool_processes(self.pool)]
        stopped = [pid for pid, state in states if state is not None and state[0] in "Tt"]
        listed = ", ".join(f"{pid} {state[1] if state else 'state unknown'}"
                           + (f" ({state[0]})" if state else "") for pid, state in states)
        said = (f"{self.what}: no result from the workers for {quiet:.0f} s with {in_flight} "
                f"batch{'es' if in_flight != 1 else ''} in flight; worker processes: {listed}. ")
        if stopped:
            pids = " ".join(map(str, stopped))
            return said + (f"A stopped process never goes on by itself: `kill -CONT {pids}` continues it; "
                           "Ctrl-C stops the conversion, keeping the images written for --resume.")
        return said + ("The conversion goes on (a slow batch, a slow disk?); Ctrl-C stops it, keeping the images "
                       "written for --resume.")


def job_failed(task: Task, exc: BaseException, who: str) -> ConversionError:
    """The error of a job that raised ``exc`` (not one of the package's errors): it names its images."""
    return ConversionError(f"{who}failed on images {task.start}..{task.stop - 1}: {type(exc).__name__}: {exc}")


def _start_pool(workers: int, context: WorkerContext, handoff: str) -> ProcessPoolExecutor:
    mp_context = multiprocessing.get_context(start_method())
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp_context, initializer=_init_worker,
                               initargs=(context, handoff, os.getpid()))
    # A forking pool starts all its workers at the first submit: do it now,
    # before a streaming source starts its read-ahead thread, so no worker is
    # forked from a parent with a thread in the middle of its work.
    pool.submit(os.getpid)
    return pool


def _remove_stale_handoffs() -> None:
    """Remove the hand-off directories of runs that are over (killed by SIGKILL): those whose lock is free.

    Only this user's. A directory whose lock is held belongs to a running
    conversion, whatever its pid says. Directories of imgconv versions
    before the lock go when their pid is not visible and they have not
    changed for :data:`OLD_HANDOFF_IDLE` seconds.
    """
    temp = tempfile.gettempdir()
    for path in glob.glob(os.path.join(temp, HANDOFF_PREFIX + "*-*")):
        try:
            if _platform.owned_by_me(path):
                _remove_if_unlocked(path)
        except OSError:
            continue
    for path in glob.glob(os.path.join(temp, OLD_HANDOFF_PREFIX + "*-*")):
        pid = os.path.basename(path)[len(OLD_HANDOFF_PREFIX):].split("-")[0]
        try:
            idle = time.time() - os.stat(path).st_mtime > OLD_HANDOFF_IDLE
            if pid.isdigit() and idle and _platform.owned_by_me(path) and _platform.process_exists(int(pid)) is False:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue


def _remove_if_unlocked(path: str) -> None:
    """Remove the directory at ``path`` if its lock can be taken (held while removing)."""
    if not _platform.CAN_LOCK_DIRECTORIES:
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        if _platform.lock_exclusive(fd):
            shutil.rmtree(path, ignore_errors=True)
    finally:
        os.close(fd)


def _pool_processes(pool: ProcessPoolExecutor) -> List[Any]:
    # The one use of a private attribute of the standard library: the
    # executor keeps its processes in a mapping that shutdown() drops, and
    # offers no way to kill them. (Python 3.14 adds terminate_workers().)
    processes: Dict[int, Any] = getattr(pool, "_processes", None) or {}
    return list(processes.values())


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel queued jobs and end every worker now (they hold no state worth saving)."""
    processes = _pool_processes(pool)
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join()


def signals_deferred(wake: Optional[threading.Event] = None) -> "_StopOnSignal":
    """A context in which a first SIGINT or SIGTERM is only noted (``.signum``; ``.check()`` raises
    :class:`Interrupted` for it; ``wake``, when given, is set) and a second one raises at once: for a
    step that must not be cut in half, such as the commit of a finished store, or a wait that checks."""
    return _StopOnSignal(deferred=True, wake=wake)


class _StopOnSignal:
    """While a run goes on, SIGINT and SIGTERM stop it.

    The handler does not raise inside whatever the parent is doing (it may
    hold a lock of the pool's): it notes the signal and kills the workers,
    which breaks the pool at once; the parent then sees the note at its next
    step and raises :class:`Interrupted`. With no pool the handler raises
    directly, unless ``deferred``: then the first signal is only noted (the
    caller checks between steps) and a second one raises at once.
    """

    def __init__(self, deferred: bool = False, wake: Optional[threading.Event] = None) -> None:
        self.deferred = deferred
        self.wake = wake
        self.signum: Optional[int] = None
        self.pool: Optional[ProcessPoolExecutor] = None
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> "_StopOnSignal":
        if threading.current_thread() is not threading.main_thread():
            return self  # signals are delivered to the main thread only
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        first = self.signum is None
        self.signum = signum
        if self.wake is not None:
            self.wake.set()
        if self.pool is None:
            if self.deferred and first:
                return
            raise Interrupted(signum)
        for process in _pool_processes(self.pool):
            try:
                process.kill()
            except (OSError, ValueError):
                pass

    def check(self) -> None:
        """Raise :class:`Interrupted` if a signal has arrived."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
