"""Peak memory of ``python -m imgconv convert``: the process tree sampled from ``/proc``.

The harness's opt-in ``memory`` experiment (``python -m imgconv bench
--experiments memory``) converts a memory-mapped ``.npy`` of the largest
cutoff's images to each format, and ten times as many to LMDB and HDF5,
with ``--workers`` processes, in a child process run under
``/usr/bin/time -v`` (when present). A thread samples
``/proc/PID/status`` of every process of the tree every 20 ms and sums them:
RssAnon is private memory (what a leak grows), RssFile the pages of the
mapped source and of the store's files (page cache the kernel can drop;
shared pages counted once per process, so the sums overcount). Every store
written is spot-checked (first, last and random images).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

import imgconv

from .internals import remove_path
from .methods import BenchCheckError, same_data

SAMPLE_INTERVAL = 0.02
SUFFIXES = {"png": "", "lmdb": ".lmdb", "hdf5": ".h5"}


_STATUS_FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")


def _children_map() -> Dict[int, List[int]]:
    """``{ppid: [pid, ...]}`` for every process visible in /proc."""
    children: Dict[int, List[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields follow the last ")".
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(name))
    return children


def _descendants(pid: int) -> List[int]:
    children = _children_map()
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def status_kb(pid: int) -> Dict[str, int]:
    """The memory fields of /proc/PID/status in kB (empty for a process that is gone)."""
    values = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in _STATUS_FIELDS:
                    values[key] = int(rest.split()[0])
    except OSError:
        return {}
    return values


class TreeMemorySampler:
    """Samples the summed memory of a process's descendants every ``interval`` seconds, in a thread.

    ``root`` is the process whose descendants are measured (itself excluded:
    it is ``/usr/bin/time``). ``peak`` holds the peak of each summed field
    (kB), ``parent_peak`` those of the first descendant alone (the command's
    parent process), ``processes`` the most processes seen at once.
    """

    def __init__(self, root: int, interval: float = SAMPLE_INTERVAL):
        self.root = root
        self.interval = interval
        self.peak = dict.fromkeys(_STATUS_FIELDS, 0)
        self.parent_peak = dict.fromkeys(_STATUS_FIELDS, 0)
        self.processes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "TreeMemorySampler":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        """Take one sample now."""
        pids = _descendants(self.root)
        if not pids:
            return
        statuses = [status_kb(pid) for pid in pids]
        for key in _STATUS_FIELDS:
            self.peak[key] = max(self.peak[key], sum(s.get(key, 0) for s in statuses))
            self.parent_peak[key] = max(self.parent_peak[key], statuses[0].get(key, 0))
        self.processes = max(self.processes, len(pids))
        self.samples += 1

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def _time_max_rss_kb(stderr: str) -> Optional[int]:
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    return int(found.group(1)) if found else None


def measure_convert_memory(source: str, dest: str, fmt: str, workers: int) -> Dict[str, Any]:
    """Run ``python -m imgconv convert SOURCE DEST --workers N`` under ``/usr/bin/time -v``; returns a dict.

    Peak summed VmRSS, RssAnon and RssFile (MB) of the command's process tree,
    the parent's own peaks, ``/usr/bin/time``'s maximum RSS, and wall seconds.
    Raises RuntimeError if the command fails.
    """
    command = [sys.executable, "-m", "imgconv", "convert", source, dest, "--format", fmt,
               "--workers", str(workers), "--quiet", "--overwrite"]
    timed = ["/usr/bin/time", "-v", *command] if os.path.exists("/usr/bin/time") else command
    started = time.perf_counter()
    process = subprocess.Popen(timed, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with TreeMemorySampler(process.pid if timed is not command else os.getpid()) as sampler:
        stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}): {stderr.strip()[-2000:]}")
    mb = 1 / 1024
    time_kb = _time_max_rss_kb(stderr)
    return {
        "format": fmt, "workers": workers, "seconds": seconds, "processes": sampler.processes,
        "samples": sampler.samples,
        "tree_rss_mb": sampler.peak["VmRSS"] * mb, "tree_anon_mb": sampler.peak["RssAnon"] * mb,
        "tree_file_mb": sampler.peak["RssFile"] * mb, "tree_shmem_mb": sampler.peak["RssShmem"] * mb,
        "parent_rss_mb": sampler.parent_peak["VmRSS"] * mb, "parent_anon_mb": sampler.parent_peak["RssAnon"] * mb,
        "parent_file_mb": sampler.parent_peak["RssFile"] * mb,
        "time_max_rss_mb": None if time_kb is None else time_kb * mb,
    }


def write_tiled_npy(path: str, tile: np.ndarray, count: int) -> None:
    """Write a ``.npy`` of ``count`` images by repeating ``tile`` (N, H, W, C), in slices."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(count, *tile.shape[1:]))
    for start in range(0, count, len(tile)):
        stop = min(start + len(tile), count)
        out[start:stop] = tile[: stop - start]
    out.flush()
    del out


def spot_check(dest: str, tile: np.ndarray, count: int, what: str, probes: int = 2048) -> None:
    """Raise BenchCheckError unless the store at ``dest`` holds ``count`` images equal to ``tile`` repeated.

    The first and last ``probes`` images and ``probes`` random ones are read.
    """
    with imgconv.open(dest) as store:
        if len(store) != count:
            raise BenchCheckError(f"{what}: {len(store)} images written, {count} expected")
        rng = np.random.default_rng(3)
        indices = np.unique(np.concatenate([np.arange(min(probes, count)), np.arange(max(0, count - probes), count),
                                            rng.integers(0, count, probes)]))
        if not same_data(store.read_batch(indices), tile[indices % len(tile)], np.full(len(indices), -1, np.int64)):
            raise BenchCheckError(f"{what}: the store holds wrong pixels or labels: the run fails")


def measure(tile: np.ndarray, workdir: str, formats_by_count: Mapping[int, Sequence[str]], workers: int,
            progress: Optional[Callable[[str], None]] = None) -> List[Dict[str, Any]]:
    """Peak memory converting a ``.npy`` of ``count`` images (``tile`` repeated) to each format.

    ``formats_by_count`` maps a count to the formats measured at it. Each
    source and store is deleted after use. Returns one dict per conversion
    (see :func:`measure_convert_memory`, plus ``images``).
    """
    found = []
    for count, formats in formats_by_count.items():
        source = os.path.join(workdir, f"memory-{count}.npy")
        write_tiled_npy(source, tile, count)
        try:
            for fmt in formats:
                if progress is not None:
                    progress(f"memory {fmt} {count:,}")
                dest = os.path.join(workdir, f"memory-{count}-{fmt}{SUFFIXES[fmt]}")
                try:
                    figures = measure_convert_memory(source, dest, fmt, workers)
                    spot_check(dest, tile, count, f"python -m imgconv convert to {fmt}, {count:,} images")
                finally:
                    remove_path(dest)
                found.append(dict(figures, images=count))
        finally:
            os.unlink(source)
    return found
