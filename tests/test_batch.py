"""Batches on their way into a store: the forms accepted, and batches that disagree with the store."""
import numpy as np
import pytest
from factories import FORMATS, make_images, target

from imgconv import stores
from imgconv.errors import StoreArgumentError, StoreError
from imgconv.stores.batch import VARIABLE, EncodedBatch, check_batch, store_shape


@pytest.mark.parametrize("fmt", FORMATS)
def test_batch_disagreeing_with_the_store_is_refused(tmp_path, fmt):
    path = target(tmp_path, fmt)
    with stores.create(path) as writer:
        writer.append(make_images(2), [0, 1])
        with pytest.raises(StoreError, match=r"store holds 5x4x3") as info:
            writer.append(make_images(2, (5, 4, 1)), [0, 1])
        assert path in str(info.value)
        with pytest.raises(StoreError, match="uint8"):
            writer.append(make_images(2).astype(np.float32), [0, 1])
        with pytest.raises(StoreError, match="labels"):
            writer.append(make_images(2), [0, 1, 2])
        with pytest.raises(StoreError, match="varying sizes"):
            writer.append([make_images(1)[0], make_images(1, (2, 2, 3))[0]], [0, 1])
        writer.append(list(make_images(2, seed=3)), [5, 6])  # a list of the store's shape is fine
    with stores.open(path) as store:
        assert len(store) == 4 and store.read_all()[1].tolist() == [0, 1, 5, 6]


def test_the_forms_a_batch_may_take():
    gray = check_batch(np.zeros((2, 3, 4), np.uint8), None)
    assert gray.images.shape == (2, 3, 4, 1) and gray.labels.tolist() == [-1, -1] and not gray.variable
    listed = check_batch([np.zeros((3, 4), np.uint8), np.zeros((5, 2, 3), np.uint8)], np.array([1, 2], np.uint8))
    assert listed.variable and [i.shape for i in listed.images] == [(3, 4, 1), (5, 2, 3)]
    assert listed.labels.dtype == np.int64 and listed.shapes().tolist() == [[3, 4, 1], [5, 2, 3]]


@pytest.mark.parametrize("images, labels, message", [
    (np.zeros((2, 3, 3), np.float32), None, "must be uint8"),
    (np.zeros((2, 0, 3, 3), np.uint8), None, r"\(N, H, W, C\)"),
    ([np.zeros((2, 2), np.uint8), "x"], None, "image 1 of the batch: an image must be a NumPy array"),
    ({"a": 1}, None, "got dict"),
    (np.zeros((2, 3, 3), np.uint8), [1, 2, 3], r"labels of shape \(3,\) for 2 images"),
    (np.zeros((1, 3, 3), np.uint8), [0.5], "integers"),
])
def test_bad_batches_are_argument_errors(images, labels, message):
    with pytest.raises(StoreArgumentError, match=message):
        check_batch(images, labels)


def test_the_shape_of_an_encoded_batch():
    same = EncodedBatch(np.zeros(2, np.int64), np.array([[3, 4, 1], [3, 4, 1]]), True)
    assert same.shape_of_batch() == (3, 4, 1)
    mixed = EncodedBatch(np.zeros(2, np.int64), np.array([[3, 4, 1], [3, 5, 1]]), True)
    empty = EncodedBatch(np.zeros(0), np.zeros((0, 3)), False)
    assert mixed.shape_of_batch() is None and empty.shape_of_batch() is None


def test_store_shapes_given_by_callers():
    assert store_shape((4, 5)) == (4, 5, 1) and store_shape([4, 5, 3]) == (4, 5, 3)
    assert store_shape(None) is None and store_shape(VARIABLE) == VARIABLE
    for bad in ((0, 3), (2, 2, 2, 2), "square", (2.5, 3)):
        with pytest.raises(StoreArgumentError, match="shape must be"):
            store_shape(bad)
