"""Kill real conversions with SIGKILL at random moments and check every outcome.

Each kill hits a real ``python -m imgconv convert ... --resume`` (two
workers) at a random moment of its run: the parent, one worker, or the whole
process group. Afterwards

* the destination is absent, or a complete store that passes ``verify`` and
  equals the uninterrupted reference conversion;
* no process of the conversion is left (a worker whose parent was killed ends
  itself), within a few seconds;
* the next ``--resume`` run continues what was left (or starts over), and
  when a chain of kills ends with an uninterrupted run, the store equals the
  reference: same images, labels and metadata, and the same bytes for a PNG
  folder; nothing is left beside it (partial output, worker hand-off files).

Runnable by hand::

    python tests/stress/kill_stress.py --runs 100

prints one line per kill and a summary; exits 1 when any check failed.
tests/test_kill.py runs a fixed selection of moments from this module.
"""
import argparse
import glob
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

import imgconv
from imgconv import stores
from imgconv.sample import generate_sample
from imgconv.verify import verify_store

TARGETS = ("parent", "worker", "group")
# Destination name and extra options per format: sizes chosen so a run takes
# about a second of real work on two busy cores (PNG encoding is the slow one).
FORMATS = {
    "lmdb": ("out.lmdb", []),
    "hdf5": ("out.h5", []),
    "png": ("out", ["--png-level", "1", "--limit", "2500"]),
}
BATCH_SIZE = 128
ORPHAN_GRACE = 5.0  # seconds a worker may take to notice its parent is gone


def make_source(directory, count=8000):
    """A PNG folder of ``count`` sample images: workers decode it, so a conversion takes a while."""
    images, labels = generate_sample(count, seed=1)
    path = os.path.join(directory, "source")
    with stores.create(path, compress_level=1) as writer:
        for start in range(0, count, 1000):
            writer.append(images[start : start + 1000], labels[start : start + 1000])
    return path


def convert_command(source, dest, fmt, resume=True):
    """The command line of one conversion."""
    command = [sys.executable, "-m", "imgconv", "convert", source, dest, "--workers", "2",
               "--batch-size", str(BATCH_SIZE), *FORMATS[fmt][1]]
    return command + (["--resume"] if resume else [])


def processes_in_group(pgid):
    """``{pid: ppid}`` of the live (not zombie) processes in process group ``pgid``."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] not in "ZX":
                found[int(entry)] = int(fields[1])
    return found


@dataclass
class Reference:
    """An uninterrupted conversion: what every outcome must equal, and how long it took."""

    fmt: str
    path: str
    seconds: float
    images: object
    labels: np.ndarray
    metadata: dict
    files: dict = field(default_factory=dict)


def read_store(path):
    """``(images, labels, metadata)`` of a store."""
    with stores.open(path) as store:
        images, labels = store.read_all()
        return images, labels, dict(store.metadata)


def png_files(path):
    """``{relative path: bytes}`` of a PNG folder."""
    out = {}
    for directory, _, names in os.walk(path):
        for name in names:
            full = os.path.join(directory, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = f.read()
    return out


def make_reference(workdir, source, fmt):
    """Run one uninterrupted conversion into ``workdir/reference-<fmt>/``."""
    directory = os.path.join(workdir, f"reference-{fmt}")
    os.mkdir(directory)
    dest = os.path.join(directory, FORMATS[fmt][0])
    started = time.monotonic()
    done = subprocess.run(convert_command(source, dest, fmt, resume=False), capture_output=True, text=True,
                          timeout=300)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"the reference conversion failed: {done.stderr}")
    images, labels, metadata = read_store(dest)
    return Reference(fmt, dest, seconds, images, labels, metadata, png_files(dest) if fmt == "png" else {})


def store_problems(path, reference):
    """What is wrong with the store at ``path`` compared with ``reference`` (empty list: nothing)."""
    report = verify_store(path)
    problems = [f"verify: {p}" for p in report.problems] + [f"verify: image {i}: {r}" for i, r in report.bad]
    images, labels, metadata = read_store(path)
    if not np.array_equal(labels, reference.labels):
        problems.append("labels differ from the uninterrupted conversion")
    if not np.array_equal(np.asarray(images), np.asarray(reference.images)):
        problems.append("images differ from the uninterrupted conversion")
    if metadata != reference.metadata:
        problems.append(f"metadata differ: {metadata} != {reference.metadata}")
    if reference.fmt == "png" and png_files(path) != reference.files:
        problems.append("the PNG folder's files differ (bytes) from the uninterrupted conversion")
    return problems


@dataclass
class KillOutcome:
    """What one kill did and what was found afterwards."""

    fmt: str
    target: str  # what was killed: parent, worker, group, or "none" (finished first)
    delay: float
    returncode: int
    found: str  # "absent" or "complete"
    orphans: list
    problems: list


def kill_once(source, dest, fmt, target, delay, reference):
    """Start a ``--resume`` conversion, SIGKILL ``target`` after ``delay`` seconds, check the outcome."""
    process = subprocess.Popen(convert_command(source, dest, fmt), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    time.sleep(delay)
    killed = target
    if process.poll() is not None:
        killed = "none"
    elif target == "group":
        os.killpg(process.pid, signal.SIGKILL)
    else:
        victim = process.pid
        if target == "worker":
            workers = [p for p, ppid in processes_in_group(process.pid).items() if ppid == process.pid]
            if workers:
                victim = random.choice(workers)
            else:
                killed = "parent"  # no worker alive at that moment (starting or finishing)
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            killed = "none"
    _, err = process.communicate(timeout=300)
    problems = []
    deadline = time.monotonic() + ORPHAN_GRACE
    while processes_in_group(process.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    orphans = sorted(processes_in_group(process.pid))
    if orphans:
        problems.append(f"processes left after {ORPHAN_GRACE} s: {orphans}")
        for pid in orphans:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if killed == "worker" and process.returncode not in (0, 1):
        problems.append(f"after a worker was killed the parent exited with {process.returncode}: {err[-500:]}")
    if process.returncode == 1 and "Traceback" in err:
        problems.append(f"a traceback instead of a one-line error: {err[-1000:]}")
    found = "absent"
    if os.path.lexists(dest):
        found = "complete"
        try:
            problems.extend(store_problems(dest, reference))
        except Exception as exc:  # whatever it is, a store at dest must open and read
            problems.append(f"the store at the destination does not read: {type(exc).__name__}: {exc}")
    return KillOutcome(fmt, killed, delay, process.returncode, found, orphans, problems), process.pid


@dataclass
class Finish:
    """The uninterrupted ``--resume`` run that ends a chain of kills."""

    problems: list
    kept: int  # images kept from the interrupted runs (0: nothing was left, or it started over)
    restarted: str  # why the partial output could not be continued, or ""


def finish(source, dest, fmt, reference, killed_pids):
    """Complete the conversion with an uninterrupted ``--resume`` run and check it (a :class:`Finish`)."""
    done = subprocess.run(convert_command(source, dest, fmt), capture_output=True, text=True, timeout=300)
    kept = re.search(r"continued after (\d+) images", done.stdout)
    restarted = re.search(r"cannot be continued.*", done.stderr)
    result = Finish([], int(kept.group(1)) if kept else 0, restarted.group(0) if restarted else "")
    problems = result.problems
    if done.returncode != 0:
        problems.append(f"the resumed conversion failed ({done.returncode}): {done.stderr[-1000:]}")
        return result
    problems.extend(store_problems(dest, reference))
    left = [name for name in os.listdir(os.path.dirname(dest)) if name.endswith(".imgconv-partial")]
    if left:
        problems.append(f"partial output left beside the store: {left}")
    for pid in killed_pids:
        stale = glob.glob(os.path.join(tempfile.gettempdir(), f"imgconv-results-{pid}-*"))
        if stale:
            problems.append(f"the hand-off directory of killed conversion {pid} was not cleaned up: {stale}")
    return result


def run_chain(source, workdir, fmt, kills, reference):
    """Kill successive ``--resume`` runs at ``kills`` [(target, delay)], then finish and compare.

    Returns the list of KillOutcome and the :class:`Finish` (None when a kill came after the end).
    """
    directory = os.path.join(workdir, f"chain-{fmt}")
    shutil.rmtree(directory, ignore_errors=True)
    os.mkdir(directory)
    dest = os.path.join(directory, FORMATS[fmt][0])
    outcomes, pids = [], []
    for target, delay in kills:
        outcome, pid = kill_once(source, dest, fmt, target, delay, reference)
        outcomes.append(outcome)
        pids.append(pid)
        if outcome.found == "complete":
            break  # finished before the kill took effect: nothing left to resume
    final = None
    if not os.path.lexists(dest):
        final = finish(source, dest, fmt, reference, pids)
    shutil.rmtree(directory, ignore_errors=True)
    return outcomes, final


def summary(outcomes, finals):
    """Lines summing up a run of kills."""
    by_found = Counter(o.found for o in outcomes if o.target != "none")
    by_target = Counter(o.target for o in outcomes)
    failed = [o for o in outcomes if o.problems]
    finals = [f for f in finals if f is not None]
    lines = [
        f"kills: {sum(1 for o in outcomes if o.target != 'none')} "
        f"({', '.join(f'{t} {by_target[t]}' for t in TARGETS)}; finished before the kill: {by_target['none']})",
        f"destination afterwards: absent {by_found['absent']}, complete and verified "
        f"{by_found['complete'] - sum(1 for o in failed if o.found == 'complete')}, "
        f"with problems {len(failed)}",
        f"orphan processes found: {sum(len(o.orphans) for o in outcomes)}",
        f"chains finished by --resume: {len(finals)}, equal to the uninterrupted conversion: "
        f"{sum(1 for f in finals if not f.problems)}; continued from kept images: "
        f"{sum(1 for f in finals if f.kept)}, started over: {sum(1 for f in finals if not f.kept)} "
        f"(of which for a partial output that could not be continued: {sum(1 for f in finals if f.restarted)})",
    ]
    return lines


def main(argv=None):
    """Run ``--runs`` kills at random moments over chains of up to ``--chain`` runs; print a summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="number of kills (default 100)")
    parser.add_argument("--chain", type=int, default=3, help="kills in a row before a run may finish (default 3)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated formats (default all)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    random.seed(seed)
    formats = args.formats.split(",")
    print(f"imgconv {imgconv.__version__}, seed {seed}, {args.runs} kills, formats {formats}", flush=True)
    workdir = tempfile.mkdtemp(prefix="imgconv-kill-stress-")
    outcomes, finals = [], []
    try:
        source = make_source(workdir)
        references = {fmt: make_reference(workdir, source, fmt) for fmt in formats}
        for fmt, ref in references.items():
            print(f"reference {fmt}: {ref.seconds:.2f} s uninterrupted", flush=True)
        while len(outcomes) < args.runs:
            fmt = random.choice(formats)
            length = min(random.randint(1, args.chain), args.runs - len(outcomes))
            # Moments from the start up to just past the end of an uninterrupted run.
            kills = [(random.choice(TARGETS), random.uniform(0.0, 1.1 * references[fmt].seconds))
                     for _ in range(length)]
            chain, final = run_chain(source, workdir, fmt, kills, references[fmt])
            for o in chain:
                outcomes.append(o)
                status = "ok" if not o.problems else "PROBLEM: " + "; ".join(o.problems)
                print(f"{len(outcomes):4d} {o.fmt:5s} kill {o.target:6s} at {o.delay:5.2f} s "
                      f"-> exit {o.returncode:4d}, destination {o.found}: {status}", flush=True)
            finals.append(final)
            if final is not None:
                status = "ok" if not final.problems else "PROBLEM: " + "; ".join(final.problems)
                how = f"continued after {final.kept} kept images" if final.kept else "started over"
                print(f"     {fmt:5s} --resume to the end ({how}{'; ' + final.restarted if final.restarted else ''}): "
                      f"{status}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    lines = summary(outcomes, finals)
    print("\n".join(["summary:"] + ["  " + line for line in lines]))
    bad = any(o.problems for o in outcomes) or any(f.problems for f in finals if f is not None)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
