"""CHW->HWC and CRC32C: compiled against the NumPy reference, and argument checks; the two kernel modules alike."""
import ast
import pathlib
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgconv import _pure, kernels, record
from imgconv.kernels import chw_to_hwc, chw_to_hwc_into, crc32c


def _crc_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def _reference_crc32c(data, value=0):
    """CRC32C one byte at a time, straight from the polynomial: the oracle of both backends."""
    crc = value ^ 0xFFFFFFFF
    for byte in bytes(data):
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _reference_hwc(rows, h, w, c):
    out = np.empty((rows.shape[0], h, w, c), np.uint8)
    for i, row in enumerate(rows):
        for k in range(c):
            out[i, :, :, k] = row[k * h * w : (k + 1) * h * w].reshape(h, w)
    return out


def test_cifar_row_becomes_hwc_image(backend):
    rows = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    images = chw_to_hwc(rows)
    assert images.shape == (2, 32, 32, 3) and images.flags.c_contiguous
    # Pixel (y, x) channel k is byte k*1024 + y*32 + x of the row.
    assert images[1, 5, 7, 2] == rows[1, 2 * 1024 + 5 * 32 + 7]
    np.testing.assert_array_equal(images, _reference_hwc(rows, 32, 32, 3))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 5),
    h=st.integers(1, 19),
    w=st.integers(1, 37),
    c=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_compiled_equals_reference_on_random_shapes(n, h, w, c, seed):
    rows = np.random.default_rng(seed).integers(0, 256, (n, c * h * w), dtype=np.uint8)
    expected = np.empty((n, h, w, c), np.uint8)
    _pure.chw_to_hwc_into(rows, expected)
    np.testing.assert_array_equal(expected, _reference_hwc(rows, h, w, c))
    if kernels.BACKEND == "compiled":
        from imgconv import _core

        got = np.full((n, h, w, c), 7, np.uint8)
        _core.chw_to_hwc_into(rows, got)
        np.testing.assert_array_equal(got, expected)


def test_into_writes_caller_array_and_returns_it(backend):
    rows = np.random.default_rng(1).integers(0, 256, (4, 3 * 20 * 17), dtype=np.uint8)
    out = np.zeros((4, 20, 17, 3), np.uint8)
    assert chw_to_hwc_into(rows, out) is out
    np.testing.assert_array_equal(out, _reference_hwc(rows, 20, 17, 3))


def test_into_slice_of_a_larger_buffer(backend):
    rows = np.random.default_rng(2).integers(0, 256, (3, 3072), dtype=np.uint8)
    big = np.zeros((10, 32, 32, 3), np.uint8)
    chw_to_hwc_into(rows, big[4:7])
    np.testing.assert_array_equal(big[4:7], _reference_hwc(rows, 32, 32, 3))
    assert not big[:4].any() and not big[7:].any()


def test_non_contiguous_rows_are_accepted(backend):
    base = np.random.default_rng(3).integers(0, 256, (4, 2 * 48), dtype=np.uint8)
    rows = base[::2, ::2]  # strided view, 48 bytes per row
    np.testing.assert_array_equal(chw_to_hwc(rows, 4, 4, 3), _reference_hwc(np.ascontiguousarray(rows), 4, 4, 3))


@pytest.mark.parametrize(
    "rows, kwargs, error, match",
    [
        (np.zeros((2, 3072), np.int16), {}, TypeError, "uint8"),
        ([[0] * 3072], {}, TypeError, "NumPy array"),
        (np.zeros((2, 3071), np.uint8), {}, ValueError, "row length 3071"),
        (np.zeros(3072, np.uint8), {}, ValueError, "2-D"),
        (np.zeros((2, 12), np.uint8), {"height": 0, "width": 4, "channels": 3}, ValueError, "height"),
    ],
)
def test_bad_rows_raise_clear_errors(backend, rows, kwargs, error, match):
    with pytest.raises(error, match=match):
        chw_to_hwc(rows, **kwargs)


@pytest.mark.parametrize(
    "out, match",
    [
        (np.zeros((1, 32, 32, 3), np.uint8), "too small"),
        (np.zeros((3, 32, 32, 3), np.uint8), "too large"),
        (np.zeros((2, 32, 32, 3), np.float32), "uint8"),
        (np.zeros((2, 32, 3, 32), np.uint8)[..., ::1].transpose(0, 1, 3, 2), "contiguous"),
        (np.zeros((2, 32, 32), np.uint8), "4-D"),
        (np.zeros((2, 16, 16, 3), np.uint8), "row length"),
    ],
)
def test_bad_out_raises_clear_errors(backend, out, match):
    rows = np.zeros((2, 3072), np.uint8)
    with pytest.raises((ValueError, TypeError), match=match):
        chw_to_hwc_into(rows, out)


def test_flat_batch_is_refused_before_allocating(backend):
    with pytest.raises(ValueError, match="2-D"):
        chw_to_hwc(np.zeros(3072 * 10000, np.uint8))


@pytest.mark.parametrize("name", ["ssse3", "plain"])
def test_every_compiled_interleave_path_agrees_with_the_reference(name):
    _core = pytest.importorskip("imgconv._core")
    previous = _core.select_interleave(_core.INTERLEAVE_IMPL)
    try:
        try:
            _core.select_interleave(name)
        except ValueError:
            pytest.skip(f"this CPU cannot run the {name} path")
        rng = np.random.default_rng(8)
        for h, w in [(32, 32), (1, 1), (5, 3), (4, 4), (7, 9), (1, 47), (17, 16)]:
            rows = rng.integers(0, 256, (3, 3 * h * w), dtype=np.uint8)
            got = np.empty((3, h, w, 3), np.uint8)
            _core.chw_to_hwc_into(rows, got)
            np.testing.assert_array_equal(got, _reference_hwc(rows, h, w, 3), err_msg=f"{name} {h}x{w}")
    finally:
        _core.select_interleave(previous)


def test_read_only_or_overlapping_out_is_refused(backend):
    rows = np.zeros((2, 3072), np.uint8)
    out = np.zeros((2, 32, 32, 3), np.uint8)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        chw_to_hwc_into(rows, out)
    shared = np.zeros((2, 3072), np.uint8)
    with pytest.raises(ValueError, match="overlap"):
        chw_to_hwc_into(shared, shared.reshape(2, 32, 32, 3))


def test_crc32c_known_values(backend):
    # Check values from RFC 3720 (iSCSI), appendix B.4.
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(b"") == 0


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=5000), split=st.integers(0, 5000))
def test_crc32c_compiled_equals_reference_and_continues(data, split):
    expected = _reference_crc32c(data)
    assert _pure.crc32c(np.frombuffer(data, np.uint8)) == expected
    if kernels.BACKEND == "compiled":
        assert crc32c(data) == expected
        split = min(split, len(data))
        assert crc32c(data[split:], crc32c(data[:split])) == expected


def test_crc32c_long_input_uses_lanes_correctly(backend):
    data = np.random.default_rng(4).integers(0, 256, 200_003, dtype=np.uint8)
    assert crc32c(data) == _reference_crc32c(data)
    assert crc32c(data, 0x12345678) == _reference_crc32c(data, 0x12345678)


def test_crc32c_is_not_zlib_crc32(backend):
    assert crc32c(b"imgconv") != zlib.crc32(b"imgconv")


def test_crc32c_rejects_bad_arguments(backend):
    with pytest.raises(TypeError):
        crc32c(12345)
    with pytest.raises(ValueError):
        crc32c(b"x", 1 << 33)


def _crc_implementations():
    from imgconv import _core

    names = []
    for name in _core.CRC32C_IMPLS:
        previous = _core.select_crc32c(_core.CRC32C_IMPL)
        try:
            _core.select_crc32c(name)
            names.append(name)
        except ValueError:
            pass
        finally:
            _core.select_crc32c(previous)
    return names


@pytest.fixture(params=["pclmul", "sse4.2", "slice-by-8"])
def crc_impl(request):
    """Each compiled CRC32C code path this CPU can run, restored afterwards."""
    from imgconv import _core

    if request.param not in _crc_implementations():
        pytest.skip(f"this CPU cannot run the {request.param} CRC32C path")
    previous = _core.select_crc32c(request.param)
    yield request.param
    _core.select_crc32c(previous)


def test_every_compiled_crc_path_agrees_with_the_reference(crc_impl):
    from imgconv import _core

    rng = np.random.default_rng(7)
    data = rng.integers(0, 256, 5000, dtype=np.uint8)
    for n in list(range(0, 200)) + [255, 256, 257, 1023, 3072, 3104, 4999]:
        for start in (0, 1, 3):
            if start + n <= data.size:
                chunk = data[start : start + n]
                assert _core.crc32c(chunk, 0x9ABCDEF0) == _reference_crc32c(chunk, 0x9ABCDEF0), (crc_impl, n, start)
    images = rng.integers(0, 256, (7, 9, 11, 3), dtype=np.uint8)
    packed = []
    for name in kernels.BACKENDS:
        previous = kernels.use_backend(name)
        try:
            packed.append(record.pack_records(images, np.arange(7)).buffer)
        finally:
            kernels.use_backend(previous)
    np.testing.assert_array_equal(packed[0], packed[1])


def test_unknown_crc_implementation_is_refused():
    from imgconv import _core

    with pytest.raises(ValueError, match="not available"):
        _core.select_crc32c("quantum")


def test_folding_constants_follow_from_the_polynomial():
    """The PCLMULQDQ constants in ext/crc32c.h, derived again from CRC32C's polynomial."""
    import pathlib
    import re

    def reflect(value, bits):
        return int(f"{value:0{bits}b}"[::-1], 2)

    def x_pow_mod(n, poly):
        r = 1
        for _ in range(n):
            r <<= 1
            if r >> 32 & 1:
                r ^= poly
        return r

    def x_pow_div(n, poly):
        q, r = 0, 1 << n
        for i in range(n, 31, -1):
            if r >> i & 1:
                q |= 1 << (i - 32)
                r ^= poly << (i - 32)
        return q

    poly = 0x11EDC6F41  # CRC32C, normal form with the x^32 term
    k = [reflect(x_pow_mod(n, poly), 32) << 1 for n in (4 * 128 + 32, 4 * 128 - 32, 128 + 32, 128 - 32, 64)]
    header = (pathlib.Path(__file__).parents[1] / "ext" / "crc32c.h").read_text()
    constant = r"const __m128i (\w+) = _mm_set_epi64x\((0x[0-9a-f]+), (0x[0-9a-f]+)\)"
    found = {name: (int(high, 16), int(low, 16)) for name, high, low in re.findall(constant, header)}
    assert found["k1k2"] == (k[1], k[0])
    assert found["k3k4"] == (k[3], k[2])
    assert found["k5k0"] == (0, k[4])
    assert found["poly"] == (reflect(x_pow_div(64, poly), 33), reflect(poly, 33))


def _public_names(module):
    """Names a module defines for its users: not private, not modules it imports."""
    return {name for name, value in vars(module).items()
            if not name.startswith("_") and not isinstance(value, type(np))}


def test_compiled_and_numpy_kernels_export_the_same_names():
    _core = pytest.importorskip("imgconv._core")
    assert set(_core.__all__) == set(_pure.__all__)
    assert _public_names(_core) == _public_names(_pure) == set(_pure.__all__)
    for name in ("OK", "TRUNCATED", "HEADER_MISMATCH", "CRC_MISMATCH", "HEADER_SIZE", "LABEL_OFFSET",
                 "LENGTH_OFFSET", "CRC_OFFSET"):
        assert getattr(_core, name) == getattr(_pure, name), name


def test_the_stub_declares_every_name_of_the_kernels():
    stub = ast.parse((pathlib.Path(kernels.__file__).parent / "_core.pyi").read_text())
    declared = {node.name for node in stub.body if isinstance(node, ast.FunctionDef)}
    declared |= {node.target.id for node in stub.body if isinstance(node, ast.AnnAssign)}
    assert declared == set(_pure.__all__)


def test_kernel_layout_constants_are_the_record_header_offsets():
    fields = record.HEADER_DTYPE.fields
    for impl in (_pure, pytest.importorskip("imgconv._core")):
        assert impl.HEADER_SIZE == record.HEADER_DTYPE.itemsize == record.HEADER_SIZE
        assert (impl.LABEL_OFFSET, impl.LENGTH_OFFSET, impl.CRC_OFFSET) == (
            fields["label"][1], fields["length"][1], fields["crc"][1])
        # Bytes before the label are the magic, version, dtype and shape a batch shares.
        assert max(fields[f][1] + fields[f][0].itemsize for f in ("magic", "version", "dtype", "channels",
                                                                 "height", "width")) == impl.LABEL_OFFSET


def test_numpy_selectors_accept_only_their_one_path():
    assert _pure.select_crc32c("numpy") == "numpy" and _pure.CRC32C_IMPL == "numpy"
    assert _pure.select_interleave("numpy") == "numpy" and _pure.INTERLEAVE_IMPL == "numpy"
    for select in (_pure.select_crc32c, _pure.select_interleave):
        with pytest.raises(ValueError, match="not available"):
            select("pclmul")
