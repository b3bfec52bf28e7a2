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

It also converts a folder of large photos (:func:`measure_photos`, 24 JPEGs
of 3000x2000 by default) to each format with default settings, and sets the
peak against what batches bounded in bytes allow (:func:`in_flight_bound_mb`).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

import imgconv

from ..stores.hdf5.writer import WRITE_UNIT_BYTES
from ..stores.lmdb.writer import TXN_BYTES
from .internals import remove_path
from .methods import BenchCheckError, same_data

SAMPLE_INTERVAL = 0.02
SUFFIXES = {"png": "", "lmdb": ".lmdb", "hdf5": ".h5"}


_STATUS_FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")


def process_stats() -> Iterator[Tuple[int, List[bytes]]]:
    """``(pid, fields)`` of every process visible in /proc: the fields of ``/proc/PID/stat`` after the
    command name (state, ppid, pgrp, ...)."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields follow the last ")".
        yield int(name), stat[stat.rindex(b")") + 2 :].split()


def _children_map() -> Dict[int, List[int]]:
    """``{ppid: [pid, ...]}`` for every process visible in /proc."""
    children: Dict[int, List[int]] = {}
    for pid, fields in process_stats():
        children.setdefault(int(fields[1]), []).append(pid)
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


# --------------------------------------------------------------------------- large photos

PHOTO_SEED = 11
DEFAULT_PHOTOS: Tuple[int, Tuple[int, int]] = (24, (3000, 2000))  # count, (width, height): camera photos
# What the parent's writer holds on top of its batches: LMDB's transaction,
# HDF5's write unit (PNG files go straight out).
WRITE_BUFFER_BYTES = {"lmdb": TXN_BYTES, "hdf5": WRITE_UNIT_BYTES}


def write_photos(folder: str, count: int, size: Tuple[int, int]) -> None:
    """Write ``count`` photo-like JPEGs of ``size`` (width, height) into ``folder`` (quality 90).

    Smooth gradients with a grain of noise, different in each: decoded, each
    is width x height x 3 bytes, as a camera's photo; on disk a few hundred KB.
    """
    width, height = size
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(PHOTO_SEED)
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    grain = rng.integers(0, 24, (height, width), dtype=np.uint8)
    for i in range(count):
        a, b, c = rng.uniform(0, 255, 3)
        channels = np.broadcast_arrays(a * x + 0 * y, b * y + 0 * x, (c + 90 * (x + y)) % 256)
        pixels = (np.stack(channels, axis=2) + grain[:, :, None]).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"photo-{i:04d}.jpg"), quality=90)


def check_photos(dest: str, folder: str, count: int, size: Tuple[int, int], what: str) -> None:
    """Raise BenchCheckError unless the store at ``dest`` holds the ``count`` photos of ``folder``, as decoded."""
    width, height = size
    names = sorted(os.listdir(folder))
    with imgconv.open(dest) as store:
        if len(store) != count or tuple(store.shape) != (height, width, 3):
            raise BenchCheckError(f"{what}: {len(store)} images of {store.shape} written, "
                                  f"{count} of {(height, width, 3)} expected")
        for i in sorted({0, count // 2, count - 1}):
            with Image.open(os.path.join(folder, names[i])) as photo:
                expected = np.asarray(photo.convert("RGB"))
            if not np.array_equal(store[i][0], expected):
                raise BenchCheckError(f"{what}: image {i} is not the photo decoded: the run fails")


def in_flight_bound_mb(workers: int, batch_bytes: int, fmt: str) -> float:
    """What a conversion may hold in flight beyond each process's libraries, in MB (RELIABILITY.md, "Memory").

    Each worker a batch three times over (decoded, assembled, encoded); the
    parent a received batch twice over and the format's write buffer; with no
    workers the parent does a worker's part too.
    """
    batches = 3 * workers + (2 if workers else 3)
    return (batches * batch_bytes + WRITE_BUFFER_BYTES.get(fmt, 0)) / 2**20


def measure_photos(workdir: str, count: int, size: Tuple[int, int], formats: Sequence[str], workers: int,
                   batch_bytes: int, progress: Optional[Callable[[str], None]] = None) -> List[Dict[str, Any]]:
    """Peak memory converting a folder of ``count`` photos of ``size`` to each format, against the bound.

    The conversion runs with default settings but ``--workers`` (its batches
    hold ``batch_bytes``, the default). ``baseline_mb`` is the tree's peak
    RssAnon converting two small photos without workers (the interpreter and
    libraries of one process), ``bound_mb`` that times the processes plus
    :func:`in_flight_bound_mb`. The photos are written under ``workdir`` and
    removed after.
    """
    photos = os.path.join(workdir, "memory-photos")
    tiny = os.path.join(workdir, "memory-photos-tiny")
    found = []
    try:
        if progress is not None:
            progress(f"memory: writing {count} photos of {size[0]}x{size[1]}")
        write_photos(photos, count, size)
        write_photos(tiny, 2, (64, 48))
        for fmt in formats:
            if progress is not None:
                progress(f"memory: {count} photos to {fmt}")
            base_dest = os.path.join(workdir, f"memory-tiny{SUFFIXES[fmt]}")
            dest = os.path.join(workdir, f"memory-photos-{fmt}{SUFFIXES[fmt]}")
            try:
                baseline = measure_convert_memory(tiny, base_dest, fmt, 0)["tree_anon_mb"]
                figures = measure_convert_memory(photos, dest, fmt, workers)
                check_photos(dest, photos, count, size, f"python -m imgconv convert photos to {fmt}")
            finally:
                remove_path(base_dest)
                remove_path(dest)
            bound = figures["processes"] * baseline + in_flight_bound_mb(workers, batch_bytes, fmt)
            found.append(dict(figures, images=count, source="photos", photo_size=f"{size[0]}x{size[1]}",
                              batch_bytes=batch_bytes, baseline_mb=baseline, bound_mb=bound,
                              within_bound=figures["tree_anon_mb"] <= bound))
    finally:
        remove_path(photos)
        remove_path(tiny)
    return found
