"""The loader experiment of the bench (python -m imgconv bench --experiments loader), on a few thousand images:
every side timed or skipped with its reason, no target judged at that size, a wrong batch fails the run."""
import dataclasses
import functools
import importlib.util
import json

import numpy as np
import pytest

from imgconv import cli
from imgconv.bench import command, loader_bench
from imgconv.bench.loader_bench import check, sides
from imgconv.bench.methods import BenchCheckError

pytest.importorskip("torch")
command.load_plugins()

COUNT = 2_000
SMALL = 600  # three batches: enough for the runs that fail or crash
PEERS = {"litdata": ("litdata-0w", "litdata-2w", "litdata-best"),
         "torchvision": ("torchvision-lmdb-0w", "torchvision-lmdb-2w", "torchvision-lmdb-best")}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache of the built-in sample for the module's runs."""
    return tmp_path_factory.mktemp("cache")


def _run(tmp_path, cache, count=COUNT):
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    return cli.main(["bench", "--experiments", "loader", "--cutoffs", str(count), "--repeat", "1", "--budget", "1",
                     "--no-plots", "--quiet", "--out", str(tmp_path / "out"), "--cache", str(cache),
                     "--tmp", str(tmp)])


def test_the_loader_experiment_times_every_side_and_judges_no_target_at_this_size(tmp_path, cache, capsys):
    assert _run(tmp_path, cache) == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = {row["method"]: row for row in results["rows"] if row["experiment"] == "loader"}
    missing = {peer for peer in PEERS if importlib.util.find_spec(peer) is None}
    skipped = {name for peer in missing for name in PEERS[peer]}
    for side in sides.SIDES:
        row = rows[side.name]
        assert (row["images"], row["title"], row["family"], row["format"]) == (COUNT, side.title, side.family,
                                                                                side.format)
        if side.name in skipped:
            assert row["skipped"].endswith("is not installed (pip install "
                                           f"{side.requires[0]})") and "\n" not in row["skipped"]
            assert row.get("seconds") is None
        else:
            assert row["runs"] >= 1 and row["seconds"] > 0 and row["warmup"] == 1, side.name
            assert row["per_image_us"] == pytest.approx(row["seconds"] / COUNT * 1e6)
    for name, settings in loader_bench.BEST.items():
        if name in skipped:
            assert "is not installed" in rows[name]["skipped"]
            continue
        best = rows[name]
        assert best["best_of"] == list(settings) and best["chosen"] in settings
        assert best["seconds"] == min(rows[s]["seconds"] for s in settings)
    memory = rows[loader_bench.MEMORY_SIDE]
    assert 0 < memory["peak_mb"] and memory["peak_over_bound"] == pytest.approx(memory["peak_mb"] / memory["bound_mb"])

    compared = {(c["baseline"], c["method"]) for c in results["comparisons"] if c["experiment"] == "loader"}
    assert compared == {pair for pair in loader_bench.PAIRS if not set(pair) & skipped}
    mine = [t for t in results["targets"] if t["experiment"] == "loader"]
    assert len(mine) == 10 and all(t["images"] == 100_000 for t in mine)
    for target in mine:  # nothing is judged on 2,000 images: not measured, or skipped and why
        assert target["status"] == "not measured at this size" or target["status"].startswith("skipped: "), target
        assert target["value"] is None
    assert not any(row.get("status") for row in rows.values())

    block = out.split("training loaders")[1].split("\n\n")[0]
    assert "loader-lmdb" in block and "LMDB: imgconv Loader (defaults" in block
    assert "= dataloader-dataset-lmdb-best: dataloader-dataset-lmdb-" in block
    assert "loader-lmdb against floor" in block and "peak" in block
    for peer in missing:
        assert f"skipped: {peer} is not installed" in block


def test_a_wrong_batch_fails_the_run(tmp_path, cache, monkeypatch, capsys):
    def make_broken(data, stack):
        epoch = sides.imgconv_loader(data, stack, "lmdb")

        def broken():
            got = epoch()
            images, labels = got.first
            images[0, 0, 0, 0] ^= 1  # one wrong value in the first batch
            return got

        return broken

    floor = next(side for side in sides.SIDES if side.name == "floor")
    wrong = dataclasses.replace(next(side for side in sides.SIDES if side.name == "loader-lmdb"), make=make_broken)
    monkeypatch.setattr(loader_bench, "SIDES", (floor, wrong))
    assert _run(tmp_path, cache, SMALL) == 1
    assert "loader loader-lmdb" in capsys.readouterr().err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["status"].startswith("failed") and "first batch holds other pixels" in results["status"]
    assert list((tmp_path / "tmp").iterdir()) == []  # the stores were removed


def test_a_fallible_loader_that_crashes_is_reported_and_the_run_goes_on(tmp_path, cache, monkeypatch):
    def make_crashing(data, stack):
        def crash():
            raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Bus error.\nIt is possible that...")

        return crash

    floor = next(side for side in sides.SIDES if side.name == "floor")
    crashing = dataclasses.replace(next(side for side in sides.SIDES if side.name == "dataloader-dataset-lmdb-0w"),
                                   make=make_crashing)
    monkeypatch.setattr(loader_bench, "SIDES", (floor, crashing))
    assert _run(tmp_path, cache, SMALL) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = {row["method"]: row for row in results["rows"]}
    assert rows["dataloader-dataset-lmdb-0w"]["failed"] == "RuntimeError: It is possible that..."
    assert "dataloader-dataset-lmdb-best" in rows and "failed" in rows["dataloader-dataset-lmdb-best"]["skipped"]


# --------------------------------------------------------------------------- the check alone


def _epoch(batches, order=None):
    return sides.drain(batches, None if order is None else (lambda: order))


def test_the_check_knows_a_right_epoch_from_wrong_ones():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (600, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 600)
    verify = check.EpochCheck(images, labels)
    side = sides.SIDES[0]
    order = rng.permutation(600)
    batches = [(images[order[i : i + 256]], labels[order[i : i + 256]]) for i in range(0, 600, 256)]
    verify(side, _epoch(batches, order))
    verify(side, _epoch(batches))  # order unknown: the multiset of labels, digests of the first and last batch
    with pytest.raises(BenchCheckError, match="yielded 344 images"):
        verify(side, _epoch(batches[1:], order))
    with pytest.raises(BenchCheckError, match="planned order"):
        verify(side, _epoch(batches[::-1], order))
    wrong = [(batch[0].copy(), batch[1]) for batch in batches]
    wrong[-1][0][-1] = 0
    with pytest.raises(BenchCheckError, match="last batch holds other pixels"):
        verify(side, _epoch(wrong, order))
    with pytest.raises(BenchCheckError, match="that was not written"):
        verify(side, _epoch(wrong))


def test_the_check_of_augmented_batches_finds_each_crop_of_its_original():
    from imgconv.augment import CropFlipNormalize

    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (300, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 300)
    side = next(side for side in sides.SIDES if side.output == "float32")
    transform = CropFlipNormalize(sides.MEAN, sides.STD, padding=sides.PADDING, flip=True)
    batches = [(transform(images[i : i + 256], rng=rng), labels[i : i + 256]) for i in range(0, 300, 256)]
    verify = check.EpochCheck(images, labels)
    verify(side, _epoch(batches, np.arange(300)))
    torch_ops = sides.torch_ops_transform()
    import torch

    verify(side, _epoch([(torch_ops(torch.from_numpy(images[i : i + 256])), labels[i : i + 256])
                         for i in range(0, 300, 256)], np.arange(300)))
    shifted = [(batches[0][0][::-1].copy(), batches[0][1]), batches[1]]
    with pytest.raises(BenchCheckError, match="not a crop of the planned one"):
        verify(side, _epoch(shifted, np.arange(300)))
    with pytest.raises(BenchCheckError, match="float32"):
        verify(side, _epoch([(b.astype(np.float64), y) for b, y in batches], np.arange(300)))
    assert functools.reduce(lambda a, b: a and b, [check.is_augmented(transform(images[:1], rng=k)[0], images[0],
                                                                       verify.mean, verify.std, 4) for k in range(5)])
