"""The conversion benchmark: a tiny run reports every comparison, and wrong pixels fail it."""
import json
import subprocess
import sys

import numpy as np
import pytest

from imgconv.bench import classic
from imgconv.bench import convert as bench_convert

TINY = ["--count", "60", "--png-count", "40", "--memory-count", "30", "--memory-large", "90", "--repeat", "1"]


def test_tiny_run_reports_every_comparison(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "imgconv.bench.convert", *TINY, "--workdir", str(tmp_path),
         "--cache", str(tmp_path / "cache"), "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    whats = [c["what"] for c in report["comparisons"]]
    for what, _, _, _ in bench_convert.COMPARISONS:
        assert what in whats
    memory = {(row["format"], row["images"]) for row in report["rows"] if row["bench"] == "memory"}
    assert memory == {("png", 30), ("lmdb", 30), ("hdf5", 30), ("lmdb", 90), ("hdf5", 90)}
    assert sum(w.startswith("anonymous memory growth") for w in whats) == 2
    for row in report["rows"]:
        assert row["seconds"] > 0
        if row["bench"] == "memory":
            assert row["tree_anon_mb"] > 0 and row["tree_file_mb"] > 0
    # Only the work directory's sample cache is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "cache"]


def _flip_first_pixel(images):
    images = np.array(images)
    images[0, 0, 0, 0] ^= 0xFF
    return images


@pytest.mark.parametrize("bench, target, name", [
    ("png", bench_convert, "load"),
    ("png", classic, "read_png_files"),
    ("cifar", classic, "read_lmdb_pickles"),
])
def test_wrong_pixels_fail_the_run(tmp_path, monkeypatch, bench, target, name):
    original = getattr(target, name)

    def wrong(*args, **kwargs):
        images, labels = original(*args, **kwargs)
        return _flip_first_pixel(images), labels

    monkeypatch.setattr(target, name, wrong)
    with pytest.raises(AssertionError, match="wrong pixels"):
        bench_convert.main(["--bench", bench, *TINY, "--workdir", str(tmp_path), "--cache", str(tmp_path / "cache")])
