"""Long-running fuzzer of everything in imgconv that parses untrusted record bytes.

Targets (the first input byte picks one, the rest is the data):

0. ``record.unpack_records(data)``: a buffer of records back to back;
1. ``record.unpack_record(data, offset)`` and ``record.read_header``;
2. ``record.unpack_records([data], offsets)``: the gather kernel with offsets
   taken from the input (negative, huge, overlapping);
3. an LMDB store of one image shape whose chunk 0 is the data (the reader's
   value decoding, single image and batch paths);
4. an LMDB store of varying shapes whose chunk 0 is the data (offset table
   plus records).

Every input must end in imgconv's own error (RecordError or StoreError) or
succeed; anything else (another exception, MemoryError, a crash or a hang)
is a finding. Both the compiled kernels (``imgconv._core``) and, with
``--backend numpy``, the NumPy reference are driven.

Two engines:

* **atheris** (coverage-guided, libFuzzer): ``pip install atheris`` (it is not
  an imgconv dependency), then::

      python tests/fuzz/fuzz_records.py --atheris -- -max_total_time=900

  Arguments after ``--`` go to libFuzzer (``-runs=N``, ``-max_len=...``,
  ``-timeout=...``). Python code is instrumented for coverage; the compiled
  kernel is not, unless it was built with ``-fsanitize=fuzzer``.
* **random** (no atheris needed): mutates valid records (bit flips, header
  fields set to extreme values, truncation, random bytes, spliced records)
  in a plain loop::

      python tests/fuzz/fuzz_records.py --seconds 600 --seed 1

Either way the script prints how many inputs it tried; a finding stops the
random engine with the input saved to ``fuzz-finding-*.bin`` (replay it with
``--replay FILE``).

Out-of-bounds reads in the compiled kernel rarely crash; AddressSanitizer
makes every one fatal. Build the kernel with it in a copy of the tree and run
either engine from there, with Python's allocations going through malloc so
that every buffer has guard zones::

    git archive HEAD | tar -x -C /tmp/asan && cd /tmp/asan
    CFLAGS="-fsanitize=address -fno-omit-frame-pointer -g -O1" LDFLAGS="-fsanitize=address" \\
        python setup.py build_ext --inplace
    LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 PYTHONMALLOC=malloc \\
        python tests/fuzz/fuzz_records.py --seconds 600
"""
import argparse
import os
import random
import shutil
import struct
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

TARGETS = 5
HEADER_FIELDS = [(0, 4), (4, 1), (5, 1), (6, 2), (8, 4), (12, 4), (16, 8), (24, 4), (28, 4)]
EXTREMES = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\x01"]


def _imports(backend):
    # The backend asked for wins over the caller's environment.
    if backend == "numpy":
        os.environ.pop("IMGCONV_REQUIRE_EXT", None)
        os.environ["IMGCONV_PURE"] = "1"
    else:
        os.environ.pop("IMGCONV_PURE", None)
        os.environ["IMGCONV_REQUIRE_EXT"] = "1"
    import lmdb

    from imgconv import kernels, record, stores
    from imgconv.errors import RecordError, StoreError
    from imgconv.stores import lmdb as lmdb_store
    from imgconv.stores import metadata as base

    return lmdb, kernels, record, stores, base, lmdb_store, (RecordError, StoreError)


class Harness:
    """Runs one input against one target; raises anything that is not imgconv's error."""

    def __init__(self, backend, workdir):
        (self.lmdb, self.kernels, self.record, self.stores, self.base, self.lmdb_store,
         self.expected_errors) = _imports(backend)
        self.workdir = workdir
        self.count = 0
        # per target: [inputs, decoded fine, refused with imgconv's error]
        self.outcomes = [[0, 0, 0] for _ in range(TARGETS)]

    # --- targets ------------------------------------------------------------

    def run(self, data):
        """Feed ``data`` (the first byte picks the target) and check the outcome."""
        self.count += 1
        if not data:
            return
        target, body = data[0] % TARGETS, data[1:]
        self.outcomes[target][0] += 1
        try:
            [self._back_to_back, self._single, self._gather, self._lmdb_fixed, self._lmdb_variable][target](body)
        except self.expected_errors:
            self.outcomes[target][2] += 1
        else:
            self.outcomes[target][1] += 1

    def summary(self):
        """One line per target: inputs, decoded, refused."""
        names = ["unpack_records(buffer)", "unpack_record/read_header", "unpack_records(offsets)",
                 "LMDB store, one shape", "LMDB store, varying shapes"]
        return "\n".join(f"  {name:28s} {n:9d} inputs: {ok:8d} decoded, {bad:8d} refused with imgconv's error"
                         for name, (n, ok, bad) in zip(names, self.outcomes))

    def _back_to_back(self, body):
        verify = bool(len(body) & 1)
        images, labels = self.record.unpack_records(body, verify=verify)
        assert images.shape[0] == labels.shape[0]

    def _single(self, body):
        # The first byte is the offset of the record in the rest.
        offset, buffer = (body[0], body[1:]) if body else (0, b"")
        self.record.read_header(buffer, offset)
        image, _ = self.record.unpack_record(buffer, offset)
        assert image.ndim == 3

    def _gather(self, body):
        # The first 16 bytes give two offsets (little-endian i64), the rest is the buffer.
        head, buffer = body[:16].ljust(16, b"\0"), body[16:]
        offsets = np.frombuffer(head, "<i8").astype(np.int64)
        out = np.empty((2, 2, 2, 3), np.uint8)
        self.record.unpack_records([buffer], offsets, out=out)

    def _lmdb_store(self, value, meta_shape, k, count):
        path = os.path.join(self.workdir, "s.lmdb")
        shutil.rmtree(path, ignore_errors=True)
        env = self.lmdb.open(path, map_size=1 << 24, subdir=True, max_dbs=0)
        meta = self.base.make_metadata("lmdb", 1, count, meta_shape, None, None, records_per_value=k,
                                       record_version=1)
        with env.begin(write=True) as txn:
            txn.put(self.lmdb_store.chunk_key(0), value)
            txn.put(self.lmdb_store.METADATA_KEY, self.base.dump_metadata(meta))
        env.close()
        return path

    def _read_store(self, path, count):
        with self.stores.open(path, format="lmdb") as store:
            for i in range(count):
                try:
                    store[i]
                except self.expected_errors:
                    pass
            store.read_batch(np.arange(count)[::-1])
            store.read_all()

    def _lmdb_fixed(self, body):
        count = 1 + (body[0] % 4 if body else 0)
        self._read_store(self._lmdb_store(bytes(body[1:]) or b"\0", (2, 2, 3), 4, count), count)

    def _lmdb_variable(self, body):
        count = 1 + (body[0] % 4 if body else 0)
        self._read_store(self._lmdb_store(bytes(body[1:]) or b"\0", self.base.VARIABLE, 16, count), count)

    # --- seeds --------------------------------------------------------------

    def seeds(self, rng):
        """Valid inputs for every target, from which the random engine mutates."""
        record = self.record
        out = []
        for shape in [(2, 2, 3), (1, 1, 1), (3, 5, 2), (4, 4, 4)]:
            n = rng.randint(1, 4)
            images = np.random.default_rng(rng.randrange(1 << 30)).integers(0, 256, (n, *shape), dtype=np.uint8)
            packed = record.pack_records(images, list(range(n))).buffer.tobytes()
            out.append(bytes([0]) + packed)
            out.append(bytes([1, 0]) + packed)
        uniform = record.pack_records(np.zeros((4, 2, 2, 3), np.uint8) + 7, [1, 2, 3, 4]).buffer.tobytes()
        out.append(bytes([2]) + struct.pack("<qq", 0, 44) + uniform)
        out.append(bytes([3, 3]) + uniform)
        mixed = [np.full((1 + j, 2, 3), j, np.uint8) for j in range(3)]
        packed = record.pack_records(mixed, [5, 6, 7])
        table = self.lmdb_store.layout.value_with_table(packed.buffer, packed.offsets)
        out.append(bytes([4, 2]) + table)
        return out


def mutate(rng, data):
    """One random damage to ``data`` (bytes; byte 0 is the target and is kept)."""
    data = bytearray(data)
    body = len(data) - 1
    kind = rng.randrange(7)
    if kind == 0 and body:  # flip a bit
        pos = 1 + rng.randrange(body)
        data[pos] ^= 1 << rng.randrange(8)
    elif kind == 1 and body > 32:  # a header field of some record set to an extreme value
        start = 1 + rng.randrange(max(1, body - 32))
        at, size = rng.choice(HEADER_FIELDS)
        data[start + at : start + at + size] = rng.choice(EXTREMES) * size
    elif kind == 2:  # truncate anywhere
        del data[1 + rng.randrange(body + 1) :]
    elif kind == 3:  # random bytes, of a random length
        data[1:] = os.urandom(rng.randrange(0, 512))
    elif kind == 4 and body >= 4:  # a huge 32-bit number somewhere
        pos = 1 + rng.randrange(body - 3)
        data[pos : pos + 4] = struct.pack("<I", rng.choice([0xFFFFFFFF, 0x80000000, 0x7FFFFFFF, 1 << 24]))
    elif kind == 5:  # append garbage
        data += os.urandom(rng.randrange(1, 64))
    else:  # duplicate a slice (records glued twice, or a header inside a payload)
        if body:
            a = 1 + rng.randrange(body)
            b = min(len(data), a + rng.randrange(1, 64))
            pos = 1 + rng.randrange(body)
            data[pos:pos] = data[a:b]
    return bytes(data)


def run_random(harness, seconds, seed, max_inputs):
    """The plain random engine; returns (inputs tried, findings)."""
    rng = random.Random(seed)
    seeds = harness.seeds(rng)
    started = time.monotonic()
    last_report = started
    while time.monotonic() - started < seconds and harness.count < max_inputs:
        data = rng.choice(seeds)
        for _ in range(rng.randint(1, 4)):
            data = mutate(rng, data)
        try:
            harness.run(data)
        except BaseException as exc:
            name = f"fuzz-finding-{harness.count}.bin"
            with open(name, "wb") as f:
                f.write(data)
            print(f"FINDING after {harness.count} inputs: {type(exc).__name__}: {exc}; input saved to {name}")
            raise
        now = time.monotonic()
        if now - last_report > 60:
            print(f"{harness.count} inputs, {now - started:.0f} s", flush=True)
            last_report = now
    return harness.count


def run_atheris(backend, workdir, libfuzzer_args):
    """The coverage-guided engine; libFuzzer prints its own statistics."""
    import atheris

    with atheris.instrument_imports(include=["imgconv"]):
        harness = Harness(backend, workdir)
    corpus = os.path.join(harness.workdir, "corpus")
    os.makedirs(corpus, exist_ok=True)
    for n, seed in enumerate(harness.seeds(random.Random(0))):
        with open(os.path.join(corpus, f"seed-{n}"), "wb") as f:
            f.write(seed)

    def one_input(data):
        harness.run(data)
        # libFuzzer ends the process without returning here: report as it goes.
        if harness.count % 50_000 == 0:
            print(f"inputs tried: {harness.count}\n{harness.summary()}", flush=True)

    atheris.Setup([sys.argv[0], *libfuzzer_args, corpus], one_input)
    atheris.Fuzz()


def main(argv=None):
    """Command line: see the module docstring."""
    argv = sys.argv[1:] if argv is None else argv
    libfuzzer_args = []
    if "--" in argv:
        cut = argv.index("--")
        argv, libfuzzer_args = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--atheris", action="store_true", help="coverage-guided fuzzing with atheris")
    parser.add_argument("--seconds", type=float, default=60, help="random engine: how long to run")
    parser.add_argument("--max-inputs", type=int, default=1 << 62, help="random engine: stop after this many inputs")
    parser.add_argument("--seed", type=int, default=0, help="random engine: the seed")
    parser.add_argument("--backend", choices=["compiled", "numpy"], default="compiled")
    parser.add_argument("--replay", metavar="FILE", help="run one saved input and show what it raises")
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="imgconv-fuzz-")
    try:
        if args.atheris:
            run_atheris(args.backend, workdir, libfuzzer_args)
            return 0
        harness = Harness(args.backend, workdir)
        if args.replay:
            with open(args.replay, "rb") as f:
                harness.run(f.read())
            print("no finding: the input ends in imgconv's error or succeeds")
            return 0
        started = time.monotonic()
        count = run_random(harness, args.seconds, args.seed, args.max_inputs)
        print(f"inputs tried: {count} in {time.monotonic() - started:.0f} s, backend {args.backend}, "
              f"seed {args.seed}: no finding")
        print(harness.summary())
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
