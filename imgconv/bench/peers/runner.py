"""A method's store written by a fresh process, within a time limit, with the peak memory of its process tree.

:func:`run_child` runs ``python -m imgconv.bench.peers.child SPEC RESULT``
(:mod:`imgconv.bench.peers.child`) under ``/usr/bin/time -v`` where there is
one, samples the summed memory of its process tree from ``/proc``
(:class:`~imgconv.bench.memory.TreeMemorySampler`) and returns the child's
result with the peaks.

What a child leaves behind:

- it runs in its own session. When it ends, the rest of its process group
  (LitData's workers, a resource tracker) gets ``GRACE_SECONDS`` to exit on
  its own, so that the libraries' own clean-up runs (their ``atexit``
  handlers and resource trackers remove the shared memory and semaphores
  they made); whatever is still alive is then killed, and the call returns
  only once the group is gone. A child past its time limit is killed with
  its group at once.
- its ``TMPDIR`` and the peers' cache variables point into its scratch
  directory, which the caller removes with the store.
- nothing in ``/dev/shm`` is ever removed: the harness cannot prove which
  entries a child made (``/dev/shm`` is shared by every program on the
  machine, some of them in other PID namespaces, and a POSIX semaphore's
  mapping shows a temporary name, not its own). When a child was killed,
  the error lists the entries that appeared in ``/dev/shm`` while it ran and
  are still there, for the user to judge.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from ...errors import ImgconvError
from ..memory import TreeMemorySampler, _time_max_rss_kb, process_stats
from ..methods import BenchCheckError

# A child's time limit: this much, plus this much per image; several times the slowest writer's figures on a
# loaded 2-core machine (BENCHMARKS.md), so that only a hang reaches it.
LIMIT_SECONDS = 300.0
LIMIT_PER_IMAGE = 0.005
GRACE_SECONDS = 10.0  # for the rest of a child's process group to exit on its own
POLL_SECONDS = 0.05
SHM = "/dev/shm"
CACHE_VARIABLES = ("TMPDIR", "LITDATA_CACHE_DIR", "HF_HOME", "HF_DATASETS_CACHE", "XDG_CACHE_HOME")
CHILD = (sys.executable, "-m", "imgconv.bench.peers.child")
# Without /usr/bin/time, this parent stands in for it: the sampled tree is then the child's alone.
_PARENT = (sys.executable, "-c", "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))")


class PeerRunError(ImgconvError):
    """A child process failed, or overran its time limit: the run fails."""


def time_limit(count: int) -> float:
    """Seconds a child may take to write ``count`` images."""
    return LIMIT_SECONDS + LIMIT_PER_IMAGE * count


def _shm_entries() -> Set[str]:
    try:
        return set(os.listdir(SHM))
    except OSError:
        return set()


def group_members(pgid: int) -> List[int]:
    """The live (not zombie) processes of process group ``pgid``, from /proc."""
    return [pid for pid, fields in process_stats() if int(fields[2]) == pgid and fields[0] != b"Z"]


def _wait_gone(pgid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while group_members(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def end_group(pgid: int, grace: Optional[float] = None) -> None:
    """Give process group ``pgid`` ``grace`` seconds (default GRACE_SECONDS) to exit, kill what is left, wait
    until it is gone."""
    if not _wait_gone(pgid, GRACE_SECONDS if grace is None else grace):
        _kill_group(pgid)
        _wait_gone(pgid, 10.0)


def _command(command: Sequence[str], timed: bool) -> List[str]:
    return ["/usr/bin/time", "-v", *command] if timed else [*_PARENT, *command]


def run_child(spec: Mapping[str, Any], scratch: str, limit: float,
              command: Sequence[str] = CHILD) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Run ``command SPEC RESULT`` on ``spec`` within ``limit`` seconds; returns ``(result, memory)``.

    ``result`` is what the child reported; ``memory`` the peaks of its
    process tree (``tree_anon_mb``, ``tree_rss_mb``, ``processes``, and
    ``time_max_rss_mb`` from ``/usr/bin/time -v``). Raises PeerRunError when
    the child fails, reports an error or overruns the limit, BenchCheckError
    when it reports wrong data. Its files go to ``scratch``, which the
    caller removes.
    """
    os.makedirs(scratch, exist_ok=True)
    spec_path, result_path = os.path.join(scratch, "spec.json"), os.path.join(scratch, "result.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    env = dict(os.environ, **{name: scratch for name in CACHE_VARIABLES})
    timed = os.path.exists("/usr/bin/time")
    shm_before = _shm_entries()
    with open(os.path.join(scratch, "stderr.txt"), "w+") as stderr:
        process = subprocess.Popen(_command([*command, spec_path, result_path], timed), env=env,
                                   stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, start_new_session=True)
        sampler = TreeMemorySampler(process.pid)
        try:
            with sampler:
                process.wait(limit)
        except subprocess.TimeoutExpired:
            _kill_group(process.pid)
            process.wait()
            end_group(process.pid, 0.0)
            raise PeerRunError(f"{spec['method']} {spec['action']} of {spec['count']:,} images overran its time "
                               f"limit of {limit:.0f} s and was killed{_shm_note(shm_before)}") from None
        finally:
            if process.poll() is None:  # interrupted (Ctrl-C): take the child down with the run
                _kill_group(process.pid)
                process.wait()
            end_group(process.pid)
        stderr.seek(0)
        errors = stderr.read()
    return _result(spec, result_path, process.returncode, errors), _memory(sampler, errors)


def _shm_note(before: Set[str]) -> str:
    appeared = sorted(_shm_entries() - before)
    if not appeared:
        return ""
    return (f"; these entries appeared in {SHM} while it ran and remain (its own or another program's; not "
            f"removed): {', '.join(appeared)}")


def _child_output(errors: str) -> str:
    """What the child printed, without /usr/bin/time's report that follows it."""
    found = re.search(r"^(Command (exited|terminated)|\s*Command being timed)", errors, re.MULTILINE)
    return errors[: found.start()] if found else errors


def _result(spec: Mapping[str, Any], result_path: str, returncode: Optional[int], errors: str) -> Dict[str, Any]:
    what = f"{spec['method']} {spec['action']}"
    try:
        with open(result_path) as f:
            result = json.load(f)
    except (OSError, ValueError):
        tail = "\n".join(_child_output(errors).strip().splitlines()[-15:])
        raise PeerRunError(f"{what}: the child process ended ({returncode}) without a result:\n{tail}") from None
    if result.get("failed") == "check":
        raise BenchCheckError(f"{result['message']}: the run fails")
    if result.get("failed"):
        raise PeerRunError("\n".join([f"{what} failed: {result['message']}", *result.get("traceback", [])]))
    ok: Dict[str, Any] = result["ok"]
    return ok


def _memory(sampler: TreeMemorySampler, errors: str) -> Dict[str, Any]:
    mb = 1 / 1024
    found: Dict[str, Any] = {"tree_rss_mb": sampler.peak["VmRSS"] * mb, "tree_anon_mb": sampler.peak["RssAnon"] * mb,
                             "processes": sampler.processes, "time_max_rss_mb": None}
    max_rss = _time_max_rss_kb(errors)
    if max_rss is not None:
        found["time_max_rss_mb"] = max_rss * mb
    return found
