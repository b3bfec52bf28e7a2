"""Store benchmark: imgconv's LMDB, HDF5 and PNG stores against the classic methods.

Run it with ``python -m imgconv.bench.stores --count 100000`` (``--help`` for
options). Classic and imgconv methods run in the same process on the same
images; every figure is the median of ``--repeat`` runs after a warm-up, and
every store is read back and checked before its figures are reported. The
studies behind the layout choices (LMDB records per value, HDF5 images per
chunk, PNG compression level) are here too. The timing harness reuses
:func:`run` and the ``bench_*`` / ``*_study`` functions, which return rows.
"""
import argparse
import json
import os
import pickle
import shutil
import sys
import tempfile

import h5py
import lmdb
import numpy as np

from .. import stores
from ..stores import png_folder
from . import classic
from .timing import median_seconds

CIFAR_SHAPE = (32, 32, 3)


def smooth_images(count, shape=CIFAR_SHAPE, seed=0):
    """``count`` photo-like uint8 images: gradients, a disc, a bar and mild noise.

    Uniform noise would be unrealistic for PNG (incompressible); these compress
    roughly as small natural images do.
    """
    rng = np.random.default_rng(seed)
    h, w, c = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy /= max(h - 1, 1)
    xx /= max(w - 1, 1)
    out = np.empty((count, h, w, c), np.uint8)
    for start in range(0, count, 4096):
        n = min(4096, count - start)
        base = rng.uniform(30, 200, (n, 1, 1, c)).astype(np.float32)
        gx = rng.uniform(-60, 60, (n, 1, 1, c)).astype(np.float32)
        gy = rng.uniform(-60, 60, (n, 1, 1, c)).astype(np.float32)
        img = base + gx * xx[None, :, :, None] + gy * yy[None, :, :, None]
        cy, cx = rng.uniform(0, 1, (2, n, 1, 1))
        radius = rng.uniform(0.1, 0.4, (n, 1, 1))
        disc = ((yy[None] - cy) ** 2 + (xx[None] - cx) ** 2) < radius**2
        img = np.where(disc[..., None], rng.uniform(0, 255, (n, 1, 1, c)).astype(np.float32), img)
        bar = np.abs(yy[None] - rng.uniform(0, 1, (n, 1, 1))) < 0.06
        img = np.where(bar[..., None], img * 0.5, img)
        img += rng.normal(0, 3, img.shape).astype(np.float32)
        out[start : start + n] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def _row(bench, method, seconds, baseline=None, target=None, note="", **extra):
    row = {"bench": bench, "method": method, "seconds": seconds, "baseline": baseline, "target": target, "note": note}
    row.update(extra)
    row["speedup"] = baseline / seconds if baseline and seconds else None
    return row


def _size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _disk(path):
    """Bytes allocated on disk (blocks), which is what a filesystem full of small files costs."""
    if os.path.isfile(path):
        return os.stat(path).st_blocks * 512
    return sum(os.stat(os.path.join(d, f)).st_blocks * 512 for d, _, files in os.walk(path) for f in files)


class _Fresh:
    """A path in ``workdir`` removed before each timed write (setup for median_seconds)."""

    def __init__(self, workdir, name, directory=False):
        self.path = os.path.join(workdir, name)
        self.directory = directory

    def __call__(self):
        stores.base.remove_path(self.path)
        if self.directory:
            os.mkdir(self.path)


def _write_store(path, images, labels, batch, fmt, **options):
    with stores.create(path, fmt, overwrite=True, **options) as writer:
        for start in range(0, len(images), batch):
            writer.append(images[start : start + batch], labels[start : start + batch])


def _check(got, images, labels, what):
    if not (np.array_equal(got[0], images) and np.array_equal(got[1], labels)):
        raise AssertionError(f"{what} returned wrong data")


def _random_indices(count, n, seed=1):
    return np.random.default_rng(seed).integers(0, count, n).tolist()


def _random_reads(store, images, labels, indices, repeat, what):
    """Median ``store[i]`` time over ``indices``, and of a checked 256-image random ``read_batch``."""
    ours_one = _per_read(store.__getitem__, indices, repeat)
    batch_idx = np.random.default_rng(2).integers(0, len(images), 256)
    ours_batch, _ = median_seconds(lambda: store.read_batch(batch_idx), repeat)
    _check(store.read_batch(batch_idx), images[batch_idx], labels[batch_idx], f"imgconv {what} read_batch")
    return ours_one, ours_batch


def _per_read(run, indices, repeat):
    seconds, _ = median_seconds(lambda: [run(i) for i in indices], repeat)
    return seconds / len(indices)


# --------------------------------------------------------------------------- LMDB


def bench_lmdb(images, labels, workdir, repeat, batch=1000, singles=2000):
    """LMDB: classic pickles (one key per image, one transaction) against imgconv's store."""
    n = len(images)
    raw = images.nbytes
    classic_fresh = _Fresh(workdir, "classic.lmdb")
    ours_fresh = _Fresh(workdir, "ours.lmdb")
    classic_w, _ = median_seconds(lambda: classic.store_lmdb_pickles(classic_fresh.path, images, labels), repeat,
                                  setup=classic_fresh)
    ours_w, _ = median_seconds(lambda: _write_store(ours_fresh.path, images, labels, batch, "lmdb"), repeat,
                               setup=ours_fresh)
    classic_r, _ = median_seconds(lambda: classic.read_lmdb_pickles(classic_fresh.path, n), repeat)
    _check(classic.read_lmdb_pickles(classic_fresh.path, n), images, labels, "classic LMDB read")
    store = stores.open(ours_fresh.path)
    ours_r, _ = median_seconds(store.read_all, repeat)
    _check(store.read_all(), images, labels, "imgconv LMDB read")
    out = np.empty_like(images)
    ours_r_out, _ = median_seconds(lambda: store.read_all(out=out), repeat)
    _check(store.read_all(out=out), images, labels, "imgconv LMDB read into out")
    unchecked = stores.open(ours_fresh.path, verify=False)
    ours_r_fast, _ = median_seconds(lambda: unchecked.read_all(out=out), repeat)
    unchecked.close()
    indices = _random_indices(n, singles)
    env = lmdb.open(classic_fresh.path, readonly=True, lock=False)
    with env.begin() as txn:
        classic_one = _per_read(lambda i: pickle.loads(txn.get(f"{i:08}".encode())).get_image(), indices, repeat)
    env.close()
    ours_one, ours_batch = _random_reads(store, images, labels, indices, repeat, "LMDB")
    classic_disk = _size(os.path.join(classic_fresh.path, "data.mdb"))
    ours_disk = _size(os.path.join(ours_fresh.path, "data.mdb"))
    k = store.metadata["records_per_value"]
    store.close()
    return [
        _row("lmdb", "classic: pickle per key, one txn (write)", classic_w),
        _row("lmdb", f"imgconv LmdbWriter, batches of {batch}, K={k} (write)", ours_w, classic_w, ">= 6x"),
        _row("lmdb", "classic: get + unpickle per key (full read)", classic_r),
        _row("lmdb", "imgconv read_all, CRC checked (full read)", ours_r, classic_r, ">= 20x"),
        _row("lmdb", "imgconv read_all(out=reused array), CRC checked", ours_r_out, classic_r, ">= 20x"),
        _row("lmdb", "imgconv read_all(out=reused array), verify=False", ours_r_fast, classic_r),
        _row("lmdb", "classic: get + unpickle (random single read)", classic_one),
        _row("lmdb", "imgconv store[i] (random single read)", ours_one, classic_one, "~4 us"),
        _row("lmdb", "imgconv read_batch(256 random)", ours_batch),
        _row("lmdb", "classic data.mdb / raw pixels (disk)", None, disk_ratio=classic_disk / raw, bytes=classic_disk),
        _row("lmdb", "imgconv data.mdb / raw pixels (disk)", None, target="<= 1.05x",
             disk_ratio=ours_disk / raw, bytes=ours_disk),
    ]


def lmdb_value_study(images, labels, workdir, repeat, ks=(1, 8, 16, 32, 64, 128, 256), singles=2000):
    """Records per LMDB value K: disk, full read and random single read for each K."""
    rows = []
    indices = _random_indices(len(images), singles)
    for k in ks:
        path = os.path.join(workdir, f"k{k}.lmdb")
        _write_store(path, images, labels, 1000, "lmdb", records_per_value=k)
        store = stores.open(path)
        full, _ = median_seconds(store.read_all, repeat)
        one = _per_read(store.__getitem__, indices, repeat)
        disk = _size(os.path.join(path, "data.mdb"))
        store.close()
        rows.append(_row("lmdb K study", f"K={k} records per value", full, note="seconds = full read",
                         single_read=one, disk_ratio=disk / images.nbytes))
        stores.base.remove_path(path)
    return rows


# --------------------------------------------------------------------------- HDF5


def bench_hdf5(images, labels, workdir, repeat, batch=1000, singles=2000, **options):
    """HDF5: classic one-shot contiguous dataset against imgconv's chunked store written in batches."""
    n = len(images)
    classic_path = os.path.join(workdir, "classic.h5")
    ours_path = os.path.join(workdir, "ours.h5")
    classic_w, _ = median_seconds(lambda: classic.store_hdf5_contiguous(classic_path, images, labels), repeat)
    ours_w, _ = median_seconds(lambda: _write_store(ours_path, images, labels, batch, "hdf5", **options), repeat)
    classic_r, _ = median_seconds(lambda: classic.read_hdf5_contiguous(classic_path), repeat)
    store = stores.open(ours_path)
    ours_r, _ = median_seconds(store.read_all, repeat)
    _check(store.read_all(), images, labels, "imgconv HDF5 read")
    indices = _random_indices(n, singles)
    with h5py.File(classic_path, "r") as f:
        contiguous = f["images"]
        classic_one = _per_read(lambda i: contiguous[i], indices, repeat)
    ours_one, ours_batch = _random_reads(store, images, labels, indices, repeat, "HDF5")
    k = store.metadata["chunk_images"]
    store.close()
    return [
        _row("hdf5", "classic: create_dataset(data=all) (write)", classic_w),
        _row("hdf5", f"imgconv Hdf5Writer, batches of {batch}, {k}/chunk (write)", ours_w, classic_w, ">= 0.5x"),
        _row("hdf5", "classic: read both datasets whole (full read)", classic_r),
        _row("hdf5", "imgconv read_all (full read)", ours_r, classic_r, ">= 1x"),
        _row("hdf5", "contiguous dataset ds[i] (random single read)", classic_one),
        _row("hdf5", "imgconv store[i] (random single read)", ours_one, classic_one, ">= 0.5x"),
        _row("hdf5", "imgconv read_batch(256 random)", ours_batch),
        _row("hdf5", "classic file / raw pixels (disk)", None, disk_ratio=_size(classic_path) / images.nbytes),
        _row("hdf5", "imgconv file / raw pixels (disk)", None, disk_ratio=_size(ours_path) / images.nbytes),
    ]


def hdf5_chunk_study(images, labels, workdir, repeat, chunks=(1, 8, 16, 32, 64, 256, 1024), singles=2000):
    """Images per HDF5 chunk: batched write, full read, random single read (imgconv's
    direct read and plain h5py ``ds[i]``) for each."""
    rows = []
    indices = _random_indices(len(images), singles)
    for k in chunks:
        path = os.path.join(workdir, f"c{k}.h5")
        write, _ = median_seconds(lambda: _write_store(path, images, labels, 1000, "hdf5", chunk_images=k), repeat)
        store = stores.open(path)
        full, _ = median_seconds(store.read_all, repeat)
        one = _per_read(store.__getitem__, indices, repeat)
        store.close()
        with h5py.File(path, "r") as f:
            ds = f["images"]
            plain = _per_read(lambda i: ds[i], indices, repeat)
        rows.append(_row("hdf5 chunk study", f"{k} images per chunk", full, note="seconds = full read",
                         write=write, single_read=one, h5py_single_read=plain))
        os.unlink(path)
    return rows


# --------------------------------------------------------------------------- PNG


def bench_png(images, labels, workdir, repeat, batch=1000):
    """PNG folders: ``Image.save`` per file in one directory against imgconv's sharded folder."""
    n = len(images)
    classic_fresh = _Fresh(workdir, "classic_png", directory=True)
    ours_path = os.path.join(workdir, "ours_png")
    classic_w, _ = median_seconds(lambda: classic.store_png_files(classic_fresh.path, images, labels), repeat,
                                  setup=classic_fresh)
    ours_w, _ = median_seconds(lambda: _write_store(ours_path, images, labels, batch, "png"), repeat)
    classic_r, _ = median_seconds(lambda: classic.read_png_files(classic_fresh.path, n), repeat)
    store = stores.open(ours_path)
    ours_r, _ = median_seconds(store.read_all, repeat)
    _check(store.read_all(), images, labels, "imgconv PNG read")
    old = stores.open(classic_fresh.path)
    _check(old.read_all(), images, labels, "imgconv reading the classic folder")
    level = store.metadata["compress_level"]
    return [
        _row("png", "classic: Image.save per file, level 6 (write)", classic_w),
        _row("png", f"imgconv PngFolderWriter, level {level} (write)", ours_w, classic_w),
        _row("png", "classic: Image.open per file (full read)", classic_r),
        _row("png", "imgconv read_all (full read)", ours_r, classic_r),
        _row("png", "classic folder / raw pixels (disk, allocated)", None,
             disk_ratio=_disk(classic_fresh.path) / images.nbytes, bytes=_size(classic_fresh.path)),
        _row("png", "imgconv folder / raw pixels (disk, allocated)", None,
             disk_ratio=_disk(ours_path) / images.nbytes, bytes=_size(ours_path)),
    ]


def png_level_study(images, repeat, levels=(0, 1, 6, 9)):
    """PNG compression level: encode time per image and mean file size, and decode time."""
    import io

    from PIL import Image

    rows = []
    for level in levels:
        encode, _ = median_seconds(lambda: [png_folder.encode_png(im, level) for im in images], repeat)
        blobs = [png_folder.encode_png(im, level) for im in images]
        decode, _ = median_seconds(lambda: [np.asarray(Image.open(io.BytesIO(b))) for b in blobs], repeat)
        sizes = np.array([len(b) for b in blobs])
        rows.append(_row("png level study", f"compress_level={level}", encode / len(images),
                         note="seconds = encode per image", decode=decode / len(images),
                         mean_bytes=float(sizes.mean()), size_ratio=float(sizes.sum() / images.nbytes)))
    return rows


# --------------------------------------------------------------------------- driver


def run(count=100_000, repeat=3, png_count=10_000, studies=True, workdir=None, seed=0):
    """Run every store benchmark (and the layout studies) on ``count`` smooth CIFAR-size images."""
    images = smooth_images(count, seed=seed)
    labels = np.arange(count, dtype=np.int64) % 10
    workdir = tempfile.mkdtemp(prefix="imgconv-bench-", dir=workdir)
    try:
        rows = []
        rows += bench_lmdb(images, labels, workdir, repeat)
        rows += bench_hdf5(images, labels, workdir, repeat)
        m = min(png_count, count)
        rows += bench_png(images[:m], labels[:m], workdir, max(1, min(repeat, 2)))
        if studies:
            rows += png_level_study(images[: min(m, 5000)], repeat)
            rows += lmdb_value_study(images, labels, workdir, repeat)
            rows += hdf5_chunk_study(images, labels, workdir, repeat)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


def format_table(rows, count):
    """The result rows as a plain-text table."""
    lines = [f"imgconv stores, {count:,} smooth 32x32x3 images (PNG rows on a subset, see each method)",
             f"{'bench':<17} {'method':<52} {'median s':>10} {'ratio':>8}  extra"]
    for row in rows:
        seconds = f"{row['seconds']:.6f}" if row["seconds"] is not None else ""
        ratio = f"{row['speedup']:.2f}x" if row.get("speedup") else ""
        extra = []
        for key in ("disk_ratio", "size_ratio"):
            if key in row:
                extra.append(f"{key}={row[key]:.3f}x")
        for key in ("single_read", "h5py_single_read", "decode"):
            if key in row:
                extra.append(f"{key}={row[key] * 1e6:.1f}us")
        if "write" in row:
            extra.append(f"write={row['write']:.3f}s")
        if "mean_bytes" in row:
            extra.append(f"mean={row['mean_bytes']:.0f}B")
        if row.get("target"):
            extra.append(f"target {row['target']}")
        lines.append(f"{row['bench']:<17} {row['method']:<52} {seconds:>10} {ratio:>8}  {' '.join(extra)}")
    lines.append("ratio = classic time / imgconv time (above 1: imgconv is faster)")
    return "\n".join(lines)


def main(argv=None):
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m imgconv.bench.stores",
        description="Time imgconv's stores against the classic PNG, LMDB and HDF5 methods.",
    )
    parser.add_argument("--count", type=int, default=100_000, help="images for LMDB and HDF5 (default 100,000)")
    parser.add_argument("--png-count", type=int, default=10_000, help="images for the PNG rows (default 10,000)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per figure; the median is reported")
    parser.add_argument("--no-studies", action="store_true", help="skip the K, chunk and PNG level studies")
    parser.add_argument("--workdir", help="directory for the stores (default: a temporary one)")
    parser.add_argument("--json", metavar="FILE", help="also write the result rows as JSON")
    args = parser.parse_args(argv)
    if args.count < 1 or args.repeat < 1 or args.png_count < 1:
        parser.error("--count, --png-count and --repeat must be at least 1")
    rows = run(args.count, args.repeat, args.png_count, not args.no_studies, args.workdir)
    print(format_table(rows, args.count))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"count": args.count, "png_count": args.png_count, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
