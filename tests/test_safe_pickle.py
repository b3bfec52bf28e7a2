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
