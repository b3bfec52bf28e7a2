"""imgconv._validate: one wording and one rule for every argument check."""
import numpy as np
import pytest

from imgconv import _validate
from imgconv.errors import StoreArgumentError


@pytest.mark.parametrize("value", [0, 3, np.int64(5), np.uint8(2)])
def test_integers_of_numpy_and_python_are_taken(value):
    assert _validate.non_negative_int("n", value) == int(value)
    assert type(_validate.non_negative_int("n", value)) is int


@pytest.mark.parametrize("value", [True, 1.0, "1", None, np.bool_(True), -1])
def test_non_integers_and_negatives_are_refused(value):
    with pytest.raises(ValueError, match=r"n must be a non-negative integer, got"):
        _validate.non_negative_int("n", value)


def test_wording_of_the_ranges():
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        _validate.positive_int("batch_size", 0)
    with pytest.raises(ValueError, match=r"level must be an integer in 0..9, got 10"):
        _validate.integer("level", 10, minimum=0, maximum=9)
    with pytest.raises(StoreArgumentError, match=r"^x.h5: k must be an integer >= 3"):
        _validate.integer("k", 2, minimum=3, error=StoreArgumentError, where="x.h5: ")
    assert _validate.optional_non_negative_int("limit", None) is None


def test_choice():
    assert _validate.choice("mode", "L", ("RGB", "L")) == "L"
    with pytest.raises(ValueError, match="mode must be one of 'RGB', 'L', got 'CMYK'"):
        _validate.choice("mode", "CMYK", ("RGB", "L"))


def test_int64_labels():
    labels = _validate.int64_labels([1, 2, 3], 3)
    assert labels.dtype == np.int64 and labels.flags.c_contiguous
    assert _validate.int64_labels(np.array([True, False])).tolist() == [1, 0]
    assert _validate.int64_labels(np.zeros(0, np.float32)).dtype == np.int64  # empty: nothing to refuse
    for bad, message in [([1.5], "integers"), (np.array([2**63], np.uint64), "signed 64-bit"),
                         (np.zeros((2, 1), np.int64), "one-dimensional")]:
        with pytest.raises(ValueError, match=message):
            _validate.int64_labels(bad)
    with pytest.raises(ValueError, match=r"labels of shape \(2,\) for 3 images"):
        _validate.int64_labels([1, 2], 3)


def test_int64_indices():
    assert _validate.int64_indices([0, -1, 2], 3, negative=True).tolist() == [0, 2, 2]
    assert _validate.int64_indices(np.array([[1], [2]]), 3, negative=False, flatten=True).tolist() == [1, 2]
    with pytest.raises(IndexError, match="index -1 is out of range"):
        _validate.int64_indices([0, -1], 3, negative=False)
    with pytest.raises(IndexError, match=r"index 18446744073709551615 lies past"):
        _validate.int64_indices(np.array([2**64 - 1], np.uint64), 3, negative=True, out_of_range="lies past")
    with pytest.raises(TypeError, match="1-D sequence of integers, got float64"):
        _validate.int64_indices([0.5], 3, negative=False)
    assert _validate.int64_indices([10**6], None, negative=False).tolist() == [10**6]  # length unknown


def test_single_index():
    assert _validate.index(-1, 4) == 3 and _validate.index(np.int32(2), 4) == 2
    with pytest.raises(IndexError, match="index 4 is out of range"):
        _validate.index(4, 4)
    with pytest.raises(TypeError, match="indices must be integers, got float"):
        _validate.index(1.0, 4)
