"""Stores damaged on disk: flipped bytes and truncations at seeded random offsets, every format; and
damage to the structure that says where each image is (keys, page numbers, offset tables, chunk
indices, rows), with crafted HDF5 features and special files.

Each case copies a sound store, damages one of its files, then opens it,
reads every image one by one and as one batch, and runs ``verify``. The cases
of a format run in a child process (``python tests/test_corrupt_stores.py
child ...``) that announces each case before running it, so a crash of a
library (a segfault on a crafted file) is seen as a crash of that case
instead of killing the test run.

Two campaigns: "random" damages bytes anywhere (:func:`_damage`);
"structure" (:func:`_damage_structure`) moves intact data to where another
image's belongs, the way a damaged key, page number, chunk index, offset
table or labels file would: the reads must fail, never answer with another
image.

Outcomes: the damage is refused when the store is opened; or the reads of
the damaged images fail (and ``verify`` names them) while the others read
correctly; or the damage hit bytes nothing reads (every image still reads
exactly). Never allowed: a read returning wrong pixels or labels without an
error, an error other than imgconv's, an imgconv error not naming the store,
a crash.

``python tests/test_corrupt_stores.py report [CASES [SEED [STORE ...]]]`` prints
the figures of RELIABILITY.md (default 200 cases of every store and campaign,
seed 7) and each case that crashed, hung or went wrong.
"""
import collections
import json
import os
import random
import select
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # lmdb_pages, in the child process too
from lmdb_pages import chunk_nodes, poke  # noqa: E402

# name: (format, suffix, writer options, image shape). Small chunks so that a store has
# several: damage to one must leave the others readable. "lmdb-overflow" has values of
# several pages (LMDB overflow pages), as real stores do.
STORES = {
    "lmdb": ("lmdb", ".lmdb", {"records_per_value": 8}, (8, 8, 3)),
    "lmdb-overflow": ("lmdb", ".lmdb", {"records_per_value": 16}, (16, 16, 3)),
    "lmdb-variable": ("lmdb", ".lmdb", {"records_per_value": 4}, "variable"),
    "hdf5": ("hdf5", ".h5", {"chunk_images": 8}, (8, 8, 3)),
    "hdf5-variable": ("hdf5", ".h5", {}, "variable"),
    "png": ("png", "", {}, (8, 8, 3)),
}
COUNT = 40
NAMES = ["airplane", "automobile", "bird", "cat"]
SUITE_CASES = 40  # per format in the test suite (the report runs more)


def _make_store(directory, name):
    import imgconv

    fmt, suffix, options, shape = STORES[name]
    rng = np.random.default_rng(11)
    if shape == "variable":
        shapes = np.stack([rng.integers(4, 17, COUNT), rng.integers(4, 17, COUNT), rng.choice([1, 3], COUNT)], 1)
        images = [rng.integers(0, 256, tuple(s), dtype=np.uint8) for s in shapes]
    else:
        images = rng.integers(0, 256, (COUNT, *shape), dtype=np.uint8)
    labels = rng.integers(0, len(NAMES), COUNT)
    path = os.path.join(directory, "store" + suffix)
    with imgconv.create(path, format=fmt, label_names=NAMES, **options) as writer:
        writer.append(images, labels)
    np.savez(os.path.join(directory, "expected.npz"), pixels=np.concatenate([im.reshape(-1) for im in images]),
             shapes=np.array([im.shape for im in images]), labels=labels)
    return path


def _expected(workdir):
    """(images, labels) the store of ``workdir`` was written from: a list of arrays."""
    saved = np.load(os.path.join(workdir, "expected.npz"))
    sizes = np.prod(saved["shapes"], axis=1)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    images = [saved["pixels"][a:b].reshape(s) for a, b, s in zip(starts[:-1], starts[1:], saved["shapes"])]
    return images, saved["labels"]


def _files(path):
    """The files a reader reads (LMDB readers never use lock.mdb)."""
    if os.path.isfile(path):
        return [path]
    found = []
    for root, _, names in os.walk(path):
        found.extend(os.path.join(root, n) for n in names if n != "lock.mdb")
    return sorted(found)


def _damage(rng, path):
    """Damage one file of the store at ``path`` (seeded); returns a description."""
    files = _files(path)
    name = rng.choice(files)
    size = os.path.getsize(name)
    rel = os.path.relpath(name, os.path.dirname(path))
    kind = rng.choice(["flip", "flip", "page", "page", "bytes", "run", "truncate"])
    with open(name, "r+b") as f:
        if kind == "truncate":
            cut = rng.randrange(size) if size else 0
            f.truncate(cut)
            return {"kind": "truncate", "file": rel, "at": cut, "size": size}
        original = f.read()
        data = bytearray(original)
        if kind == "page":
            # Where the structure lives: the first bytes of 4 KiB pages (page headers and node
            # pointers of LMDB, object headers and B-tree nodes of HDF5), one to three of them.
            spots = [min(size - 1, rng.randrange(-(-size // 4096)) * 4096 + rng.randrange(64))
                     for _ in range(rng.randint(1, 3))]
        elif kind == "bytes":
            # One to three bytes anywhere set to a value parsers treat specially.
            spots = sorted({rng.randrange(size) for _ in range(rng.randint(1, 3))})
            for k in spots:
                data[k] = rng.choice([v for v in (0x00, 0x01, 0x7F, 0x80, 0xFF) if v != data[k]])
            spots = []  # already changed
        else:
            at = rng.randrange(size)
            spots = range(at, at + (1 if kind == "flip" else min(8, size - at)))
        for k in spots:
            data[k] ^= rng.randrange(1, 256)
        f.seek(0)
        f.write(data)
    changed = [k for k in range(size) if original[k] != data[k]]
    return {"kind": kind, "file": rel, "at": changed, "size": size}


def _lmdb_value(path, chunk, value=None):
    """The value of ``chunk`` of the LMDB store at ``path``; with ``value``, put that there instead (via liblmdb)."""
    import lmdb

    env = lmdb.open(path, subdir=True, readonly=value is None, lock=value is not None)
    key = chunk.to_bytes(8, "big")
    try:
        with env.begin(write=value is not None) as txn:
            if value is None:
                return bytes(txn.get(key))
            txn.put(key, value)
    finally:
        env.close()
    return value


def _damage_lmdb(rng, path, name):
    data = os.path.join(path, "data.mdb")
    nodes = chunk_nodes(data)
    kinds = ["key", "misplace"] + (["pointer", "pointer"] if name == "lmdb-overflow" else []) + \
        (["table", "table"] if name == "lmdb-variable" else [])
    kind = rng.choice(kinds)
    a, b = rng.sample(range(len(nodes)), 2)
    if kind == "key":
        # One flipped bit in a chunk key: liblmdb would look chunk c up under another number.
        node, bit = nodes[a], rng.randrange(64)
        poke(data, node.key_at + bit // 8, bytes([node.key[bit // 8] ^ (0x80 >> bit % 8)]))
        return {"kind": kind, "chunk": a, "bit": bit}
    if kind == "pointer":
        # A value's first overflow page set to another value's, or near it.
        shift = rng.choice([0, 0, 1, -1, 2])
        node = nodes[a]
        poke(data, node.key_at + len(node.key), (nodes[b].overflow + shift).to_bytes(8, "little"))
        return {"kind": kind, "chunk": a, "to chunk": b, "shift": shift}
    if kind == "misplace":
        # Chunk b's records, intact, where chunk a's belong (the last chunk is shorter: keep to whole ones).
        a, b = rng.sample(range(len(nodes) - 1), 2)
        _lmdb_value(path, a, _lmdb_value(path, b))
        return {"kind": kind, "chunk": a, "holds chunk": b}
    value = bytearray(_lmdb_value(path, a))
    k = int.from_bytes(value[:4], "little")
    slot, other = rng.randrange(k), rng.randrange(k)
    at = 8 + 8 * slot
    old = int.from_bytes(value[at : at + 8], "little")
    new = int.from_bytes(value[8 + 8 * other : 16 + 8 * other], "little") if other != slot else \
        max(0, old + rng.choice([-41, -33, -1, 1, 33, 100]))
    value[at : at + 8] = new.to_bytes(8, "little")
    _lmdb_value(path, a, bytes(value))
    return {"kind": kind, "chunk": a, "slot": slot, "offset": [old, new]}


def _damage_hdf5(rng, path, name):
    import h5py
    from test_crafted_stores import CRAFTS

    variable = name == "hdf5-variable"
    kind = rng.choice(["misplace", "misplace", "craft"] + (["table", "table"] if variable else []))
    a, b = rng.sample(range(COUNT), 2)
    with h5py.File(path, "r+") as f:
        if kind == "misplace":
            # Images a and b, with their labels and checksums, each in the other's place.
            for ds in [f[n] for n in (("offsets", "shapes") if variable else ("images",)) + ("labels", "crc32c")]:
                first, second = ds[a].copy(), ds[b].copy()
                ds[a], ds[b] = second, first
            return {"kind": kind, "images": [a, b]}
        if kind == "table":
            if rng.random() < 0.5:
                new = int(f["offsets"][b]) if rng.random() < 0.5 else int(f["offsets"][a]) + rng.choice([-7, -1, 1, 9])
                f["offsets"][a] = new
                return {"kind": kind, "offsets": a, "to": new}
            shape = f["shapes"][a].copy()
            shape[rng.randrange(3)] = rng.choice([0, 1, 2, 5, 2**40])
            f["shapes"][a] = shape
            return {"kind": kind, "shapes": a, "to": shape.tolist()}
        craft = rng.choice(sorted(c for c in CRAFTS if not (variable and "images" in c)))
        CRAFTS[craft][0](f, os.path.dirname(path))
        return {"kind": kind, "craft": craft}


def _damage_png(rng, path):
    kind = rng.choice(["misplace", "file", "special"])
    a, b = rng.sample(range(COUNT), 2)
    name = os.path.join(path, "labels.csv")
    rows = open(name).read().splitlines()
    if kind == "misplace":
        # Rows a and b keep their index and swap the rest: path, label and checksum.
        cells = {i: rows[i + 1].split(",") for i in (a, b)}
        rows[a + 1], rows[b + 1] = ",".join([str(a), *cells[b][1:]]), ",".join([str(b), *cells[a][1:]])
        open(name, "w").write("\n".join(rows) + "\n")
        return {"kind": kind, "rows": [a, b]}
    image = os.path.join(path, rows[a + 1].split(",")[1])
    if kind == "file":
        shutil.copy(os.path.join(path, rows[b + 1].split(",")[1]), image)
        return {"kind": kind, "file of": a, "holds": b}
    victim = rng.choice([image, name])
    os.unlink(victim)
    os.mkfifo(victim)  # opening it to read would block: it must be refused by name
    return {"kind": kind, "fifo": os.path.relpath(victim, path)}


def _damage_structure(rng, path, name):
    """Move intact data where another image's belongs, or craft what a reader must refuse; returns a description."""
    if name.startswith("lmdb"):
        return _damage_lmdb(rng, path, name)
    if name.startswith("hdf5"):
        return _damage_hdf5(rng, path, name)
    return _damage_png(rng, path)


def _run_case(store_path, expected):
    """Open, read and verify a damaged store; returns the outcome dict (see the module docstring)."""
    import imgconv
    from imgconv.errors import ImgconvError
    from imgconv.verify import verify_store

    images, labels = expected
    outcome = {"silent": [], "foreign": [], "unnamed": []}

    def imgconv_error(exc, where):
        if not isinstance(exc, ImgconvError):
            outcome["foreign"].append(f"{where}: {type(exc).__name__}: {exc}")
        elif store_path not in str(exc):
            outcome["unnamed"].append(f"{where}: {exc}")

    try:
        store = imgconv.open(store_path)
    except Exception as exc:
        imgconv_error(exc, "open")
        outcome["result"] = "open refused"
        return outcome
    with store:
        good, failed = 0, []
        for i in range(COUNT):
            try:
                image, label = store[i]
            except Exception as exc:
                imgconv_error(exc, f"image {i}")
                failed.append(i)
                continue
            if image.shape == images[i].shape and np.array_equal(image, images[i]) and label == labels[i]:
                good += 1
            else:
                outcome["silent"].append(i)
        try:
            batch, batch_labels = store.read_batch(np.arange(COUNT))
            if not (all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(batch, images))
                    and np.array_equal(batch_labels, labels)):
                outcome["silent"].append("read_batch")
        except Exception as exc:
            imgconv_error(exc, "read_batch")
        outcome["names changed"] = store.label_names != NAMES
    try:
        report = verify_store(store_path)
        flagged = sorted(i for i, _ in report.bad)
        outcome["verify"] = "reports" if (report.bad or report.problems) else "sound"
    except Exception as exc:
        imgconv_error(exc, "verify")
        flagged, outcome["verify"] = None, "refuses"
    outcome["good"], outcome["failed"] = good, failed
    if failed:
        outcome["result"] = "read refused"
        # verify names exactly the images whose reads fail (when it can open the store at all).
        if flagged is not None and flagged != failed and outcome["verify"] != "refuses":
            outcome["foreign"].append(f"verify named {flagged}, reads failed for {failed}")
        if outcome["verify"] == "sound":
            outcome["foreign"].append("verify says sound but reads fail")
    else:
        outcome["result"] = "no effect" if outcome["verify"] == "sound" else "verify only"
    return outcome


def child(name, workdir, seed, cases, first=0, campaign="random"):
    """Run damage cases ``first`` .. ``cases - 1`` of store ``name`` in ``workdir``, one JSON line per event.

    The cases before ``first`` are damaged but not read, so that every case
    gets the same damage whichever child process runs it. ``campaign`` is
    "random" or "structure" (see the module docstring).
    """
    original = _make_store(workdir, name) if not os.path.exists(os.path.join(workdir, "expected.npz")) else \
        os.path.join(workdir, "store" + STORES[name][1])
    expected = _expected(workdir)
    rng = random.Random(seed)
    for case in range(cases):
        target = os.path.join(workdir, f"case{STORES[name][1]}")
        if os.path.isdir(target):
            shutil.rmtree(target)
        elif os.path.exists(target):
            os.unlink(target)
        (shutil.copytree if os.path.isdir(original) else shutil.copy)(original, target)
        damage = _damage(rng, target) if campaign == "random" else _damage_structure(rng, target, name)
        if case < first:
            continue
        print(json.dumps({"start": case, "damage": damage}), flush=True)
        outcome = _run_case(target, expected)
        print(json.dumps({"case": case, "damage": damage, "outcome": outcome}), flush=True)


CASE_SECONDS = 60  # a case taking longer than this is a hang


def _failure(result, **details):
    return {"result": result, "silent": [], "foreign": [], "unnamed": [], **details}


def run_format(fmt, workdir, seed, cases, campaign="random"):
    """Run the cases of store ``fmt`` (a key of STORES) in child processes; returns the list of (damage, outcome).

    A case that kills its child is a crash, one that runs past CASE_SECONDS a
    hang (the child is killed); the cases after it run in a new child.
    """
    results = []
    while len(results) < cases:
        command = [sys.executable, os.path.abspath(__file__), "child", fmt, str(workdir), str(seed), str(cases),
                   str(len(results)), campaign]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started = None
        try:
            while True:
                ready, _, _ = select.select([proc.stdout], [], [], CASE_SECONDS)
                if not ready:
                    proc.kill()
                    results.append((started["damage"], _failure("hang", seconds=CASE_SECONDS)))
                    break
                line = proc.stdout.readline()
                if not line:
                    code = proc.wait()
                    if started is not None or code != 0:
                        # The case it had started crashed it (a signal), or it raised.
                        results.append((started["damage"] if started else None,
                                        _failure("crash", returncode=code, stderr=proc.stderr.read()[-2000:])))
                        if started is None:
                            return results
                    break
                event = json.loads(line)
                if "start" in event:
                    started = event
                else:
                    results.append((event["damage"], event["outcome"]))
                    started = None
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()
    return results


def summarise(fmt, results, campaign="random"):
    """The figures of one format: counts of each result and of the failures that must not happen."""
    counts = collections.Counter(outcome["result"] for _, outcome in results)
    return {
        "format": fmt,
        "campaign": campaign,
        "cases": len(results),
        "open refused": counts["open refused"],
        "read refused (verify names them)": counts["read refused"],
        "found by verify only": counts["verify only"],
        "no effect (all images exact)": counts["no effect"],
        "silently wrong pixels/labels": sum(bool(o["silent"]) for _, o in results),
        "label names silently changed": sum(bool(o.get("names changed")) for _, o in results),
        "other errors / unnamed": sum(bool(o["foreign"] or o["unnamed"]) for _, o in results),
        "crashes": counts["crash"],
        "hangs": counts["hang"],
        "images still exact in read-refused cases": sum(o.get("good", 0) for _, o in results
                                                         if o["result"] == "read refused"),
        "images in read-refused cases": COUNT * counts["read refused"],
    }


def _assert_loud(fmt, results, cases, campaign="random"):
    crashes = [(d, o) for d, o in results if o["result"] in ("crash", "hang")]
    assert not crashes, crashes
    assert len(results) == cases
    for damage, outcome in results:
        assert not outcome["silent"], (damage, outcome)  # CRC32C: never wrong pixels without an error
        assert not outcome["foreign"], (damage, outcome)  # only imgconv's errors, and verify agrees
        assert not outcome["unnamed"], (damage, outcome)  # every message names the store
    summary = summarise(fmt, results, campaign)
    # The seeded cases reach every kind of outcome that matters, not only harmless bytes. A store of
    # varying shapes is mostly unused chunk space (its pixels are small, its chunks sized for large
    # images), so random bytes hit its data less often.
    least = cases // 8 if fmt == "hdf5-variable" and campaign == "random" else cases // 4
    assert summary["open refused"] + summary["read refused (verify names them)"] >= least, summary
    return summary


STRUCTURE_CASES = 30  # per store in the test suite


@pytest.mark.parametrize("fmt", sorted(STORES))
def test_damaged_structure_never_answers_with_another_image(tmp_path, fmt):
    # Keys, page numbers, offset tables, chunk indices and rows moved to other images' places,
    # crafted HDF5 features and FIFOs: refused at open, or the reads of the moved images fail.
    results = run_format(fmt, tmp_path, seed=2027, cases=STRUCTURE_CASES, campaign="structure")
    _assert_loud(fmt, results, STRUCTURE_CASES, "structure")
    kinds = collections.Counter(damage["kind"] for damage, _ in results)
    assert len(kinds) >= 2, kinds


@pytest.mark.parametrize("fmt", sorted(STORES))
def test_damaged_store_fails_loudly_never_silently(tmp_path, fmt):
    # Seed 2027: among its LMDB cases is one that killed the reader (SIGBUS) before the page
    # check of imgconv.stores.lmdb.pagecheck; the crafted-page test below pins such cases exactly.
    results = run_format(fmt, tmp_path, seed=2027, cases=SUITE_CASES)
    _assert_loud(fmt, results, SUITE_CASES)
    for damage, outcome in results:
        if outcome["result"] == "read refused" and (fmt == "png" and damage["file"].endswith(".png")):
            # One damaged PNG file: every other image still reads exactly.
            assert outcome["good"] == COUNT - 1 and len(outcome["failed"]) == 1, (damage, outcome)


def _pixel_offsets(path, images, index):
    """(file, offset) of image ``index``'s pixel bytes inside the store's files."""
    needle = images[index].tobytes()
    for name in _files(path):
        with open(name, "rb") as f:
            at = f.read().find(needle)
        if at >= 0:
            return name, at
    raise AssertionError(f"image {index} not found in {path}")


@pytest.mark.parametrize("fmt", ["lmdb", "lmdb-overflow", "hdf5"])
def test_a_flipped_pixel_fails_its_image_alone(tmp_path, fmt):
    import imgconv

    path = _make_store(str(tmp_path), fmt)
    images, labels = _expected(str(tmp_path))
    for index in (0, 13, COUNT - 1):
        name, at = _pixel_offsets(path, images, index)
        with open(name, "r+b") as f:
            f.seek(at + 5)
            byte = f.read(1)
            f.seek(at + 5)
            f.write(bytes([byte[0] ^ 0x10]))
        with imgconv.open(path) as store:
            with pytest.raises(imgconv.ImgconvError, match=f"image {index}"):
                store[index]
            for i in range(COUNT):
                if i != index:
                    image, label = store[i]
                    assert np.array_equal(image, images[i]) and label == labels[i]
        with open(name, "r+b") as f:  # repair for the next index
            f.seek(at + 5)
            f.write(byte)


def _lmdb_pages(data_path):
    """(root branch page or None, a leaf page, psize) of an LMDB file."""
    from imgconv.stores.lmdb import pagecheck as c

    with open(data_path, "rb") as f:
        raw = f.read()
    metas = [c.DB.unpack_from(raw, off + c.PAGE_HEADER_SIZE + c.META.size + c.DB.size) for off in (0, 4096)]
    txnids = [struct.unpack_from("<Q", raw, off + c.PAGE_HEADER_SIZE + c.META.size + 2 * c.DB.size + 8)[0]
              for off in (0, 4096)]
    root = metas[txnids[1] > txnids[0]][-1]
    if c.PAGE_HEADER.unpack_from(raw, root * 4096)[2] == c.P_LEAF:
        return None, root, 4096  # a tree of one leaf
    first_node = struct.unpack_from("<H", raw, root * 4096 + c.PAGE_HEADER_SIZE)[0]
    lo, hi, flags, _ = c.NODE.unpack_from(raw, root * 4096 + first_node)
    return root, lo | hi << 16 | flags << 32, 4096


def _poke(path, offset, fmt, value):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


def _node(path, page, k):
    with open(path, "rb") as f:
        f.seek(page * 4096 + 16 + 2 * k)
        return page * 4096 + struct.unpack("<H", f.read(2))[0]


# Pages damaged the ways liblmdb trusts. Without imgconv's page check (measured, py-lmdb 3.0.0):
# a branch page of one key aborts the process (liblmdb's assertion, SIGABRT), an overflow value
# longer than the file kills it (SIGBUS), as do node pointers moved by random flips (the test
# above); liblmdb reports the others itself. The reader must refuse every one with its own error.
CRAFTS = {
    "node pointer past the page": lambda p, root, leaf: _poke(p, leaf * 4096 + 16, "<H", 4094),
    "leaf key size past the file": lambda p, root, leaf: _poke(p, _node(p, leaf, 0) + 6, "<H", 0xFFFF),
    "leaf value size past the file": lambda p, root, leaf: _poke(p, _node(p, leaf, 0) + 2, "<H", 0x00FF),
    "branch child beyond the last page": lambda p, root, leaf: _poke(p, _node(p, root, 1), "<H", 0xFFF0),
    "branch page of one key": lambda p, root, leaf: _poke(p, root * 4096 + 12, "<H", 18),
    "duplicate-sort flag on a leaf node": lambda p, root, leaf: _poke(p, _node(p, leaf, 0) + 4, "<H", 4),
    "root page is a meta page": lambda p, root, leaf: [_poke(p, meta + 128, "<Q", 1) for meta in (0, 4096)],
}


@pytest.mark.parametrize("craft", sorted(CRAFTS))
@pytest.mark.parametrize("name", ["lmdb", "lmdb-overflow"])
def test_crafted_lmdb_pages_are_refused_before_liblmdb_reads_them(tmp_path, name, craft):
    path = _make_store(str(tmp_path), name)
    data = os.path.join(path, "data.mdb")
    root, leaf, _ = _lmdb_pages(data)
    if root is None and "branch" in craft:
        pytest.skip("this store's tree is a single leaf page")
    CRAFTS[craft](data, root, leaf)
    # In a child process: were the check to miss, the crash must fail this test, not end the run.
    code = ("import sys, imgconv\n"
            "try:\n    s = imgconv.open(sys.argv[1]); [s[i] for i in range(len(s))]; s.read_all()\n"
            "except imgconv.ImgconvError as e:\n    print(e); sys.exit(3)\n")
    done = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, (done.returncode, done.stdout, done.stderr)
    assert path in done.stdout and "corrupt" in done.stdout


def main(argv):
    """``child NAME DIR SEED CASES FIRST`` (used by the tests) or ``report [CASES [SEED [NAME ...]]]``."""
    if argv[0] == "child":
        child(argv[1], argv[2], int(argv[3]), int(argv[4]), int(argv[5]), argv[6])
        return 0
    import tempfile

    cases = int(argv[1]) if len(argv) > 1 else 200
    seed = int(argv[2]) if len(argv) > 2 else 7
    for campaign in ("random", "structure"):
        for name in argv[3:] or sorted(STORES):
            with tempfile.TemporaryDirectory() as workdir:
                results = run_format(name, workdir, seed=seed, cases=cases, campaign=campaign)
                summary = summarise(name, results, campaign)
                summary["kinds"] = dict(collections.Counter(d["kind"] for d, _ in results if d))
                print(json.dumps(summary), flush=True)
                for damage, outcome in results:
                    if outcome["result"] in ("crash", "hang") or outcome["silent"] or outcome["foreign"]:
                        print(json.dumps({"damage": damage, "outcome": outcome}), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    raise SystemExit(main(sys.argv[1:]))
