"""The threads large reads are split over: the copies, checksums and page faults of a fresh
output run without the GIL and scale with the cores. One pool per process, shared by every
reader (LMDB and HDF5), made on first use."""
from concurrent.futures import ThreadPoolExecutor
from typing import List, Tuple

import numpy as np

from .. import _platform

# Reads of fewer bytes stay on the calling thread: handing them out costs more than it saves.
PARALLEL_MIN_BYTES = 32 * 1024 * 1024
MAX_READ_THREADS = 4


def read_threads() -> int:
    """How many threads a large read is split over: the CPUs this process may use, at most 4."""
    return min(MAX_READ_THREADS, _platform.cpu_count())


def _new_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=read_threads(), thread_name_prefix="imgconv-read")


# Threads do not survive fork: a forked child makes its own pool (the inherited one is dropped unused).
_POOL = _platform.PerProcess(_new_pool)


def thread_pool() -> ThreadPoolExecutor:
    """This process's pool of reader threads (:func:`read_threads` of them), made on first use."""
    return _POOL.get()


def split_for_threads(n: int, item_bytes: int) -> List[Tuple[int, int]]:
    """Index ranges ``(a, b)`` covering ``0..n``: one per thread for reads of 32 MiB and more, else one."""
    threads = read_threads()
    if threads == 1 or n * item_bytes < PARALLEL_MIN_BYTES:
        return [(0, n)]
    bounds = np.linspace(0, n, threads + 1).astype(int).tolist()
    return list(zip(bounds[:-1], bounds[1:]))
