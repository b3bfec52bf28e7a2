"""The loader experiment of the bench (python -m imgconv bench --experiments loader), on a few images."""
import importlib.util
import json
import subprocess
import sys

import pytest

from imgconv.bench import loader_bench

pytest.importorskip("torch")


def test_the_loader_experiment_runs_checks_and_reports(tmp_path):
    done = subprocess.run([sys.executable, "-m", "imgconv", "bench", "--quick", "--experiments", "loader",
                           "--cutoffs", "600", "--repeat", "1", "--no-plots", "--out", str(tmp_path / "out"),
                           "--cache", str(tmp_path / "cache"), "--tmp", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = [row for row in results["rows"] if row["experiment"] == "loader"]
    timed = {row["method"]: row for row in rows if row["family"] == "loader" and row.get("seconds")}
    skipped = {row["method"]: row["skipped"] for row in rows if row.get("skipped")}
    for name in ("floor", "read_batch-lmdb", "loader-lmdb", "loader-hdf5", "loader-png", "augment-lmdb",
                 "dataloader-dataset-lmdb-0w", "dataloader-dataset-hdf5-2w", "dataloader-items-png-2w",
                 "torch-ops-lmdb-1t"):
        assert name in timed and timed[name]["runs"] >= 1 and timed[name]["images"] == 600
    for peer, name in (("litdata", "litdata-0w"), ("torchvision", "torchvision-lmdb-2w")):
        if importlib.util.find_spec(peer) is None:
            assert f"{peer} is not installed" in skipped[name] and "\n" not in skipped[name]
        else:
            assert name in timed
    targets = {row["what"]: row for row in rows if row["family"] == "target"}
    assert "LMDB Loader within 2.5x of the floor" in targets
    assert "Loader peak memory, bounded by the read-ahead" in targets
    assert all(t["status"] in ("met", "MISSED") for t in targets.values())
    assert "LMDB: imgconv Loader (defaults" in done.stdout
    lines = loader_bench.table(results["rows"])
    assert any("targets" in line for line in lines) and any("floor" in line for line in lines)


def test_targets_are_judged_from_medians():
    medians = {"loader-lmdb": 1.0, "floor": 0.5, "litdata-0w": 6.0, "litdata-2w": 4.0}
    found = {t["what"]: t for t in loader_bench.evaluate(medians)}
    assert found["LMDB Loader within 2.5x of the floor"]["ratio"] == 2.0
    assert found["LMDB Loader within 2.5x of the floor"]["met"]
    litdata = found["LMDB Loader against LitData, its best workers"]
    assert litdata["baseline"] == "litdata-2w" and litdata["ratio"] == 4.0 and not litdata["met"]
    assert "HDF5 Loader within 2.5x of the floor" not in found  # its loader did not run


def test_a_peer_that_breaks_is_reported_ours_fails_the_run():
    def broken():
        raise RuntimeError("could not unlink the shared memory file\n/torch_1: gone")

    def good():
        return (3, 6)

    times, failed = loader_bench._time_side_by_side({"litdata-2w": broken, "floor": good}, (3, 6), 2, 10.0,
                                                    lambda text: None)
    assert list(times) == ["floor"] and len(times["floor"]) == 2
    assert failed == {"litdata-2w": "RuntimeError: /torch_1: gone"}
    with pytest.raises(RuntimeError):
        loader_bench._time_side_by_side({"loader-lmdb": broken}, (3, 6), 1, 10.0, lambda text: None)
    with pytest.raises(loader_bench.BenchCheckError, match="yielded 3 images"):
        loader_bench._time_side_by_side({"litdata-0w": good}, (4, 6), 1, 10.0, lambda text: None)

