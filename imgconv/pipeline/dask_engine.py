"""The Dask engine: jobs run as tasks on a ``dask.distributed`` cluster, one more :class:`Engine`.

``dask[distributed]`` is an optional extra (``pip install "imgconv[dask]"``);
without it :func:`require_distributed` says how to install it. The cluster is
a scheduler address (``tcp://host:8786``), a ``distributed.Client`` the
caller made, or, without either, a ``LocalCluster`` of worker processes on
this machine (:func:`connect`).

The context of a run (the source, where and how to write) goes to the
cluster once, as a task of its own that any worker can compute again, so a
worker that dies takes nothing the others cannot get back; jobs carry only
their own arguments. A task whose worker dies is run again by Dask on
another worker (up to the scheduler's ``allowed-failures``, then
:class:`~imgconv.errors.WorkerDied`). Jobs may report progress as they go
(:func:`imgconv.pipeline.progress.report`): the reports travel as worker
events (``Worker.log_event``), a few tens of microseconds each, and reach the
converter's thread through ``on_progress(key, done)``. SIGINT and SIGTERM
stop a run: the futures are cancelled and Interrupted raised (tasks already
running on workers finish what they do; a resume takes over from there).
"""
import logging
import os
import queue
import threading
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from ..errors import ConversionError, ImgconvError, OptionError, WorkerDied
from ..options import Option
from .engine import Engine, Results, WorkerContext
from .plan import Job, Task
from .pool import signals_deferred
from .progress import reporting

INSTALL = 'pip install "imgconv[dask]"'

ENGINE = Option("engine", choices=("local", "dask"), default="local",
                help="where the work runs: local (this machine's worker processes) or dask (a dask.distributed "
                     "cluster; writes a sharded dataset, one task per shard)")
SCHEDULER = Option("scheduler", metavar="ADDRESS",
                   help="the Dask scheduler of --engine dask (tcp://host:8786); without it, a LocalCluster of "
                        "--workers processes on this machine")

ProgressCallback = Callable[[int, int], None]

# How long to try to reach a scheduler given by address (one starting up may take a few seconds).
CONNECT_TIMEOUT = "20s"


def require_distributed() -> Any:
    """The ``distributed`` module; OptionError (a usage error) saying how to install it when it is missing."""
    try:
        import distributed
    except ImportError as exc:
        raise OptionError(
            f"engine='dask' needs dask.distributed, which is not installed here ({exc}); install it with: {INSTALL}",
            ("engine",)) from None
    return distributed


@contextmanager
def connect(client: Any = None, scheduler: Optional[str] = None, workers: Optional[int] = None) -> Iterator[Any]:
    """A ``distributed.Client``: ``client`` itself, one connected to ``scheduler``, or one of a new
    ``LocalCluster`` of ``workers`` processes (closed on leaving). Raises ConversionError when the
    scheduler cannot be reached."""
    distributed = require_distributed()
    if client is not None:
        yield client
        return
    if scheduler is not None:
        try:
            made = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ConversionError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
        try:
            yield made
        finally:
            made.close()
        return
    from .engine import default_workers

    cluster = distributed.LocalCluster(n_workers=workers or default_workers(), threads_per_worker=1,
                                       processes=True, dashboard_address=None, silence_logs=logging.ERROR)
    try:
        with distributed.Client(cluster, set_as_default=False) as made:
            yield made
    finally:
        cluster.close()


def missing_paths(client: Any, paths: List[str]) -> Dict[str, List[str]]:
    """The ``paths`` each worker of ``client``'s cluster cannot see, by worker address (only those missing some)."""
    found = client.run(_missing, paths)
    return {worker: missing for worker, missing in found.items() if missing}


def _missing(paths: List[str]) -> List[str]:
    return [path for path in paths if not os.path.exists(path)]


class DaskEngine(Engine):
    """Runs jobs as tasks on the cluster of ``client``, at most ``window`` of them submitted ahead.

    ``window`` defaults to twice the cluster's threads (counted as jobs are
    submitted, so workers that join are used). ``ordered`` (the Engine
    contract) yields results in task order; ``ordered=False`` yields each as
    its task finishes, for jobs that are independent (a shard each), so that
    a finished one is never kept waiting behind a slow one. ``on_progress(key,
    done)`` receives the jobs' progress reports, in this thread.
    """

    def __init__(self, client: Any, window: Optional[int] = None, ordered: bool = True,
                 on_progress: Optional[ProgressCallback] = None) -> None:
        self.distributed = require_distributed()
        self.client = client
        self.window = window
        self.ordered = ordered
        self.on_progress = on_progress

    def run(self, context: WorkerContext, jobs: Iterable[Job], what: str) -> Results:
        """See :meth:`Engine.run` (and ``ordered``)."""
        run = _ClusterRun(self, what)
        try:
            yield from run.results(context, iter(jobs))
        finally:
            run.close()

    def current_window(self) -> int:
        """How many jobs to keep submitted: ``window``, or twice the threads of the cluster now."""
        if self.window is not None:
            return self.window
        return max(2, 2 * sum(self.client.nthreads().values()))


class _ClusterRun:
    """One :meth:`DaskEngine.run`: the futures in flight, the progress events, the signals."""

    def __init__(self, engine: DaskEngine, what: str) -> None:
        self.engine = engine
        self.client = engine.client
        self.what = what
        self.token = uuid.uuid4().hex[:12]
        self.topic = f"imgconv-progress-{self.token}"
        self.wake = threading.Event()
        self.events: "queue.SimpleQueue[Tuple[int, int]]" = queue.SimpleQueue()
        self.pending: List[Tuple[Job, Any]] = []
        self.context: Any = None
        # A signal is noted and wakes the wait; the run raises Interrupted at its next check.
        self.stop = signals_deferred(wake=self.wake)

    def results(self, context: WorkerContext, jobs: Iterator[Job]) -> Iterator[Tuple[Task, Any]]:
        self.client.subscribe_topic(self.topic, self._event)
        # A task of its own, not scattered data: a worker that dies holding it takes nothing
        # the scheduler cannot compute again.
        self.context = self.client.submit(_the_context, context, key=f"imgconv-context-{self.token}", pure=False)
        with self.stop:
            self._fill(jobs)
            while self.pending:
                self.stop.check()
                self._forward_progress()
                finished = self._finished()
                if not finished:
                    self.wake.wait(0.25)
                    self.wake.clear()
                    continue
                for item in finished:
                    self.pending.remove(item)
                    result = self._result(*item)
                    self._forward_progress()
                    yield item[0].task, result
                self._fill(jobs)
            self.stop.check()

    def close(self) -> None:
        """Cancel what is still in flight and stop listening (whatever ended the run)."""
        futures = [future for _, future in self.pending] + ([self.context] if self.context is not None else [])
        self.pending = []
        try:
            if futures:
                self.client.cancel(futures)
            self.client.unsubscribe_topic(self.topic)
        except Exception:  # a client already closed or a scheduler gone: nothing left to cancel
            pass

    # helpers ---------------------------------------------------------------

    def _fill(self, jobs: Iterator[Job]) -> None:
        window = self.engine.current_window()
        while len(self.pending) < window:
            job = next(jobs, None)
            if job is None:
                return
            future = self.client.submit(_run_job, self.context, self.topic, job.function, *job.args,
                                        key=f"imgconv-{self.token}-{job.task.number}", pure=False)
            future.add_done_callback(lambda _: self.wake.set())
            self.pending.append((job, future))

    def _finished(self) -> List[Tuple[Job, Any]]:
        candidates = self.pending[:1] if self.engine.ordered else self.pending
        return sorted((item for item in candidates if item[1].done()), key=lambda item: item[0].task.number)

    def _event(self, event: Any) -> None:
        # Called in the client's event loop thread: hand over, never call back from here.
        _, (key, done) = event
        self.events.put((int(key), int(done)))
        self.wake.set()

    def _forward_progress(self) -> None:
        callback = self.engine.on_progress
        while True:
            try:
                key, done = self.events.get_nowait()
            except queue.Empty:
                return
            if callback is not None:
                callback(key, done)

    def _result(self, job: Job, future: Any) -> Any:
        task = job.task
        where = f"task {task.number}" + (f" (images {task.start}..{task.stop - 1})" if task.stop > task.start else "")
        distributed = self.engine.distributed
        try:
            return future.result()
        except ImgconvError:
            raise  # already says which file or record
        except distributed.KilledWorker as exc:
            raise WorkerDied(f"{self.what}: the workers running {where} died, again and again ({exc}); "
                             "Dask gave up on it") from None
        except (distributed.CancelledError, OSError) as exc:
            raise WorkerDied(f"{self.what}: {where} was lost with the cluster ({type(exc).__name__}: {exc})") from None
        except Exception as exc:
            raise ConversionError(f"{self.what}: a worker failed on {where}: {type(exc).__name__}: {exc}") from exc


def _the_context(context: WorkerContext) -> WorkerContext:
    return context


def _run_job(context: WorkerContext, topic: str, function: Callable[..., Any], *args: Any) -> Any:
    """A job on a worker: ``function(context, *args)``, its progress reports sent as worker events."""
    from distributed import get_worker

    worker = get_worker()

    def send(key: int, done: int) -> None:
        worker.log_event(topic, (key, done))

    with reporting(send):
        return function(context, *args)


