"""The restricted unpickler: genuine batches load, anything that asks for code is refused unrun."""
import io
import os
import pickle
import struct

import numpy as np
import pytest

from imgconv.errors import SourceError, UnsafePickleError
from imgconv.sample import dump_py2_pickle
from imgconv.sources.safe_pickle import load_pickle

PIXELS = bytes(range(250, 256)) + bytes(range(6))  # bytes >= 0x80 catch a text decoding of the data


def _py2_batch_bytes():
    """A 2x6 CIFAR-style batch exactly as Python 2 with NumPy 1 pickled it, opcode by opcode."""
    return b"".join(
        [
            b"\x80\x02}q\x00(",  # PROTO 2, EMPTY_DICT, BINPUT, MARK
            b"U\x04dataq\x01",  # SHORT_BINSTRING key (a Python-2 str)
            b"cnumpy.core.multiarray\n_reconstruct\nq\x02",
            b"cnumpy\nndarray\nq\x03K\x00\x85q\x04U\x01b\x87q\x05Rq\x06",  # _reconstruct(ndarray, (0,), 'b')
            b"(K\x01K\x02K\x06\x86q\x07",  # state: version 1, shape (2, 6)
            b"cnumpy\ndtype\nq\x08U\x02u1K\x00K\x01\x87Rq\x09",  # dtype('u1', 0, 1)
            b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb",  # dtype state
            b"\x89T" + struct.pack("<i", len(PIXELS)) + PIXELS,  # fortran False, data as BINSTRING
            b"tb",  # BUILD the array
            b"U\x06labelsq\x0a]q\x0b(K\x03K\x09e",
            b"U\x09filenamesq\x0c]q\x0d(U\x05a.pngU\x05b.pnge",
            b"u.",  # SETITEMS, STOP
        ]
    )


def test_python2_numpy1_pickle_loads_with_bytes_keys_and_exact_pixels():
    batch = load_pickle(_py2_batch_bytes(), "data_batch_1")
    assert set(batch) == {b"data", b"labels", b"filenames"}
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (2, 6)
    assert batch[b"data"].tobytes() == PIXELS
    assert batch[b"labels"] == [3, 9] and batch[b"filenames"] == [b"a.png", b"b.png"]


def test_stdlib_agrees_on_the_handmade_python2_pickle():
    # The fixture itself is a valid pickle: plain pickle reads the same thing.
    expected = pickle.loads(_py2_batch_bytes(), encoding="bytes")
    assert expected[b"data"].tobytes() == PIXELS


def test_py2_writer_output_loads_and_names_the_old_numpy_module():
    out = io.BytesIO()
    rows = np.frombuffer(PIXELS, np.uint8).reshape(2, 6)
    dump_py2_pickle({"data": rows, "labels": [1, 2]}, out)
    data = out.getvalue()
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in data and b"_codecs" not in data
    batch = load_pickle(data, "x")
    np.testing.assert_array_equal(batch[b"data"], rows)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_python3_numpy2_pickles_load(protocol):
    rows = np.arange(24, dtype=np.uint8).reshape(4, 6) + 200
    data = pickle.dumps({"data": rows, "labels": [1, 2, 3, 4], "name": b"\xff\x00raw"}, protocol=protocol)
    batch = load_pickle(data, "batch")
    np.testing.assert_array_equal(batch["data"], rows)
    assert batch["labels"] == [1, 2, 3, 4] and batch["name"] == b"\xff\x00raw"


def test_numpy_scalars_and_other_dtypes_load():
    value = {"n": np.int64(10000), "f": np.arange(3, dtype="<f4")}
    loaded = load_pickle(pickle.dumps(value, protocol=2), "meta")
    assert loaded["n"] == 10000 and loaded["f"].tolist() == [0.0, 1.0, 2.0]


class _Hostile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class _HostileOpen:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_hostile_pickle_is_refused_before_anything_runs(tmp_path, protocol):
    marker = tmp_path / "pwned"
    payload = {"data": np.zeros((1, 3), np.uint8), "labels": [_Hostile(marker)]}
    data = pickle.dumps(payload, protocol=protocol)
    with pytest.raises(UnsafePickleError) as info:
        load_pickle(data, "evil_batch")
    message = str(info.value)
    assert "evil_batch" in message and "system" in message
    assert not marker.exists()
    # The same bytes do run under plain pickle: the test would catch a permissive loader.
    pickle.loads(data)
    assert marker.exists()


def test_builtin_open_is_refused(tmp_path):
    marker = tmp_path / "created"
    with pytest.raises(UnsafePickleError, match=r"asks for io\.open"):
        load_pickle(pickle.dumps(_HostileOpen(str(marker)), protocol=2), "f")
    assert not marker.exists()


def test_codecs_encode_only_with_latin1():
    evil = b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00abX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(UnsafePickleError, match="rot13"):
        load_pickle(evil, "f")


def test_object_arrays_and_array_subclasses_are_refused():
    with pytest.raises(UnsafePickleError, match="object"):
        load_pickle(pickle.dumps(np.array([1, "a"], dtype=object), protocol=2), "objects")
    with pytest.raises(UnsafePickleError):
        load_pickle(pickle.dumps(np.ma.masked_array([1, 2], mask=[0, 1]), protocol=2), "masked")


def test_truncated_pickle_names_the_file():
    data = pickle.dumps({"data": np.zeros((10, 3072), np.uint8)}, protocol=2)
    with pytest.raises(SourceError, match=r"data_batch_3: .*truncated"):
        load_pickle(data[: len(data) // 2], "data_batch_3")


@pytest.mark.parametrize("data", [b"", b"not a pickle at all", b"\x80\x02}q\x00(U\x04data"])
def test_garbage_is_a_source_error(data):
    with pytest.raises(SourceError, match="garbage"):
        load_pickle(data, "garbage")


def test_reads_from_a_file_object(tmp_path):
    path = tmp_path / "b"
    path.write_bytes(_py2_batch_bytes())
    with open(path, "rb") as f:
        assert load_pickle(f, str(path))[b"labels"] == [3, 9]


def test_ndarray_cannot_be_called_directly():
    # ndarray((1000,)) would hand back uninitialised memory; only _reconstruct may use the name.
    raw = b"\x80\x02cnumpy\nndarray\nM\xe8\x03\x85\x85R."
    with pytest.raises(SourceError) as info:
        load_pickle(raw, "direct")
    assert "direct" in str(info.value)
    assert pickle.loads(raw).shape == (1000,)  # plain pickle would have built it


# --- hand-built hostile pickles: BUILD, _reconstruct, dtypes, opcodes --------------------------


class _Raw(bytes):
    """Opcodes written as they are by _enc."""


def _enc(value):
    """Protocol-2 opcodes pushing ``value`` (plain data; _Raw parts go in unchanged)."""
    if isinstance(value, _Raw):
        return bytes(value)
    if value is None:
        return b"N"
    if value is True or value is False:
        return b"\x88" if value else b"\x89"
    if isinstance(value, int):
        if -(1 << 31) <= value < (1 << 31):
            return b"J" + struct.pack("<i", value)
        data = value.to_bytes(16, "little", signed=True)
        return b"\x8a" + bytes([len(data)]) + data  # LONG1
    if isinstance(value, str):
        data = value.encode()
        return b"X" + struct.pack("<I", len(data)) + data
    if isinstance(value, bytes):
        return b"B" + struct.pack("<I", len(value)) + value  # BINBYTES
    if isinstance(value, tuple):
        return b"(" + b"".join(_enc(v) for v in value) + b"t"
    if isinstance(value, list):
        return b"]" + (b"(" + b"".join(_enc(v) for v in value) + b"e" if value else b"")
    if isinstance(value, dict):
        return b"}" + (b"(" + b"".join(_enc(k) + _enc(v) for k, v in value.items()) + b"u" if value else b"")
    raise TypeError(value)


def _global(module, name):
    return _Raw(b"c" + module.encode() + b"\n" + name.encode() + b"\n")


def _call(function, *args):
    return _Raw(_enc(function) + _enc(tuple(args)) + b"R")


def _build(target, state):
    return _Raw(_enc(target) + _enc(state) + b"b")


STANDARD = (3, "|", None, None, None, -1, -1, 0)


def _dtype(name, state=STANDARD):
    made = _call(_global("numpy", "dtype"), name, False, True)
    return made if state is None else _build(made, state)


def _array(shape, dtype, data, reconstruct_shape=(0,), typecode=b"b"):
    reconstruct = _global("numpy.core.multiarray", "_reconstruct")
    made = _call(reconstruct, _global("numpy", "ndarray"), reconstruct_shape, typecode)
    return _build(made, (1, shape, dtype, False, data))


def _pickle(value):
    return b"\x80\x02" + _enc(value) + b"."


def test_hand_built_array_loads():
    # The builder writes what NumPy writes: a genuine array loads, so each refusal below is the check.
    loaded = load_pickle(_pickle(_array((2, 3), _dtype("u1"), bytes(range(6)))), "ok")
    np.testing.assert_array_equal(loaded, np.arange(6, dtype=np.uint8).reshape(2, 3))
    f4_big_endian = _dtype("f4", (3, ">", None, None, None, -1, -1, 0))
    big_endian = load_pickle(_pickle(_array((2,), f4_big_endian, b"?\x80\x00\x00@\x00\x00\x00")), "f")
    assert big_endian.tolist() == [1.0, 2.0]


@pytest.mark.parametrize(
    "state",
    [
        (3, "|", None, None, None, 1 << 30, 1, 0),  # item size: the array would claim 1 GiB
        (3, "|", None, None, None, -1, -1, 0x3F),  # flags, including "holds objects"
        (3, "|", None, None, None, -1, 16, 0),  # alignment
        (3, "|", None, ("a",), None, -1, -1, 0),  # field names
        (4, "|", None, None, None, -1, -1, 0, {"meta": 1}),  # metadata
        (3, ">", None, None, None, -1, -1, 0),  # a byte order on a one-byte type
    ],
)
def test_dtype_state_other_than_numpys_is_refused(state):
    with pytest.raises(UnsafePickleError, match="state on the dtype"):
        load_pickle(_pickle(_array((1,), _dtype("u1", state), b"\x01")), "dtype_state")


def test_dtype_state_after_an_array_uses_it_is_refused():
    # Changing the dtype once an array has it would change the array.
    dtype = _Raw(_dtype("u1", None) + b"q\x01")  # BINPUT 1: the dtype, kept for later
    payload = _pickle([_array((1,), dtype, b"\x01"), _build(_Raw(b"h\x01"), STANDARD)])
    with pytest.raises(UnsafePickleError, match="BUILD"):
        load_pickle(payload, "late")


@pytest.mark.parametrize("name", ["V4", "V8", "O8", "S4", "U4", "M8", "c16", "f2", "u1,u1", ("u1", (4,))])
def test_only_plain_number_dtypes(name):
    with pytest.raises(UnsafePickleError, match="only plain numbers"):
        load_pickle(_pickle(_dtype(name)), "dtype")


@pytest.mark.parametrize(
    "shape, typecode",
    [
        (((1 << 40), 3072), b"B"),  # uninitialised memory of any size from a few bytes
        ((3, 3072), b"b"),
        ((0,), b"O"),  # an object array
        ((0,), b"B"),
    ],
)
def test_reconstruct_only_as_numpy_calls_it(shape, typecode):
    raw = _pickle(_call(_global("numpy.core.multiarray", "_reconstruct"), _global("numpy", "ndarray"), shape, typecode))
    with pytest.raises(UnsafePickleError, match="_reconstruct"):
        load_pickle(raw, "bomb")


def test_a_103_byte_batch_of_heap_garbage_is_refused():
    # The reviewer's file: three "images" of uninitialised memory, no pixel data in it.
    reconstruct = _call(_global("numpy.core.multiarray", "_reconstruct"), _global("numpy", "ndarray"), (3, 3072), b"B")
    raw = b"\x80\x02}(" + _enc("data") + reconstruct + _enc("labels") + _enc([0, 0, 0]) + b"u."
    with pytest.raises(UnsafePickleError):
        load_pickle(raw, "test_batch")
    assert pickle.loads(raw)["data"].shape == (3, 3072)  # plain pickle would hand them out


@pytest.mark.parametrize(
    "state",
    [
        (1, (1000,), _Raw(_dtype("u1")), False, b"abcd"),  # less data than the shape needs
        (1, (2,), _Raw(_dtype("u1")), False, b"abcd"),  # more
        (1, (-1,), _Raw(_dtype("u1")), False, b""),
        (1, (4,), "u1", False, b"abcd"),  # a string for the dtype
        (1, (4,), _Raw(_dtype("u1")), False, [1, 2, 3, 4]),  # a list for the data
        (2, (4,), _Raw(_dtype("u1")), False, b"abcd"),
        ((4,), _Raw(_dtype("u1")), False, b"abcd"),
    ],
)
def test_array_state_must_match_its_data(state):
    made = _call(_global("numpy.core.multiarray", "_reconstruct"), _global("numpy", "ndarray"), (0,), b"b")
    with pytest.raises(UnsafePickleError):
        load_pickle(_pickle(_build(made, state)), "state")


def test_array_state_is_set_once():
    array = _Raw(_array((4,), _dtype("u1"), b"abcd") + b"q\x01")
    again = _build(_Raw(b"h\x01"), (1, (8,), _Raw(_dtype("u1")), False, b"abcdefgh"))
    with pytest.raises(UnsafePickleError, match="BUILD"):
        load_pickle(_pickle([array, again]), "twice")


def test_build_on_anything_else_is_refused():
    frombuffer = _call(_global("numpy.core.numeric", "_frombuffer"), b"abcd", _Raw(_dtype("u1")), (4,), "C")
    for target in (frombuffer, _Raw(b"}"), _Raw(b"]"), _global("numpy", "dtype")):
        with pytest.raises(UnsafePickleError, match="BUILD"):
            load_pickle(_pickle(_build(target, {"x": 1})), "build")


def test_build_on_the_ndarray_name_is_refused_and_leaves_nothing_behind():
    # Slot state on the class numpy.ndarray resolves to would persist in the process.
    raw = _pickle(_build(_global("numpy", "ndarray"), (None, {"pwned": 1})))
    with pytest.raises(UnsafePickleError, match="BUILD"):
        load_pickle(raw, "poison")
    # Each load gets its own token: nothing one file does is seen by the next.
    first = load_pickle(_pickle(_global("numpy", "ndarray")), "a")
    assert first is not load_pickle(_pickle(_global("numpy", "ndarray")), "b")
    assert not hasattr(first, "pwned") and not hasattr(type(first), "pwned")


def test_frombuffer_and_scalar_arguments_are_checked():
    ok = _call(_global("numpy._core.numeric", "_frombuffer"), b"abcd", _Raw(_dtype("u1")), (2, 2), "C")
    assert load_pickle(_pickle(ok), "ok").tolist() == [[97, 98], [99, 100]]
    for bad in [
        _call(_global("numpy._core.numeric", "_frombuffer"), b"abc", _Raw(_dtype("u1")), (2, 2), "C"),
        _call(_global("numpy._core.numeric", "_frombuffer"), b"abcd", "V4", (1,), "C"),
        _call(_global("numpy._core.multiarray", "scalar"), _Raw(_dtype("u1")), b""),
        _call(_global("numpy._core.multiarray", "scalar"), _Raw(_dtype("u1")), 7),
    ]:
        with pytest.raises(UnsafePickleError):
            load_pickle(_pickle(bad), "args")


def test_out_of_band_buffers_are_refused():
    buffers = []
    data = pickle.dumps(np.arange(4, dtype=np.uint8), protocol=5, buffer_callback=buffers.append)
    assert buffers  # the array data went out of band
    with pytest.raises(UnsafePickleError, match="out-of-band"):
        load_pickle(data, "oob")


def test_bytearray_claiming_gigabytes_is_not_allocated():
    import tracemalloc

    raw = b"\x80\x05\x96" + struct.pack("<Q", 1 << 28) + b"abc."  # BYTEARRAY8 of 256 MiB, 3 bytes there
    tracemalloc.start()
    try:
        with pytest.raises(SourceError, match="truncated"):
            load_pickle(raw, "claim")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def test_sets_and_tuple_keys_are_refused():
    # A tuple nested through the memo hashes in time exponential in its depth.
    nested = b"(t"
    for _ in range(22):
        nested += b"q\x010h\x01h\x01\x86"  # t = (t, t): PUT, POP, GET, GET, TUPLE2
    with pytest.raises(UnsafePickleError, match="dict key"):
        load_pickle(b"\x80\x02}" + nested + b"K\x01s.", "keys")
    with pytest.raises(UnsafePickleError, match="set"):
        load_pickle(pickle.dumps({1, 2}, protocol=4), "set")
    with pytest.raises(UnsafePickleError, match="set"):
        load_pickle(pickle.dumps(frozenset({1}), protocol=4), "frozenset")


def test_codecs_encode_never_looks_up_a_name_from_the_file(monkeypatch):
    import codecs

    def lookup(name):
        raise AssertionError(f"codecs.lookup({name!r}) called")

    monkeypatch.setattr(codecs, "lookup", lookup)
    evil = _pickle(_call(_global("_codecs", "encode"), "ab", "nosuchx"))
    with pytest.raises(UnsafePickleError, match="nosuchx"):
        load_pickle(evil, "f")
    for spelling in ("latin1", "latin-1", "iso-8859-1", "ISO-8859-1"):
        assert load_pickle(_pickle(_call(_global("_codecs", "encode"), "\xff", spelling)), "f") == b"\xff"


def test_unknown_opcode_is_a_source_error():
    with pytest.raises(SourceError, match="unknown opcode 0xff"):
        load_pickle(b"\x80\x02\xff.", "junk")
