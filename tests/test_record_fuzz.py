"""Differential fuzzing: the compiled and NumPy record kernels agree on mutated input.

The quick test runs in the suite; ``pytest -m slow tests/test_record_fuzz.py``
runs the long one. Later hardening work adds a coverage-guided fuzzer.
"""
import numpy as np
import pytest

from imgconv import _pure, record

_core = pytest.importorskip("imgconv._core")


def _mutated_batch(rng):
    n = int(rng.integers(1, 6))
    shape = tuple(int(v) for v in rng.integers(1, 6, 3))
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    packed = record.pack_records(images, rng.integers(-50, 50, n))
    data = bytearray(packed.buffer.tobytes())
    for _ in range(int(rng.integers(0, 4))):
        kind = rng.integers(0, 3)
        if kind == 0 and data:  # flip a bit
            pos = int(rng.integers(0, len(data)))
            data[pos] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1 and data:  # overwrite a header field with an extreme value
            pos = int(rng.integers(0, len(data) - 3)) if len(data) > 4 else 0
            data[pos : pos + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff"])
        else:  # truncate
            del data[int(rng.integers(0, len(data) + 1)) :]
    starts = packed.offsets[:-1].copy()
    if rng.random() < 0.3:
        starts[int(rng.integers(0, n))] += int(rng.choice([-1, 1, 2**40, -(2**40), 2**62]))
    return bytes(data), starts, shape


def _run(impl, data, starts, shape, verify):
    n = starts.size
    out = np.zeros((n, int(np.prod(shape))), np.uint8)
    labels = np.zeros(n, np.int64)
    expected = record.Gather(shape).header
    got = impl.unpack_records([data], np.zeros(n, np.int64), starts, expected, out, labels, verify)
    end = got[0] if got[0] >= 0 else n
    # One record at a time, each start of the batch: the status and label of each, and the pixels of the good ones.
    one = np.zeros_like(out)
    singles = [impl.unpack_one(data, int(start), expected, one[i], verify) for i, start in enumerate(starts)]
    one[[status != impl.OK for status, _ in singles]] = 0
    return got, out[:end], labels[:end], singles, one


def _differential(iterations, seed):
    rng = np.random.default_rng(seed)
    for i in range(iterations):
        data, starts, shape = _mutated_batch(rng)
        verify = bool(rng.integers(0, 2))
        ours = _run(_core, data, starts, shape, verify)
        reference = _run(_pure, data, starts, shape, verify)
        assert ours[0] == reference[0], (i, ours[0], reference[0])
        np.testing.assert_array_equal(ours[1], reference[1])
        np.testing.assert_array_equal(ours[2], reference[2])
        assert ours[3] == reference[3], (i, ours[3], reference[3])
        np.testing.assert_array_equal(ours[4], reference[4])
        # The public API raises the package's error, never anything else.
        try:
            record.unpack_records(data, verify=verify)
        except record.RecordError:
            pass


def test_compiled_and_numpy_kernels_agree_on_mutated_records():
    _differential(300, seed=1)


@pytest.mark.slow
def test_compiled_and_numpy_kernels_agree_long_run():
    _differential(50_000, seed=2)
