"""The timing harness, `python -m imgconv bench`: a quick run reports everything, wrong pixels fail it."""
import csv
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from imgconv import cli
from imgconv.bench import harness, methods
from imgconv.bench.timing import measure

PLOTS = ["store_time.png", "store_time_log.png", "read_time.png", "read_time_log.png", "disk_use.png",
         "overview.png"]
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def _dirs(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    return ["--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), "--tmp", str(tmp)]


def test_quick_run_reports_every_method_cutoff_and_experiment(tmp_path):
    done = subprocess.run([sys.executable, "-m", "imgconv", "bench", "--quick", *_dirs(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    for title in ("store one image", "read one image", "store many images", "read every image",
                  "random access", "disk use", "kernels on", "conversion end to end", "targets"):
        assert title in done.stdout
    assert (out / "table.txt").read_text().strip() in done.stdout

    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete"
    assert results["parameters"]["cutoffs"] == list(harness.QUICK_CUTOFFS)
    assert results["machine"]["cores"] >= 1 and results["machine"]["memory_bytes"] > 0 and results["machine"]["cpu"]
    for name in ("imgconv", "numpy", "Pillow", "lmdb", "h5py", "python"):
        assert results["versions"][name]
    assert results["parameters"]["tmp"]["type"] != "unknown"
    rows = results["rows"]
    found = {(r["experiment"], r["method"], r["images"]) for r in rows}
    for method in methods.METHODS:
        for experiment in ("store-one", "read-one"):
            assert (experiment, method, 1) in found
        for experiment in ("store-many", "read-many", "random-batch", "random-one", "disk"):
            for cutoff in harness.QUICK_CUTOFFS:
                assert (experiment, method, cutoff) in found
    for row in rows:
        if row["experiment"] == "disk":
            assert row["bytes"] > 0 and row["disk_ratio"] > 0
        else:
            assert row["seconds"] > 0
        if row.get("family") == "imgconv" and row["experiment"] != "disk":
            assert row["speedup"] > 0
    assert {(r["method"], r["family"]) for r in rows if r["experiment"] == "convert"} == {
        ("classic-lmdb", "classic"), ("lmdb", "imgconv")}
    assert len(results["kernels"]["comparisons"]) == 8
    targets = {t["what"]: t for t in results["targets"]}
    assert set(targets) == {t.what for t in harness.TARGETS if t.experiment != "memory"}  # memory is opt-in
    assert all(t["status"] in ("met", "MISSED") for t in targets.values())

    with open(out / "results.csv", newline="") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == len(rows) and lines[0]["experiment"] == rows[0]["experiment"]

    written = sorted(p.name for p in out.iterdir())
    plots = [name for name in written if name.endswith(".png")]
    assert plots == (sorted(PLOTS) if HAS_MATPLOTLIB else [])
    assert list((tmp_path / "tmp").iterdir()) == []  # the stores are cleaned up


def _flip(got):
    images, labels = got
    images = np.array(images)
    images.reshape(-1)[0] ^= 0xFF
    return images, labels


class _FlippedReader:
    """Wraps a method's reader so that every image read has its first byte flipped."""

    def __init__(self, reader):
        self.reader = reader

    def read_one(self, index):
        image, label = self.reader.read_one(index)
        return _flip((image[np.newaxis], None))[0][0], label

    def read_batch(self, indices):
        return _flip(self.reader.read_batch(indices))

    def close(self):
        self.reader.close()


@pytest.mark.parametrize("method, experiment, part", [
    ("lmdb", "read-many", "read_all"),
    ("classic-png", "read-many", "read_all"),
    ("png", "store-many", "read_all"),  # the untimed check after a store catches it too
    ("hdf5", "random-batch", "open_reader"),
    ("classic-lmdb", "random-one", "open_reader"),
    ("png", "read-one", "open_reader"),
])
def test_a_reader_returning_wrong_pixels_fails_the_run(tmp_path, monkeypatch, capsys, method, experiment, part):
    original = methods.METHODS[method]
    if part == "read_all":
        broken = lambda path, count, env: _flip(original.read_all(path, count, env))  # noqa: E731
    else:
        broken = lambda path, count: _FlippedReader(original.open_reader(path, count))  # noqa: E731
    monkeypatch.setitem(methods.METHODS, method, original._replace(**{part: broken}))
    status = cli.main(["bench", "--methods", method, "--experiments", experiment, "--cutoffs", "10", "--repeat", "1",
                       "--no-plots", *_dirs(tmp_path)])
    assert status == 1
    assert "wrong pixels" in capsys.readouterr().err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["status"].startswith("failed") and "wrong pixels" in results["status"]
    assert list((tmp_path / "tmp").iterdir()) == []


def test_wrong_labels_fail_the_run(tmp_path, monkeypatch, capsys):
    original = methods.METHODS["hdf5"]

    def wrong_labels(path, count, env):
        images, labels = original.read_all(path, count, env)
        return images, labels + 1

    monkeypatch.setitem(methods.METHODS, "hdf5", original._replace(read_all=wrong_labels))
    status = cli.main(["bench", "--methods", "hdf5", "--experiments", "read-many", "--cutoffs", "10", "--repeat",
                       "1", "--no-plots", *_dirs(tmp_path)])
    assert status == 1 and "wrong pixels or labels" in capsys.readouterr().err


HIDE_MATPLOTLIB = """
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("simulated: matplotlib not installed")
sys.meta_path.insert(0, Hide())
import importlib.util
importlib.util.find_spec = lambda name, *a: None if name.startswith("matplotlib") else _find(name, *a)
"""


def test_without_matplotlib_the_run_succeeds_and_says_how_to_get_plots(tmp_path):
    code = ("import importlib.util\n_find = importlib.util.find_spec\n" + HIDE_MATPLOTLIB
            + "from imgconv.cli import main\n"
            + f"sys.exit(main(['bench', '--methods', 'lmdb', 'classic-lmdb', '--experiments', 'disk', 'store-many', "
            + f"'--cutoffs', '10,100', '--repeat', '1', *{_dirs(tmp_path)!r}]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert 'pip install "imgconv[plot]"' in done.stdout
    assert not list((tmp_path / "out").glob("*.png"))
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["versions"]["matplotlib"] is None


def test_measure_stops_repeating_at_the_budget():
    calls = []

    def slow():
        calls.append(1)
        return len(calls)

    timed = measure(slow, repeat=50, warmup=1, budget=0.0)
    assert len(timed.times) == 1 and len(calls) == 2 and timed.result == 2
    timed = measure(lambda: None, repeat=5, warmup=0)
    assert len(timed.times) == 5


def test_targets_are_judged_at_the_largest_cutoff():
    rows = [
        {"experiment": "read-many", "method": "classic-lmdb", "format": "lmdb", "family": "classic", "images": n,
         "seconds": 1.0} for n in (10, 1000)
    ] + [
        {"experiment": "read-many", "method": "lmdb", "format": "lmdb", "family": "imgconv", "images": 10,
         "seconds": 0.01},
        {"experiment": "read-many", "method": "lmdb", "format": "lmdb", "family": "imgconv", "images": 1000,
         "seconds": 0.1},
    ]
    harness.add_speedups(rows)
    assert [r.get("speedup") for r in rows] == [None, None, pytest.approx(100), pytest.approx(10)]
    targets = harness.evaluate_targets(rows, None)
    assert [(t["images"], t["status"]) for t in targets] == [(1000, "MISSED")]
    assert rows[-1]["status"] == "MISSED" and "status" not in rows[-2]


def test_opt_in_memory_and_layout_experiments(tmp_path, capsys):
    status = cli.main(["bench", "--experiments", "memory", "lmdb-layout", "hdf5-layout", "png-level",
                       "--cutoffs", "200", "--repeat", "1", "--no-plots", *_dirs(tmp_path)])
    assert status == 0
    text = capsys.readouterr().out
    assert "peak memory" in text and "layout studies" in text
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    memory = {(r["format"], r["images"]): r for r in rows if r["experiment"] == "memory"}
    assert set(memory) == {("png", 200), ("lmdb", 200), ("hdf5", 200), ("lmdb", 2000), ("hdf5", 2000)}
    assert all(r["tree_anon_mb"] > 0 and r["seconds"] > 0 for r in memory.values())
    assert memory[("lmdb", 2000)]["growth"] > 0 and "growth" not in memory[("lmdb", 200)]
    counts = {name: sum(r["experiment"] == name for r in rows) for name in ("lmdb-layout", "hdf5-layout", "png-level")}
    assert counts == {"lmdb-layout": 7, "hdf5-layout": 7, "png-level": 4}
    assert list((tmp_path / "tmp").iterdir()) == []


def test_bench_package_runs_as_the_bench_command():
    done = subprocess.run([sys.executable, "-m", "imgconv.bench", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "--cutoffs" in done.stdout and "lmdb-layout" in done.stdout


def test_any_source_is_measured_repeated_up_to_the_largest_cutoff(tmp_path, capsys):
    images = np.random.default_rng(0).integers(0, 256, (20, 8, 6, 3), dtype=np.uint8)
    source = tmp_path / "small.npz"
    np.savez(source, images=images, labels=np.arange(20) % 4)
    status = cli.main(["bench", "--source", str(source), "--experiments", "store-many", "read-many", "random-batch",
                       "--cutoffs", "10,50", "--repeat", "1", "--no-plots", *_dirs(tmp_path)])
    assert status == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert "20 images of 8x6x3, repeated 3 times to reach 50" in results["parameters"]["input"]
    assert {(r["method"], r["images"]) for r in results["rows"] if r["experiment"] == "read-many"} == {
        (m, n) for m in methods.METHODS for n in (10, 50)}


def test_a_cifar_binary_version_cannot_time_the_classic_conversion(tmp_path, capsys):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "data_batch_1.bin").write_bytes(bytes(3073))
    status = cli.main(["bench", "--cifar", str(tmp_path / "bin"), "--experiments", "convert", *_dirs(tmp_path)])
    assert status == 1 and "python-version" in capsys.readouterr().err
