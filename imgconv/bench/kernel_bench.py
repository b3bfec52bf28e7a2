"""Kernel benchmark: CHW->HWC, record packing and unpacking, CRC32C, side by side.

Run it with ``python -m imgconv.bench.kernel_bench`` (``--help`` for options),
or as the ``kernels`` experiment of ``python -m imgconv bench``. The sides of
each kernel are timed in rounds, one after the other (warm-up run first);
every figure is the median of ``--repeat`` runs and every ratio the geometric
mean of the rounds' ratios, on the same images in one process, and imgconv's
results are checked against the reference after every run. The harness reuses
:func:`groups` and :data:`COMPARISONS`; the targets are in ``targets.toml``.
"""
from __future__ import annotations

import argparse
import json
import sys
import zlib
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .. import kernels, record
from . import classic
from .targets import MET, MISSED, NOT_MEASURED, Target, judge, load_targets
from .timing import Rounds, Side, geometric_mean

CIFAR_SHAPE = (32, 32, 3)
STREAM_BATCH = 1024

# (what is compared, imgconv's side, the baseline's side, how the ratio reads).
# The ratio is baseline time / imgconv time ("faster"), except for the
# "within Nx of a plain copy" comparisons, where it is imgconv time / copy
# time. Their targets are in targets.toml (experiment "kernels").
COMPARISONS = [
    ("chw_to_hwc, into a preallocated array", "chw_to_hwc_into", "numpy_transpose_into", "faster"),
    ("chw_to_hwc, allocating the result", "chw_to_hwc", "numpy_transpose", "faster"),
    ("chw_to_hwc against a plain copy", "chw_to_hwc_into", "memcpy", "within"),
    ("pack, streamed in batches", "pack_streamed", "pickle_dumps", "faster"),
    ("pack, one call for all", "pack_one_call", "pickle_dumps", "faster"),
    ("unpack with checksums", "unpack", "pickle_loads", "faster"),
    ("unpack without checksums", "unpack_unverified", "memcpy_pixels", "within"),
    ("checksum", "crc32c", "zlib_crc32", "faster"),
]

Sides = Dict[str, Tuple[str, Side]]  # name -> (title, what to time)


def _random_images(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, *CIFAR_SHAPE), dtype=np.uint8)


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise AssertionError(f"{what} returned wrong pixels or labels")


def chw_to_hwc_sides(images: np.ndarray) -> Sides:
    """CHW rows -> HWC images: imgconv against NumPy's transpose-copy and a memcpy."""
    n = images.shape[0]
    rows = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(n, -1)
    out = np.empty_like(images)

    def check_into(_: Any) -> None:
        _require(np.array_equal(out, images), "chw_to_hwc_into")

    return {
        "numpy_transpose": ("numpy transpose + ascontiguousarray", Side(lambda: classic.numpy_chw_to_hwc(rows))),
        "numpy_transpose_into": ("numpy transpose copied into out",
                                 Side(lambda: np.copyto(out, rows.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)))),
        "memcpy": ("memcpy (np.copyto)", Side(lambda: np.copyto(out.reshape(n, -1), rows))),
        "chw_to_hwc": ("imgconv chw_to_hwc", Side(lambda: kernels.chw_to_hwc(rows),
                                                  check=lambda got: _require(np.array_equal(got, images),
                                                                             "chw_to_hwc"))),
        "chw_to_hwc_into": ("imgconv chw_to_hwc_into", Side(lambda: kernels.chw_to_hwc_into(rows, out),
                                                            check=check_into)),
    }


def _pack_streamed(images: np.ndarray, labels: np.ndarray) -> None:
    for start in range(0, images.shape[0], STREAM_BATCH):
        record.pack_records(images[start : start + STREAM_BATCH], labels[start : start + STREAM_BATCH])


def pack_sides(images: np.ndarray, labels: np.ndarray) -> Sides:
    """Packing records (checksums included) against pickling the classic per-image object."""

    def check(packed: Any) -> None:
        back, back_labels = record.unpack_records(packed)
        _require(np.array_equal(back, images) and np.array_equal(back_labels, labels), "pack_records")

    return {
        "pickle_dumps": ("pickle.dumps(CifarImage) per image", Side(lambda: classic.pickle_images(images, labels))),
        "pack_streamed": (f"imgconv pack_records, batches of {STREAM_BATCH}",
                          Side(lambda: _pack_streamed(images, labels))),
        "pack_one_call": ("imgconv pack_records, one call", Side(lambda: record.pack_records(images, labels),
                                                                 check=check)),
    }


def unpack_sides(images: np.ndarray, labels: np.ndarray) -> Sides:
    """Unpacking into preallocated arrays against pickle.loads plus rebuilding the array."""
    n = images.shape[0]
    blobs = classic.pickle_images(images, labels)
    packed = record.pack_records(images, labels)
    out = np.empty_like(images)
    out_labels = np.empty(n, np.int64)
    payload = packed.buffer.reshape(n, -1)[:, record.HEADER_SIZE:].reshape(-1).copy()

    def clear() -> None:
        out[...] = 0

    def check(what: str) -> Callable[[Any], None]:
        return lambda _: _require(np.array_equal(out, images) and np.array_equal(out_labels, labels), what)

    return {
        "pickle_loads": ("pickle.loads + get_image per image",
                         Side(lambda: classic.unpickle_images(blobs, out, out_labels))),
        "memcpy_pixels": ("memcpy of the pixel bytes", Side(lambda: np.copyto(out.reshape(-1), payload))),
        "unpack": ("imgconv unpack_records", Side(
            lambda: record.unpack_records(packed, out=out, labels_out=out_labels, verify=True), setup=clear,
            check=check("imgconv unpack_records"))),
        "unpack_unverified": ("imgconv unpack_records(verify=False)", Side(
            lambda: record.unpack_records(packed, out=out, labels_out=out_labels, verify=False), setup=clear,
            check=check("imgconv unpack_records(verify=False)"))),
    }


def crc_sides(images: np.ndarray) -> Sides:
    """Checksum throughput over the whole pixel array: CRC32C against zlib's CRC32."""
    data = images.reshape(-1)
    return {
        "zlib_crc32": ("zlib.crc32", Side(lambda: zlib.crc32(data))),  # type: ignore[arg-type]  # a buffer
        "crc32c": ("imgconv crc32c", Side(lambda: kernels.crc32c(data))),
    }


def groups(images: np.ndarray, labels: np.ndarray) -> Iterator[Sides]:
    """The sides of each kernel, one group at a time (a group's buffers are freed before the next)."""
    yield chw_to_hwc_sides(images)
    yield pack_sides(images, labels)
    yield unpack_sides(images, labels)
    yield crc_sides(images)


def pairs_within(sides: Sides) -> List[Tuple[str, str]]:
    """The ``(baseline, imgconv)`` pairs of COMPARISONS whose sides are both in ``sides``."""
    return [(base, ours) for _, ours, base, _ in COMPARISONS if ours in sides and base in sides]


def _measure(sides: Sides, repeat: int) -> Rounds:
    rounds = Rounds({name: side for name, (_, side) in sides.items()})
    for name in sides:
        rounds.warm_up(name, 1)
    rounds.run(repeat)
    return rounds


def bench_chw_to_hwc(images: np.ndarray, repeat: int) -> Dict[str, float]:
    """Median seconds of each CHW-to-HWC side (AssertionError if imgconv's output is wrong)."""
    sides = chw_to_hwc_sides(images)
    rounds = _measure(sides, repeat)
    return {title: rounds.median(name) for name, (title, _) in sides.items()}


def compare(ratios: Mapping[Tuple[str, str], Sequence[float]], titles: Mapping[str, str], count: int,
            targets: Optional[Sequence[Target]] = None) -> List[Dict[str, Any]]:
    """The COMPARISONS evaluated: ``ratios[(baseline, imgconv)]`` are the paired rounds' ratios.

    Each dict has the ratio as it reads (see COMPARISONS), the threshold of
    the pair's target in targets.toml (``target``, None when it has none) and
    the images it is set for, its ``status`` (met, MISSED, undecided, or "not
    measured at this size" when ``count`` is not that number) and ``met``
    (True, False, or None when not judged).
    """
    targets = [t for t in (load_targets() if targets is None else targets) if t.experiment == "kernels"]
    rows = []
    for what, ours, baseline, kind in COMPARISONS:
        paired = ratios[(baseline, ours)]
        speedup = geometric_mean(paired)
        target = next((t for t in targets if (t.method, t.baseline) == (ours, baseline)), None)
        status = ""
        if target is not None:
            status = judge(target, paired).status if target.images == count else NOT_MEASURED
        rows.append({"what": what, "imgconv": titles[ours], "baseline": titles[baseline], "sides": [baseline, ours],
                     "ratio": 1 / speedup if kind == "within" else speedup, "kind": kind,
                     "target": None if target is None else target.threshold,
                     "target_images": None if target is None else target.images,
                     "status": status, "met": {MET: True, MISSED: False}.get(status)})
    return rows


def run(count: int = 100_000, repeat: int = 5, seed: int = 0) -> Tuple[Dict[str, float], List[Dict[str, Any]]]:
    """Time every kernel on ``count`` random CIFAR-size images, the sides of each kernel in rounds.

    Returns ``(times, comparisons)``: median seconds per side (by title), and
    :func:`compare` of the rounds. Raises AssertionError if any method returns
    wrong data.
    """
    images = _random_images(count, seed)
    labels = np.arange(count, dtype=np.int64) % 10
    times, titles, ratios = {}, {}, {}
    for sides in groups(images, labels):
        rounds = _measure(sides, repeat)
        for name, (title, _) in sides.items():
            times[title] = rounds.median(name)
            titles[name] = title
        for baseline, ours in pairs_within(sides):
            ratios[(baseline, ours)] = rounds.ratios(baseline, ours)
    return times, compare(ratios, titles, count)


def _describe(row: Mapping[str, Any]) -> Tuple[str, str]:
    if row["kind"] == "within":
        return f"{row['ratio']:.2f}x the time of", f"within {row['target']:g}x"
    target = f">= {row['target']:g}x" if row["target"] else ""
    return f"{row['ratio']:.2f}x faster than", target


def format_report(times: Mapping[str, float], comparisons: Sequence[Mapping[str, Any]], count: int) -> str:
    """Both tables, timings and comparisons, as text."""
    impl = kernels.implementation()
    lines = [
        f"imgconv kernels on {count:,} images of 32x32x3 (backend {kernels.BACKEND}, "
        f"crc32c {kernels.CRC32C_IMPL}, interleave {getattr(impl, 'INTERLEAVE_IMPL', '?')}); median seconds",
    ]
    lines += [f"  {seconds:9.4f}  {name}" for name, seconds in times.items()]
    lines.append("")
    lines.append(f"  {'comparison':<38} {'result':<56} {'target':<10} status")
    for row in comparisons:
        ratio, target = _describe(row)
        lines.append(f"  {row['what']:<38} {ratio + ' ' + row['baseline']:<56} {target:<10} {row['status']}")
    judged = {row["target_images"] for row in comparisons if row["target_images"] is not None}
    if any(row["status"] == NOT_MEASURED for row in comparisons):
        sizes = ", ".join(f"{n:,}" for n in sorted(judged))
        lines.append(f"  (the targets are set for {sizes} images: run with --count {sizes.replace(',', '')} "
                     "to judge them)")
    return "\n".join(line.rstrip() for line in lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m imgconv.bench.kernel_bench",
        description="Time imgconv's kernels against NumPy, memcpy and pickle on random CIFAR-size images.",
    )
    parser.add_argument("--count", type=int, default=100_000, help="images per run (default 100,000)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per figure; the median is reported")
    parser.add_argument("--json", metavar="FILE", help="also write the timings and comparisons as JSON")
    args = parser.parse_args(argv)
    if args.count < 1 or args.repeat < 1:
        parser.error("--count and --repeat must be at least 1")
    times, comparisons = run(args.count, args.repeat)
    print(format_report(times, comparisons, args.count))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"count": args.count, "backend": kernels.BACKEND, "crc32c": kernels.CRC32C_IMPL,
                       "seconds": times, "comparisons": comparisons}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
