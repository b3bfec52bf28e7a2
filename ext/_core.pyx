# cython: language_level=3
"""Compiled kernels of imgconv, built as ``imgconv._core``.

Kernels trust their arguments: shapes, dtypes, contiguity and index ranges are
checked by ``imgconv.kernels`` (pixels, checksums) and ``imgconv.record``
(records) before a kernel is called. What a kernel does check is everything
that depends on the *data* (record bounds, headers, checksums), because that is
where a malformed file could otherwise make it read out of bounds.
``imgconv._pure`` holds the NumPy reference with the same names and semantics.

``crc32c.h`` and ``interleave.h`` are C sources compiled into this one
translation unit (their definitions are static), not headers to share.
"""
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy

cdef extern from "crc32c.h" nogil:
    void imgconv_crc32c_init()
    uint32_t imgconv_crc32c(uint32_t crc, const uint8_t *p, size_t n)
    uint32_t imgconv_crc32c_copy(uint32_t crc, const uint8_t *src, uint8_t *dst, size_t n)
    const char *imgconv_crc32c_impl()
    int imgconv_crc32c_select(const char *name)

cdef extern from "interleave.h" nogil:
    void imgconv_interleave_init()
    void imgconv_interleave3(const uint8_t *src, uint8_t *dst, Py_ssize_t hw)
    const char *imgconv_interleave_impl()
    int imgconv_interleave_select(const char *name)

__all__ = [
    "CRC32C_IMPL", "CRC32C_IMPLS", "CRC_MISMATCH", "CRC_OFFSET", "HEADER_MISMATCH", "HEADER_SIZE",
    "INTERLEAVE_IMPL", "INTERLEAVE_IMPLS", "LABEL_OFFSET", "LENGTH_OFFSET", "OK", "TRUNCATED",
    "chw_to_hwc_into", "crc32c", "crc32c_rows", "gather_rows", "pack_uniform", "png_unfilter", "select_crc32c",
    "select_interleave", "unpack_one", "unpack_records",
]

imgconv_crc32c_init()
imgconv_interleave_init()

# The record header (FORMAT.md): record.py asserts at import that these equal
# the offsets of its HEADER_DTYPE. Bytes 0..LABEL_OFFSET-1 are magic, version,
# dtype and shape, which a record of a batch must share with the expected one.
cdef enum:
    C_HEADER_SIZE = 32
    C_LABEL_OFFSET = 16
    C_LENGTH_OFFSET = 24
    C_CRC_OFFSET = 28

# unpack_one keeps the GIL for smaller records, for which releasing and taking
# it back would be a large part of the call (store[i] of one CIFAR image).
cdef enum:
    NOGIL_MIN_BYTES = 65536

# Status codes of unpack_records and unpack_one, shared with imgconv._pure.
cdef enum:
    ST_OK = 0
    ST_TRUNCATED = 1
    ST_HEADER_MISMATCH = 2
    ST_CRC_MISMATCH = 3

OK = ST_OK
TRUNCATED = ST_TRUNCATED
HEADER_MISMATCH = ST_HEADER_MISMATCH
CRC_MISMATCH = ST_CRC_MISMATCH
HEADER_SIZE = C_HEADER_SIZE
LABEL_OFFSET = C_LABEL_OFFSET
LENGTH_OFFSET = C_LENGTH_OFFSET
CRC_OFFSET = C_CRC_OFFSET

CRC32C_IMPL = imgconv_crc32c_impl().decode("ascii")
INTERLEAVE_IMPL = imgconv_interleave_impl().decode("ascii")
CRC32C_IMPLS = ("pclmul", "sse4.2", "slice-by-8")
INTERLEAVE_IMPLS = ("ssse3", "plain")


cdef str _selected(str kind, name, int failed, const char *now):
    if failed:
        raise ValueError(f"{kind} implementation {name!r} is not available on this CPU")
    return now.decode("ascii")


def select_interleave(name):
    """Use the CHW->HWC shuffle ``name`` (one of INTERLEAVE_IMPLS) from now on.

    Test-only: it switches the code path of the whole process under any thread
    that is running the kernel, and is not thread-safe. It lets the tests
    exercise every path on one machine. Returns the name in use before;
    ValueError when this CPU cannot run ``name``.
    """
    global INTERLEAVE_IMPL
    previous = INTERLEAVE_IMPL
    INTERLEAVE_IMPL = _selected("interleave", name, imgconv_interleave_select(name.encode("ascii")),
                                imgconv_interleave_impl())
    return previous


def select_crc32c(name):
    """Use the CRC32C implementation ``name`` (one of CRC32C_IMPLS) from now on.

    Test-only, like :func:`select_interleave`: process-wide and not
    thread-safe. Returns the name in use before; ValueError when this CPU
    cannot run ``name``.
    """
    global CRC32C_IMPL
    previous = CRC32C_IMPL
    CRC32C_IMPL = _selected("CRC32C", name, imgconv_crc32c_select(name.encode("ascii")), imgconv_crc32c_impl())
    return previous


cdef inline uint32_t _load_u32le(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0]) | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline void _store_u32le(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = v & 0xff
    p[1] = (v >> 8) & 0xff
    p[2] = (v >> 16) & 0xff
    p[3] = (v >> 24) & 0xff


cdef inline int64_t _load_i64le(const uint8_t *p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int k
    for k in range(7, -1, -1):
        v = (v << 8) | p[k]
    return <int64_t>v


cdef void _planes_to_pixels(const uint8_t *src, uint8_t *dst,
                            Py_ssize_t hw, Py_ssize_t c) noexcept nogil:
    """One image: c planes of hw bytes -> hw pixels of c bytes."""
    cdef Py_ssize_t p, k
    if c == 3:
        imgconv_interleave3(src, dst, hw)
    elif c == 1:
        memcpy(dst, src, hw)
    else:
        for p in range(hw):
            for k in range(c):
                dst[c * p + k] = src[k * hw + p]


def chw_to_hwc_into(const uint8_t[:, ::1] src, uint8_t[:, :, :, ::1] dst):
    """Write rows of planes ``src`` (N, C*H*W) into images ``dst`` (N, H, W, C)."""
    cdef Py_ssize_t n = dst.shape[0]
    cdef Py_ssize_t hw = dst.shape[1] * dst.shape[2]
    cdef Py_ssize_t c = dst.shape[3]
    cdef Py_ssize_t row = hw * c
    cdef Py_ssize_t i
    if src.shape[0] < n or src.shape[1] < row:
        raise ValueError("chw_to_hwc_into: src is smaller than dst")
    if n == 0 or row == 0:
        return
    with nogil:
        for i in range(n):
            _planes_to_pixels(&src[i, 0], &dst[i, 0, 0, 0], hw, c)


def crc32c(const uint8_t[::1] data, uint32_t value=0):
    """CRC32C of ``data``, continuing from the finalised CRC ``value``."""
    cdef Py_ssize_t n = data.shape[0]
    if n == 0:
        return value
    with nogil:
        value = imgconv_crc32c(value, &data[0], n)
    return value


def crc32c_rows(const uint8_t[:, ::1] rows, uint32_t[::1] out):
    """Write the CRC32C of each row of ``rows`` (N, P) into ``out`` (N,)."""
    cdef Py_ssize_t n = rows.shape[0]
    cdef Py_ssize_t p = rows.shape[1]
    cdef Py_ssize_t i
    if out.shape[0] < n:
        raise ValueError("crc32c_rows: out is shorter than rows")
    with nogil:
        for i in range(n):
            out[i] = imgconv_crc32c(0, &rows[i, 0], p) if p else 0


cdef inline uint32_t _record_crc(const uint8_t *header, const uint8_t *payload,
                                 uint8_t *dst, Py_ssize_t p) noexcept nogil:
    """CRC32C of header bytes 0..27 then the payload, copying the payload to dst."""
    cdef uint32_t crc = imgconv_crc32c(0, header, C_CRC_OFFSET)
    if p:
        crc = imgconv_crc32c_copy(crc, payload, dst, p)
    return crc


cdef inline uint32_t _crc_position(uint32_t crc, int64_t position) noexcept nogil:
    """Continue ``crc`` over ``position`` as 8 little-endian bytes: a version 2 record's CRC ends so."""
    cdef uint8_t raw[8]
    cdef uint64_t v = <uint64_t>position
    cdef int k
    for k in range(8):
        raw[k] = (v >> (8 * k)) & 0xff
    return imgconv_crc32c(crc, raw, 8)


def pack_uniform(const uint8_t[:, ::1] headers, const uint8_t[:, ::1] payloads,
                 uint8_t[::1] out, const int64_t[::1] positions=None):
    """Write N records of equal size back to back into ``out``.

    ``headers`` (N, 32) hold every field but the checksum; ``payloads`` (N, P)
    the pixel bytes. Record i starts at i * (32 + P); its CRC32C covers header
    bytes 0..27 and then the payload, and then, when ``positions`` (N,) is
    given (version 2 records), ``positions[i]`` as 8 little-endian bytes.
    """
    cdef Py_ssize_t n = payloads.shape[0]
    cdef Py_ssize_t p = payloads.shape[1]
    cdef Py_ssize_t size = C_HEADER_SIZE + p
    cdef Py_ssize_t i
    cdef uint8_t *rec
    cdef uint32_t crc
    cdef const int64_t *pos = NULL
    if headers.shape[0] < n or headers.shape[1] < C_HEADER_SIZE or out.shape[0] < n * size:
        raise ValueError("pack_uniform: headers or out is too small for the payloads")
    if positions is not None and positions.shape[0] < n:
        raise ValueError("pack_uniform: positions is shorter than payloads")
    if n == 0:
        return
    if positions is not None:
        pos = &positions[0]
    with nogil:
        for i in range(n):
            rec = &out[i * size]
            memcpy(rec, &headers[i, 0], C_CRC_OFFSET)
            crc = _record_crc(rec, &payloads[i, 0] if p else NULL, rec + C_HEADER_SIZE, p)
            if pos != NULL:
                crc = _crc_position(crc, pos[i])
            _store_u32le(rec + C_CRC_OFFSET, crc)


cdef inline int _unpack_record(const uint8_t *buf, Py_ssize_t length, int64_t offset,
                               const uint8_t *expected, uint8_t *dst, Py_ssize_t p,
                               bint verify, int64_t *label, const int64_t *position) noexcept nogil:
    """Check and copy one record of payload size ``p``; its status, the label in ``*label`` when OK.

    ``position`` points at the position a version 2 record's CRC ends with, or is NULL (version 1).
    """
    cdef const uint8_t *rec
    cdef uint32_t crc
    if offset < 0 or offset > length - (C_HEADER_SIZE + p):
        return ST_TRUNCATED
    rec = buf + offset
    if (memcmp(rec, expected, C_LABEL_OFFSET) != 0 or
            memcmp(rec + C_LENGTH_OFFSET, expected + C_LENGTH_OFFSET, 4) != 0):
        return ST_HEADER_MISMATCH
    if not verify:
        if p:
            memcpy(dst, rec + C_HEADER_SIZE, p)
    else:
        crc = _record_crc(rec, rec + C_HEADER_SIZE, dst, p)
        if position != NULL:
            crc = _crc_position(crc, position[0])
        if crc != _load_u32le(rec + C_CRC_OFFSET):
            return ST_CRC_MISMATCH
    label[0] = _load_i64le(rec + C_LABEL_OFFSET)
    return ST_OK


def unpack_records(buffers, const int64_t[::1] sources, const int64_t[::1] offsets,
                   const uint8_t[::1] expected, uint8_t[:, ::1] payloads,
                   int64_t[::1] labels, bint verify, const int64_t[::1] positions=None):
    """Gather N records of one shape from ``buffers`` into preallocated arrays.

    Record i starts at byte ``offsets[i]`` of ``buffers[sources[i]]``. Its
    header must equal ``expected`` in bytes 0..15 (magic, version, dtype,
    shape) and 24..27 (payload length); with ``positions`` (version 2
    records) its CRC ends with ``positions[i]``. Returns ``(index, status)``
    of the first bad record, or ``(-1, OK)``; the records before it are written.
    """
    cdef Py_ssize_t nbuf = len(buffers)
    cdef Py_ssize_t n = payloads.shape[0]
    cdef Py_ssize_t p = payloads.shape[1]
    cdef Py_ssize_t i, k, bad = -1
    cdef int64_t s
    cdef int status = ST_OK
    cdef const uint8_t[::1] view
    cdef const uint8_t **ptrs = NULL
    cdef Py_ssize_t *lens = NULL
    cdef const int64_t *pos = NULL
    if (sources.shape[0] < n or offsets.shape[0] < n or labels.shape[0] < n
            or expected.shape[0] < C_HEADER_SIZE or (positions is not None and positions.shape[0] < n)):
        raise ValueError("unpack_records: sources, offsets, labels, positions or expected is too short")
    if n == 0:
        return -1, ST_OK
    if positions is not None:
        pos = &positions[0]
    keep = []  # holds the buffer exports alive while the pointers are used
    ptrs = <const uint8_t **>malloc(max(nbuf, 1) * sizeof(void *))
    lens = <Py_ssize_t *>malloc(max(nbuf, 1) * sizeof(Py_ssize_t))
    if ptrs == NULL or lens == NULL:
        free(ptrs)
        free(lens)
        raise MemoryError()
    try:
        for k in range(nbuf):
            view = buffers[k]
            keep.append(view)
            lens[k] = view.shape[0]
            ptrs[k] = &view[0] if view.shape[0] else NULL
        with nogil:
            for i in range(n):
                s = sources[i]
                if s < 0 or s >= nbuf:
                    status = ST_TRUNCATED
                else:
                    status = _unpack_record(ptrs[s], lens[s], offsets[i], &expected[0],
                                            &payloads[i, 0] if p else NULL, p, verify, &labels[i],
                                            pos + i if pos != NULL else NULL)
                if status != ST_OK:
                    bad = i
                    break
    finally:
        free(ptrs)
        free(lens)
    return bad, status


def unpack_one(const uint8_t[::1] buffer, int64_t offset, const uint8_t[::1] expected,
               uint8_t[::1] payload, bint verify, position=None):
    """Decode the one record at byte ``offset`` of ``buffer`` into ``payload``.

    The checks of :func:`unpack_records` for a single record whose payload
    fills ``payload`` (``position``: the int a version 2 record's CRC ends
    with, or None); returns ``(status, label)``, the label 0 unless the
    status is OK.
    """
    cdef Py_ssize_t p = payload.shape[0]
    cdef int64_t label = 0
    cdef int64_t pos = 0
    cdef const int64_t *at = NULL
    cdef int status
    if position is not None:
        pos = position
        at = &pos
    cdef const uint8_t *src = &buffer[0] if buffer.shape[0] else NULL
    cdef uint8_t *dst = &payload[0] if p else NULL
    if expected.shape[0] < C_HEADER_SIZE:
        raise ValueError("unpack_one: expected is too short")
    if p < NOGIL_MIN_BYTES:
        status = _unpack_record(src, buffer.shape[0], offset, &expected[0], dst, p, verify, &label, at)
    else:
        with nogil:
            status = _unpack_record(src, buffer.shape[0], offset, &expected[0], dst, p, verify, &label, at)
    return status, label


def gather_rows(const uint8_t[::1] data, const int64_t[::1] offsets, uint8_t[:, ::1] rows,
                uint32_t[::1] crcs=None, const int64_t[:, ::1] tails=None):
    """Copy row i of ``rows`` (N, P) from bytes ``offsets[i] .. offsets[i] + P - 1`` of ``data``.

    With ``crcs`` (N,), also write the CRC32C of each row there, computed as
    it is copied, and continued over ``tails[i, 0], tails[i, 1], ...`` (each
    as 8 little-endian bytes) when ``tails`` (N, M) is given. Returns the
    index of the first row whose bytes do not lie inside ``data`` (the rows
    before it are written), or -1.
    """
    cdef Py_ssize_t n = rows.shape[0]
    cdef Py_ssize_t p = rows.shape[1]
    cdef Py_ssize_t length = data.shape[0]
    cdef Py_ssize_t m = 0
    cdef Py_ssize_t i, j, bad = -1
    cdef int64_t at
    cdef uint32_t value
    cdef const uint8_t *src = &data[0] if length else NULL
    cdef uint32_t *crc = NULL
    if offsets.shape[0] < n or (crcs is not None and crcs.shape[0] < n):
        raise ValueError("gather_rows: offsets or crcs is shorter than rows")
    if tails is not None:
        if crcs is None or tails.shape[0] < n:
            raise ValueError("gather_rows: tails needs crcs, and a row of tails for every row")
        m = tails.shape[1]
    if n == 0:
        return -1
    if crcs is not None:
        crc = &crcs[0]
    with nogil:
        for i in range(n):
            at = offsets[i]
            if at < 0 or at > length - p:
                bad = i
                break
            if crc != NULL:
                value = imgconv_crc32c_copy(0, src + at, &rows[i, 0], p) if p else 0
                for j in range(m):
                    value = _crc_position(value, tails[i, j])
                crc[i] = value
            elif p:
                memcpy(&rows[i, 0], src + at, p)
    return bad


cdef inline int _abs(int x) noexcept nogil:
    return (x ^ (x >> 31)) - (x >> 31)


cdef inline void _paeth_row(const uint8_t *src, const uint8_t *prior, uint8_t *dst,
                            Py_ssize_t n, Py_ssize_t bpp) noexcept nogil:
    """Undo the Paeth filter of one row; inlined with a constant ``bpp`` for 1 to 4 channels."""
    cdef Py_ssize_t k
    cdef int a, b, c, pa, pb, pc, guess
    for k in range(bpp if bpp < n else n):
        dst[k] = src[k] + prior[k]  # the Paeth predictor of (0, b, 0) is b
    for k in range(bpp, n):
        a = dst[k - bpp]
        b = prior[k]
        c = prior[k - bpp]
        pa = b - c
        pb = a - c
        pc = _abs(pa + pb)
        pa = _abs(pa)
        pb = _abs(pb)
        # Written as selections, not branches: the compiler makes them conditional moves.
        guess = b if pb <= pc else c
        guess = a if (pa <= pb) & (pa <= pc) else guess
        dst[k] = src[k] + guess


cdef inline void _sub_row(const uint8_t *src, uint8_t *dst, Py_ssize_t n, Py_ssize_t bpp) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(bpp if bpp < n else n):
        dst[k] = src[k]
    for k in range(bpp, n):
        dst[k] = src[k] + dst[k - bpp]


cdef inline void _average_row(const uint8_t *src, const uint8_t *prior, uint8_t *dst,
                              Py_ssize_t n, Py_ssize_t bpp) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(bpp if bpp < n else n):
        dst[k] = src[k] + (prior[k] >> 1)
    for k in range(bpp, n):
        dst[k] = src[k] + ((<int>dst[k - bpp] + <int>prior[k]) >> 1)


cdef int _unfilter_row(const uint8_t *src, const uint8_t *prior, uint8_t *dst,
                       Py_ssize_t n, Py_ssize_t bpp) noexcept nogil:
    """Undo one row's filter (type ``src[0]``) into ``dst`` (n bytes); 0, or -1 for an unknown type."""
    cdef int kind = src[0]
    cdef Py_ssize_t k
    src += 1
    if kind == 0:
        memcpy(dst, src, n)
    elif kind == 2:
        for k in range(n):
            dst[k] = src[k] + prior[k]
    elif kind == 1 or kind == 3 or kind == 4:
        # A constant bpp in each call lets the compiler keep the neighbours in registers.
        if bpp == 3:
            _left_row(kind, src, prior, dst, n, 3)
        elif bpp == 4:
            _left_row(kind, src, prior, dst, n, 4)
        elif bpp == 1:
            _left_row(kind, src, prior, dst, n, 1)
        else:
            _left_row(kind, src, prior, dst, n, bpp)
    else:
        return -1
    return 0


cdef inline void _left_row(int kind, const uint8_t *src, const uint8_t *prior, uint8_t *dst,
                           Py_ssize_t n, Py_ssize_t bpp) noexcept nogil:
    """The filters that predict from the byte ``bpp`` to the left: 1 Sub, 3 Average, 4 Paeth."""
    if kind == 1:
        _sub_row(src, dst, n, bpp)
    elif kind == 3:
        _average_row(src, prior, dst, n, bpp)
    else:
        _paeth_row(src, prior, dst, n, bpp)


def png_unfilter(const uint8_t[::1] data, uint8_t[:, ::1] out, Py_ssize_t channels):
    """Undo the PNG row filters of an 8-bit, non-interlaced image with ``channels`` bytes per pixel.

    ``data`` holds the inflated image data: H rows of ``1 + W * channels``
    bytes, each a filter type (0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth) then
    the filtered bytes; ``out`` (H, W * channels) receives the pixels.
    Returns the index of the first row with another filter type (the rows
    before it are written), or -1.
    """
    cdef Py_ssize_t h = out.shape[0]
    cdef Py_ssize_t n = out.shape[1]
    cdef Py_ssize_t r, bad = -1
    cdef uint8_t *zeros
    cdef const uint8_t *prior
    if channels < 1 or data.shape[0] < h * (n + 1):
        raise ValueError("png_unfilter: data is shorter than out's rows, or channels is not positive")
    if h == 0 or n == 0:
        return -1
    zeros = <uint8_t *>calloc(n, 1)
    if zeros == NULL:
        raise MemoryError()
    prior = zeros
    with nogil:
        for r in range(h):
            if _unfilter_row(&data[r * (n + 1)], prior, &out[r, 0], n, channels) != 0:
                bad = r
                break
            prior = &out[r, 0]
    free(zeros)
    return bad
