"""The timing harness, `python -m imgconv bench`: a quick run reports everything, wrong pixels fail it,
targets are judged only where they can be, and plug-ins show up like the built-ins."""
import csv
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from imgconv import cli, kernels
from imgconv.bench import command, harness, inputs, kernel_bench, methods, targets
from imgconv.bench.harness import EXPERIMENTS, Experiment, Trial
from imgconv.bench.methods import METHODS, Method
from imgconv.bench.timing import Rounds, Side, measure
from imgconv.pipeline.plan import DEFAULT_BATCH_BYTES

command.load_plugins()

PLOTS = ["store_time.png", "store_time_log.png", "read_time.png", "read_time_log.png", "disk_use.png",
         "overview.png"]
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def _default_methods():
    """The methods a run measures when none are named (the opt-in groups' left out)."""
    return [m.name for m in METHODS.values() if m.default]


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
    for name in _default_methods():
        method = METHODS[name]
        # Every experiment the method can run (the no-sync methods only write).
        runs = [e for e in ("store-one", "read-one", "store-many", "read-many", "random-batch", "random-one", "disk")
                if all(getattr(method, need) is not None for need in harness.EXPERIMENTS[e].needs)]
        assert "store-one" in runs and "store-many" in runs
        for experiment in runs:
            for images in (1,) if experiment in ("store-one", "read-one") else harness.QUICK_CUTOFFS:
                assert (experiment, name, images) in found
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
    paired = [r for r in rows if r.get("baseline")]
    assert paired and all(1 <= len(r["ratios"]) <= r["runs"] for r in paired)

    # Every target is set for more images than a quick run measures: none is judged, none is MISSED.
    assert "MISSED" not in done.stdout and "undecided" not in done.stdout
    judged = {t["what"]: t["status"] for t in results["targets"]}
    opt_in = ("memory", "loader", "scale")
    default = [t for t in targets.load_targets() if t.experiment not in opt_in]
    assert judged == {**{t.what: targets.NOT_MEASURED for t in default},
                      **{t.what: targets.NOT_RUN for t in targets.load_targets() if t.experiment in opt_in}}
    assert done.stdout.count("not measured at this size") == len(default)
    listed = done.stdout.split("targets:")[1]  # targets of experiments not run are not listed
    assert "memory" not in listed and "Loader" not in listed and "augmentations" not in listed and "Dask" not in listed

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
    original = METHODS[method]
    if part == "read_all":
        broken = lambda path, count, env: _flip(original.read_all(path, count, env))  # noqa: E731
    else:
        broken = lambda path, count: _FlippedReader(original.open_reader(path, count))  # noqa: E731
    monkeypatch.setitem(METHODS, method, dataclasses.replace(original, **{part: broken}))
    status = cli.main(["bench", "--methods", method, "--experiments", experiment, "--cutoffs", "10", "--repeat", "1",
                       "--no-plots", *_dirs(tmp_path)])
    assert status == 1
    assert "wrong pixels" in capsys.readouterr().err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["status"].startswith("failed") and "wrong pixels" in results["status"]
    assert list((tmp_path / "tmp").iterdir()) == []


def test_wrong_labels_fail_the_run(tmp_path, monkeypatch, capsys):
    original = METHODS["hdf5"]

    def wrong_labels(path, count, env):
        images, labels = original.read_all(path, count, env)
        return images, labels + 1

    monkeypatch.setitem(METHODS, "hdf5", dataclasses.replace(original, read_all=wrong_labels))
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
            + "sys.exit(main(['bench', '--methods', 'lmdb', 'classic-lmdb', '--experiments', 'disk', 'store-many', "
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


def test_opt_in_memory_and_layout_experiments(tmp_path, capsys):
    status = cli.main(["bench", "--experiments", "memory", "lmdb-layout", "hdf5-layout", "png-level",
                       "--cutoffs", "200", "--repeat", "1", "--memory-photos", "3x400x300", "--no-plots",
                       *_dirs(tmp_path)])
    assert status == 0
    text = capsys.readouterr().out
    assert "peak memory" in text and text.count("layout study: ") == 3
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    photos = {r["format"]: r for r in rows if r["experiment"] == "memory" and r["source"] == "photos"}
    assert set(photos) == {"png", "lmdb", "hdf5"} and "3 JPEGs of 400x300" in text
    for row in photos.values():
        assert row["images"] == 3 and row["batch_bytes"] == DEFAULT_BATCH_BYTES and row["processes"] >= 1
        assert 0 < row["baseline_mb"] < row["tree_anon_mb"] <= row["bound_mb"] and row["within_bound"]
    memory = {(r["format"], r["images"]): r for r in rows if r["experiment"] == "memory" and r["source"] == "npy"}
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
        (name, n) for name in _default_methods() if METHODS[name].read_all is not None for n in (10, 50)}


def test_a_cifar_binary_version_cannot_time_the_classic_conversion(tmp_path, capsys):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "data_batch_1.bin").write_bytes(bytes(3073))
    status = cli.main(["bench", "--cifar", str(tmp_path / "bin"), "--experiments", "convert", *_dirs(tmp_path)])
    assert status == 1 and "python-version" in capsys.readouterr().err


# --------------------------------------------------------------------------- the kernel benchmark on its own


def test_kernel_benchmark_reports_every_comparison(tmp_path):
    out = tmp_path / "kernels.json"
    done = subprocess.run(
        [sys.executable, "-m", "imgconv.bench.kernel_bench", "--count", "300", "--repeat", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "chw_to_hwc" in done.stdout and "pickle" in done.stdout
    result = json.loads(out.read_text())
    assert len(result["seconds"]) == 14 and all(s > 0 for s in result["seconds"].values())
    assert [c["what"] for c in result["comparisons"]] == [c[0] for c in kernel_bench.COMPARISONS]
    assert all(c["ratio"] > 0 for c in result["comparisons"])
    # 300 images: the targets, set for 100,000, are not judged.
    assert "not measured at this size" in done.stdout and " NO" not in done.stdout and "MISSED" not in done.stdout


def test_kernel_benchmark_fails_on_wrong_pixels(monkeypatch):
    def broken(src, dst):
        dst[...] = 0

    class Broken:
        chw_to_hwc_into = staticmethod(broken)

    monkeypatch.setattr(kernels, "_impl", Broken)
    images = np.random.default_rng(0).integers(1, 256, (20, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(AssertionError, match="wrong pixels"):
        kernel_bench.bench_chw_to_hwc(images, repeat=1)


# --------------------------------------------------------------------------- rounds and settling (fake timings)


class FakeClock:
    """A clock that only moves when a fake run says how long it took."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _fake_rounds(durations, log):
    """Rounds over sides whose runs take the scripted ``durations[name]`` seconds (cycled), logging each run."""
    clock = FakeClock()

    def side(name):
        script = iter(np.resize(durations[name], 1000))

        def run():
            log.append(name)
            clock.now += float(next(script))

        return Side(run)

    return Rounds({name: side(name) for name in durations}, clock=clock), clock


def _target(threshold, op=">=", measure="speedup"):
    return targets.Target("fake", "store-many", "png", 100, measure, op, threshold, baseline="classic")


def test_rounds_alternate_the_sides_and_pair_their_ratios():
    log = []
    rounds, _ = _fake_rounds({"classic": [2.0, 4.0], "png": [1.0]}, log)
    rounds.warm_up("classic", 1)
    rounds.run(3)
    assert log == ["classic"] + ["classic", "png"] * 3  # warm-up, then one run of each per round
    assert rounds.times == {"classic": [4.0, 2.0, 4.0], "png": [1.0, 1.0, 1.0]}
    assert rounds.ratios("classic", "png") == [4.0, 2.0, 4.0]


def test_rounds_retire_a_side_past_its_budget_and_pair_only_shared_rounds():
    log = []
    rounds, _ = _fake_rounds({"classic": [30.0], "png": [4.0]}, log)
    rounds.run(3, budget=10.0)
    assert rounds.times == {"classic": [30.0], "png": [4.0, 4.0, 4.0]}
    assert rounds.ratios("classic", "png") == [7.5]


def test_a_steady_ratio_is_decided_without_reruns():
    log = []
    rounds, _ = _fake_rounds({"classic": [2.0], "png": [1.0]}, log)
    rounds.run(3)
    verdict = targets.settle(_target(1.8), rounds, "classic", "png", budget=60.0)
    assert (verdict.status, verdict.value, verdict.settle_rounds) == ("met", pytest.approx(2.0), 0)
    assert verdict.low == pytest.approx(2.0) == verdict.high
    assert targets.settle(_target(2.5), rounds, "classic", "png", budget=60.0).status == "MISSED"
    assert len(log) == 6


def test_an_undecided_ratio_is_rerun_alternately_until_decided():
    log = []
    # Three noisy rounds (ratios 1.5, 2.5, 2.0), then steady ones at 2.0: the interval narrows onto 2.0 > 1.8.
    rounds, _ = _fake_rounds({"classic": [1.5, 2.5] + [2.0] * 50, "png": [1.0]}, log)
    rounds.run(3)
    target = _target(1.8)
    assert targets.judge(target, rounds.ratios("classic", "png")).status == "undecided"
    verdict = targets.settle(target, rounds, "classic", "png", budget=1000.0)
    assert verdict.status == "met" and verdict.settle_rounds > 0
    assert verdict.rounds == 3 + verdict.settle_rounds
    assert log == ["classic", "png"] * verdict.rounds  # the reruns alternate too
    # It stopped at the first round that decided it.
    assert targets.judge(target, rounds.ratios("classic", "png")[:-1]).status == "undecided"
    assert verdict.low >= 1.8


def test_a_ratio_that_swings_across_the_target_stays_undecided_when_the_budget_runs_out():
    log = []
    rounds, clock = _fake_rounds({"classic": [1.6, 2.0], "png": [1.0]}, log)
    rounds.run(2)
    started = clock.now
    verdict = targets.settle(_target(1.8), rounds, "classic", "png", budget=10.0)
    # Rounds take 2.6 s and 3.0 s: a fourth round starts at 8.2 s < 10 s, a fifth would start at 11.2 s.
    assert (verdict.status, verdict.settle_rounds) == ("undecided", 4)
    assert verdict.settle_seconds == pytest.approx(clock.now - started) == pytest.approx(11.2)
    assert verdict.low < 1.8 < verdict.high
    assert targets.settle(_target(1.8), rounds, "classic", "png", budget=0.0).settle_rounds == 0


def test_rounds_stop_at_the_round_limit():
    rounds, _ = _fake_rounds({"classic": [1.6, 2.0], "png": [1.0]}, [])
    rounds.run(2)
    verdict = targets.settle(_target(1.8), rounds, "classic", "png", budget=1e9)
    assert verdict.status == "undecided" and verdict.rounds == targets.MAX_ROUNDS


def test_a_fallible_side_that_raises_is_retired_and_a_wrong_result_still_fails():
    log = []
    clock = FakeClock()

    def timed(name, seconds):
        def run():
            log.append(name)
            clock.now += seconds
            return name

        return run

    def crashes():
        log.append("peer")
        raise OSError("could not unlink the shared memory file\n/torch_1: gone")

    flaky_times = iter([1.5, 2.5])

    def flaky():
        log.append("flaky")
        clock.now += next(flaky_times)  # the third run raises StopIteration: a crash

    rounds = Rounds({"ours": Side(timed("ours", 1.0)), "peer": Side(crashes, fallible=True),
                     "flaky": Side(flaky, fallible=True)}, clock=clock)
    rounds.warm_up("peer", 1)
    rounds.run(2)
    assert rounds.failed == {"peer": "OSError: /torch_1: gone"} and rounds.warmups["peer"] == 0
    assert log.count("peer") == 1 and rounds.times["ours"] == [1.0] * 2
    assert rounds.ratios("flaky", "ours") == [1.5, 2.5] and rounds.ratios("peer", "ours") == []
    verdict = targets.settle(_target(1.8), rounds, "flaky", "ours", budget=1e9)  # undecided; the rerun crashes
    assert (verdict.status, verdict.settle_rounds) == ("undecided", 1) and rounds.failed["flaky"] == "StopIteration"
    rounds.run(5)
    assert log.count("flaky") == 3 and rounds.times["ours"] == [1.0] * 5
    with pytest.raises(OSError):
        Rounds({"ours": Side(crashes)}).round()  # not fallible: the run fails

    def wrong(result):
        raise methods.BenchCheckError("wrong pixels")

    def wrong_inside():
        raise methods.BenchCheckError("wrong labels")

    with pytest.raises(methods.BenchCheckError, match="wrong pixels"):
        Rounds({"peer": Side(timed("peer", 1.0), check=wrong, fallible=True)}, clock=clock).round()
    with pytest.raises(methods.BenchCheckError, match="wrong labels"):
        Rounds({"peer": Side(wrong_inside, fallible=True)}).round()


def _sleeper(seconds, log, name):
    def run():
        log.append(name)
        time.sleep(seconds)

    return run


def test_a_best_of_side_is_the_setting_with_the_lowest_median_and_is_settled_on_it(tmp_path):
    images = inputs.ImageSet(np.zeros((5, 2, 2, 3), np.uint8), np.zeros(5, np.int64), None, "five")
    target = targets.Target("fast against the slow ones, best", "plugged", "fast", 5, "speedup", ">=", 1.5,
                            baseline="slow-best")
    missing = targets.Target("fast against the missing ones", "plugged", "fast", 5, "speedup", ">=", 1.5,
                             baseline="missing-best")
    run = harness.Harness(images, [], [], [5], repeat=2, budget=10.0, workers=0, workdir=str(tmp_path),
                          targets=[target, missing], settle_budget=5.0)
    log = []
    trials = {"slow-a": Trial(_sleeper(0.03, log, "slow-a"), fields={"title": "slow, setting a"}),
              "slow-b": Trial(_sleeper(0.01, log, "slow-b"), fields={"title": "slow, setting b"}),
              "missing-0": Trial.unavailable("nothing is not installed (pip install nothing)", {"title": "m0"}),
              "missing-1": Trial.unavailable("nothing is not installed (pip install nothing)"),
              "fast": Trial(_sleeper(0.001, log, "fast"))}
    best = {"slow-best": ("slow-a", "slow-b"), "missing-best": ("missing-0", "missing-1")}
    rows = run.side_by_side("plugged", 5, trials, [("slow-best", "fast"), ("missing-best", "fast")], best=best)
    by_name = {row["method"]: row for row in rows}
    assert [row["method"] for row in rows] == ["slow-a", "slow-b", "slow-best", "missing-0", "missing-1",
                                               "missing-best", "fast"]
    chosen = by_name["slow-best"]
    assert (chosen["best_of"], chosen["chosen"], chosen["title"]) == (["slow-a", "slow-b"], "slow-b",
                                                                      "slow, setting b")
    assert chosen["times"] == by_name["slow-b"]["times"] and by_name["fast"]["speedup"] > 1.5
    assert by_name["missing-0"]["skipped"] == "nothing is not installed (pip install nothing)"
    assert by_name["missing-0"]["title"] == "m0" and by_name["missing-best"]["skipped"].startswith("nothing is")
    assert "missing-0" not in log and "missing-1" not in log
    [comparison] = run.comparisons  # the pair with nothing timed is not compared
    assert comparison["sides"] == ["slow-b", "fast"] and comparison["baseline"] == "slow-best"
    # One warm-up and two rounds of everything; the settling (if any) reran the chosen setting alone.
    assert log.count("slow-a") == 3 and log.count("slow-b") == log.count("fast") == 3 + comparison["settle_rounds"]
    found = targets.evaluate_targets([target, missing], run.rows + rows, run.comparisons, METHODS,
                                     {("plugged", "fast")}, command._sides_not_timed(rows))
    assert [t["status"] for t in found] == ["met", "skipped: nothing is not installed (pip install nothing)"]


def test_judging_slowdowns_single_values_and_single_rounds():
    within = _target(3.0, "<=", "slowdown")
    assert targets.judge(within, [0.5, 0.5]).status == "met"  # imgconv takes twice the baseline's time
    assert targets.judge(within, [0.25, 0.25]).status == "MISSED"
    assert targets.judge(within, [0.5]).status == "undecided"  # one round: no spread to judge
    disk = targets.Target("disk", "disk", "lmdb", 100, "disk_ratio", "<=", 1.05)
    assert targets.judge(disk, value=1.02).status == "met" and targets.judge(disk, value=1.2).status == "MISSED"
    assert within.text == "within 3x" and _target(20).text == ">= 20x"


def test_targets_are_judged_only_at_the_size_they_are_set_for():
    target = targets.Target("LMDB read", "read-many", "lmdb", 1000, "speedup", ">=", 20)
    disk = targets.Target("LMDB disk", "disk", "lmdb", 1000, "disk_ratio", "<=", 1.05)
    absent = targets.Target("memory", "memory", "lmdb", 1000, "tree_anon_mb", "<=", 300)

    def run(images):
        rows = [{"experiment": "read-many", "method": "lmdb", "images": images, "baseline": "classic-lmdb",
                 "speedup": 10.0},
                {"experiment": "disk", "method": "lmdb", "images": images, "disk_ratio": 1.02}]
        comparisons = [{"experiment": "read-many", "method": "lmdb", "baseline": "classic-lmdb", "images": images,
                        "ratios": [10.0, 10.0]}]
        found = targets.evaluate_targets([target, disk, absent], rows, comparisons, METHODS,
                                         {("read-many", "lmdb"), ("disk", "lmdb")})
        return [t["status"] for t in found], rows

    statuses, rows = run(100)
    assert statuses == [targets.NOT_MEASURED, targets.NOT_MEASURED, targets.NOT_RUN]
    assert all("status" not in row for row in rows)
    statuses, rows = run(1000)
    assert statuses == ["MISSED", "met", targets.NOT_RUN]
    assert [(row["target"], row["status"]) for row in rows] == [(">= 20x", "MISSED"), ("<= 1.05x", "met")]


@pytest.mark.parametrize("value", ["24x3000", "0x10x10", "axbxc"])
def test_memory_photos_must_be_count_width_height(value, capsys):
    assert cli.main(["bench", "--experiments", "memory", "--memory-photos", value]) == 2
    assert "argument --memory-photos" in capsys.readouterr().err


def test_opt_in_scale_experiment_runs_small(tmp_path, capsys):
    pytest.importorskip("distributed")
    status = cli.main(["bench", "--experiments", "scale", "--cutoffs", "40", "--scale-sizes", "40", "--repeat", "1",
                       "--settle", "0", "--no-plots", "--workers", "2", *_dirs(tmp_path)])
    assert status == 0
    text = capsys.readouterr().out
    assert "a Dask LocalCluster against the local pool" in text and "shards of 4 images" in text
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["parameters"]["scale"] == {"workers": 2, "shard_images": 4, "sizes": [40]}
    rows = {r["method"]: r for r in results["rows"] if r["experiment"] == "scale"}
    assert set(rows) == set(EXPERIMENTS["scale"].sides) and all(r["images"] == 40 for r in rows.values())
    for fmt in ("lmdb", "hdf5", "png"):
        assert rows[f"dask-{fmt}"]["baseline"] == f"local-{fmt}" and rows[f"dask-{fmt}"]["speedup"] > 0
        assert rows[f"dask-worker-{fmt}"]["worker_peak_anon_mb"] > 0 and "growth" not in rows[f"dask-worker-{fmt}"]
        model = rows[f"model-{fmt}"]
        assert (model["shards"], model["small_shards"]) == (10, 40) and model["busy"] > 0 and model["driver_s"] > 0
    for fmt in ("lmdb", "hdf5"):
        for how in ("batches", "all"):
            assert rows[f"dataset-{fmt}-{how}"]["baseline"] == f"store-{fmt}-{how}"
    assert list((tmp_path / "tmp").iterdir()) == []


def test_scaling_model_splits_shard_and_image_costs():
    from imgconv.bench.scale import scaling_model

    def tasks_time(shards, per_shard=0.2, per_image=3e-4, workers=2, count=10_000):
        return (shards * per_shard + count * per_image) / workers

    per_shard, per_image = scaling_model(2, 10_000, (10, tasks_time(10)), (100, tasks_time(100)))
    assert per_shard == pytest.approx(0.2) and per_image == pytest.approx(3e-4)


def test_scale_growth_is_the_larger_size_against_the_smaller():
    from imgconv.bench import scale

    rows = [{"method": "dask-worker-lmdb", "images": n, "worker_peak_anon_mb": mb}
            for n, mb in ((10, 50.0), (100, 60.0))]
    scale._growth(rows)
    assert "growth" not in rows[0] and rows[1]["growth"] == pytest.approx(1.2)


# --------------------------------------------------------------------------- targets as data


def test_the_packaged_targets_name_registered_experiments_and_sides():
    found = targets.load_targets()
    targets.check_targets(found, EXPERIMENTS, METHODS)
    assert len(found) == 48 and all(t.images in (50_000, 100_000, 1_000_000) for t in found)
    assert {t.experiment for t in found} == {"read-many", "store-many", "disk", "random-one", "kernels", "convert",
                                             "memory", "loader", "scale"}


@pytest.mark.parametrize("text, message", [
    ("[[target]]\nwhat = 'x'\n", "'experiment' is missing"),
    ("[[target]]\nwhat = 'x'\nexperiment = 'read-many'\nmethod = 'lmdb'\nimages = 10\nmeasure = 'speedup'\n",
     "exactly one of at_least or at_most"),
    ("[[target]]\nwhat = 'x'\nexperiment = 'nope'\nmethod = 'lmdb'\nimages = 10\nmeasure = 'speedup'\n"
     "at_least = 2\n", "no experiment 'nope'"),
    ("[[target]]\nwhat = 'x'\nexperiment = 'read-many'\nmethod = 'classic-lmdb'\nimages = 10\n"
     "measure = 'speedup'\nat_least = 2\n", "needs a baseline"),
    ("[[target]]\nwhat = 'x'\nexperiment = 'read-many'\nmethod = 'lmdb'\nimages = 0\nmeasure = 'speedup'\n"
     "at_least = 2\n", "whole number above 0"),
    ("[[target]\n", "not a valid TOML"),
])
def test_a_bad_targets_file_is_an_error_naming_it(tmp_path, capsys, text, message):
    path = tmp_path / "mine.toml"
    path.write_text(text)
    status = cli.main(["bench", "--targets", str(path), "--experiments", "disk", "--cutoffs", "10",
                       *_dirs(tmp_path)])
    err = capsys.readouterr().err
    assert status == 1 and "mine.toml" in err and message in err


# --------------------------------------------------------------------------- plug-ins


def _npz_store(path, images, labels, env):
    np.savez(path, images=images, labels=labels)


def _npz_read(path, count, env):
    with np.load(path) as data:
        return data["images"], data["labels"]


class _NpzReader:
    def __init__(self, path, count):
        self.images, self.labels = _npz_read(path, count, None)

    def read_one(self, index):
        return self.images[index], int(self.labels[index])

    def read_batch(self, indices):
        return self.images[indices], self.labels[indices]

    def close(self):
        pass


def _plugged(harness):
    trials = {"slow": Trial(lambda: time.sleep(0.002)), "fast": Trial(lambda: None, fields={"note": "plugged"})}
    harness.parameters["plugged"] = {"quick": harness.quick}
    return harness.side_by_side("plugged", 5, trials, [("slow", "fast")])


@pytest.fixture
def plugged(monkeypatch):
    """A peer-like method (opt-in group "plugged", measured against lmdb) and an alone experiment, registered."""
    method = Method("npz-peer", "npz", "peer", "np.savez / np.load", "NPZ", store=_npz_store, read_all=_npz_read,
                    open_reader=_NpzReader, suffix=".npz", baseline="lmdb", group="plugged",
                    versions=lambda: {"npz-peer": "1.0"})
    missing = Method("missing-peer", "nothing", "peer", "needs a module that is not there", "None",
                     store=_npz_store, read_all=_npz_read, requires=("imgconv_no_such_module",),
                     install="pip install nothing", group="plugged")
    monkeypatch.setitem(METHODS, method.name, method)
    monkeypatch.setitem(METHODS, missing.name, missing)
    exp = Experiment("plugged", "a plugged-in experiment", "alone", _plugged, sides=("slow", "fast"))
    monkeypatch.setitem(EXPERIMENTS, exp.name, exp)
    return method


def test_a_plugged_in_method_and_experiment_appear_in_the_table_and_json(tmp_path, capsys, plugged):
    mine = tmp_path / "targets.toml"
    mine.write_text("[[target]]\nwhat = 'the plugged experiment, fast against slow'\nexperiment = 'plugged'\n"
                    "method = 'fast'\nbaseline = 'slow'\nimages = 5\nmeasure = 'speedup'\nat_least = 1.5\n")
    status = cli.main(["bench", "--plugged", "--methods", "lmdb", "--experiments", "read-many", "disk", "plugged",
                       "--cutoffs", "10", "--repeat", "1", "--settle", "5", "--targets", str(mine), "--no-plots",
                       *_dirs(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = {(r["experiment"], r["method"]): r for r in results["rows"]}
    peer = rows[("read-many", "npz-peer")]
    assert (peer["family"], peer["format"], peer["baseline"]) == ("peer", "npz", "lmdb")
    assert peer["speedup"] > 0 and len(peer["ratios"]) == 1
    assert rows[("disk", "npz-peer")]["bytes"] > 0
    assert rows[("plugged", "fast")]["note"] == "plugged" and rows[("plugged", "fast")]["speedup"] > 1
    assert results["methods"]["npz-peer"] == {"family": "peer", "format": "npz", "label": "NPZ",
                                              "title": "np.savez / np.load", "baseline": "lmdb", "group": "plugged",
                                              "doc": "", "skipped": None}
    assert results["methods"]["missing-peer"]["skipped"] == ("imgconv_no_such_module is not installed "
                                                             "(pip install nothing)")
    assert results["versions"]["npz-peer"] == "1.0" and results["parameters"]["plugged"] == {"quick": False}
    assert [(t["what"], t["status"]) for t in results["targets"]] == [("the plugged experiment, fast against slow",
                                                                       "met")]
    assert results["targets"][0]["rounds"] >= 2  # one round cannot judge: it was rerun

    read_block = out.split("read every image")[1].split("\n\n")[0]
    assert "baseline" in read_block and "measured" in read_block  # not a classic/imgconv pair
    assert any(line.split()[:2] == ["NPZ", "10"] for line in read_block.splitlines())
    assert "a plugged-in experiment" in out and "fast" in out
    assert "skipped: missing-peer: imgconv_no_such_module is not installed" in out
    assert "met          the plugged experiment, fast against slow" in out
    assert [r["method"] for r in results["rows"] if r["experiment"] == "read-many"] == ["lmdb", "npz-peer"]


def test_an_opt_in_group_gets_its_flag_only_when_registered(plugged, monkeypatch):
    import argparse

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    assert "--plugged" in parser.format_help() and "npz-peer" in parser.format_help()
    monkeypatch.delitem(METHODS, "npz-peer")
    monkeypatch.delitem(METHODS, "missing-peer")
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    assert "--plugged" not in parser.format_help()


def test_registries_refuse_duplicates_and_unknown_baselines():
    with pytest.raises(ValueError, match="already registered"):
        methods.register_method(METHODS["lmdb"])
    with pytest.raises(ValueError, match="baseline 'nope'"):
        methods.register_method(dataclasses.replace(METHODS["lmdb"], name="x", baseline="nope"))
    with pytest.raises(ValueError, match="already registered"):
        harness.register_experiment(EXPERIMENTS["disk"])
    with pytest.raises(ValueError, match="grid must be"):
        harness.register_experiment(Experiment("y", "y", "diagonal", lambda h: []))


# --------------------------------------------------------------------------- the cache


def test_clear_cache_removes_the_cached_sample_and_nothing_else(tmp_path, capsys):
    cache = tmp_path / "cache"
    (cache / "sample-60000").mkdir(parents=True)
    (cache / "sample-60000" / "cifar-10-python.tar.gz").write_bytes(b"x" * 1000)
    (cache / "sample-1000.npz").write_bytes(b"y" * 500)
    (cache / "notes.txt").write_text("mine")
    assert cli.main(["bench", "--cache", str(cache), "--clear-cache"]) == 0
    assert "removed 2 cached sample file(s)" in capsys.readouterr().out
    assert sorted(os.listdir(cache)) == ["notes.txt"]
    os.unlink(cache / "notes.txt")
    assert inputs.clear_cache(str(cache)) == ([], 0) and not cache.exists()  # an empty cache directory goes too
