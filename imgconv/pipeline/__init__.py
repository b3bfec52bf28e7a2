"""The conversion pipeline between a source and a store: what to do, and who does it.

:mod:`.plan` cuts a source into tasks (index ranges, permutations, or the
batches of a stream) and says what a worker does with each (a :class:`Job`);
:mod:`.engine` is the boundary any executor of jobs implements
(:class:`Engine`: jobs in, results out in task order); :mod:`.pool` holds the
two local engines, this process and an ordered-window pool of worker
processes. A cluster engine (Dask) is another :class:`Engine` beside them.
"""
from .engine import Engine, WorkerContext, default_workers, local_engine, workers_worth_starting
from .plan import Job, Task, plan_tasks

__all__ = ["Engine", "Job", "Task", "WorkerContext", "default_workers", "local_engine", "plan_tasks",
           "workers_worth_starting"]
