"""The Writer base class: its life cycle as a state, the format contract, and the Resumable hooks."""
import os

import numpy as np
import pytest

from imgconv import stores
from imgconv.errors import StoreError
from imgconv.resume import Resumable
from imgconv.stores import Writer, WriterState
from imgconv.stores.batch import EncodedBatch, check_batch

FORMATS = [("png", "out"), ("lmdb", "out.lmdb"), ("hdf5", "out.h5")]


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 6, 5, 3), dtype=np.uint8)


def test_direct_use_goes_new_writing_closed(tmp_path):
    writer = stores.create(tmp_path / "out.h5")
    assert writer.state is WriterState.NEW and not os.path.exists(writer.partial.path)
    writer.append(_images(3), [0, 1, 2])
    assert writer.state is WriterState.WRITING and writer.partial.locked
    writer.close()
    assert writer.state is WriterState.CLOSED and writer.closed
    assert os.listdir(tmp_path) == ["out.h5"]
    writer.close()  # harmless
    with pytest.raises(StoreError, match="closed"):
        writer.append(_images(1), [0])


def test_a_failed_write_leaves_only_abort(tmp_path, monkeypatch):
    writer = stores.create(tmp_path / "out")
    writer.append(_images(2), [0, 1])
    monkeypatch.setattr(type(writer), "_write", lambda self, encoded: (_ for _ in ()).throw(OSError(28, "full")))
    with pytest.raises(StoreError, match="writing failed"):
        writer.append(_images(2), [0, 1])
    assert writer.state is WriterState.FAILED and not writer.closed
    with pytest.raises(StoreError, match="only aborted"):
        writer.durable_count()
    with pytest.raises(StoreError, match="cannot be finished"):
        writer.close()
    assert writer.state is WriterState.ABORTED and os.listdir(tmp_path) == []


def test_a_writer_refused_the_lock_never_touches_the_holders_output(tmp_path):
    with stores.create(tmp_path / "out.lmdb") as first:
        first.append(_images(2), [0, 1])
        second = stores.create(tmp_path / "out.lmdb")
        with pytest.raises(StoreError, match="another process is writing"):
            second.append(_images(2), [0, 1])
        assert second.state is WriterState.NEW
        second.abort()
        del second
        assert os.path.isdir(first.partial.path)
    with stores.open(tmp_path / "out.lmdb") as store:
        assert len(store) == 2


@pytest.mark.parametrize("fmt, name", FORMATS)
def test_every_format_is_resumable_through_its_four_hooks(tmp_path, fmt, name):
    images = _images(40)
    first = stores.create(tmp_path / name, **({"records_per_value": 4} if fmt == "lmdb" else {}))
    assert isinstance(first, Resumable) and first.resumable
    first.begin()
    first.append(images[:30], np.arange(30))
    durable = first.durable_count()
    state = first.choices()
    held = first.suspend()
    assert first.state is WriterState.SUSPENDED and held >= durable
    first.release()
    assert not os.path.exists(tmp_path / name)

    second = stores.create(tmp_path / name, **({"records_per_value": 4} if fmt == "lmdb" else {}))
    with pytest.raises(StoreError, match="cannot reopen"):
        second.reopen(state)  # not locked yet
    second.lock()
    intact = second.reopen(state)
    assert durable <= intact <= 30  # HDF5 keeps whole 4 MiB write units only: none of these few images
    cut = min(intact, 20)
    second.truncate(cut)
    assert second.state is WriterState.WRITING and second.count == cut
    second.append(images[cut:], np.arange(cut, 40))
    second.close()
    with stores.open(tmp_path / name) as store:
        got, labels = store.read_all()
    assert np.array_equal(got, images) and labels.tolist() == list(range(40))


class _EncodedArrays(EncodedBatch):
    def __init__(self, batch):
        super().__init__(batch.labels, batch.shapes(), batch.variable)
        self.images = batch.images


def _encode(images, labels):
    return _EncodedArrays(check_batch(images, labels))


class NpzWriter(Writer):
    """A format of five methods: the whole contract of a new, non-resumable format."""

    format_name = "npz"
    format_version = 1

    def encoder(self):
        return _encode

    def _start(self):
        self._parts = []

    def _write(self, encoded):
        self._parts.append((encoded.images, encoded.labels))

    def _finish(self, meta):
        np.savez(self.temporary + ".npz", images=np.concatenate([p[0] for p in self._parts]),
                 labels=np.concatenate([p[1] for p in self._parts]))
        os.rename(self.temporary + ".npz", self.temporary)

    def _abort(self):
        self._parts = []


def test_a_new_format_needs_only_the_contract(tmp_path):
    with NpzWriter(tmp_path / "x.npz") as writer:
        writer.append(_images(3), [1, 2, 3])
    assert os.listdir(tmp_path) == ["x.npz"]
    assert np.load(tmp_path / "x.npz")["labels"].tolist() == [1, 2, 3]
    writer = NpzWriter(tmp_path / "y.npz")
    assert not writer.resumable
    writer.append(_images(3), [1, 2, 3])
    assert writer.suspend() == 0 and writer.state is WriterState.ABORTED  # nothing it could keep
    assert os.listdir(tmp_path) == ["x.npz"]
    writer = NpzWriter(tmp_path / "z.npz")
    writer.lock()
    with pytest.raises(StoreError, match="cannot be resumed"):
        writer.reopen({})
    writer.abort()


def test_describe_replaces_what_the_metadata_will_say(tmp_path):
    with stores.create(tmp_path / "out", label_names=["a"], source="first") as writer:
        writer.append(_images(1), [0])
        writer.describe(label_names=["cat", "dog"], source="a stream of 1 image")
    with stores.open(tmp_path / "out") as store:
        assert store.label_names == ["cat", "dog"] and store.metadata["source"] == "a stream of 1 image"
