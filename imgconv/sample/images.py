"""Synthetic photograph-like 32x32 colour images, deterministic in their seed.

The pictures are made to look like photographs to a compressor: a shaded
background with a lighting gradient and broad blotches, two or three solid
objects with anti-aliased edges and their own shading, striped textures on
some, and sensor-like noise. Each class (named like CIFAR-10's) has its own
palette and object shapes. At Pillow's default PNG compression a 32x32 image
takes about 2.3 KB (a real CIFAR-10 image about 2 KB; uniform noise 3.2 KB,
a flat colour 0.1 KB).

Image ``i`` does not depend on ``count``: images are made in chunks, each
from its own seeded generator. (NumPy does not promise the same random
streams and float rounding across its versions and CPUs, so compare images
made by one install.)
"""
from __future__ import annotations

import numpy as np

from .. import kernels
from ..sources.cifar.layouts import CHANNELS, HEIGHT

SIZE = HEIGHT
LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# Images are made in chunks of this many, each from its own seeded generator,
# so image i is the same whatever the count (a smaller sample is a prefix).
_CHUNK = 256

# A base hue per class (RGB, 0..255), so classes differ in palette.
_CLASS_COLOURS = np.array(
    [
        [120, 150, 200], [170, 60, 50], [150, 130, 90], [140, 120, 100], [110, 120, 70],
        [160, 130, 110], [70, 130, 60], [120, 80, 50], [60, 100, 150], [150, 150, 140],
    ],
    np.float32,
)

# Standard deviation of the difference of two independent uniform bytes.
_TRIANGLE_STD = np.sqrt((256**2 - 1) / 6)

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)


def _uniform(rng, low, high, size):
    return rng.uniform(low, high, size).astype(np.float32)


def _column(values):
    """(n,) per-image values as (n, 1, 1), to broadcast over a plane."""
    return np.asarray(values, np.float32)[:, None, None]


def _planes(colours):
    """(n, 3) colours as (n, 3, 1, 1), to broadcast over channel planes."""
    return colours[:, :, None, None]


class _Canvas:
    """Work arrays for one chunk of images, made once and reused.

    Every step writes into these with ``out=``: fresh full-size temporaries
    cost more in page faults than the arithmetic itself, and kept the
    generator several times slower.
    """

    def __init__(self, n):
        self.image = np.empty((n, CHANNELS, SIZE, SIZE), np.float32)  # channel planes, as CIFAR rows
        self.paint = np.empty_like(self.image)
        self.a, self.b, self.c, self.d = (np.empty((n, SIZE, SIZE), np.float32) for _ in range(4))
        self.rows = np.empty((n, CHANNELS * SIZE * SIZE), np.uint8)

    def add_smooth_field(self, rng, cells, amplitude):
        """Add smooth random blotches: a cells x cells grid of values, bilinearly upsampled."""
        n = self.image.shape[0]
        grid = rng.standard_normal((n, CHANNELS, cells, cells), dtype=np.float32)
        grid *= np.float32(amplitude)
        position = np.linspace(0, cells - 1, SIZE, dtype=np.float32)
        low = np.minimum(position.astype(int), cells - 2)
        weights = np.zeros((SIZE, cells), np.float32)
        weights[np.arange(SIZE), low] = 1 - (position - low)
        weights[np.arange(SIZE), low + 1] = position - low
        # The half-upsampled grid borrows a work plane's memory (it is smaller).
        across = self.d.reshape(-1)[: grid.size // cells * SIZE].reshape(n, CHANNELS, cells, SIZE)
        np.matmul(grid, weights.T, out=across)
        np.matmul(weights, across, out=self.paint)
        self.image += self.paint

    def paint_background(self, rng, labels):
        """A lighting gradient between two colours of the class palette, with blotches."""
        n = labels.size
        base = _CLASS_COLOURS[labels] + rng.normal(0, 35, (n, CHANNELS)).astype(np.float32)
        other = base * _uniform(rng, 0.4, 1.2, (n, 1))
        angle = _uniform(rng, 0, 2 * np.pi, n)
        t, tmp = self.a, self.b
        np.multiply(_XX, _column(np.cos(angle)), out=t)
        np.multiply(_YY, _column(np.sin(angle)), out=tmp)
        t += tmp
        t *= np.float32(1 / SIZE)
        t += np.float32(0.5)
        np.clip(t, 0, 1, out=t)
        np.multiply(_planes(other - base), t[:, None], out=self.image)
        self.image += _planes(base)
        self.add_smooth_field(rng, 5, 18)
        self.add_smooth_field(rng, 9, 7)

    def paint_object(self, rng, labels, k, present):
        """Paint one solid shape on the images where ``present``.

        An ellipse, box or diamond (by class), turned, anti-aliased, shaded
        across, and on half of them striped.
        """
        n = labels.size
        kind = (labels + k) % 3
        cx, cy = _uniform(rng, 4, 28, n), _uniform(rng, 4, 28, n)
        half_a, half_b = _uniform(rng, 3, 13, n), _uniform(rng, 3, 13, n)
        turn = _uniform(rng, 0, np.pi, n)
        cos, sin = _column(np.cos(turn)), _column(np.sin(turn))
        dx, dy, u, tmp = self.a, self.b, self.c, self.d
        np.subtract(_XX, _column(cx), out=dx)
        np.subtract(_YY, _column(cy), out=dy)
        # u, v: coordinates along the shape's axes, in units of its half-sizes.
        np.multiply(dx, cos, out=u)
        np.multiply(dy, sin, out=tmp)
        u += tmp
        np.abs(u, out=u)
        u /= _column(half_a)
        v = dy
        v *= cos
        dx *= sin
        v -= dx
        np.abs(v, out=v)
        v /= _column(half_b)
        # Distance 1 on the outline: Euclidean (ellipse), max (box) or sum (diamond).
        distance = dx
        np.multiply(u, u, out=distance)
        np.multiply(v, v, out=tmp)
        distance += tmp
        np.sqrt(distance, out=distance)
        np.maximum(u, v, out=tmp)
        np.copyto(distance, tmp, where=(kind == 1)[:, None, None])
        np.add(u, v, out=tmp)
        np.copyto(distance, tmp, where=(kind == 2)[:, None, None])
        # The mask goes from 0 to 1 over one pixel: anti-aliased edges, as a camera gives.
        mask = u
        np.subtract(1, distance, out=mask)
        mask *= _column(np.minimum(half_a, half_b))
        mask += np.float32(0.5)
        np.clip(mask, 0, 1, out=mask)
        mask *= _column(present)
        colour = _CLASS_COLOURS[(labels * 3 + k) % 10] * _uniform(rng, 0.3, 1.4, (n, 1))
        colour += rng.normal(0, 40, (n, CHANNELS)).astype(np.float32)
        shade = v
        np.minimum(shade, 1.5, out=shade)
        shade *= _column(rng.choice(np.array([-0.35, 0.35], np.float32), n))
        shade += 1
        striped = rng.random(n) < 0.5
        frequency, phase = _uniform(rng, 0.6, 2.2, n), _uniform(rng, 0, 2 * np.pi, n)
        stripes = distance
        np.multiply(_XX, cos, out=stripes)
        np.multiply(_YY, sin, out=tmp)
        stripes += tmp
        stripes *= _column(frequency)
        stripes += _column(phase)
        np.sin(stripes, out=stripes)
        stripes *= _column(_uniform(rng, 0.08, 0.3, n) * striped)
        shade += stripes
        # image += mask * (colour * shade - image)
        np.multiply(_planes(colour), shade[:, None], out=self.paint)
        self.paint -= self.image
        self.paint *= mask[:, None]
        self.image += self.paint

    def add_noise(self, rng):
        """Sensor-like noise, its strength varying from image to image.

        The difference of two uniform bytes: a triangular distribution, close
        enough to a Gaussian for a compressor and five times faster to draw.
        """
        n = self.image.shape[0]
        sigma = _uniform(rng, 3, 8, (n, 1)) / np.float32(_TRIANGLE_STD)
        first = rng.integers(0, 256, self.image.shape, dtype=np.uint8)
        second = rng.integers(0, 256, self.image.shape, dtype=np.uint8)
        np.subtract(first, second, out=self.paint, dtype=np.float32)
        self.paint *= _planes(sigma)
        self.image += self.paint

    def to_rows(self):
        """The images as uint8 CIFAR rows (n, 3072), rounded and clipped."""
        np.rint(self.image, out=self.image)
        np.clip(self.image, 0, 255, out=self.image)
        np.copyto(self.rows, self.image.reshape(self.rows.shape), casting="unsafe")
        return self.rows


def _synthesise(rng, labels, canvas):
    """Images for ``labels`` as CIFAR rows: uint8 (n, 3072), valid until the canvas is reused."""
    canvas.paint_background(rng, labels)
    everywhere = np.ones(labels.size, bool)
    for k in range(3):
        # The third object appears on half of the images only.
        canvas.paint_object(rng, labels, k, everywhere if k < 2 else rng.random(labels.size) < 0.5)
    canvas.add_noise(rng)
    return canvas.to_rows()


def generate_sample(count=60000, seed=0):
    """The sample's images and labels, in memory: ``(uint8 (count, 32, 32, 3), int64 (count,))``.

    Ordered as the CIFAR readers return ``split="all"`` of :func:`write_sample`'s
    output: the training images, then the test images. Deterministic in
    ``seed``; the first k images are the same for every count >= k.
    Raises ValueError for a negative count or seed.
    """
    count = check_count(count, minimum=0)
    seed = _check_seed(seed)
    images = np.empty((count, SIZE, SIZE, CHANNELS), np.uint8)
    labels = np.empty(count, np.int64)
    canvas = _Canvas(_CHUNK)
    for chunk, first in enumerate(range(0, count, _CHUNK)):
        rng = np.random.default_rng([seed, chunk])
        chunk_labels = rng.integers(0, len(LABEL_NAMES), _CHUNK)
        last = min(first + _CHUNK, count)
        rows = _synthesise(rng, chunk_labels, canvas)
        kernels.chw_to_hwc_into(rows[: last - first], images[first:last])
        labels[first:last] = chunk_labels[: last - first]
    return images, labels


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_count(count: int, minimum: int, maximum: int | None = None) -> int:
    """``count`` as an int; ValueError unless it is an integer >= ``minimum`` (and <= ``maximum``)."""
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < minimum:
        raise ValueError(f"count must be an integer >= {minimum}, got {count!r}")
    if maximum is not None and count > maximum:
        raise ValueError(f"count must be at most {maximum:,}, got {count:,}")
    return int(count)


# --- Python-2-style pickles --------------------------------------------------
