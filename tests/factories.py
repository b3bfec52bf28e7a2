"""Image factories and store helpers shared by the test modules (``from factories import ...``)."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading

import h5py
import numpy as np
import pytest

from imgconv import stores

FORMATS = ["lmdb", "hdf5", "png"]
SUFFIX = {"lmdb": ".lmdb", "hdf5": ".h5", "png": "_png"}


def make_images(n, shape=(5, 4, 3), seed=0):
    """``n`` random uint8 images of one ``shape``, as an (n, *shape) array."""
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def varying_images(n, seed=0):
    """Images of varying sizes, grayscale (2-D and C=1) and colour mixed."""
    rng = np.random.default_rng(seed)
    shapes = [(rng.integers(1, 9), rng.integers(1, 9), (1, 3, 4)[i % 3]) for i in range(n)]
    return [rng.integers(0, 256, s if i % 5 else s[:2] if s[2] == 1 else s, dtype=np.uint8)
            for i, s in enumerate(shapes)]


def as_hwc(image):
    """A 2-D image as (H, W, 1), as a store gives it back."""
    return image[:, :, None] if image.ndim == 2 else image


def target(tmp_path, fmt, name="store"):
    """The path of a store of format ``fmt`` called ``name`` in ``tmp_path``."""
    return str(tmp_path / (name + SUFFIX[fmt]))


def write(path, images, labels, batch=3, fmt=None, **options):
    """Write a store at ``path``, ``batch`` images per append; returns ``path``."""
    with stores.create(path, fmt, **options) as writer:
        for start in range(0, len(images), batch):
            writer.append(images[start : start + batch], labels[start : start + batch])
    return path


def leftovers(directory):
    """What a writer may leave beside its target while it works: temporary and partial outputs."""
    return [name for name in os.listdir(directory)
            if ".tmp-" in name or ".old-" in name or name.endswith(".imgconv-partial")]


def tree_digest(path):
    """A SHA-256 over the names and bytes of the files of a store (LMDB's lock file left out)."""
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(d, f) for d, _, names in os.walk(path) for f in names if f != "lock.mdb"
    )
    h = hashlib.sha256()
    for name in files:
        h.update(os.path.relpath(name, path).encode())
        with open(name, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def change_label(path, fmt, index, label):
    """Change the stored label of image ``index`` of an HDF5 store or a PNG folder, behind the store's back."""
    if fmt == "hdf5":
        with h5py.File(path, "r+") as f:
            f["labels"][index] = label
        return
    name = os.path.join(path, "labels.csv")
    rows = open(name).read().splitlines()
    cells = rows[index + 1].split(",")
    cells[2] = str(label)
    rows[index + 1] = ",".join(cells)
    open(name, "w").write("\n".join(rows) + "\n")


def run_without_write_access(script):
    """Run Python ``script`` as a user whom a chmod 555 directory stops.

    Root ignores file modes, so as root the script runs as nobody (setpriv);
    without setpriv the test is skipped, since it could not fail.
    """
    if os.geteuid() != 0:
        command = [sys.executable, "-c", script]
    elif shutil.which("setpriv"):
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", script]
    else:
        pytest.skip("running as root without setpriv: root writes into a chmod 555 directory, "
                    "so this test could not fail")
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def finishes(function, fifo, seconds=20):
    """``("ok", result)`` or ``("error", exception)`` of ``function()`` run in a thread; None when it blocked.

    A reader found still running after ``seconds`` is taken to be stuck on
    the FIFO ``fifo`` and released (opening the FIFO for writing lets it see
    end-of-file), and None is returned: the test fails on that.
    """
    outcome = []

    def run():
        try:
            outcome.append(("ok", function()))
        except Exception as exc:  # handed to the test, which checks it
            outcome.append(("error", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        return None
    return outcome[0]
