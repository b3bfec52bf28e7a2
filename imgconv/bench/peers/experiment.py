"""The ``peers`` experiment: the writer's peak memory of imgconv's stores and of every peer, at the largest cutoff.

The grid's experiments time the peers beside imgconv's stores like any
method (write, full read, random batches, disk); what they cannot measure
in the harness's process is the memory a writer needs. Here each chosen
method of the imgconv and peer families writes the largest cutoff's images
once more, in a fresh process (:mod:`imgconv.bench.peers.runner`): its row
holds the write's seconds, the peak anonymous memory and RSS of the
writer's process tree and its memory before writing (imports done), and the
version of what it measures. The experiment's table block
(:func:`~imgconv.bench.peers.table.peers_table`) and ``peers.png``
(:func:`~imgconv.bench.peers.plot.plot_peers`) put every figure side by side.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Dict, List

import imgconv

from ..harness import Harness, Row, experiment
from ..internals import remove_path
from ..methods import Method
from .common import GROUP
from .plot import plot_peers
from .runner import run_child, time_limit
from .table import FAMILIES, peers_table

TITLE = "imgconv and its peers (LitData, MosaicML streaming, WebDataset, HF datasets)"


def sides(harness: Harness) -> List[Method]:
    """The chosen methods the experiment measures: imgconv's and the peers' that write a store."""
    return [m for m in harness.methods if m.family in FAMILIES and m.store is not None]


def _version(method: Method) -> Dict[str, Any]:
    """``{"package", "version"}`` of what ``method`` measures (the first of its ``versions``; imgconv's own)."""
    versions = method.versions() if method.versions is not None else {"imgconv": imgconv.__version__}
    package, version = next(iter(versions.items()), (None, None))
    return {"package": package, "version": version}


def _writer_row(harness: Harness, method: Method, count: int, scratch: str) -> Row:
    spec = {"action": "write", "method": method.name, "path": os.path.join(scratch, f"store{method.suffix}"),
            "source": harness.env.npz, "count": count, "workers": harness.env.workers}
    result, memory = run_child(spec, os.path.join(scratch, "child"), time_limit(count))
    before = result["before_write"]
    return harness.row("peers", method, count, seconds=result["seconds"], **memory,
                       before_write_anon_mb=before.get("anon_mb"), before_write_rss_mb=before.get("rss_mb"),
                       random_access=method.open_reader is not None, **_version(method), status="measured")


@experiment("peers", TITLE, "alone", default=False, group=GROUP, steps=lambda harness: len(sides(harness)),
            table=peers_table, plot=plot_peers)
def peers_experiment(harness: Harness) -> List[Row]:
    """Each side's store of the largest cutoff's images written by a fresh process; a row per side.

    A side that fails keeps the rows measured before it in the results (and
    a row saying it failed): the run then fails with its error.
    """
    count = max(harness.cutoffs)
    harness.parameters["peers"] = {"images": count, "time_limit_seconds": time_limit(count)}
    directory = tempfile.mkdtemp(prefix="peers-", dir=harness.workdir)
    rows: List[Row] = []
    try:
        for method in sides(harness):
            harness.progress(f"peers: {method.name} writer memory, {count:,} images")
            try:
                rows.append(_writer_row(harness, method, count, os.path.join(directory, method.name)))
            except BaseException as exc:
                failed = harness.row("peers", method, count, **_version(method),
                                     status=f"failed: {exc}" if str(exc) else f"failed: {type(exc).__name__}")
                harness.rows += [*rows, failed]
                raise
            finally:
                remove_path(os.path.join(directory, method.name))
    finally:
        remove_path(directory)
    return rows
