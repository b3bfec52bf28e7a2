"""The command: ``python -m imgconv bench``'s arguments, the run, and the files it writes.

:func:`add_arguments` and :func:`run_bench` are what the CLI's ``bench``
subcommand calls. The arguments derive from the registries (methods,
experiments, their groups) after :func:`load_plugins` has imported every
module of :data:`PLUGINS`.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .._terminal import escape_lines
from . import classic, inputs, memory, report
from .harness import (
    DEFAULT_BUDGET,
    DEFAULT_CUTOFFS,
    DEFAULT_REPEAT,
    DEFAULT_SETTLE,
    EXPERIMENTS,
    QUICK_BUDGET,
    QUICK_CUTOFFS,
    QUICK_SETTLE,
    WARMUP_LIMIT,
    Experiment,
    Harness,
)
from .internals import default_workers
from .methods import METHODS, Method, method_groups
from .targets import check_targets, evaluate_targets, load_targets

# The modules that register methods and experiments when imported, in the order
# they run. A plug-in is one more line here (see the imgconv.bench docstring).
PLUGINS = (
    "imgconv.bench.methods",
    "imgconv.bench.experiments",
    "imgconv.bench.loader_bench",
    "imgconv.bench.peers",
    "imgconv.bench.scale",
)
DEFAULT_OUT = "bench-results"
CIFAR_COUNT, QUICK_CIFAR_COUNT = 60_000, 3_000


def load_plugins() -> None:
    """Import every module of :data:`PLUGINS` (each registers its methods and experiments once)."""
    for name in PLUGINS:
        importlib.import_module(name)


def default_experiments() -> List[str]:
    """The experiments of a plain run, in order."""
    load_plugins()
    return [e.name for e in EXPERIMENTS.values() if e.default]


def opt_in_groups() -> Dict[str, Tuple[List[str], List[str]]]:
    """``{group: (methods, experiments)}`` of every opt-in group (each has a ``--GROUP`` flag)."""
    load_plugins()
    groups: Dict[str, Tuple[List[str], List[str]]] = {}
    for method in METHODS.values():
        if method.group is not None:
            groups.setdefault(method.group, ([], []))[0].append(method.name)
    for exp in EXPERIMENTS.values():
        if exp.group is not None:
            groups.setdefault(exp.group, ([], []))[1].append(exp.name)
    return groups


# --------------------------------------------------------------------------- arguments


def _names(known: Sequence[str], groups: Mapping[str, Sequence[str]]) -> Callable[[str], List[str]]:
    """An argparse type: one name of ``known`` or of ``groups``, or several joined by commas; returns a list."""

    def parse(text: str) -> List[str]:
        chosen: List[str] = []
        for part in filter(None, text.split(",")):
            if part not in known and part not in groups:
                raise argparse.ArgumentTypeError(f"unknown name {part!r}; known: {', '.join([*known, *groups])}")
            chosen += groups.get(part, [part])
        return chosen

    return parse


def _cutoffs(text: str) -> List[int]:
    try:
        values = sorted({int(v.replace("_", "")) for v in text.replace(",", " ").split()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of whole numbers: {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"cutoffs must be at least 1, got {text!r}")
    return values


def _photos(text: str) -> Tuple[int, Tuple[int, int]]:
    """``NxWxH`` as ``(N, (W, H))``, each at least 1."""
    try:
        count, width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not COUNTxWIDTHxHEIGHT, e.g. 24x3000x2000: {text!r}") from None
    if min(count, width, height) < 1:
        raise argparse.ArgumentTypeError(f"count, width and height must be at least 1, got {text!r}")
    return count, (width, height)


def _number(kind: Callable[[str], Any], minimum: float = 0, inclusive: bool = False) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {'at least' if inclusive else 'above'} {minimum:g}, "
                                             f"got {text!r}")
        return value

    return parse


def _example() -> str:
    optional = [e.name for e in EXPERIMENTS.values() if not e.default and e.group is None]
    groups = ", ".join(f"--{g} ({', '.join([*m, *e])})" for g, (m, e) in opt_in_groups().items())
    return ("examples:\n"
            "  python -m imgconv bench --quick                      # a first look, under 30 s\n"
            "  python -m imgconv bench --out bench-results          # the whole experiment, 10 to 100,000 images\n"
            "  python -m imgconv bench --tmp /dev/shm --methods lmdb classic-lmdb --cutoffs 1000,100000\n"
            "  python -m imgconv bench --cifar cifar-10-python.tar.gz --experiments store-many read-many disk\n"
            "  python -m imgconv bench --clear-cache                # remove the cached sample (about 0.5 GB)\n\n"
            f"experiments: {', '.join(default_experiments())}\n"
            f"opt-in experiments: {', '.join(optional)}\n"
            f"methods: {', '.join(m.name for m in METHODS.values() if m.default)} "
            f"(groups: {', '.join(g for g in method_groups() if g != 'all')}, all)\n"
            + (f"opt-in groups: {groups}\n" if groups else ""))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the bench command's arguments to ``parser`` (methods, experiments and groups from the registries)."""
    load_plugins()
    parser.epilog = _example()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--cifar", metavar="PATH",
                        help="a CIFAR-10 directory or .tar.gz to measure with (the training images, "
                             "repeated up to the largest cutoff) instead of the built-in sample")
    source.add_argument("--source", metavar="PATH", help="any source imgconv reads (images of one size)")
    parser.add_argument("--cutoffs", type=_cutoffs, default=None,
                        help="numbers of images, e.g. 10,100,1000 (default 10,100,1000,10000,100000)")
    parser.add_argument("--scale-sizes", type=_cutoffs, default=None, metavar="N,N",
                        help="numbers of images of the opt-in scale experiment (default: a tenth of the largest "
                             "cutoff and the largest cutoff; 100000,1000000 for its 1M targets)")
    parser.add_argument("--methods", nargs="+", type=_names(list(METHODS), method_groups()), default=None,
                        metavar="NAME", help="methods to run (default all), e.g. lmdb classic-lmdb")
    parser.add_argument("--experiments", nargs="+",
                        type=_names(list(EXPERIMENTS), {"all": default_experiments()}), default=None,
                        metavar="NAME", help="experiments to run (default all), e.g. store-many read-many disk")
    for group, (methods, experiments) in opt_in_groups().items():
        parser.add_argument(f"--{group}", action="store_true", dest=f"group_{group.replace('-', '_')}",
                            help=f"also run the {group}: {', '.join([*methods, *experiments])}")
    parser.add_argument("--repeat", type=_number(int), default=DEFAULT_REPEAT,
                        help=f"timed runs per figure, the median is reported (default {DEFAULT_REPEAT})")
    parser.add_argument("--budget", type=_number(float), default=None,
                        help=f"stop repeating a figure once its runs took this many seconds (default "
                             f"{DEFAULT_BUDGET:g}, --quick {QUICK_BUDGET:g}); at least one run is made")
    parser.add_argument("--settle", type=_number(float, inclusive=True), default=None, metavar="SECONDS",
                        help=f"seconds of alternate reruns allowed per undecided target (default "
                             f"{DEFAULT_SETTLE:g}, --quick {QUICK_SETTLE:g}; 0: none)")
    parser.add_argument("--targets", metavar="FILE", default=None,
                        help="judge against the targets of this TOML file (default: the packaged targets.toml)")
    parser.add_argument("--workers", type=_number(int), default=default_workers(),
                        help=f"worker processes of imgconv's PNG pool and conversion (default: the CPUs, here "
                             f"{default_workers()})")
    count, (width, height) = memory.DEFAULT_PHOTOS
    parser.add_argument("--memory-photos", type=_photos, default=memory.DEFAULT_PHOTOS, metavar="NxWxH",
                        help=f"the memory experiment's folder of large photos: N JPEGs of W x H pixels (default "
                             f"{count}x{width}x{height})")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help=f"where results.json, results.csv, table.txt and the plots go (default {DEFAULT_OUT})")
    parser.add_argument("--tmp", metavar="DIR", default=None,
                        help="where the measured stores are written (default: the system temp dir; "
                             "e.g. /dev/shm to take the disk out of the figures)")
    parser.add_argument("--cache", metavar="DIR", default=None,
                        help=f"where the built-in sample is kept between runs (default: {inputs.default_cache()})")
    parser.add_argument("--clear-cache", action="store_true",
                        help="remove the cached sample from the cache directory and exit")
    parser.add_argument("--quick", action="store_true",
                        help="a first look in under 30 s: cutoffs 10,100,1000, a small budget and CIFAR sample "
                             "(too small to judge the targets)")
    parser.add_argument("--no-plots", action="store_true", help="do not draw the plots")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


# --------------------------------------------------------------------------- the run


def _selection(args: argparse.Namespace) -> Tuple[List[Method], List[Experiment], Dict[str, str], Dict[str, str]]:
    """The chosen methods and experiments in registry order, and the reasons of those skipped here."""
    methods = {name for names in (args.methods or [method_groups()["all"]]) for name in names}
    experiments = {name for names in (args.experiments or [default_experiments()]) for name in names}
    for group, (group_methods, group_experiments) in opt_in_groups().items():
        if getattr(args, f"group_{group.replace('-', '_')}", False):
            methods.update(group_methods)
            experiments.update(group_experiments)
    skipped_methods = {m.name: reason for m in METHODS.values() if m.name in methods and (reason := m.skip_reason())}
    skipped_experiments = {e.name: reason for e in EXPERIMENTS.values()
                           if e.name in experiments and (reason := e.skip_reason())}
    chosen_methods = [m for m in METHODS.values() if m.name in methods and m.name not in skipped_methods]
    chosen_experiments = [e for e in EXPERIMENTS.values() if e.name in experiments and e.name not in
                          skipped_experiments]
    return chosen_methods, chosen_experiments, skipped_methods, skipped_experiments


class _Progress:
    """A tqdm bar over the whole run on stderr (silent when not a terminal or ``quiet``)."""

    def __init__(self, total: int, quiet: bool):
        self._bar = None
        self._started = False
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True, desc="imgconv bench")

    def step(self, text: str) -> None:
        """A new step begins (the previous one is done)."""
        if self._bar is None:
            return
        if self._started:
            self._bar.update(1)
        self._started = True
        self._bar.set_postfix_str(text)

    def note(self, text: str) -> None:
        """Say what the current step is doing."""
        if self._bar is not None:
            self._bar.set_postfix_str(text)

    def close(self) -> None:
        """The last step is done."""
        if self._bar is not None:
            if self._started:
                self._bar.update(1)
            self._bar.close()


def _clear_cache(cache: str) -> int:
    removed, freed = inputs.clear_cache(cache)
    if not removed:
        print(f"nothing cached in {cache}")
    else:
        print(f"removed {len(removed)} cached sample file(s) from {cache}, {freed / 1e6:,.0f} MB")
    return 0


def _methods_info(selected: Sequence[str], skipped: Mapping[str, str]) -> Dict[str, Dict[str, Any]]:
    return {name: {"family": m.family, "format": m.format, "label": m.label, "title": m.title,
                   "baseline": m.baseline, "group": m.group, "doc": m.doc, "skipped": skipped.get(name)}
            for name, m in METHODS.items() if name in selected or name in skipped}


def _versions(methods: Sequence[Method]) -> Dict[str, Optional[str]]:
    found = report.versions()
    for method in methods:
        if method.versions is not None:
            found.update(method.versions())
    return found


def run_bench(args: argparse.Namespace) -> int:
    """Run the bench command for parsed ``args``; prints the table, writes the files; returns 0.

    Raises BenchCheckError when a method returns wrong data (results.json
    then records the failure), BenchInputError for an unusable input or
    targets file.
    """
    load_plugins()
    cache = args.cache or inputs.default_cache()
    if args.clear_cache:
        return _clear_cache(cache)
    started = time.perf_counter()
    methods, experiments, skipped_methods, skipped_experiments = _selection(args)
    targets = load_targets(args.targets)
    check_targets(targets, EXPERIMENTS, METHODS, args.targets or "targets.toml")
    cutoffs = args.cutoffs or list(QUICK_CUTOFFS if args.quick else DEFAULT_CUTOFFS)
    budget = args.budget or (QUICK_BUDGET if args.quick else DEFAULT_BUDGET)
    settle = args.settle if args.settle is not None else (QUICK_SETTLE if args.quick else DEFAULT_SETTLE)
    os.makedirs(args.out, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="imgconv-bench-", dir=args.tmp)
    results: Dict[str, Any] = {
        "harness": "python -m imgconv bench", "schema": 2, "status": "running",
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": report.machine_info(), "versions": _versions(methods),
        "methods": _methods_info([m.name for m in methods], skipped_methods),
        "skipped_experiments": skipped_experiments,
    }
    harness = None
    try:
        _check_cifar(args, experiments)
        images = _image_set(args, max(cutoffs), cache, workdir)
        options = _options(args, experiments, images, cache)
        results["parameters"] = {
            "input": images.description, "cutoffs": cutoffs, "methods": [m.name for m in methods],
            "experiments": [e.name for e in experiments], "repeat": args.repeat, "budget_seconds": budget,
            "settle_seconds": settle, "warmup_below_seconds": WARMUP_LIMIT, "workers": args.workers,
            "quick": args.quick, "targets": args.targets or "targets.toml", "cache": cache,
            "tmp": report.filesystem_of(workdir), "argv": sys.argv[1:],
        }
        harness = Harness(images, methods, experiments, cutoffs, repeat=args.repeat, budget=budget,
                          workers=args.workers, workdir=workdir, targets=targets, settle_budget=settle,
                          quick=args.quick, options=options)
        progress = _Progress(harness.steps(), args.quiet)
        harness.progress, harness.note = progress.step, progress.note
        try:
            harness.run()
        finally:
            progress.close()
        results["status"] = "complete"
    except BaseException as exc:
        results["status"] = f"failed: {exc}" if str(exc) else f"failed: {type(exc).__name__}"
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        _finish(results, harness, targets, skipped_methods, skipped_experiments, started, args.out)
    text = report.format_table(results, experiments)
    print(escape_lines(text), flush=True)
    with open(os.path.join(args.out, "table.txt"), "w") as f:
        f.write(text + "\n")
    written = ["results.json", "results.csv", "table.txt"]
    if not args.no_plots:
        written += _plots(results, args.out, experiments)
    paths = ", ".join(os.path.join(args.out, n) for n in written)
    print(escape_lines(f"\n{results['seconds']:.0f} s; wrote {paths}"))
    return 0


def _finish(results: Dict[str, Any], harness: Optional[Harness], targets: Sequence[Any],
            skipped_methods: Mapping[str, str], skipped_experiments: Mapping[str, str], started: float,
            out: str) -> None:
    """Judge the targets on what was measured and write results.json and results.csv (also after a failure)."""
    rows = results["rows"] = harness.rows if harness else []
    results["comparisons"] = harness.comparisons if harness else []
    results["kernels"] = harness.kernels if harness else None
    results["experiment_seconds"] = harness.wall if harness else {}
    results.setdefault("parameters", {}).update(harness.parameters if harness else {})
    ran = {(row["experiment"], row["method"]) for row in rows}
    results["targets"] = evaluate_targets(targets, rows, results["comparisons"], METHODS, ran,
                                          {**_sides_not_timed(rows), **skipped_methods, **skipped_experiments})
    results["seconds"] = time.perf_counter() - started
    results["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report.write_json(os.path.join(out, "results.json"), results)
    report.write_csv(os.path.join(out, "results.csv"), rows)


def _sides_not_timed(rows: Sequence[Mapping[str, Any]]) -> Dict[str, str]:
    """Why each side an experiment skipped (a package missing) or that failed (a peer's crash) has no time."""
    found = {}
    for row in rows:
        if row.get("skipped"):
            found[row["method"]] = row["skipped"]
        elif row.get("failed"):
            found[row["method"]] = f"failed: {row['failed']}"
    return found


def _check_cifar(args: argparse.Namespace, experiments: Sequence[Experiment]) -> None:
    if args.cifar and any(e.name == "convert" for e in experiments) and not classic.has_python_batches(args.cifar):
        raise inputs.BenchInputError(
            f"{args.cifar}: no python-version training batches (data_batch_1 ...): the conversion experiment "
            "times the classic recipe, which reads cifar-10-python.tar.gz or cifar-10-batches-py; "
            "choose --experiments without convert for this dataset")


def _options(args: argparse.Namespace, experiments: Sequence[Experiment], images: inputs.ImageSet,
             cache: str) -> Dict[str, Any]:
    """What particular experiments need: the CIFAR-10 archive of ``convert`` and its training images, the photos
    of ``memory``, the sizes of ``scale``."""
    options: Dict[str, Any] = {"cache": cache, "memory_photos": args.memory_photos,
                               "scale_sizes": getattr(args, "scale_sizes", None)}
    if any(e.name == "convert" for e in experiments):
        options["cifar"] = args.cifar
        if args.cifar is None:
            sample_count = QUICK_CIFAR_COUNT if args.quick else CIFAR_COUNT
            options["cifar"] = inputs.cifar_archive(cache, sample_count)
            options["cifar_train"] = inputs.sample_train(sample_count, None if args.source else images)
    return options


def _plots(results: Mapping[str, Any], out: str, experiments: Sequence[Experiment]) -> List[str]:
    """The harness's plots, then those of each experiment that has its own (``Experiment.plot``)."""
    if importlib.util.find_spec("matplotlib") is None:
        print('no plots: matplotlib is not installed; to get them: pip install "imgconv[plot]"')
        return []
    from . import plots

    written = plots.plot_results(results, out)
    for exp in experiments:
        if exp.plot is not None:
            written += exp.plot(results, out)
    return written


def _image_set(args: argparse.Namespace, count: int, cache: str, workdir: str) -> inputs.ImageSet:
    if args.cifar:
        return inputs.loaded_set(args.cifar, count, workdir, args.workers, "CIFAR-10", split="train")
    if args.source:
        return inputs.loaded_set(args.source, count, workdir, args.workers, "the source")
    return inputs.sample_set(count, cache)
