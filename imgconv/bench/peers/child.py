"""One method's store written in a fresh process: ``python -m imgconv.bench.peers.child SPEC RESULT``.

The runner (:mod:`imgconv.bench.peers.runner`) writes ``SPEC`` (JSON: the
method's name, the store's path, the harness's ``.npz`` of the images, their
count, the workers) and reads ``RESULT`` (JSON) once the process has ended.
The child loads the bench's plug-ins, imports what the method measures (its
``probe``), maps the images, notes its own memory, then times the method's
``store``: ``{"ok": {"seconds", "before_write"}}``. Wrong data is reported as
a ``check`` failure, any other exception as an ``error`` with the end of its
traceback.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any, Dict, List, Mapping

from ..methods import METHODS, BenchCheckError, Environment
from .common import map_npz


def own_memory_mb() -> Dict[str, float]:
    """``{"rss_mb", "anon_mb"}`` of this process now, from /proc (empty where there is none)."""
    found = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon"):
                    found["rss_mb" if key == "VmRSS" else "anon_mb"] = int(rest.split()[0]) / 1024
    except OSError:
        pass
    return found


def write(spec: Mapping[str, Any]) -> Dict[str, Any]:
    """Time the method's ``store`` of the images into ``spec["path"]``; returns seconds and memory before it."""
    from ..command import load_plugins

    load_plugins()
    method = METHODS[spec["method"]]
    reason = method.skip_reason()
    if reason is not None:
        raise RuntimeError(reason)
    if method.store is None:
        raise ValueError(f"{method.name} cannot write a store")
    images, labels = map_npz(spec["source"], spec["count"])
    env = Environment(spec["workers"], spec["source"])
    before = own_memory_mb()
    started = time.perf_counter()
    method.store(spec["path"], images, labels, env)
    return {"seconds": time.perf_counter() - started, "before_write": before}


def main(argv: List[str]) -> None:
    """Run the spec at ``argv[0]``; write its result (or failure) as JSON to ``argv[1]``."""
    spec_path, result_path = argv
    with open(spec_path) as f:
        spec = json.load(f)
    try:
        result: Dict[str, Any] = {"ok": write(spec)}
    except BenchCheckError as exc:
        result = {"failed": "check", "message": f"{spec['method']}: {exc}"}
    except Exception as exc:  # reported to the runner, which fails the run with it
        trace = traceback.format_exc().strip().splitlines()
        result = {"failed": "error", "message": f"{spec['method']}: {type(exc).__name__}: {exc}",
                  "traceback": trace[-12:]}
    partial = result_path + ".partial"
    with open(partial, "w") as f:
        json.dump(result, f)
    os.replace(partial, result_path)


if __name__ == "__main__":
    main(sys.argv[1:])
