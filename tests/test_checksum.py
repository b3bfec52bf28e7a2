"""The per-image checksum over pixels, label and position: the vectorised continuation against the definition."""
import numpy as np
import pytest
from factories import varying_images
from hypothesis import given, settings
from hypothesis import strategies as st

from imgconv import checksum, kernels


def test_image_checksums_continue_over_the_label(backend):
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (50, 3, 2, 3), dtype=np.uint8)
    labels = np.concatenate([rng.integers(-2**63, 2**63 - 1, 47, dtype=np.int64), [-1, 0, 2**63 - 1]])
    expected = [kernels.crc32c(np.array(label, "<i8").tobytes(), kernels.crc32c(image))
                for image, label in zip(images, labels)]
    assert checksum.image_checksums(images, labels).tolist() == expected  # the vectorised way
    assert checksum.image_checksums(images[:3], labels[:3]).tolist() == expected[:3]  # one by one
    varying = varying_images(9)
    assert checksum.image_checksums(varying, np.arange(9)).tolist() == [
        kernels.crc32c(np.array(i, "<i8").tobytes(), kernels.crc32c(np.ascontiguousarray(image)))
        for i, image in enumerate(varying)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=1, max_size=40), st.integers(-(2**63), 2**63 - 1)), max_size=30))
def test_the_vectorised_continuation_equals_the_direct_method(items):
    images = [np.frombuffer(data, np.uint8).reshape(1, -1, 1) for data, _ in items]
    labels = np.array([label for _, label in items], np.int64)
    direct = checksum.direct_checksums(images, labels)
    crcs = np.array([kernels.crc32c(image) for image in images], np.uint32)
    assert checksum.continue_over_labels(crcs, labels).tolist() == direct.tolist()
    assert checksum.image_checksums(images, labels).tolist() == direct.tolist()


def test_counts_must_agree():
    with pytest.raises(ValueError, match="2 images but 1 labels"):
        checksum.image_checksums(np.zeros((2, 1, 1, 1), np.uint8), [0])


def test_the_checksum_of_the_current_versions_ends_with_the_position(backend):
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (20, 2, 3, 1), dtype=np.uint8)
    labels, positions = rng.integers(-9, 9, 20), np.arange(20) + 2**35
    expected = [kernels.crc32c(np.array(p, "<i8").tobytes(), kernels.crc32c(np.array(label, "<i8").tobytes(),
                                                                            kernels.crc32c(image)))
                for image, label, p in zip(images, labels, positions)]
    assert checksum.image_checksums(images, labels, positions).tolist() == expected  # the vectorised way
    assert checksum.image_checksums(images[:2], labels[:2], positions[:2]).tolist() == expected[:2]  # one by one
    # What a writer does with the checksums a worker computed: bind the positions it alone knows.
    assert checksum.bind_positions(checksum.image_checksums(images, labels), 2**35).tolist() == expected
    with pytest.raises(ValueError, match="20 images but 3 positions"):
        checksum.image_checksums(images, labels, positions[:3])


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=0, max_size=64), st.integers(-(2**63), 2**63 - 1), st.integers(-(2**63), 2**63 - 1))
def test_suffix_change_moves_a_crc_from_one_ending_to_another(message, old, new):
    data = np.frombuffer(message, np.uint8)
    ending = kernels.crc32c(np.array([old], "<i8").view(np.uint8), kernels.crc32c(data))
    moved = ending ^ int(checksum.suffix_change(old, new)[0])
    assert moved == kernels.crc32c(np.array([new], "<i8").view(np.uint8), kernels.crc32c(data))


@pytest.mark.parametrize("count", [0, 1, 2, 8, 9])
def test_few_checksums_are_continued_by_the_kernel_as_the_tables_do(count, monkeypatch):
    rng = np.random.default_rng(count)
    crcs = rng.integers(0, 2**32, count, dtype=np.uint32)
    values = rng.integers(-2**63, 2**63 - 1, count, dtype=np.int64)
    got = checksum.continue_over_int64(crcs, values)
    monkeypatch.setattr(checksum, "_FEW", -1)  # the tables only
    assert got.dtype == np.uint32
    assert got.tolist() == checksum.continue_over_int64(crcs, values).tolist()
    assert got.tolist() == [kernels.crc32c(np.array(v, "<i8").tobytes(), int(c)) for c, v in zip(crcs, values)]
