# cython: language_level=3
"""Compiled kernels of imgconv, built as ``imgconv._core``.

Kernels trust their arguments: shapes, dtypes, contiguity and index ranges are
checked by ``imgconv.kernels`` before a kernel is called. What a kernel does
check is everything that depends on the *data* (record bounds, headers,
checksums), because that is where a malformed file could otherwise make it read
out of bounds. ``imgconv._pure`` holds the NumPy reference with the same names
and semantics.
"""
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy

cdef extern from "crc32c.h" nogil:
    void imgconv_crc32c_init()
    uint32_t imgconv_crc32c(uint32_t crc, const uint8_t *p, size_t n)
    uint32_t imgconv_crc32c_copy(uint32_t crc, const uint8_t *src, uint8_t *dst, size_t n)
    void imgconv_crc32c_copy3(uint32_t *crc, const uint8_t **src, uint8_t **dst, size_t n)
    const char *imgconv_crc32c_impl()

cdef extern from "interleave.h" nogil:
    void imgconv_interleave_init()
    void imgconv_interleave3(const uint8_t *src, uint8_t *dst, Py_ssize_t hw)
    const char *imgconv_interleave_impl()

imgconv_crc32c_init()
imgconv_interleave_init()

# Record layout constants, mirrored from imgconv/record.py (FORMAT.md).
cdef enum:
    HEADER_SIZE = 32
    SHAPE_END = 16
    LABEL_OFFSET = 16
    LENGTH_OFFSET = 24
    CRC_OFFSET = 28

# Status codes returned by unpack_records, shared with imgconv._pure.
cdef enum:
    ST_OK = 0
    ST_TRUNCATED = 1
    ST_HEADER_MISMATCH = 2
    ST_CRC_MISMATCH = 3

OK = ST_OK
TRUNCATED = ST_TRUNCATED
HEADER_MISMATCH = ST_HEADER_MISMATCH
CRC_MISMATCH = ST_CRC_MISMATCH

CRC32C_IMPL = imgconv_crc32c_impl().decode("ascii")
INTERLEAVE_IMPL = imgconv_interleave_impl().decode("ascii")


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


cdef inline uint32_t _header_crc(const uint8_t *rec) noexcept nogil:
    return imgconv_crc32c(0, rec, CRC_OFFSET)


cdef inline bint _copy_checked(const uint8_t *rec, uint8_t *dst, Py_ssize_t p) noexcept nogil:
    """Copy one record's payload to dst; True when its checksum matches."""
    cdef uint32_t crc = _header_crc(rec)
    if p:
        crc = imgconv_crc32c_copy(crc, rec + HEADER_SIZE, dst, p)
    return crc == _load_u32le(rec + CRC_OFFSET)


cdef inline void _copy_checked3(const uint8_t **recs, uint8_t **dsts, Py_ssize_t p,
                                bint *ok) noexcept nogil:
    """Three records at once (three independent CRC chains); ok[k] as in _copy_checked."""
    cdef uint32_t crcs[3]
    cdef const uint8_t *srcs[3]
    cdef int k
    for k in range(3):
        crcs[k] = _header_crc(recs[k])
        srcs[k] = recs[k] + HEADER_SIZE
    if p:
        imgconv_crc32c_copy3(crcs, srcs, dsts, p)
    for k in range(3):
        ok[k] = crcs[k] == _load_u32le(recs[k] + CRC_OFFSET)


def pack_uniform(const uint8_t[:, ::1] headers, const uint8_t[:, ::1] payloads,
                 uint8_t[::1] out):
    """Write N records of equal size back to back into ``out``.

    ``headers`` (N, 32) hold every field but the checksum; ``payloads`` (N, P)
    the pixel bytes. Record i starts at i * (32 + P); its CRC32C covers header
    bytes 0..27 and then the payload.
    """
    cdef Py_ssize_t n = payloads.shape[0]
    cdef Py_ssize_t p = payloads.shape[1]
    cdef Py_ssize_t size = HEADER_SIZE + p
    cdef Py_ssize_t i = 0
    cdef int k, m
    cdef uint8_t *rec
    cdef uint32_t crcs[3]
    cdef const uint8_t *srcs[3]
    cdef uint8_t *dsts[3]
    if n == 0:
        return
    with nogil:
        # Records in threes keep three checksum chains in flight.
        while i < n:
            m = 3 if i + 3 <= n else 1
            for k in range(m):
                rec = &out[(i + k) * size]
                memcpy(rec, &headers[i + k, 0], CRC_OFFSET)
                crcs[k] = _header_crc(rec)
                srcs[k] = &payloads[i + k, 0] if p else NULL
                dsts[k] = rec + HEADER_SIZE
            if p and m == 3:
                imgconv_crc32c_copy3(crcs, srcs, dsts, p)
            elif p:
                crcs[0] = imgconv_crc32c_copy(crcs[0], srcs[0], dsts[0], p)
            for k in range(m):
                _store_u32le(dsts[k] - HEADER_SIZE + CRC_OFFSET, crcs[k])
            i += m


def unpack_records(buffers, const int64_t[::1] sources, const int64_t[::1] offsets,
                   const uint8_t[::1] expected, uint8_t[:, ::1] payloads,
                   int64_t[::1] labels, bint verify):
    """Gather N records of one shape from ``buffers`` into preallocated arrays.

    Record i starts at byte ``offsets[i]`` of ``buffers[sources[i]]``. Its
    header must equal ``expected`` in bytes 0..15 (magic, version, dtype,
    shape) and 24..27 (payload length). Returns ``(index, status)`` of the
    first bad record, or ``(-1, OK)``.
    """
    cdef Py_ssize_t nbuf = len(buffers)
    cdef Py_ssize_t n = payloads.shape[0]
    cdef Py_ssize_t p = payloads.shape[1]
    cdef Py_ssize_t size = HEADER_SIZE + p
    cdef Py_ssize_t i, k, bad = -1
    cdef int64_t off, s
    cdef int status = ST_OK
    cdef const uint8_t *rec
    cdef const uint8_t[::1] view
    cdef const uint8_t **ptrs = NULL
    cdef Py_ssize_t *lens = NULL
    # Records whose headers passed, waiting to be checksummed three at a time.
    cdef const uint8_t *pend_rec[3]
    cdef uint8_t *pend_dst[3]
    cdef Py_ssize_t pend_idx[3]
    cdef bint ok[3]
    cdef int npend = 0
    if n == 0:
        return -1, ST_OK
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
                off = offsets[i]
                if off < 0 or off > lens[s] - size:
                    bad = i
                    status = ST_TRUNCATED
                    break
                rec = ptrs[s] + off
                if (memcmp(rec, &expected[0], SHAPE_END) != 0 or
                        memcmp(rec + LENGTH_OFFSET, &expected[LENGTH_OFFSET], 4) != 0):
                    bad = i
                    status = ST_HEADER_MISMATCH
                    break
                labels[i] = _load_i64le(rec + LABEL_OFFSET)
                if not verify:
                    if p:
                        memcpy(&payloads[i, 0], rec + HEADER_SIZE, p)
                    continue
                pend_rec[npend] = rec
                pend_dst[npend] = &payloads[i, 0] if p else NULL
                pend_idx[npend] = i
                npend += 1
                if npend == 3:
                    _copy_checked3(pend_rec, pend_dst, p, ok)
                    npend = 0
                    for k in range(3):
                        if not ok[k]:
                            bad = pend_idx[k]
                            status = ST_CRC_MISMATCH
                            break
                    if bad >= 0:
                        break
            # Records still pending come before any header failure found above,
            # so a checksum failure among them is the first bad record.
            for k in range(npend):
                if not _copy_checked(pend_rec[k], pend_dst[k], p):
                    bad = pend_idx[k]
                    status = ST_CRC_MISMATCH
                    break
    finally:
        free(ptrs)
        free(lens)
    return bad, status
