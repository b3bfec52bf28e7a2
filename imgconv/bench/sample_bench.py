"""Measure the built-in sample: how photograph-like it compresses, how fast it is made and read.

``python -m imgconv.bench.sample_bench`` reports, in one run:

- the mean PNG size of sample images at Pillow's default compression (target
  1.5-2.5 KB, like real CIFAR-10's ~2 KB);
- the time to generate 60,000 images in memory, and to write all four forms;
- the read throughput of each CIFAR reader (python and binary, directory and
  ``.tar.gz``) over the written files, in images per second.
"""
from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from typing import Dict, Optional, Sequence

import numpy as np
from PIL import Image

from ..sample import generate_sample, write_sample
from ..sources import open_source
from .timing import median_seconds


def mean_png_bytes(images: np.ndarray) -> float:
    """Mean size in bytes of ``images`` (N, H, W, C) saved one by one as PNG with Pillow's defaults."""
    sizes = []
    for image in images:
        out = io.BytesIO()
        Image.fromarray(image).save(out, "PNG")
        sizes.append(len(out.getvalue()))
    return float(np.mean(sizes))


def read_rate(path: str, batch_size: int = 1000, split: str = "all") -> float:
    """Images per second reading the whole source at ``path`` in batches (one timed pass after a warm-up)."""
    source = open_source(path, split=split)
    length = source.length  # counting is part of opening, not of reading
    if length is None:
        raise ValueError(f"{path}: the source cannot say how many images it holds")

    def read() -> None:
        for _ in source.batches(batch_size):
            pass

    seconds, _ = median_seconds(read, repeat=1, warmup=1)
    return length / seconds


def run(count: int = 60000, png_images: int = 2000, repeat: int = 3,
        directory: Optional[str] = None) -> Dict[str, float]:
    """Measure and return a dict of the figures (see the module docstring)."""
    figures = {}
    figures["png_mean_bytes"] = mean_png_bytes(generate_sample(png_images)[0])
    figures["generate_seconds"], _ = median_seconds(lambda: generate_sample(count), repeat=repeat, warmup=0)
    with tempfile.TemporaryDirectory(dir=directory) as root:
        start = time.perf_counter()
        files = write_sample(root, count)
        figures["write_all_seconds"] = time.perf_counter() - start
        for form in ("python_dir", "binary_dir", "python_archive", "binary_archive"):
            figures[f"read_{form}_images_per_second"] = read_rate(getattr(files, form))
    return figures


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry: print the figures."""
    parser = argparse.ArgumentParser(prog="python -m imgconv.bench.sample_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=60000, help="images to generate and write (default 60000)")
    parser.add_argument("--png-images", type=int, default=2000, help="images whose PNG size is averaged (default 2000)")
    parser.add_argument("--repeat", type=int, default=3, help="timed generations, median reported (default 3)")
    parser.add_argument("--dir", default=None, help="where to write the temporary files (default: the system temp dir)")
    args = parser.parse_args(argv)
    figures = run(args.count, args.png_images, args.repeat, args.dir)
    print(f"sample, {args.count} images, {os.cpu_count()} CPUs")
    rows = [
        (f"mean PNG size ({args.png_images} images, Pillow default)", f"{figures['png_mean_bytes'] / 1000:.2f} KB"),
        (f"generate in memory (median of {args.repeat})", f"{figures['generate_seconds']:.2f} s"),
        ("write python + binary batches + 2 archives", f"{figures['write_all_seconds']:.2f} s"),
    ]
    for form in ("python_dir", "binary_dir", "python_archive", "binary_archive"):
        rows.append((f"read {form}", f"{figures[f'read_{form}_images_per_second']:,.0f} images/s"))
    for name, value in rows:
        print(f"  {name:<46} {value:>18}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
