"""Batch augmentation (imgconv.augment): compiled and NumPy kernels equal, and equal to the plain recipe."""
import importlib

import numpy as np
import pytest

from imgconv import _augment_pure, augment
from imgconv.augment import CIFAR10_MEAN, CIFAR10_STD, CropFlipNormalize, Draws


@pytest.fixture(params=["compiled", "numpy"])
def kernel(request, monkeypatch):
    """Run one test on the compiled kernel, then on the NumPy reference."""
    if request.param == "compiled":
        if augment.BACKEND == "numpy":
            pytest.skip("IMGCONV_PURE=1: the NumPy kernel alone is under test")
        impl = importlib.import_module("imgconv._augment")
    else:
        impl = _augment_pure
    monkeypatch.setattr(augment, "_impl", impl)
    return request.param


def images_of(n, h=32, w=32, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def recipe(images, draws, padding, size, mean, std):
    """torchvision's steps one image at a time: pad with zeros, crop, flip, to float, normalise."""
    n, h, w, c = images.shape
    oh, ow = size
    out = np.empty((n, c, oh, ow), np.float64)
    for i in range(n):
        padded = np.pad(images[i], ((padding, padding), (padding, padding), (0, 0)))
        crop = padded[draws.top[i] : draws.top[i] + oh, draws.left[i] : draws.left[i] + ow]
        if draws.flip[i]:
            crop = crop[:, ::-1]
        values = crop.astype(np.float64) / 255.0
        if mean is not None:
            values = (values - np.asarray(mean)) / np.asarray(std)
        out[i] = values.transpose(2, 0, 1)
    return out


@pytest.mark.parametrize("padding,size,flip", [(4, None, True), (0, None, False), (0, (8, 10), True),
                                               (2, (14, 18), True), (9, (5, 5), False), (40, None, True)])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_matches_the_per_image_recipe(kernel, padding, size, flip, channels):
    images = images_of(9, 12, 16, channels, seed=channels)
    mean, std = (0.5,) * channels, (0.25,) * channels
    transform = CropFlipNormalize(mean, std, padding=padding, size=size, flip=flip)
    draws = transform.draw(9, 12, 16, np.random.default_rng(1))
    got = transform.apply(images, draws)
    oh, ow = transform.output_size(12, 16)
    assert got.shape == (9, channels, oh, ow) and got.dtype == np.float32
    expected = recipe(images, draws, padding, (oh, ow), mean, std)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_every_offset_and_flip_including_all_padding(kernel):
    images = images_of(1, 5, 6, 3)
    transform = CropFlipNormalize(padding=3, flip=True, dtype="uint8")
    for top in range(7):
        for left in range(7):
            for flip in (0, 1):
                draws = Draws(np.array([top]), np.array([left]), np.array([flip], np.uint8))
                got = transform.apply(images, draws)
                expected = recipe(images, draws, 3, (5, 6), None, None) * 255
                assert np.array_equal(got, np.rint(expected).astype(np.uint8)), (top, left, flip)


@pytest.mark.parametrize("dtype", ["float32", "float16", "uint8"])
def test_compiled_and_numpy_are_bit_identical(dtype):
    if augment.BACKEND == "numpy":
        pytest.skip("IMGCONV_PURE=1: the compiled kernel is not under test")
    compiled = importlib.import_module("imgconv._augment")
    images = images_of(64, seed=3)
    normalise = () if dtype == "uint8" else (CIFAR10_MEAN, CIFAR10_STD)
    transform = CropFlipNormalize(*normalise, padding=4, flip=True, dtype=dtype)
    draws = transform.draw(64, 32, 32, np.random.default_rng(7))
    table = transform.table(3)
    outs = []
    for impl in (compiled, _augment_pure):
        out = np.empty((64, 3, 32, 32), table.dtype)
        impl.crop_flip_lut(images, draws.top, draws.left, draws.flip, 4, table, out)
        outs.append(out)
    assert np.array_equal(outs[0], outs[1])


def test_seeded_draws_are_reproducible_and_vary(kernel):
    images = images_of(32)
    transform = CropFlipNormalize(CIFAR10_MEAN, CIFAR10_STD, padding=4, flip=True)
    a = transform(images, rng=np.random.default_rng(5))
    assert np.array_equal(a, transform(images, rng=np.random.default_rng(5)))
    assert np.array_equal(a, transform(images, rng=5))
    assert not np.array_equal(a, transform(images, rng=6))
    draws = transform.draw(10_000, 32, 32, np.random.default_rng(0))
    assert set(np.unique(draws.top)) == set(range(9)) and set(np.unique(draws.flip)) == {0, 1}
    assert 0.45 < draws.flip.mean() < 0.55


def test_float16_and_normalised_values(kernel):
    images = np.full((2, 3, 3, 3), 255, np.uint8)
    images[1] = 0
    half = CropFlipNormalize(CIFAR10_MEAN, CIFAR10_STD, dtype="float16")(images)
    assert half.dtype == np.float16
    expected = (1 - np.array(CIFAR10_MEAN)) / np.array(CIFAR10_STD)
    np.testing.assert_allclose(half[0, :, 1, 1], expected, rtol=1e-3)
    plain = CropFlipNormalize()(images)
    assert plain.dtype == np.float32 and plain[0].min() == 1.0 and plain[1].max() == 0.0


def test_out_is_filled_and_returned(kernel):
    images = images_of(4)
    transform = CropFlipNormalize(CIFAR10_MEAN, CIFAR10_STD, padding=4, flip=True)
    out = np.empty((4, 3, 32, 32), np.float32)
    assert transform(images, rng=1, out=out) is out
    assert np.array_equal(out, transform(images, rng=1))
    with pytest.raises(ValueError, match="out must be a writeable C-contiguous float32 array of shape"):
        transform(images, rng=1, out=np.empty((4, 32, 32, 3), np.float32))


def test_empty_batch_and_torch_tensors(kernel):
    torch = pytest.importorskip("torch")
    transform = CropFlipNormalize(CIFAR10_MEAN, CIFAR10_STD, padding=4, flip=True)
    assert transform(images_of(0)).shape == (0, 3, 32, 32)
    images = images_of(3)
    got = transform(torch.from_numpy(images), rng=2)
    assert isinstance(got, torch.Tensor) and got.shape == (3, 3, 32, 32)
    assert np.array_equal(got.numpy(), transform(images, rng=2))


@pytest.mark.parametrize("make,message", [
    (lambda: CropFlipNormalize(dtype="float64"), "dtype must be one of"),
    (lambda: CropFlipNormalize(mean=(0.5,)), "give both mean and std"),
    (lambda: CropFlipNormalize((0.5,), (0.5,), dtype="uint8"), "takes no mean or std"),
    (lambda: CropFlipNormalize(padding=-1), "padding must be"),
    (lambda: CropFlipNormalize(size=(0, 3)), "size must be"),
    (lambda: CropFlipNormalize((0.5, 0.5), (0.5, 0.5))(images_of(1)), "mean has 2 values, the images have 3"),
    (lambda: CropFlipNormalize((0.5,), (0.0,))(images_of(1)), "std must not be 0"),
    (lambda: CropFlipNormalize(size=40)(images_of(1)), "a crop of 40x40 does not fit"),
    (lambda: CropFlipNormalize()(images_of(1).astype(np.float32)), "uint8 batch"),
    (lambda: CropFlipNormalize()(images_of(1)[0]), "uint8 batch"),
    (lambda: CropFlipNormalize()([1, 2]), "must be a NumPy array"),
    (lambda: CropFlipNormalize(padding=1).apply(images_of(2), Draws(np.array([0, 3]), np.zeros(2), np.zeros(2))),
     "draws.top must lie in 0 .. 2"),
    (lambda: CropFlipNormalize().apply(images_of(2), Draws(np.zeros(3), np.zeros(2), np.zeros(2))),
     "one value per image"),
])
def test_bad_arguments_are_named(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_the_environment_switches_choose_the_backend():
    import subprocess
    import sys

    code = "import imgconv.augment as a; print(a.BACKEND)"
    pure = subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ, "IMGCONV_PURE": "1"},
                          capture_output=True, text=True, check=True)
    assert pure.stdout.strip() == "numpy"
