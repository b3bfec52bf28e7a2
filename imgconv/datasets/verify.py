"""Checking a sharded dataset: the manifest against the directory, then every shard, in parallel.

Each shard is an ordinary store, checked by :func:`imgconv.verify` in a
process of its own (checksums and PNG decoding are CPU work, and shards are
independent); a bad image is reported by its index in the dataset, with the
shard and the shard's own index in the reason.
"""
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, List, Optional, Tuple

from .. import _platform
from .reader import DatasetReader

Progress = Optional[Callable[[int, int], None]]


def verify_dataset(path: Any, batch_size: int, progress: Progress, workers: Optional[int] = None,
                   max_listed: Optional[int] = None) -> Any:
    """Check the dataset at ``path``; returns a :class:`~imgconv.verify.VerifyReport` over all of it.

    ``workers`` processes check the shards (default: one per CPU, at most
    one per shard). ``problems`` names each shard missing, extra, not
    opening, or unlike its manifest entry, and each shard's own problems;
    ``bad`` gives ``(index in the dataset, reason)``: the first
    ``max_listed`` (default :data:`~imgconv.verify.MAX_LISTED`) in the
    dataset's order, ``unlisted`` counts the others.
    """
    from ..verify import MAX_LISTED, VerifyReport

    max_listed = MAX_LISTED if max_listed is None else max_listed
    started = time.perf_counter()
    dataset = DatasetReader(path)
    try:
        problems = dataset.unlisted()
        shards = []
        for k, entry in enumerate(dataset.shards):
            found, opens = dataset.shard_problems(k)
            problems.extend(found)
            if opens:
                shards.append((k, entry, dataset.shard_path(k)))
        bounds = dataset.bounds
        count, name, fmt = len(dataset), dataset.path, dataset.format_name
    finally:
        dataset.close()
    bad: List[Tuple[int, str]] = []
    checked = unlisted = 0
    for k, entry, report in _each_report(shards, batch_size, workers, max_listed):
        base = int(bounds[k])
        bad.extend((base + index, f"in {entry.path} (its image {index}): {reason}") for index, reason in report.bad)
        problems.extend(f"{entry.path}: {problem}" for problem in report.problems)
        checked += report.checked
        unlisted += report.unlisted
        if progress is not None:
            progress(checked, count)
    # Each shard listed its first max_listed: the dataset's first max_listed are among them.
    bad.sort()
    unlisted += len(bad[max_listed:])
    return VerifyReport(name, fmt, count, checked, bad[:max_listed], problems, time.perf_counter() - started,
                        unlisted)


def _each_report(shards: List[Tuple[int, Any, str]], batch_size: int, workers: Optional[int],
                 max_listed: int) -> Any:
    """``(k, entry, VerifyReport)`` of each shard, as they are checked (in parallel when worth it)."""
    workers = min(_platform.cpu_count() if workers is None else workers, len(shards))
    if workers <= 1:
        for k, entry, path in shards:
            yield k, entry, _verify_shard(path, batch_size, max_listed)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        futures = {pool.submit(_verify_shard, path, batch_size, max_listed): (k, entry) for k, entry, path in shards}
        for future in as_completed(futures):
            k, entry = futures[future]
            yield k, entry, future.result()


def _verify_shard(path: str, batch_size: int, max_listed: int) -> Any:
    from ..verify import verify

    return verify(os.fspath(path), batch_size=batch_size, max_listed=max_listed)
