"""Conversion on a real dask.distributed LocalCluster (worker processes): every source kind into every
format, equal to the dataset written here; a worker killed mid-task; the driver killed and a resume.

One cluster of two worker processes serves the whole module (starting one takes a few seconds).
"""
import json
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from cluster_sources import KillsItsWorkerOnce, Slow
from factories import tree_digest
from PIL import Image

import imgconv
from imgconv import cli
from imgconv.errors import ConversionError, OptionError
from imgconv.sample import write_sample

distributed = pytest.importorskip("distributed")

FORMATS = [("lmdb", ".lmdb"), ("hdf5", ".h5"), ("png", "")]
TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                       silence_logs=logging.ERROR)
    client = distributed.Client(cluster, set_as_default=False)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """One input of every kind: name -> (source, source options, shard size)."""
    root = tmp_path_factory.mktemp("inputs")
    sample = write_sample(root / "cifar", count=240, seed=7)
    rng = np.random.default_rng(2)
    np.save(root / "images.npy", rng.integers(0, 256, (150, 6, 7, 3), dtype=np.uint8))
    np.savez(root / "arrays.npz", images=rng.integers(0, 256, (150, 6, 7), dtype=np.uint8),
             labels=rng.integers(0, 4, 150))
    for part in ("a", "b"):
        for label in ("cat", "dog"):
            folder = root / f"folder-{part}" / label
            folder.mkdir(parents=True)
            for i in range(9):
                size = (3 + i % 4, 5 + i % 3)
                Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    store = imgconv.convert(root / "arrays.npz", root / "store.lmdb", workers=0).path
    dataset = imgconv.convert(root / "images.npy", root / "dataset.h5", shard_size=40, workers=0).path
    return {
        "cifar-python": (sample.python_dir, {"split": "all"}, 50),
        "cifar-binary": (sample.binary_dir, {"split": "all"}, "64kB"),
        "cifar-archive": (sample.python_archive, {"split": "all"}, 70),
        "npy": (str(root / "images.npy"), {}, 40),
        "npz": (str(root / "arrays.npz"), {}, 60),
        "folder": (str(root / "folder-a"), {}, 5),
        "store": (store, {}, 64),
        "dataset": (dataset, {}, 55),
        "archives": ([sample.python_archive, sample.binary_archive], {}, "64MB"),
        "folders-glob": (str(root / "folder-*"), {"resize": (4, 4)}, 7),
    }


KINDS = ["cifar-python", "cifar-binary", "cifar-archive", "npy", "npz", "folder", "store", "dataset", "archives",
         "folders-glob"]
# The default suite converts one input of each way in (partitions read by the workers, several inputs as one,
# a single archive streamed from the driver) into each format; the whole matrix runs with -m slow.
QUICK = {("npy", "lmdb"), ("folders-glob", "hdf5"), ("cifar-archive", "png"), ("archives", "lmdb")}
MATRIX = [pytest.param(kind, fmt, suffix, id=f"{kind}-{fmt}",
                       marks=() if (kind, fmt) in QUICK else pytest.mark.slow)
          for kind in KINDS for fmt, suffix in FORMATS]


@pytest.mark.parametrize("kind, fmt, suffix", MATRIX)
def test_each_source_kind_into_each_format_equals_the_dataset_written_here(tmp_path, client, inputs, kind, fmt,
                                                                             suffix):
    source, options, size = inputs[kind]
    here = imgconv.convert(source, tmp_path / f"here{suffix}", format=fmt, shard_size=size, workers=1, **options)
    seen = []
    there = imgconv.convert(source, tmp_path / f"there{suffix}", format=fmt, shard_size=size, engine="dask",
                            client=client, progress=lambda done, total: seen.append((done, total)), **options)
    assert there.count == here.count > 0
    assert tree_digest(there.path) == tree_digest(here.path)
    assert seen[-1][0] == there.count
    with imgconv.open(there.path) as ds:
        assert ds.format_name == fmt and len(ds) == here.count
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]


def test_a_list_of_archives_is_one_shard_per_archive(tmp_path, client, inputs):
    source, _, _ = inputs["archives"]
    result = imgconv.convert(source, tmp_path / "a.lmdb", engine="dask", client=client, shard_size=30)
    with imgconv.open(result.path) as ds:
        assert [entry.count for entry in ds.shards] == [200, 200]  # the train split of each archive, whole
        assert ds.label_names == list(imgconv.sample.LABEL_NAMES)
    default = imgconv.convert(source, tmp_path / "b.lmdb", engine="dask", client=client)
    manifest = json.loads(open(os.path.join(default.path, "dataset.json")).read())
    assert manifest["shard_size"] == {"bytes": 64_000_000} and len(manifest["shards"]) == 2


def test_a_worker_killed_mid_task_is_replaced_and_the_result_is_the_same(tmp_path, client, inputs):
    source, options, _ = inputs["cifar-python"]
    here = imgconv.convert(source, tmp_path / "here.h5", shard_size=40, workers=0, **options)
    marker = tmp_path / "killed"
    before = set(client.scheduler_info()["workers"])
    killer = KillsItsWorkerOnce(source, at=130, marker=str(marker), **options)
    there = imgconv.convert(killer, tmp_path / "there.h5", shard_size=40, engine="dask", client=client)
    assert marker.exists()  # a worker did die in the middle of shard 3
    assert tree_digest(there.path) == tree_digest(here.path)
    client.wait_for_workers(2, timeout=30)
    assert set(client.scheduler_info()["workers"]) != before  # the nanny started a new worker process


def test_the_driver_killed_leaves_a_dataset_resume_finishes(tmp_path, client, inputs):
    source, options, _ = inputs["cifar-python"]
    dest = tmp_path / "d.lmdb"
    script = (f"import imgconv; from cluster_sources import Slow; "
              f"imgconv.convert(Slow({source!r}, 0.2, split='all'), {str(dest)!r}, shard_size=20, batch_size=10, "
              f"engine='dask', scheduler={client.scheduler.address!r})")
    journal = tmp_path / ".d.lmdb.imgconv-partial" / "journal.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}
    driver = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 60
        while not (journal.exists() and len(journal.read_text().splitlines()) >= 3):
            assert driver.poll() is None and time.monotonic() < deadline, "the driver ended before it was killed"
            time.sleep(0.02)
    finally:
        driver.kill()
        driver.wait()
    finished = len(journal.read_text().splitlines()) - 1
    assert finished < 12 and not dest.exists()
    resumed = imgconv.convert(Slow(source, 0.0, **options), dest, shard_size=20, batch_size=10, engine="dask",
                              client=client, resume=True)
    assert resumed.resumed >= 20 * finished and resumed.count == 240
    here = imgconv.convert(Slow(source, 0.0, **options), tmp_path / "here.lmdb", shard_size=20, workers=0)
    assert tree_digest(resumed.path) == tree_digest(here.path)


def test_workers_that_cannot_see_the_dataset_are_named(tmp_path, client, inputs, monkeypatch):
    from imgconv.pipeline import dask_engine

    monkeypatch.setattr(dask_engine, "missing_paths", lambda client, paths: {"tcp://10.0.0.9:4711": paths[:1]})
    source, options, size = inputs["npy"]
    with pytest.raises(ConversionError, match="the Dask worker tcp://10.0.0.9:4711 cannot see .*shared filesystem"):
        imgconv.convert(source, tmp_path / "x.lmdb", shard_size=size, engine="dask", client=client)
    assert not os.listdir(tmp_path)


def test_without_distributed_the_engine_says_how_to_install_it(tmp_path, inputs, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed raises ImportError
    source, _, _ = inputs["npy"]
    with pytest.raises(OptionError, match=r"engine='dask' needs dask.distributed.*pip install \"imgconv\[dask\]\""):
        imgconv.convert(source, tmp_path / "x.lmdb", engine="dask")
    assert cli.main(["convert", source, str(tmp_path / "x.lmdb"), "--engine", "dask"]) == 2
    err = capsys.readouterr().err
    assert "--engine dask needs dask.distributed" in err and 'pip install "imgconv[dask]"' in err
    assert not os.listdir(tmp_path)


def test_cli_converts_on_a_scheduler_given_by_address(tmp_path, client, inputs):
    source, _, _ = inputs["npz"]
    dest = tmp_path / "cli.h5"
    assert cli.main(["convert", source, str(dest), "--engine", "dask", "--scheduler", client.scheduler.address,
                     "--shard-size", "50", "--quiet"]) == 0
    assert imgconv.info(dest)["shards"] == 3


def test_an_unreachable_scheduler_is_a_clear_error(tmp_path, inputs, monkeypatch):
    from imgconv.pipeline import dask_engine

    monkeypatch.setattr(dask_engine, "CONNECT_TIMEOUT", "1s")
    source, _, _ = inputs["npy"]
    with pytest.raises(ConversionError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        imgconv.convert(source, tmp_path / "x.lmdb", engine="dask", scheduler="tcp://127.0.0.1:9")
    assert not os.listdir(tmp_path)


def test_a_failing_task_names_its_file(tmp_path, client):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / f"{i}.png")
    (folder / "3.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(imgconv.SourceError, match="3.png"):
        imgconv.convert(folder, tmp_path / "out.lmdb", shard_size=2, engine="dask", client=client, resize=(4, 4))
    assert sorted(os.listdir(tmp_path)) == ["imgs"]
