# cython: language_level=3
"""Compiled batch augmentation of imgconv, built as ``imgconv._augment``.

One pass over a batch: random crop of the zero-padded image, horizontal
flip, NHWC to NCHW, and a per-channel lookup table that maps each byte to its
output value (normalised float32, float16 bits, or the byte itself). The
randomness (crop offsets, flips) is drawn by the caller and passed in, and
the table is computed by the caller, so this kernel and the NumPy reference
in ``imgconv._augment_pure`` give bit-identical results. Arguments are
checked by ``imgconv.augment``; the kernel trusts them.
"""
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t

ctypedef fused lut_t:
    uint8_t
    uint16_t
    uint32_t


cdef void _one_image(const uint8_t *src, Py_ssize_t h, Py_ssize_t w, Py_ssize_t c,
                     Py_ssize_t top, Py_ssize_t left, bint flip,
                     const lut_t *table, lut_t *dst, Py_ssize_t oh, Py_ssize_t ow) noexcept nogil:
    """Crop rows top..top+oh-1, columns left..left+ow-1 of the image padded by zeros
    (top and left already shifted by the padding, so they may be negative), flip,
    and write channel planes through the table."""
    cdef Py_ssize_t ch, y, x, sy, sx, x0, x1, step, start
    cdef const lut_t *lut
    cdef lut_t zero
    cdef lut_t *row
    cdef const uint8_t *line
    # Columns of the output that fall inside the source: [x0, x1); the rest is padding.
    x0 = -left if left < 0 else 0
    x1 = w - left if w - left < ow else ow
    if x1 < x0:
        x1 = x0
    for ch in range(c):
        lut = table + 256 * ch
        zero = lut[0]
        for y in range(oh):
            row = dst + (ch * oh + y) * ow
            sy = top + y
            if sy < 0 or sy >= h:
                for x in range(ow):
                    row[x] = zero
                continue
            line = src + sy * w * c + ch
            if not flip:
                for x in range(x0):
                    row[x] = zero
                for x in range(x0, x1):
                    row[x] = lut[line[(left + x) * c]]
                for x in range(x1, ow):
                    row[x] = zero
            else:
                # Output column x shows cropped column ow - 1 - x.
                for x in range(ow - x0, ow):
                    row[x] = zero
                for x in range(ow - x1, ow - x0):
                    row[x] = lut[line[(left + ow - 1 - x) * c]]
                for x in range(ow - x1):
                    row[x] = zero


def crop_flip_lut(const uint8_t[:, :, :, ::1] images, const int64_t[::1] top, const int64_t[::1] left,
                  const uint8_t[::1] flip, Py_ssize_t padding, const lut_t[:, ::1] table,
                  lut_t[:, :, :, ::1] out):
    """Write ``out[n, c, y, x] = table[c, padded[n, top[n] + y, left[n] + x', c]]`` for every image.

    ``images`` (N, H, W, C); ``padded`` is each image with ``padding`` zero
    pixels on every side; ``x' = OW - 1 - x`` where ``flip[n]``, else ``x``;
    ``out`` (N, C, OH, OW); ``table`` (C, 256). Runs without the GIL.
    """
    cdef Py_ssize_t n = out.shape[0]
    cdef Py_ssize_t c = out.shape[1]
    cdef Py_ssize_t oh = out.shape[2]
    cdef Py_ssize_t ow = out.shape[3]
    cdef Py_ssize_t h = images.shape[1]
    cdef Py_ssize_t w = images.shape[2]
    cdef Py_ssize_t i
    if (images.shape[0] < n or images.shape[3] != c or top.shape[0] < n or left.shape[0] < n
            or flip.shape[0] < n or table.shape[0] < c or table.shape[1] != 256):
        raise ValueError("crop_flip_lut: the arguments do not fit together")
    if n == 0 or c == 0 or oh == 0 or ow == 0:
        return
    with nogil:
        for i in range(n):
            _one_image(&images[i, 0, 0, 0], h, w, c, top[i] - padding, left[i] - padding, flip[i] != 0,
                       &table[0, 0], &out[i, 0, 0, 0], oh, ow)
