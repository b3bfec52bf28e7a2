"""The opt-in ``scale`` experiment: sharded datasets written by a Dask cluster against the local pool.

``python -m imgconv bench --experiments scale`` measures at two sizes (a
tenth of the largest cutoff and the largest cutoff: 10,000 and 100,000 by
default; ``--scale-sizes 100000,1000000`` for the 1M targets), with the
harness's images repeated in a ``.npy`` and shards of ``SHARD_IMAGES`` images
(fewer when the largest size would make fewer than ten), side by side:

* **conversion**: the sharded conversion with the local pool
  (``workers=--workers``) against the same one on a ``LocalCluster`` of as
  many worker processes (``engine="dask"``), for LMDB, HDF5 and PNG shards;
* **reading**: a sharded LMDB (and HDF5) dataset against the same images in
  one store: ``read_batch`` of random batches of 256, and ``read_all``;
* **worker memory**: the peak resident memory of the Dask workers during the
  conversions at each size (sampled from ``/proc`` every 20 ms; the same
  workers at both sizes), and its growth from the smaller size to the larger;
* **the scaling model** (:func:`scaling_model`): from the task stream of
  two Dask conversions per format at the smaller size, one with shards of a
  tenth of it and one with shards of a hundredth, what a shard costs a worker
  whatever its size and what an image costs, the driver's time outside the
  tasks, and the bytes written per second.

The workers first convert a few hundred images to each format (untimed), so
that their memory is measured with the stores' libraries loaded.

The plug-in contract (:mod:`imgconv.bench`) registers it; it needs
``dask[distributed]`` (``pip install "imgconv[dask]"``).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Dict, List, Tuple

import numpy as np

import imgconv

from .harness import Harness, Row, Trial, experiment
from .internals import remove_path
from .memory import spot_check, status_kb, write_tiled_npy
from .methods import BenchCheckError

FORMATS = (("lmdb", ".lmdb"), ("hdf5", ".h5"), ("png", ""))
READ_FORMATS = ("lmdb", "hdf5")
SHARD_IMAGES = 10_000
MIN_SHARDS = 10  # at the largest size, so that the cluster's workers share the work
READ_BATCH = 256
WARM_UP_IMAGES = 512
READ_BATCHES, QUICK_READ_BATCHES = 64, 8
SIDES = tuple(f"{engine}-{fmt}" for fmt, _ in FORMATS for engine in ("local", "dask")) + tuple(
    f"{kind}-{fmt}-{how}" for fmt in READ_FORMATS for how in ("batches", "all") for kind in ("store", "dataset")
) + tuple(f"dask-worker-{fmt}" for fmt, _ in FORMATS) + tuple(f"model-{fmt}" for fmt, _ in FORMATS)


def _sizes(harness: Harness) -> List[int]:
    """The numbers of images measured: ``--scale-sizes``, else a tenth of the largest cutoff and the largest."""
    chosen = harness.options.get("scale_sizes")
    if chosen:
        return sorted(chosen)
    largest = max(harness.cutoffs)
    return sorted({max(1, largest // 10), largest})


def _steps(harness: Harness) -> int:
    return len(_sizes(harness)) * (len(FORMATS) + len(READ_FORMATS)) + len(FORMATS)


def scale_table(results: Any, title: str, rows: List[Row]) -> List[str]:
    """The experiment's block: conversions and reads (ratios, targets), worker memory, the model."""
    params = results.get("parameters", {}).get("scale", {})
    lines = [f"{title}: {params.get('workers', '?')} workers, shards of {params.get('shard_images', '?'):,} images"
             if isinstance(params.get("shard_images"), int) else title]
    pairs = [row for row in rows if row.get("baseline")]
    lines.append(f"  {'measured':<22} {'images':>9}  {'baseline':>10}  {'measured':>10}  {'slower':>7}  "
                 f"{'target':<10} status")
    for row in pairs:
        lines.append(f"  {row['method']:<22} {row['images']:>9,}  {row['baseline_seconds']:>9.3f}s  "
                     f"{row['seconds']:>9.3f}s  {1 / row['speedup']:>6.2f}x  {row.get('target', ''):<10} "
                     f"{row.get('status', '')}   (against {row['baseline']})")
    for row in rows:
        if row["method"].startswith("dask-worker-"):
            growth = f"  growth {row['growth']:.2f}x" if row.get("growth") else ""
            lines.append(f"  {row['method']:<22} {row['images']:>9,}  peak {row['worker_peak_mb']:.0f} MB resident "
                         f"({row['worker_peak_anon_mb']:.0f} MB anonymous) per worker, idle "
                         f"{row['worker_now_mb']:.0f} MB{growth}  {row.get('target', '')} "
                         f"{row.get('status', '')}")
    for row in rows:
        if row["method"].startswith("model-"):
            lines.append(f"  {row['method']:<22} {row['images']:>9,}  {row['per_shard_ms']:.0f} ms per shard + "
                         f"{row['per_image_us']:.0f} us per image per worker; driver {row['driver_s']:.2f} s; "
                         f"{row['shards']} shards of {row['shard_images']:,}: {row['seconds']:.2f} s (tasks "
                         f"{row['task_mean_s']:.2f} s each, workers busy {row['busy']:.0%}, {row['write_mb_s']:.0f} "
                         f"MB/s written), {row['small_shards']} of {row['small_shard_images']:,}: "
                         f"{row['small_wall_s']:.2f} s")
    return lines


@experiment("scale", "sharded datasets: a Dask LocalCluster against the local pool (opt-in: slow)", "alone",
            default=False, requires=("distributed",), install='pip install "imgconv[dask]"', sides=SIDES,
            steps=_steps, table=scale_table)
def scale_experiment(harness: Harness) -> List[Row]:
    """See the module docstring."""
    import logging

    import distributed

    workers = max(1, harness.env.workers)
    sizes = _sizes(harness)
    shard = max(1, min(SHARD_IMAGES, sizes[-1] // MIN_SHARDS))
    harness.parameters["scale"] = {"workers": workers, "shard_images": shard, "sizes": sizes}
    tile = harness.images.images[: max(harness.cutoffs)]
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=logging.ERROR)
    rows: List[Row] = []
    try:
        with distributed.Client(cluster, set_as_default=False) as client:
            run = _ScaleRun(harness, client, tile, workers, shard)
            run.warm_up()
            for count in sizes:
                source = os.path.join(harness.workdir, f"scale-{count}.npy")
                write_tiled_npy(source, tile, count)
                try:
                    for fmt, suffix in FORMATS:
                        harness.progress(f"scale convert {fmt} {count:,}")
                        rows += run.conversion(source, count, fmt, suffix)
                    for fmt in READ_FORMATS:
                        harness.progress(f"scale read {fmt} {count:,}")
                        rows += run.reading(source, count, fmt)
                    if count == sizes[0]:
                        for fmt, suffix in FORMATS:
                            harness.progress(f"scale model {fmt} {count:,}")
                            rows.append(run.model(source, count, fmt, suffix))
                finally:
                    os.unlink(source)
    finally:
        cluster.close()
    _growth(rows)
    return rows


class _ScaleRun:
    """What the experiment measures, on one cluster."""

    def __init__(self, harness: Harness, client: Any, tile: np.ndarray, workers: int, shard: int) -> None:
        self.harness = harness
        self.client = client
        self.tile = tile
        self.workers = workers
        self.shard = shard

    def _path(self, name: str) -> str:
        return os.path.join(self.harness.workdir, name)

    def warm_up(self) -> None:
        """A small conversion to each format on the cluster first: the workers import the stores' libraries
        and size their allocators before any memory is measured (else the first size looks smaller)."""
        source, count = self._path("scale-warm-up.npy"), min(len(self.tile), WARM_UP_IMAGES)
        write_tiled_npy(source, self.tile, count)
        try:
            for fmt, suffix in FORMATS:
                dest = self._path(f"scale-warm-up{suffix}")
                imgconv.convert(source, dest, format=fmt, shard_size=max(1, count // (2 * self.workers)),
                                engine="dask", client=self.client)
                remove_path(dest)
        finally:
            os.unlink(source)

    def conversion(self, source: str, count: int, fmt: str, suffix: str) -> List[Row]:
        """The local pool against the cluster, writing the same sharded dataset; the workers' peak memory."""
        here, there = self._path(f"scale-local{suffix}"), self._path(f"scale-dask{suffix}")
        options: Dict[str, Any] = {"format": fmt, "shard_size": self.shard}

        def check(path: str, engine: str) -> Any:
            return lambda _: spot_check(path, self.tile, count, f"{engine} sharded conversion to {fmt}")

        trials = {
            f"local-{fmt}": Trial(lambda: imgconv.convert(source, here, workers=self.workers, **options),
                                  setup=lambda: remove_path(here), check=check(here, "local"), warmup=0),
            f"dask-{fmt}": Trial(lambda: imgconv.convert(source, there, engine="dask", client=self.client, **options),
                                 setup=lambda: remove_path(there), check=check(there, "dask"), warmup=0),
        }
        pids = list(self.client.run(os.getpid).values())
        idle = max(_rss_mb(pid)[0] for pid in pids)
        try:
            with _PeakSampler(pids) as sampler:
                rows = self.harness.side_by_side("scale", count, trials, [(f"local-{fmt}", f"dask-{fmt}")])
        finally:
            remove_path(here)
            remove_path(there)
        rows.append(self.harness.row("scale", f"dask-worker-{fmt}", count, worker_peak_mb=sampler.peak_rss,
                                     worker_peak_anon_mb=sampler.peak_anon, worker_now_mb=idle, workers=len(pids)))
        return rows

    def reading(self, source: str, count: int, fmt: str) -> List[Row]:
        """The same images as a sharded dataset and as one store: random batches of 256, and read_all."""
        suffix = dict(FORMATS)[fmt]
        one, sharded = self._path(f"scale-one{suffix}"), self._path(f"scale-shards{suffix}")
        try:
            imgconv.convert(source, one, format=fmt, workers=self.workers)
            imgconv.convert(source, sharded, format=fmt, workers=self.workers, shard_size=self.shard)
            batches = QUICK_READ_BATCHES if self.harness.quick else READ_BATCHES
            rng = np.random.default_rng(11)
            plan = [rng.integers(0, count, READ_BATCH) for _ in range(batches)]
            expected = self.tile[np.concatenate(plan) % len(self.tile)]
            rows: List[Row] = []
            with imgconv.open(one) as store, imgconv.open(sharded) as dataset:
                def batches_of(reader: Any) -> Trial:
                    out = np.empty((READ_BATCH * batches, *reader.shape), np.uint8)

                    def run() -> np.ndarray:
                        for k, indices in enumerate(plan):
                            reader.read_batch(indices, out=out[k * READ_BATCH : (k + 1) * READ_BATCH])
                        return out

                    def check(got: np.ndarray) -> None:
                        if not np.array_equal(got, expected):
                            raise BenchCheckError(f"random batches of a {fmt} {type(reader).__name__}: wrong pixels")

                    return Trial(run, check=check, per=READ_BATCH * batches,
                                 fields={"batch": READ_BATCH, "batches": batches})

                rows += self.harness.side_by_side(
                    "scale", count, {f"store-{fmt}-batches": batches_of(store),
                                     f"dataset-{fmt}-batches": batches_of(dataset)},
                    [(f"store-{fmt}-batches", f"dataset-{fmt}-batches")])

                def everything(reader: Any) -> Trial:
                    def check(got: Any) -> None:
                        first = got[0][: len(self.tile)]
                        if len(got[0]) != count or not np.array_equal(first, self.tile[: len(first)]):
                            raise BenchCheckError(f"read_all of a {fmt} {type(reader).__name__}: wrong pixels")

                    return Trial(lambda: reader.read_all(), check=check, per=count)

                rows += self.harness.side_by_side(
                    "scale", count, {f"store-{fmt}-all": everything(store), f"dataset-{fmt}-all": everything(dataset)},
                    [(f"store-{fmt}-all", f"dataset-{fmt}-all")])
            return rows
        finally:
            remove_path(one)
            remove_path(sharded)

    def model(self, source: str, count: int, fmt: str, suffix: str) -> Row:
        """Task times of a cluster conversion of ``count`` images in shards of a tenth, and of a hundredth."""
        import distributed

        images_big, images_small = max(1, count // 10), max(1, count // 100)
        found: Dict[int, Dict[str, float]] = {}
        for shard in (images_big, images_small):
            dest = self._path(f"scale-model{suffix}")
            try:
                with distributed.get_task_stream(self.client) as stream:
                    started = time.perf_counter()
                    result = imgconv.convert(source, dest, format=fmt, shard_size=shard, engine="dask",
                                             client=self.client)
                    wall = time.perf_counter() - started
                found[shard] = _task_figures(stream.data, wall, result.bytes, self.workers)
            finally:
                remove_path(dest)
        big, small = found[images_big], found[images_small]
        shard_s, image_s = scaling_model(self.workers, count, (big["tasks"], big["wall_s"] - big["driver_s"]),
                                         (small["tasks"], small["wall_s"] - small["driver_s"]))
        return self.harness.row("scale", f"model-{fmt}", count, seconds=big["wall_s"], shard_images=images_big,
                                shards=big["tasks"], task_mean_s=big["task_mean_s"], per_image_us=image_s * 1e6,
                                per_shard_ms=shard_s * 1e3, driver_s=big["driver_s"], small_shards=small["tasks"],
                                small_shard_images=images_small, small_wall_s=small["wall_s"],
                                small_driver_s=small["driver_s"], busy=big["busy"], write_mb_s=big["write_mb_s"],
                                bytes=big["bytes"])


def scaling_model(workers: int, count: int, big: Tuple[float, float],
                  small: Tuple[float, float]) -> Tuple[float, float]:
    """(seconds per shard, seconds per image) of one worker, from two conversions of ``count`` images.

    ``big`` and ``small`` are (shards, seconds the tasks took from the first
    start to the last end) of a run with few large shards and one with many
    small ones. The model: ``tasks_time = (shards * per_shard + count *
    per_image) / workers``; the per-shard part holds everything a shard costs
    whatever its size (scheduling, the round trip to the driver, creating,
    committing and reading back a store), the per-image part the reading,
    encoding and writing.
    """
    (shards_big, seconds_big), (shards_small, seconds_small) = big, small
    if shards_small == shards_big:
        return 0.0, seconds_big * workers / max(1, count)
    per_shard = (seconds_small - seconds_big) * workers / (shards_small - shards_big)
    per_image = (seconds_big * workers - shards_big * per_shard) / max(1, count)
    return per_shard, per_image


def _task_figures(tasks: List[Dict[str, Any]], wall: float, written: int, workers: int) -> Dict[str, float]:
    """Figures of the shard tasks of one run, from Dask's task stream (``busy``: the share of the
    ``workers``' time between the first task's start and the last one's end spent in tasks)."""
    shards = []
    for task in tasks:
        if not str(task.get("key", "")).startswith("imgconv-") or "context" in str(task.get("key")):
            continue
        spans = [(s["start"], s["stop"]) for s in task.get("startstops", ()) if s.get("action") == "compute"]
        if spans:
            shards.append(spans[0])
    if not shards:
        return {"tasks": 0, "task_mean_s": 0.0, "driver_s": wall, "busy": 0.0, "wall_s": wall,
                "write_mb_s": written / wall / 1e6, "bytes": written}
    first, last = min(s for s, _ in shards), max(e for _, e in shards)
    durations = [e - s for s, e in shards]
    return {"tasks": len(shards), "task_mean_s": float(np.mean(durations)), "driver_s": wall - (last - first),
            "busy": sum(durations) / (last - first) / workers, "wall_s": wall, "write_mb_s": written / wall / 1e6,
            "bytes": written}


def _rss_mb(pid: int) -> Tuple[float, float]:
    """(VmRSS, RssAnon) of process ``pid`` in MB; zeros for a process gone."""
    found = status_kb(pid)
    return found.get("VmRSS", 0) / 1024, found.get("RssAnon", 0) / 1024


class _PeakSampler:
    """The highest resident memory any of the processes ``pids`` (the Dask workers) reaches, sampled
    every 20 ms in a thread while inside."""

    def __init__(self, pids: List[int]) -> None:
        self.pids = pids
        self.peak_rss = 0.0
        self.peak_anon = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "_PeakSampler":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for pid in self.pids:
                rss, anon = _rss_mb(pid)
                self.peak_rss, self.peak_anon = max(self.peak_rss, rss), max(self.peak_anon, anon)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def _growth(rows: List[Row]) -> None:
    """Set ``growth`` (peak at the larger size / peak at the smaller) on the larger size's worker rows."""
    workers = [row for row in rows if row["method"].startswith("dask-worker-")]
    for row in workers:
        smaller = [r for r in workers if r["method"] == row["method"] and r["images"] < row["images"]]
        if smaller:
            row["growth"] = row["worker_peak_anon_mb"] / max(smaller, key=lambda r: r["images"])["worker_peak_anon_mb"]
