"""The binary record format: layout, round trips, gathering, and every malformed case."""
import contextlib
import pathlib
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgconv import RecordError, _pure, kernels
from imgconv.record import (
    HEADER_DTYPE,
    HEADER_SIZE,
    Gather,
    PackedRecords,
    pack_records,
    read_header,
    record_size,
    reposition,
    unpack_record,
    unpack_records,
)

GOLDEN = pathlib.Path(__file__).parent / "data" / "record_v1.bin"
GOLDEN_V2 = pathlib.Path(__file__).parent / "data" / "record_v2.bin"
GOLDEN_V2_POSITIONS = [0, 1, 2**33 + 5, 2**62]  # where the records of record_v2.bin belong (never change them)


def golden_inputs():
    """The images and labels behind tests/data/record_v1.bin (never change them)."""
    rgb = (np.arange(2 * 3 * 2 * 3) * 7 % 256).astype(np.uint8).reshape(2, 3, 2, 3)
    gray = np.array([[0, 255], [128, 1]], np.uint8)
    deep = np.array([[[1, 65535]]], np.uint16)
    return [rgb[0], rgb[1], gray, deep], [0, -1, 9, 2**40]


def test_header_layout_is_pinned():
    assert HEADER_DTYPE.itemsize == HEADER_SIZE == 32
    offsets = {name: HEADER_DTYPE.fields[name][1] for name in HEADER_DTYPE.names}
    assert offsets == {
        "magic": 0, "version": 4, "dtype": 5, "channels": 6, "height": 8,
        "width": 12, "label": 16, "length": 24, "crc": 28,
    }
    assert all(HEADER_DTYPE.fields[n][0].str[0] in "<|" for n in HEADER_DTYPE.names)


def test_pinned_bytes_of_one_record(backend):
    packed = pack_records(np.array([[[[1, 2, 3]]]], np.uint8), [5])
    raw = packed.buffer.tobytes()
    assert raw[:28] == (
        b"IMGR" + b"\x01" + b"\x01" + b"\x03\x00" + b"\x01\x00\x00\x00" + b"\x01\x00\x00\x00"
        + (5).to_bytes(8, "little") + b"\x03\x00\x00\x00"
    )
    assert raw[32:] == b"\x01\x02\x03"
    assert raw[28:32] == kernels.crc32c(raw[32:], kernels.crc32c(raw[:28])).to_bytes(4, "little")
    assert list(packed.offsets) == [0, 35]


def test_golden_file_decodes_and_reencodes_identically(backend):
    data = GOLDEN.read_bytes()
    images, labels = golden_inputs()
    packed = pack_records(images, labels)
    assert packed.buffer.tobytes() == data, "the record format changed: bump VERSION and keep reading v1"
    for i, (image, label) in enumerate(zip(images, labels)):
        got, got_label = unpack_record(data, int(packed.offsets[i]))
        expected = image if image.ndim == 3 else image[..., None]
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
        assert got_label == label


def test_golden_v2_file_decodes_at_its_positions_only(backend):
    data = GOLDEN_V2.read_bytes()
    images, labels = golden_inputs()
    packed = pack_records(images, labels, positions=GOLDEN_V2_POSITIONS)
    assert packed.buffer.tobytes() == data, "the version 2 record format changed: bump VERSION and keep reading v2"
    assert [read_header(data, int(o)).version for o in packed.offsets[:-1]] == [2, 2, 2, 2]
    for i, (image, label) in enumerate(zip(images, labels)):
        offset = int(packed.offsets[i])
        got, got_label = unpack_record(data, offset, position=GOLDEN_V2_POSITIONS[i])
        np.testing.assert_array_equal(got, image if image.ndim == 3 else image[..., None])
        assert got_label == label
        # The same bytes found at another position are refused, as a damaged record is.
        for elsewhere in (GOLDEN_V2_POSITIONS[i] + 1, GOLDEN_V2_POSITIONS[i] ^ 1, -1):
            with pytest.raises(RecordError, match="belongs at another position"):
                unpack_record(data, offset, position=elsewhere)
        with pytest.raises(RecordError, match="none was given"):
            unpack_record(data, offset)
    # Without the check the position does not matter.
    assert unpack_record(data, 0, verify=False)[1] == 0


def test_pinned_bytes_of_one_version_2_record(backend):
    packed = pack_records(np.array([[[[1, 2, 3]]]], np.uint8), [5], positions=7)
    raw = packed.buffer.tobytes()
    assert raw[4] == 2 and raw[:4] == b"IMGR" and raw[5:28] == pack_records(np.array([[[[1, 2, 3]]]], np.uint8),
                                                                           [5]).buffer.tobytes()[5:28]
    crc = kernels.crc32c((7).to_bytes(8, "little"), kernels.crc32c(raw[32:], kernels.crc32c(raw[:28])))
    assert raw[28:32] == crc.to_bytes(4, "little")


@pytest.mark.parametrize("varied", [False, True])
def test_records_answering_for_another_position_are_refused_everywhere(backend, varied):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (6, 4, 5, 3), dtype=np.uint8)
    labels = np.arange(6) * 3
    positions = np.array([10, 11, 12, 500, 501, 2**40])
    packed = pack_records(list(images) if varied else images, labels, positions=positions)
    back, back_labels = unpack_records(packed, positions=positions)
    np.testing.assert_array_equal(back, images)
    np.testing.assert_array_equal(back_labels, labels)
    swapped = positions.copy()
    swapped[[2, 3]] = swapped[[3, 2]]
    with pytest.raises(RecordError, match=r"record 2 .*position 500\): checksum mismatch.*another position"):
        unpack_records(packed, positions=swapped)
    with pytest.raises(RecordError, match="none were given"):
        unpack_records(packed)
    gather = Gather((4, 5, 3), version=2)
    starts = packed.offsets[:-1]
    out, out_labels = np.empty_like(images), np.empty(6, np.int64)
    gather.into([packed.buffer], np.zeros(6, np.int64), starts, out, out_labels, positions)
    np.testing.assert_array_equal(out, images)
    with pytest.raises(RecordError, match="another position"):
        gather.into([packed.buffer], np.zeros(6, np.int64), starts, out, out_labels, positions + 1)
    for k in range(6):
        image, label = gather.one(packed.buffer, int(starts[k]), int(positions[k]))
        np.testing.assert_array_equal(image, images[k])
        with pytest.raises(RecordError, match="another position"):
            gather.one(packed.buffer, int(starts[k]), int(positions[(k + 1) % 6]))
    with pytest.raises(ValueError, match="needs the position"):
        gather.one(packed.buffer, 0)
    with pytest.raises(ValueError, match="needs the positions"):
        gather.into([packed.buffer], np.zeros(6, np.int64), starts, out, out_labels)


def test_versions_are_not_mixed_up(backend):
    images = np.zeros((2, 2, 2, 1), np.uint8)
    v1, v2 = pack_records(images, [0, 1]), pack_records(images, [0, 1], positions=0)
    with pytest.raises(RecordError, match="a version 1 record where version 2 records are expected"):
        Gather((2, 2, 1), version=2).one(v1.buffer, 0, 0)
    with pytest.raises(RecordError, match="a version 2 record where version 1 records are expected"):
        Gather((2, 2, 1)).one(v2.buffer, 0)
    with pytest.raises(ValueError, match="record version 3"):
        Gather((2, 2, 1), version=3)


def test_reposition_moves_records_without_touching_their_pixels(backend):
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (9, 3, 3, 3), dtype=np.uint8)
    labels = rng.integers(-5, 5, 9)
    packed = pack_records(images, labels, positions=0)
    reposition(packed, 0, 2**35 + 17)
    assert packed.buffer.tobytes() == pack_records(images, labels, positions=2**35 + 17).buffer.tobytes()
    varied = pack_records(list(images), labels, positions=[4, 3, 2, 1, 0, 9, 8, 7, 6])
    reposition(varied, [4, 3, 2, 1, 0, 9, 8, 7, 6], np.arange(9))
    assert varied.buffer.tobytes() == pack_records(list(images), labels, positions=np.arange(9)).buffer.tobytes()


@pytest.mark.parametrize(
    "shape, dtype",
    [((5, 32, 32, 3), np.uint8), ((4, 7, 9), np.uint8), ((3, 2, 5, 4), np.uint16),
     ((2, 3, 3, 1), np.float32), ((0, 8, 8, 3), np.uint8)],
)
def test_uniform_round_trip(backend, shape, dtype):
    rng = np.random.default_rng(0)
    images = (rng.random(shape) * 60000).astype(dtype)
    labels = rng.integers(-(2**62), 2**62, shape[0])
    packed = pack_records(images, labels)
    per = record_size(shape[1:] if len(shape) == 4 else (*shape[1:], 1), dtype)
    assert packed.buffer.size == shape[0] * per
    expected = images if images.ndim == 4 else images[..., None]
    if shape[0]:
        got, got_labels = unpack_records(packed)
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(got_labels, labels)
        got, got_labels = unpack_records(packed.buffer.tobytes())
        np.testing.assert_array_equal(got, expected)
    out = np.empty(expected.shape, dtype)
    got, _ = unpack_records(packed, out=out)
    assert got is out


def test_big_endian_input_is_stored_little_endian(backend):
    images = np.array([[[[1, 258]]]], dtype=">u2")
    packed = pack_records(images, [0])
    assert packed.buffer[32:].tobytes() == b"\x01\x00\x02\x01"
    got, _ = unpack_records(packed)
    assert got.tolist() == [[[[1, 258]]]]


def test_varied_shapes_round_trip_one_by_one(backend):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(3, 4, 3), (10, 2), (1, 1, 4), (6, 6, 3)]]
    packed = pack_records(images, [3, 1, 4, 1])
    for i, image in enumerate(images):
        got, label = unpack_record(packed.buffer, int(packed.offsets[i]))
        np.testing.assert_array_equal(got, image.reshape(got.shape))
        assert label == [3, 1, 4, 1][i]
    with pytest.raises(RecordError, match=r"record 1 .*10x2x1 uint8.*batch is 3x4x3.*unpack_record"):
        unpack_records(packed)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 9),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    c=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_compiled_and_numpy_write_identical_bytes(n, h, w, c, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    labels = rng.integers(-1000, 1000, n)
    packed = {}
    for name in kernels.BACKENDS:
        with _backend(name):
            packed[name] = pack_records(images, labels)
            got, got_labels = np.empty_like(images), np.empty(n, np.int64)
            buffers = [packed[name].buffer]
            Gather((h, w, c)).into(buffers, np.zeros(n, np.int64), packed[name].offsets[:-1], got, got_labels)
            np.testing.assert_array_equal(got, images)
            np.testing.assert_array_equal(got_labels, labels)
    np.testing.assert_array_equal(packed["compiled"].buffer, packed["numpy"].buffer)


@contextlib.contextmanager
def _backend(name):
    previous = kernels.use_backend(name)
    try:
        yield
    finally:
        kernels.use_backend(previous)


def test_gather_from_many_buffers_unsorted_and_repeated(backend):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (10, 4, 5, 3), dtype=np.uint8)
    labels = np.arange(10) * 11
    first, second = pack_records(images[:6], labels[:6]), pack_records(images[6:], labels[6:])
    buffers = [first.buffer.tobytes(), memoryview(second.buffer.tobytes())]
    wanted = [9, 0, 0, 7, 3, 6, 5]
    sources = [1 if i >= 6 else 0 for i in wanted]
    offsets = [(first.offsets if i < 6 else second.offsets)[i % 6 if i < 6 else i - 6] for i in wanted]
    got, got_labels = unpack_records(buffers, offsets, sources=sources)
    np.testing.assert_array_equal(got, images[wanted])
    np.testing.assert_array_equal(got_labels, labels[wanted])


def test_sequence_of_single_record_buffers(backend):
    images = np.random.default_rng(3).integers(0, 256, (4, 2, 2, 3), dtype=np.uint8)
    packed = pack_records(images, [1, 2, 3, 4])
    singles = [packed.buffer[a:b].tobytes() for a, b in zip(packed.offsets[:-1], packed.offsets[1:])]
    got, labels = unpack_records(singles[::-1])
    np.testing.assert_array_equal(got, images[::-1])
    assert labels.tolist() == [4, 3, 2, 1]


def _one_record(label=7):
    return bytearray(pack_records(np.arange(24, dtype=np.uint8).reshape(1, 2, 4, 3), [label]).buffer.tobytes())


@pytest.mark.parametrize("cut", range(0, 56))
def test_truncation_at_every_offset_raises(backend, cut):
    data = bytes(_one_record()[:cut])
    with pytest.raises(RecordError, match="truncated|not a whole number"):
        unpack_record(data)
    if cut:
        with pytest.raises(RecordError):
            unpack_records(data)
    with pytest.raises(RecordError):
        unpack_records([data], [0], out=np.empty((1, 2, 4, 3), np.uint8))


def test_every_flipped_bit_is_caught(backend):
    """A flipped bit anywhere in a record (header, checksum or payload) never passes."""
    original = _one_record()
    out = np.empty((1, 2, 4, 3), np.uint8)
    for byte in range(len(original)):
        for bit in range(8):
            data = bytearray(original)
            data[byte] ^= 1 << bit
            with pytest.raises(RecordError):
                unpack_record(bytes(data))
            with pytest.raises(RecordError):
                unpack_records([bytes(data)], out=out)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("magic", b"PKL\x02", "bad magic"),
        ("version", 3, "format version 3"),
        ("dtype", 9, "unknown dtype code 9"),
        ("length", 25, "payload length 25 does not match"),
        ("height", 0, "empty shape"),
        ("height", 0xFFFFFFFF, "payload length"),
        ("width", 3, "payload length"),
    ],
)
def test_bad_header_fields_are_named(backend, field, value, match):
    data = _one_record()
    header = np.frombuffer(data, HEADER_DTYPE, count=1).copy()
    header[field] = value
    data[:HEADER_SIZE] = header.tobytes()
    with pytest.raises(RecordError, match=match):
        read_header(bytes(data))
    with pytest.raises(RecordError, match=match):
        unpack_records([bytes(data)])


def test_huge_declared_size_fails_before_allocating(backend):
    data = _one_record()
    header = np.frombuffer(data, HEADER_DTYPE, count=1).copy()
    header["height"], header["width"], header["channels"] = 65536, 65535, 1
    header["length"] = 65536 * 65535
    data[:HEADER_SIZE] = header.tobytes()
    with pytest.raises(RecordError, match="truncated record.*payload needs 4294901760 bytes"):
        unpack_record(bytes(data))


def test_checksum_mismatch_names_record_and_verify_false_skips_it(backend):
    good = _one_record()
    bad = bytearray(good)
    bad[40] ^= 0xFF
    out = np.empty((3, 2, 4, 3), np.uint8)
    with pytest.raises(RecordError, match=r"record 1 \(buffer 1, offset 0\): checksum mismatch"):
        unpack_records([bytes(good), bytes(bad), bytes(good)], out=out)
    with pytest.raises(RecordError, match="checksum mismatch"):
        unpack_record(bytes(bad))
    got, _ = unpack_records([bytes(bad)], verify=False)
    assert got[0, 0, 2, 2] == 8 ^ 0xFF
    image, _ = unpack_record(bytes(bad), verify=False)
    assert image[0, 2, 2] == 8 ^ 0xFF


def test_first_bad_record_is_reported_whatever_kind(backend):
    """A checksum failure before a header failure is the one reported."""
    records = [bytes(_one_record()) for _ in range(6)]
    corrupt = bytearray(records[1])
    corrupt[33] ^= 1
    records[1] = bytes(corrupt)
    records[4] = b"nonsense" * 10
    with pytest.raises(RecordError, match=r"record 1 .*checksum"):
        unpack_records(records)
    records[1] = records[0]
    with pytest.raises(RecordError, match=r"record 4 .*bad magic"):
        unpack_records(records)


@pytest.mark.parametrize("offset, match", [(-1, "negative"), (1, "bad magic"), (56, "truncated"), (2**62, "truncated")])
def test_out_of_range_offsets_are_named(backend, offset, match):
    data = bytes(_one_record())
    with pytest.raises(RecordError, match=match):
        unpack_records([data], [offset], out=np.empty((1, 2, 4, 3), np.uint8))


@pytest.mark.parametrize("offset", [-1, -(2**62), -(2**63), 1, 55, 56, 2**62, 2**63 - 1])
@pytest.mark.parametrize("source", [0, 1, -1, 2**40])
def test_kernels_refuse_records_outside_their_buffer(offset, source):
    """Called directly, both kernels report a record that does not fit, reading nothing outside."""
    data = np.frombuffer(bytes(_one_record()), np.uint8)
    expected = Gather((2, 4, 3)).header
    for impl in (_pure, _compiled_or_skip()):
        out = np.zeros((1, 24), np.uint8)
        labels = np.zeros(1, np.int64)
        got = impl.unpack_records([data], np.array([source], np.int64), np.array([offset], np.int64),
                                  expected, out, labels, True)
        assert got == (0, impl.TRUNCATED), (impl.__name__, offset, source)
        assert not out.any() and not labels.any()
        if source == 0:
            assert impl.unpack_one(data, offset, expected, out[0], True) == (impl.TRUNCATED, 0)
            assert not out.any()


def _compiled_or_skip():
    try:
        from imgconv import _core
    except ImportError:
        pytest.skip("compiled core not built")
    return _core


def test_kernels_check_argument_sizes():
    headers = np.zeros((2, HEADER_SIZE), np.uint8)
    payloads = np.zeros((2, 3), np.uint8)
    expected = Gather((1, 1, 3)).header
    for impl in (_pure, _compiled_or_skip()):
        with pytest.raises(ValueError, match="too small"):
            impl.pack_uniform(headers, payloads, np.zeros(2 * 35 - 1, np.uint8))
        with pytest.raises(ValueError, match="too small"):
            impl.pack_uniform(headers[:1], payloads, np.zeros(70, np.uint8))
        with pytest.raises(ValueError, match="too short"):
            impl.unpack_records([b""], np.zeros(1, np.int64), np.zeros(2, np.int64), expected,
                                payloads, np.zeros(2, np.int64), True)
        with pytest.raises(ValueError, match="too short"):
            impl.unpack_one(b"", 0, expected[:31], payloads[0], True)
        with pytest.raises(ValueError, match="smaller"):
            impl.chw_to_hwc_into(np.zeros((1, 12), np.uint8), np.zeros((2, 2, 2, 3), np.uint8))


@pytest.mark.parametrize(
    "field, value",
    [("magic", b"PKL\x02"), ("version", 2), ("dtype", 2), ("channels", 1), ("length", 25), ("width", 3)],
)
@pytest.mark.parametrize("verify", [True, False])
def test_header_mismatch_is_caught_in_the_kernel(backend, field, value, verify):
    """With ``out`` given the header is checked by the gather kernel itself, not the Python pre-check."""
    data = _one_record()
    header = np.frombuffer(data, HEADER_DTYPE, count=1).copy()
    header[field] = value
    data[:HEADER_SIZE] = header.tobytes()
    good = bytes(_one_record())
    with pytest.raises(RecordError, match=r"record 1 \(buffer 1"):
        unpack_records([good, bytes(data)], out=np.empty((2, 2, 4, 3), np.uint8), verify=verify)


def test_outputs_overlapping_the_input_are_refused(backend):
    packed = pack_records(np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3), [1, 2])
    aliased = packed.buffer[: 2 * 12].reshape(2, 2, 2, 3)
    with pytest.raises(ValueError, match="overlap the input"):
        unpack_records(packed, out=aliased)
    with pytest.raises(ValueError, match="overlap the input"):
        unpack_records(packed, labels_out=packed.buffer[:16].view(np.int64))
    both = np.zeros(64, np.uint8)
    with pytest.raises(ValueError, match="must not overlap"):
        unpack_records(packed, out=both[:24].reshape(2, 2, 2, 3), labels_out=both[8:24].view(np.int64))


def test_bad_labels_out_is_refused_clearly(backend):
    packed = pack_records(np.zeros((2, 1, 1, 3), np.uint8), [1, 2])
    frozen = np.zeros(2, np.int64)
    frozen.flags.writeable = False
    for labels_out in (frozen, [0, 0], np.zeros(3, np.int64)):
        with pytest.raises(ValueError, match="labels_out must be a writeable contiguous int64"):
            unpack_records(packed, labels_out=labels_out)


def test_offsets_must_be_integers(backend):
    data = bytes(_one_record())
    with pytest.raises(TypeError, match="offsets must be integers"):
        unpack_records([data], [0.0])


def test_empty_buffer_is_a_record_error(backend):
    with pytest.raises(RecordError, match="empty buffer"):
        unpack_records(b"")


def test_unrepresentable_labels(backend):
    with pytest.raises(ValueError, match="64-bit"):
        pack_records(np.zeros((2, 1, 1, 1), np.uint8), [2**64, 0])
    with pytest.raises(ValueError, match="64-bit"):
        pack_records(np.zeros((1, 1, 1, 1), np.uint8), np.array([2**63], np.uint64))


@pytest.mark.parametrize(
    "images, labels, error, match",
    [
        (np.zeros((2, 4, 4, 3), np.int32), [0, 1], TypeError, "records hold"),
        (np.zeros((2, 4, 4, 3), np.uint8), [0], ValueError, "expected 2 labels"),
        (np.zeros((2, 4, 4, 3), np.uint8), [0.5, 1.0], TypeError, "integers"),
        (np.zeros((2, 4), np.uint8), [0, 1], ValueError, r"\(N, H, W, C\)"),
        (np.zeros((1, 4, 4, 70000), np.uint8), [0], ValueError, "channels 70000"),
        ([np.zeros((4, 4, 3), np.uint8), "not an image"], [0, 1], TypeError, "image 1"),
        ([np.zeros((0, 4, 3), np.uint8)], [0], ValueError, "image 0: height 0"),
    ],
)
def test_pack_refuses_what_records_cannot_hold(backend, images, labels, error, match):
    with pytest.raises(error, match=match):
        pack_records(images, labels)


def test_unpack_argument_errors(backend):
    packed = pack_records(np.zeros((2, 2, 2, 3), np.uint8), [0, 1])
    with pytest.raises(ValueError, match="holds 3 images"):
        unpack_records(packed, out=np.empty((3, 2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="labels_out"):
        unpack_records(packed, labels_out=np.empty(2, np.int32))
    with pytest.raises(RecordError, match=r"image is 2x2x3 uint8, the batch is 2x2x1"):
        unpack_records(packed, out=np.empty((2, 2, 2, 1), np.uint8))
    with pytest.raises(ValueError, match="no records"):
        unpack_records([])
    with pytest.raises(TypeError, match="bytes-like"):
        unpack_records(12)
    assert isinstance(packed, PackedRecords)


# --------------------------------------------------------------------------- Gather, the prepared fast path


def _packed(shape=(3, 4, 2), dtype=np.uint8, n=5, seed=4):
    images = (np.random.default_rng(seed).random((n, *shape)) * 60000).astype(dtype)
    labels = np.arange(n) * 7 - 10
    return images, labels, pack_records(images, labels)


@pytest.mark.parametrize("shape, dtype", [((3, 4, 2), np.uint8), ((2, 5, 3), np.uint16), ((4, 1, 1), np.float32)])
def test_gather_one_decodes_each_record_into_a_new_image(backend, shape, dtype):
    images, labels, packed = _packed(shape, dtype)
    gather = Gather(shape, dtype)
    for source in (packed.buffer, packed.buffer.tobytes(), memoryview(bytearray(packed.buffer))):
        for i in range(len(labels)):
            image, label = gather.one(source, int(packed.offsets[i]))
            assert image.dtype == np.dtype(dtype) and image.shape == shape and image.flags.writeable
            np.testing.assert_array_equal(image, images[i])
            assert label == labels[i] and type(label) is int
            assert not np.may_share_memory(image, packed.buffer)


def test_gather_of_a_two_dimensional_shape_has_one_channel(backend):
    images = np.arange(12, dtype=np.uint8).reshape(2, 3, 2)
    packed = pack_records(images, [4, 5])
    gather = Gather((3, 2))
    assert gather.shape == (3, 2, 1) and gather.record_size == record_size((3, 2, 1)) == HEADER_SIZE + 6
    image, label = gather.one(packed.buffer, int(packed.offsets[1]))
    np.testing.assert_array_equal(image[..., 0], images[1])
    assert label == 5


def test_gather_into_takes_records_from_many_buffers_in_any_order(backend):
    images, labels, packed = _packed(n=8)
    halves = [packed.buffer[: 4 * 56].tobytes(), memoryview(packed.buffer[4 * 56 :].copy())]
    wanted = np.array([7, 0, 0, 5, 2])
    sources = (wanted >= 4).astype(np.int64)
    offsets = (wanted % 4) * 56
    out, got_labels = np.full((5, 3, 4, 2), 9, np.uint8), np.zeros(5, np.int64)
    returned = Gather((3, 4, 2)).into(halves, sources, offsets, out, got_labels)
    assert returned[0] is out and returned[1] is got_labels
    np.testing.assert_array_equal(out, images[wanted])
    np.testing.assert_array_equal(got_labels, labels[wanted])
    # Lists of integers do as well as int64 arrays, and nothing to gather is no work.
    Gather((3, 4, 2)).into(halves, sources.tolist(), offsets.tolist(), out, got_labels)
    np.testing.assert_array_equal(out, images[wanted])
    empty = np.empty((0, 3, 4, 2), np.uint8)
    assert Gather((3, 4, 2)).into(halves, [], [], empty, np.empty(0, np.int64))[0] is empty


def test_gather_into_slices_in_threads_fills_the_whole_output(backend):
    images, labels, packed = _packed(n=64)
    gather = Gather((3, 4, 2))
    out, got_labels = np.empty_like(images), np.empty(64, np.int64)
    sources, offsets = np.zeros(64, np.int64), packed.offsets[:-1].copy()
    threads = [threading.Thread(target=gather.into, args=([packed.buffer], sources[a : a + 16], offsets[a : a + 16],
                                                          out[a : a + 16], got_labels[a : a + 16]))
               for a in range(0, 64, 16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    np.testing.assert_array_equal(out, images)
    np.testing.assert_array_equal(got_labels, labels)


def test_gather_header_is_the_records_header_without_label_and_checksum(backend):
    _, _, packed = _packed(n=1)
    gather = Gather((3, 4, 2))
    header = bytearray(packed.buffer[:HEADER_SIZE].tobytes())
    header[16:24] = bytes(8)
    header[28:32] = bytes(4)
    assert gather.header.tobytes() == bytes(header) and not gather.header.flags.writeable
    assert repr(gather) == "Gather(3x4x2 uint8, verify=True, version=1)"


def test_gather_names_a_bad_record_as_the_batch_functions_do(backend):
    good = _one_record()
    crc = bytearray(good)
    crc[40] ^= 0xFF
    other = pack_records(np.zeros((1, 2, 2, 3), np.uint8), [0]).buffer.tobytes()
    gather = Gather((2, 4, 3))
    out, labels = np.empty((2, 2, 4, 3), np.uint8), np.empty(2, np.int64)
    cases = [(bytes(crc), "checksum mismatch, the record is corrupt"),
             (other, r"image is 2x2x3 uint8, the batch is 2x4x3"),
             (bytes(good[:50]), "truncated record at offset 0: payload needs 24 bytes, 18 left"),
             (b"IMGX" + bytes(good[4:]), "bad magic")]
    for data, match in cases:
        with pytest.raises(RecordError, match="record at offset 0: " + match):
            gather.one(data)
        with pytest.raises(RecordError, match=r"record 1 \(buffer 1, offset 0\): " + match):
            gather.into([bytes(good), data], [0, 1], [0, 0], out, labels)
    with pytest.raises(RecordError, match="record at offset 56: truncated record at offset 56: 0 bytes left"):
        gather.one(bytes(good), 56)
    with pytest.raises(RecordError, match="record at offset -1: record offset -1 is negative"):
        gather.one(bytes(good), -1)


def test_gather_without_verify_skips_only_the_checksum(backend):
    crc = _one_record(label=3)
    crc[40] ^= 0xFF
    gather = Gather((2, 4, 3), verify=False)
    image, label = gather.one(bytes(crc))
    assert image[0, 2, 2] == 8 ^ 0xFF and label == 3
    with pytest.raises(RecordError, match="image is 2x4x3 uint8, the batch is 2x4x1"):
        Gather((2, 4, 1), verify=False).one(bytes(crc))


def test_gather_refuses_bad_arguments_clearly(backend):
    good = bytes(_one_record())
    gather = Gather((2, 4, 3))
    out, labels = np.empty((1, 2, 4, 3), np.uint8), np.empty(1, np.int64)
    frozen = out.copy()
    frozen.flags.writeable = False
    for bad_out, match in [(np.empty((2, 2, 4, 3), np.uint8), r"out must be an array of shape \(1, 2, 4, 3\)"),
                           (np.empty((1, 2, 4, 3), np.uint16), "dtype uint8"), (frozen, "writeable"),
                           (np.empty((1, 2, 3, 4), np.uint8)[..., :3], "shape"), ([[0]], "got list")]:
        with pytest.raises(ValueError, match=match):
            gather.into([good], [0], [0], bad_out, labels)
    with pytest.raises(ValueError, match="labels must be a writeable contiguous int64"):
        gather.into([good], [0], [0], out, np.empty(1, np.int32))
    with pytest.raises(ValueError, match="sources has 2 entries, offsets 1"):
        gather.into([good], [0, 0], [0], out, labels)
    with pytest.raises(ValueError, match=r"sources\[0\] is 1: there are 1 buffers"):
        gather.into([good], [1], [0], out, labels)
    with pytest.raises(TypeError, match="offsets must be integers"):
        gather.into([good], [0], [0.5], out, labels)
    with pytest.raises(TypeError, match=r"buffers\[0\] must be a bytes-like"):
        gather.into([[1, 2]], [0], [0], out, labels)
    with pytest.raises(TypeError, match="buffer must be a bytes-like"):
        gather.one(12)
    with pytest.raises(ValueError, match="C-contiguous"):
        gather.one(np.frombuffer(good * 2, np.uint8)[::2])
    with pytest.raises(TypeError, match="offset must be an integer, got float"):
        gather.one(good, 0.0)
    with pytest.raises(ValueError, match="offset 18446744073709551616 does not fit"):
        gather.one(good, 2**64)
    for shape, dtype, error in [((2, 4, 3, 1), np.uint8, ValueError), ((0, 4, 3), np.uint8, ValueError),
                                ((2, 4, 3), np.int32, TypeError)]:
        with pytest.raises(error):
            Gather(shape, dtype)


def test_gather_decodes_any_contiguous_array_by_its_bytes(backend):
    data = np.frombuffer(bytes(_one_record(label=-2)) + bytes(4), np.uint8)
    image, label = Gather((2, 4, 3)).one(data.view(np.int32))
    np.testing.assert_array_equal(image, np.arange(24).reshape(2, 4, 3))
    assert label == -2


def test_a_gather_keeps_the_kernels_it_was_made_with(monkeypatch):
    pytest.importorskip("imgconv._core")
    calls, real = [], _pure.unpack_one
    monkeypatch.setattr(_pure, "unpack_one", lambda *args: calls.append(1) or real(*args))
    data = bytes(_one_record())
    with _backend("numpy"):
        numpy_gather = Gather((2, 4, 3))
    with _backend("compiled"):
        assert Gather((2, 4, 3)).one(data)[1] == 7 and calls == []
        assert numpy_gather.one(data)[1] == 7 and calls == [1]
