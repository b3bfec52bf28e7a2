"""Kernel benchmark: CHW->HWC, record packing and unpacking, CRC32C, side by side.

Run it with ``python -m imgconv.bench.kernels`` (``--help`` for options). Every
figure is the median of ``--repeat`` runs after a warm-up run, on the same
images in one process, and every result is checked against the reference
before it is reported. The timing harness reuses :func:`run`.
"""
import argparse
import json
import sys
import zlib

import numpy as np

from .. import kernels, record
from . import classic
from .timing import median_seconds

CIFAR_SHAPE = (32, 32, 3)
STREAM_BATCH = 1024

# (what is compared, imgconv's method, the baseline's method, target, how the
# ratio reads). A ratio is baseline time / imgconv time, except for the
# "within Nx of memcpy" targets, where it is imgconv time / memcpy time.
COMPARISONS = [
    ("chw_to_hwc, into a preallocated array", "imgconv chw_to_hwc_into", "numpy transpose copied into out", 8.0, "faster"),
    ("chw_to_hwc, allocating the result", "imgconv chw_to_hwc", "numpy transpose + ascontiguousarray", 8.0, "faster"),
    ("chw_to_hwc against a plain copy", "imgconv chw_to_hwc_into", "memcpy (np.copyto)", 3.0, "within"),
    ("pack, streamed in batches", f"imgconv pack_records, batches of {STREAM_BATCH}", "pickle.dumps(CifarImage) per image", 10.0, "faster"),
    ("pack, one call for all", "imgconv pack_records, one call", "pickle.dumps(CifarImage) per image", 10.0, "faster"),
    ("unpack with checksums", "imgconv unpack_records", "pickle.loads + get_image per image", 10.0, "faster"),
    ("unpack without checksums", "imgconv unpack_records(verify=False)", "memcpy of the pixel bytes", 3.0, "within"),
    ("checksum", "imgconv crc32c", "zlib.crc32", None, "faster"),
]


def _random_images(count, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, *CIFAR_SHAPE), dtype=np.uint8)


def _require(ok, what):
    if not ok:
        raise AssertionError(f"{what} returned wrong pixels or labels")


def bench_chw_to_hwc(images, repeat):
    """CHW rows -> HWC images: imgconv against NumPy's transpose-copy and a memcpy."""
    n = images.shape[0]
    rows = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(n, -1)
    out = np.empty_like(images)
    times = {
        "numpy transpose + ascontiguousarray": lambda: classic.numpy_chw_to_hwc(rows),
        "numpy transpose copied into out": lambda: np.copyto(out, rows.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)),
        "memcpy (np.copyto)": lambda: np.copyto(out.reshape(n, -1), rows),
        "imgconv chw_to_hwc": lambda: kernels.chw_to_hwc(rows),
        "imgconv chw_to_hwc_into": lambda: kernels.chw_to_hwc_into(rows, out),
    }
    result = {name: median_seconds(run, repeat)[0] for name, run in times.items()}
    _require(np.array_equal(out, images), "chw_to_hwc_into")
    _require(np.array_equal(kernels.chw_to_hwc(rows), images), "chw_to_hwc")
    return result


def _pack_streamed(images, labels):
    for start in range(0, images.shape[0], STREAM_BATCH):
        record.pack_records(images[start : start + STREAM_BATCH], labels[start : start + STREAM_BATCH])


def bench_pack(images, labels, repeat):
    """Packing records (checksums included) against pickling the classic per-image object."""
    result = {
        "pickle.dumps(CifarImage) per image": median_seconds(lambda: classic.pickle_images(images, labels), repeat)[0],
        f"imgconv pack_records, batches of {STREAM_BATCH}": median_seconds(lambda: _pack_streamed(images, labels), repeat)[0],
        "imgconv pack_records, one call": median_seconds(lambda: record.pack_records(images, labels), repeat)[0],
    }
    back, back_labels = record.unpack_records(record.pack_records(images, labels))
    _require(np.array_equal(back, images) and np.array_equal(back_labels, labels), "pack_records")
    return result


def bench_unpack(images, labels, repeat):
    """Unpacking into preallocated arrays against pickle.loads plus rebuilding the array."""
    n = images.shape[0]
    blobs = classic.pickle_images(images, labels)
    packed = record.pack_records(images, labels)
    out = np.empty_like(images)
    out_labels = np.empty(n, np.int64)
    payload = packed.buffer.reshape(n, -1)[:, record.HEADER_SIZE:].reshape(-1).copy()
    result = {
        "pickle.loads + get_image per image": median_seconds(lambda: classic.unpickle_images(blobs, out, out_labels), repeat)[0],
        "memcpy of the pixel bytes": median_seconds(lambda: np.copyto(out.reshape(-1), payload), repeat)[0],
    }
    for verify, name in ((True, "imgconv unpack_records"), (False, "imgconv unpack_records(verify=False)")):
        out[...] = 0
        run = lambda: record.unpack_records(packed, out=out, labels_out=out_labels, verify=verify)  # noqa: E731
        result[name] = median_seconds(run, repeat)[0]
        _require(np.array_equal(out, images) and np.array_equal(out_labels, labels), name)
    return result


def bench_crc(images, repeat):
    """Checksum throughput over the whole pixel array: CRC32C against zlib's CRC32."""
    data = images.reshape(-1)
    return {
        "zlib.crc32": median_seconds(lambda: zlib.crc32(data), repeat)[0],
        "imgconv crc32c": median_seconds(lambda: kernels.crc32c(data), repeat)[0],
    }


def compare(times):
    """The COMPARISONS evaluated on ``times``: a list of dicts with ratio and whether the target is met."""
    rows = []
    for what, ours, baseline, target, kind in COMPARISONS:
        if kind == "within":
            ratio = times[ours] / times[baseline]
            met = ratio <= target
        else:
            ratio = times[baseline] / times[ours]
            met = None if target is None else ratio >= target
        rows.append({"what": what, "imgconv": ours, "baseline": baseline, "ratio": ratio,
                     "kind": kind, "target": target, "met": met})
    return rows


def run(count=100_000, repeat=5, seed=0):
    """Time every kernel on ``count`` random CIFAR-size images.

    Returns ``(times, comparisons)``: median seconds per method, and
    :func:`compare` of them. Raises AssertionError if any method returns
    wrong data.
    """
    images = _random_images(count, seed)
    labels = np.arange(count, dtype=np.int64) % 10
    times = {}
    times.update(bench_chw_to_hwc(images, repeat))
    times.update(bench_pack(images, labels, repeat))
    times.update(bench_unpack(images, labels, repeat))
    times.update(bench_crc(images, repeat))
    return times, compare(times)


def _describe(row):
    if row["kind"] == "within":
        return f"{row['ratio']:.2f}x the time of", f"within {row['target']:g}x"
    target = f">= {row['target']:g}x" if row["target"] else ""
    return f"{row['ratio']:.2f}x faster than", target


def format_report(times, comparisons, count):
    """Both tables, timings and comparisons, as text."""
    impl = kernels.implementation()
    lines = [
        f"imgconv kernels on {count:,} images of 32x32x3 (backend {kernels.BACKEND}, "
        f"crc32c {kernels.CRC32C_IMPL}, interleave {getattr(impl, 'INTERLEAVE_IMPL', '?')}); median seconds",
    ]
    lines += [f"  {seconds:9.4f}  {name}" for name, seconds in times.items()]
    lines.append("")
    lines.append(f"  {'comparison':<38} {'result':<56} {'target':<10} met")
    for row in comparisons:
        ratio, target = _describe(row)
        met = {True: "yes", False: "NO", None: ""}[row["met"]]
        lines.append(f"  {row['what']:<38} {ratio + ' ' + row['baseline']:<56} {target:<10} {met}")
    return "\n".join(lines)


def main(argv=None):
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m imgconv.bench.kernels",
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
