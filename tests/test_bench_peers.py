"""bench --peers: the peers measured beside imgconv's stores, skipped when absent, checked, their writers' memory
taken in child processes that never hang the run and never delete what other programs keep in /dev/shm."""
import importlib.util
import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from imgconv.bench import command
from imgconv.bench.harness import EXPERIMENTS
from imgconv.bench.methods import METHODS, BenchCheckError, same_data
from imgconv.bench.peers import PEERS, child, common, runner

command.load_plugins()

# The peers cheap enough for the default suite (webdataset and datasets, CI's set; the PNG variant of
# WebDataset is the same adapter); every peer runs under -m slow.
QUICK_PEERS = ("webdataset-raw", "hf-datasets")
# Hidden from the quick run's harness so that it measures the same sides wherever it runs.
HIDDEN = ("litdata", "streaming")
FIGURES = ("store-many", "read-many", "random-batch", "disk", "peers")
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
HAS_SHM = os.path.isdir("/dev/shm")


def _installed(names):
    return [name for name in names if METHODS[name].skip_reason() is None]


def _bench(tmp_path, *args, prelude="", during=None):
    """Run ``python -m imgconv bench ARGS`` in a child process (``prelude`` first); ``during()`` while it runs."""
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    argv = ["bench", "--repeat", "1", "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"),
            "--tmp", str(tmp), "--quiet", *args]
    code = f"{prelude}\nfrom imgconv import cli\nraise SystemExit(cli.main({argv!r}))\n"
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if during is not None:
        during(process)
    stdout, stderr = process.communicate(timeout=600)
    results_path = tmp_path / "out" / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else None
    return process.returncode, stdout, stderr, results, tmp


class Semaphores:
    """Named POSIX semaphores of this process, made while a bench runs (multiprocessing's, as another program's)."""

    def __init__(self):
        self.context = multiprocessing.get_context("spawn")  # spawn keeps the name in /dev/shm while it lives
        self.made = []

    def make(self):
        semaphore = self.context.Semaphore(1)
        self.made.append(semaphore)
        return semaphore

    def path(self, semaphore):
        return "/dev/shm/sem." + semaphore._semlock.name.lstrip("/")

    def while_running(self, process, every=0.1):
        while process.poll() is None:
            self.make()
            time.sleep(every)

    def missing(self):
        return [self.path(s) for s in self.made if not os.path.exists(self.path(s))]


# --------------------------------------------------------------------------- whole runs


@pytest.mark.skipif(not _installed(QUICK_PEERS), reason="neither webdataset nor datasets is installed")
def test_quick_peers_run_measures_checks_and_keeps_other_programs_semaphores(tmp_path):
    semaphores = Semaphores()
    names = ["lmdb", *QUICK_PEERS, "litdata", "mosaic-mds"]
    prelude = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in HIDDEN)
    code, out, err, results, tmp = _bench(
        tmp_path, "--cutoffs", "200", "--methods", *names, "--experiments", *FIGURES, prelude=prelude,
        during=semaphores.while_running if HAS_SHM else None)
    assert code == 0, err
    assert results["status"] == "complete"
    measured = ["lmdb", *_installed(QUICK_PEERS)]
    rows = {(row["experiment"], row["method"]): row for row in results["rows"]}
    for name in measured:
        for experiment in FIGURES:
            if experiment != "random-batch" or METHODS[name].open_reader is not None:
                assert rows[(experiment, name)]["images"] == 200
        assert rows[("store-many", name)]["seconds"] > 0 and rows[("read-many", name)]["seconds"] > 0
        assert rows[("disk", name)]["disk_ratio"] > 0
        peers_row = rows[("peers", name)]
        assert peers_row["status"] == "measured" and peers_row["version"]
        assert peers_row["tree_anon_mb"] > 0 and peers_row["processes"] >= 1 and peers_row["seconds"] > 0
    for name in measured[1:]:
        assert rows[("read-many", name)]["baseline"] == "lmdb" and rows[("read-many", name)]["speedup"] > 0
        assert results["versions"][next(iter(METHODS[name].versions()))]  # its package's version is recorded
        assert results["methods"][name]["doc"].startswith("https://")
    if "webdataset-raw" in measured:
        assert ("random-batch", "webdataset-raw") not in rows and rows[("peers", "webdataset-raw")][
            "random_access"] is False
        assert "webdataset-raw: no random access" in out
    if "hf-datasets" in measured:
        assert rows[("random-batch", "hf-datasets")]["seconds"] > 0
    for name, module in (("litdata", "litdata"), ("mosaic-mds", "streaming")):
        reason = f'{module} is not installed (pip install "imgconv[peers]")'
        assert results["methods"][name]["skipped"] == reason
        assert f"skipped {name}: {reason}" in out
    assert "imgconv and its peers" in out and "best imgconv LMDB" in out
    assert list(tmp.iterdir()) == []  # every store and scratch directory removed
    if HAS_MATPLOTLIB:
        assert (tmp_path / "out" / "peers.png").stat().st_size > 0
    if HAS_SHM:
        assert len(semaphores.made) >= 5
        assert semaphores.missing() == []
        for semaphore in semaphores.made:  # still the same working semaphores
            assert semaphore.acquire(timeout=1)
            semaphore.release()


@pytest.mark.slow
def test_every_installed_peer_runs_beside_every_store(tmp_path):
    code, out, err, results, _ = _bench(tmp_path, "--cutoffs", "300", "--methods", "lmdb", "hdf5", "png", "--peers",
                                        "--experiments", *FIGURES)
    assert code == 0, err
    rows = {(row["experiment"], row["method"]): row for row in results["rows"]}
    for peer in PEERS:
        reason = results["methods"][peer.name]["skipped"]
        if reason is not None:
            assert f"skipped {peer.name}: {reason}" in out
            continue
        assert rows[("peers", peer.name)]["status"] == "measured"
        for experiment in ("store-many", "read-many", "disk"):
            assert rows[(experiment, peer.name)]["images"] == 300
        assert ((("random-batch", peer.name) in rows) == (peer.open_reader is not None))
    for name in ("lmdb", "hdf5", "png"):
        assert rows[("peers", name)]["status"] == "measured"


GHOST = """
from imgconv.bench import command
from imgconv.bench.methods import METHODS, Method, register_method
from imgconv.bench.peers.common import GROUP

command.load_plugins()
# Registered in this process only: the writer's child process does not know it.
register_method(Method("ghost", "ghost", "peer", "a peer only the parent knows", "Ghost",
                       store=METHODS["lmdb"].store, read_all=METHODS["lmdb"].read_all, baseline="lmdb", group=GROUP))
"""


def test_a_failing_side_fails_the_run_and_keeps_what_was_measured(tmp_path):
    code, out, err, results, tmp = _bench(tmp_path, "--cutoffs", "50", "--methods", "lmdb", "ghost",
                                          "--experiments", "peers", prelude=GHOST)
    assert code != 0
    assert "ghost write failed: ghost: KeyError" in err
    assert results["status"].startswith("failed: ghost write failed")
    sides = {row["method"]: row for row in results["rows"] if row["experiment"] == "peers"}
    assert sides["lmdb"]["status"] == "measured" and sides["lmdb"]["tree_anon_mb"] > 0
    assert sides["ghost"]["status"].startswith("failed: ghost write failed")
    assert list(tmp.iterdir()) == []


# --------------------------------------------------------------------------- selection and registration


def test_the_peers_flag_adds_every_peer_and_the_experiment():
    import argparse

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    chosen, experiments, _, _ = command._selection(parser.parse_args(["--peers"]))
    names = {m.name for m in chosen} | {m for m in _skipped(parser, ["--peers"])}
    assert names >= {peer.name for peer in PEERS} and "peers" in [e.name for e in experiments]
    plain, plain_experiments, _, _ = command._selection(parser.parse_args([]))
    assert not {m.name for m in plain} & {peer.name for peer in PEERS}
    assert "peers" not in [e.name for e in plain_experiments]
    some = parser.parse_args(["--methods", "lmdb", "hf-datasets", "--experiments", "read-many", "peers"])
    assert [m for names in some.methods for m in names] == ["lmdb", "hf-datasets"]
    assert "peers" in parser.format_help() and "litdata" in parser.format_help()
    for peer in PEERS:
        assert peer.group == "peers" and peer.baseline == "lmdb" and peer.family == "peer"
        assert peer.install == 'pip install "imgconv[peers]"' and peer.doc and peer.versions is not None
    assert EXPERIMENTS["peers"].group == "peers" and not EXPERIMENTS["peers"].default


def _skipped(parser, argv):
    return command._selection(parser.parse_args(argv))[2]


def test_registering_the_peers_and_their_versions_import_none_of_them():
    code = ("import sys\nfrom imgconv.bench import command\ncommand.load_plugins()\n"
            "from imgconv.bench.peers import PEERS\nfor p in PEERS: p.versions()\n"
            "print(sorted(m for m in ('litdata', 'streaming', 'webdataset', 'datasets', 'torch', 'matplotlib') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_broken_install_is_skipped_with_the_import_error(monkeypatch):
    def failing_import(name):
        raise RuntimeError("operator torchvision::nms does not exist\nand more lines")

    monkeypatch.setattr(common.importlib, "import_module", failing_import)
    probe = common.import_probe("mosaicml-streaming", "streaming")
    assert probe() == ("mosaicml-streaming is installed but `import streaming` fails: RuntimeError: operator "
                       "torchvision::nms does not exist")


# --------------------------------------------------------------------------- checks


def test_samples_missing_twice_or_out_of_range_are_wrong_data():
    collector = common.Collector(3, "a peer's full read")
    collector.add(0, np.zeros((2, 2), np.uint8), 1)
    collector.add(2, np.zeros((2, 2), np.uint8), 1)
    with pytest.raises(BenchCheckError, match="a peer's full read: 1 of 3 samples missing"):
        collector.result()
    with pytest.raises(BenchCheckError, match="sample 2 twice"):
        collector.add(2, np.zeros((2, 2), np.uint8), 1)
    with pytest.raises(BenchCheckError, match="sample 3 out of range"):
        collector.add(3, np.zeros((2, 2), np.uint8), 1)
    collector.add(1, np.ones((2, 2), np.uint8), 7)
    images, labels = collector.result()
    assert images.shape == (3, 2, 2, 1) and labels.tolist() == [1, 7, 1]


def test_images_of_another_dtype_are_wrong_data():
    images = np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3)
    labels = np.array([0, 1])
    assert same_data((images.copy(), labels), images, labels)
    # What HF datasets' numpy format returns without dtype=np.uint8: the same values, 8 bytes each.
    assert not same_data((images.astype(np.int64), labels), images, labels)


def test_the_source_is_mapped_not_read(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(20, dtype=np.int64)
    np.savez(tmp_path / "images.npz", images=images, labels=labels)
    got_images, got_labels = common.map_npz(str(tmp_path / "images.npz"), 15)
    assert isinstance(got_images, np.memmap) and np.array_equal(got_images, images[:15])
    assert np.array_equal(got_labels, labels[:15])


def test_a_private_tempdir_is_used_and_removed(tmp_path):
    import tempfile

    before = tempfile.gettempdir(), os.environ.get("TMPDIR")
    with common.private_tempdir(str(tmp_path / "store")) as scratch:
        assert tempfile.gettempdir() == scratch and os.environ["TMPDIR"] == scratch
        assert os.path.dirname(scratch) == str(tmp_path)
        open(os.path.join(scratch, "working-file"), "w").close()
    assert (tempfile.gettempdir(), os.environ.get("TMPDIR")) == before
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the child processes


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


HANGING = textwrap.dedent("""
    import subprocess, sys, time
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print("grandchild", grandchild.pid, flush=True)
    time.sleep(600)
""")


def test_a_hanging_writer_is_killed_with_its_processes_and_fails_the_run(tmp_path):
    spec = {"action": "write", "method": "hanging", "count": 10}
    scratch = tmp_path / "scratch"
    started = time.perf_counter()
    with pytest.raises(runner.PeerRunError, match="hanging write of 10 images overran its time limit of 2 s"):
        runner.run_child(spec, str(scratch), 2.0, command=(sys.executable, "-c", HANGING))
    assert time.perf_counter() - started < 30
    printed = (scratch / "stderr.txt").read_text().split()
    grandchild = int(printed[printed.index("grandchild") + 1])
    assert not _alive(grandchild)


LINGERING = textwrap.dedent("""
    import json, subprocess, sys
    # Processes the child leaves when it ends: one finishes its clean-up in a moment, one never ends.
    cleaned, spec, result = sys.argv[1:4]
    cleaning = subprocess.Popen([sys.executable, "-c", "import sys, time; time.sleep(1); open(sys.argv[1], 'w')",
                                 cleaned])
    stuck = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print("stuck", stuck.pid, flush=True)
    json.dump({"ok": {"done": 1}}, open(result, "w"))
""")


def test_what_a_writer_leaves_running_may_finish_its_clean_up_then_is_killed(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "GRACE_SECONDS", 4.0)
    cleaned = tmp_path / "cleaned"
    scratch = tmp_path / "scratch"
    result, memory = runner.run_child({"action": "write", "method": "lingering", "count": 1}, str(scratch), 60.0,
                                      command=(sys.executable, "-c", LINGERING, str(cleaned)))
    assert result == {"done": 1} and memory["tree_anon_mb"] >= 0
    assert cleaned.exists()  # not killed before it was done
    printed = (scratch / "stderr.txt").read_text().split()
    assert not _alive(int(printed[printed.index("stuck") + 1]))


def test_a_writer_that_dies_without_a_result_fails_the_run_with_its_output(tmp_path):
    spec = {"action": "write", "method": "dying", "count": 10}
    with pytest.raises(runner.PeerRunError, match=r"(?s)dying write: the child process ended \(3\).*last words"):
        runner.run_child(spec, str(tmp_path / "scratch"), 60.0,
                         command=(sys.executable, "-c", "import sys; print('last words'); sys.exit(3)"))


def test_wrong_data_reported_by_a_writer_fails_the_run(tmp_path):
    code = "import json, sys; json.dump({'failed': 'check', 'message': 'x: wrong'}, open(sys.argv[2], 'w'))"
    with pytest.raises(BenchCheckError, match="x: wrong: the run fails"):
        runner.run_child({"action": "write", "method": "x", "count": 1}, str(tmp_path / "scratch"), 60.0,
                         command=(sys.executable, "-c", code))


def test_a_writers_caches_go_to_its_scratch_directory(tmp_path):
    scratch = tmp_path / "scratch"
    code = ("import json, os, sys; open(os.path.join(os.environ['TMPDIR'], 'cache-file'), 'w'); "
            "assert os.environ['HF_HOME'] == os.environ['TMPDIR']; json.dump({'ok': {'x': 1}}, open(sys.argv[2], 'w'))")
    result, _ = runner.run_child({"action": "write", "method": "quiet", "count": 1}, str(scratch), 60.0,
                                 command=(sys.executable, "-c", code))
    assert result == {"x": 1}
    assert (scratch / "cache-file").exists()  # the caller removes the scratch directory with the store
    assert os.environ.get("TMPDIR") != str(scratch)


WAITING = textwrap.dedent("""
    import json, os, sys, time
    started, go, spec, result = sys.argv[1:5]
    open(started, "w").close()
    while not os.path.exists(go):
        time.sleep(0.02)
    json.dump({"ok": {}}, open(result, "w"))
""")


@pytest.mark.skipif(not HAS_SHM, reason="no /dev/shm")
def test_a_semaphore_another_process_makes_while_a_writer_runs_survives(tmp_path):
    """Regression: the runner deleted /dev/shm entries that appeared while a child ran unless /proc showed them
    in use, and a semaphore's mapping shows a temporary name: other programs' semaphores were deleted."""
    semaphores = Semaphores()
    started, go = tmp_path / "started", tmp_path / "go"

    def make_one_while_it_runs():
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        semaphores.make()
        go.touch()

    helper = threading.Thread(target=make_one_while_it_runs)
    helper.start()
    try:
        runner.run_child({"action": "write", "method": "waiting", "count": 1}, str(tmp_path / "scratch"), 60.0,
                         command=(sys.executable, "-c", WAITING, str(started), str(go)))
    finally:
        helper.join()
    assert len(semaphores.made) == 1 and semaphores.missing() == []
    assert semaphores.made[0].acquire(timeout=1)
    semaphores.made[0].release()


def test_the_child_times_a_registered_methods_store(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (30, 4, 4, 3), dtype=np.uint8)
    labels = np.arange(30, dtype=np.int64) % 3
    np.savez(tmp_path / "images.npz", images=images, labels=labels)
    spec = {"action": "write", "method": "lmdb", "path": str(tmp_path / "store.lmdb"),
            "source": str(tmp_path / "images.npz"), "count": 20, "workers": 0}
    result = child.write(spec)
    assert result["seconds"] > 0
    got = METHODS["lmdb"].read_all(spec["path"], 20, None)
    assert same_data(got, images[:20], labels[:20])
