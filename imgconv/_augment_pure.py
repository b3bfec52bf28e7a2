"""NumPy reference of the compiled batch augmentation (``imgconv._augment``): same name, same results.

The fallback when the extension is not built, and the oracle of the tests.
Like the kernel it trusts the arguments ``imgconv.augment`` has checked.
"""
import numpy as np


def crop_flip_lut(images, top, left, flip, padding, table, out):
    """Write ``out[n, c, y, x] = table[c, padded[n, top[n] + y, left[n] + x', c]]`` for every image.

    ``images`` (N, H, W, C); ``padded`` is each image with ``padding`` zero
    pixels on every side; ``x' = OW - 1 - x`` where ``flip[n]``, else ``x``;
    ``out`` (N, C, OH, OW); ``table`` (C, 256).
    """
    n, c, oh, ow = out.shape
    if (images.shape[0] < n or images.shape[3] != c or top.shape[0] < n or left.shape[0] < n
            or flip.shape[0] < n or table.shape[0] < c or table.shape[1] != 256):
        raise ValueError("crop_flip_lut: the arguments do not fit together")
    if n == 0 or c == 0 or oh == 0 or ow == 0:
        return
    p = int(padding)
    padded = np.pad(images[:n], ((0, 0), (p, p), (p, p), (0, 0)))
    rows = top[:n, None] + np.arange(oh)[None, :]  # (N, OH) rows of the padded images
    cols = left[:n, None] + np.arange(ow)[None, :]  # (N, OW) columns, before the flip
    cols = np.where(flip[:n, None].astype(bool), cols[:, ::-1], cols)
    crops = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]  # (N, OH, OW, C)
    out[...] = table[np.arange(c)[None, :, None, None], crops.transpose(0, 3, 1, 2)]
