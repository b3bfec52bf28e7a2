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


def _random_images(count, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, *CIFAR_SHAPE), dtype=np.uint8)


def _case(name, method, seconds, baseline=None, target=None, note=""):
    return {
        "kernel": name,
        "method": method,
        "seconds": seconds,
        "baseline": baseline,
        "target": target,
        "note": note,
    }


def bench_chw_to_hwc(images, repeat):
    """CHW rows -> HWC images: imgconv against NumPy's transpose-copy and a memcpy."""
    n = images.shape[0]
    rows = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(n, -1)
    out = np.empty_like(images)
    flat = out.reshape(n, -1)
    numpy_s, _ = median_seconds(lambda: classic.numpy_chw_to_hwc(rows), repeat)
    numpy_into_s, _ = median_seconds(lambda: np.copyto(out, rows.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)), repeat)
    memcpy_s, _ = median_seconds(lambda: np.copyto(flat, rows), repeat)
    ours_s, _ = median_seconds(lambda: kernels.chw_to_hwc(rows), repeat)
    into_s, _ = median_seconds(lambda: kernels.chw_to_hwc_into(rows, out), repeat)
    if not np.array_equal(out, images) or not np.array_equal(kernels.chw_to_hwc(rows), images):
        raise AssertionError("chw_to_hwc returned wrong pixels")
    return [
        _case("chw_to_hwc", "numpy transpose + ascontiguousarray", numpy_s),
        _case("chw_to_hwc", "numpy transpose copied into out", numpy_into_s),
        _case("chw_to_hwc", "memcpy (np.copyto, no reordering)", memcpy_s),
        _case("chw_to_hwc", "imgconv chw_to_hwc (allocates)", ours_s, numpy_s, ">= 8x numpy"),
        _case("chw_to_hwc", "imgconv chw_to_hwc_into", into_s, memcpy_s, "within 3x of memcpy",
              note="baseline memcpy: ratio = memcpy / ours"),
    ]


def bench_pack(images, labels, repeat):
    """Packing records (checksums included) against pickling the classic per-image object."""
    pickle_s, _ = median_seconds(lambda: classic.pickle_images(images, labels), repeat)
    ours_s, _ = median_seconds(lambda: record.pack_records(images, labels), repeat)
    packed = record.pack_records(images, labels)
    back, back_labels = record.unpack_records(packed)
    if not (np.array_equal(back, images) and np.array_equal(back_labels, labels)):
        raise AssertionError("pack_records round trip returned wrong data")
    return [
        _case("pack", "pickle.dumps(CifarImage) per image", pickle_s),
        _case("pack", "imgconv pack_records (CRC32C)", ours_s, pickle_s, ">= 10x pickle"),
    ]


def bench_unpack(images, labels, repeat):
    """Unpacking into preallocated arrays against pickle.loads plus rebuilding the array."""
    n = images.shape[0]
    blobs = classic.pickle_images(images, labels)
    packed = record.pack_records(images, labels)
    out = np.empty_like(images)
    out_labels = np.empty(n, np.int64)
    flat_out = out.reshape(-1)
    payload = packed.buffer.reshape(n, -1)[:, record.HEADER_SIZE:].reshape(-1).copy()
    pickle_s, _ = median_seconds(lambda: classic.unpickle_images(blobs, out, out_labels), repeat)
    memcpy_s, _ = median_seconds(lambda: np.copyto(flat_out, payload), repeat)
    ours_s, _ = median_seconds(lambda: record.unpack_records(packed, out=out, labels_out=out_labels), repeat)
    if not (np.array_equal(out, images) and np.array_equal(out_labels, labels)):
        raise AssertionError("unpack_records returned wrong data")
    fast_s, _ = median_seconds(
        lambda: record.unpack_records(packed, out=out, labels_out=out_labels, verify=False), repeat
    )
    if not np.array_equal(out, images):
        raise AssertionError("unpack_records(verify=False) returned wrong data")
    return [
        _case("unpack", "pickle.loads + get_image per image", pickle_s),
        _case("unpack", "memcpy of the pixel bytes", memcpy_s),
        _case("unpack", "imgconv unpack_records (CRC32C checked)", ours_s, pickle_s, ">= 10x pickle"),
        _case("unpack", "imgconv unpack_records(verify=False)", fast_s, memcpy_s, "within 3x of memcpy",
              note="baseline memcpy: ratio = memcpy / ours"),
    ]


def bench_crc(images, repeat):
    """Checksum throughput over the whole pixel array: CRC32C against zlib's CRC32."""
    data = images.reshape(-1)
    zlib_s, _ = median_seconds(lambda: zlib.crc32(data), repeat)
    ours_s, _ = median_seconds(lambda: kernels.crc32c(data), repeat)
    return [
        _case("checksum", "zlib.crc32", zlib_s),
        _case("checksum", f"imgconv crc32c ({kernels.CRC32C_IMPL})", ours_s, zlib_s),
    ]


def run(count=100_000, repeat=5, seed=0):
    """Run every kernel benchmark on ``count`` random CIFAR-size images; returns result rows."""
    images = _random_images(count, seed)
    labels = np.arange(count, dtype=np.int64) % 10
    rows = []
    rows += bench_chw_to_hwc(images, repeat)
    rows += bench_pack(images, labels, repeat)
    rows += bench_unpack(images, labels, repeat)
    rows += bench_crc(images, repeat)
    for row in rows:
        row["speedup"] = row["baseline"] / row["seconds"] if row["baseline"] else None
    return rows


def format_table(rows, count):
    """The result rows as a plain-text table."""
    lines = [
        f"imgconv kernels, {count:,} images of 32x32x3 (backend {kernels.BACKEND}, "
        f"crc32c {kernels.CRC32C_IMPL}, interleave {kernels.implementation().INTERLEAVE_IMPL})",
        f"{'kernel':<11} {'method':<44} {'median s':>9} {'ratio':>7}  target",
    ]
    for row in rows:
        ratio = f"{row['speedup']:.2f}x" if row["speedup"] else ""
        lines.append(
            f"{row['kernel']:<11} {row['method']:<44} {row['seconds']:>9.4f} {ratio:>7}  {row['target'] or ''}"
        )
    lines.append("ratio = baseline time / imgconv time (above 1: imgconv is faster)")
    return "\n".join(lines)


def main(argv=None):
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m imgconv.bench.kernels",
        description="Time imgconv's kernels against NumPy, memcpy and pickle on random CIFAR-size images.",
    )
    parser.add_argument("--count", type=int, default=100_000, help="images per run (default 100,000)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per figure; the median is reported")
    parser.add_argument("--json", metavar="FILE", help="also write the result rows as JSON")
    args = parser.parse_args(argv)
    if args.count < 1 or args.repeat < 1:
        parser.error("--count and --repeat must be at least 1")
    rows = run(args.count, args.repeat)
    print(format_table(rows, args.count))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"count": args.count, "backend": kernels.BACKEND, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
