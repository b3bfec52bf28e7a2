"""NumPy reference kernels: the same names and semantics as ``imgconv._core``.

They serve twice: as the fallback when the compiled module is not built, and as
the oracle the tests compare the compiled kernels against. Like the compiled
ones they trust the arguments ``imgconv.kernels`` has checked, and check only
what depends on the data.
"""
import numpy as np

__all__ = [
    "CRC32C_IMPL", "CRC32C_IMPLS", "CRC_MISMATCH", "CRC_OFFSET", "HEADER_MISMATCH", "HEADER_SIZE",
    "INTERLEAVE_IMPL", "INTERLEAVE_IMPLS", "LABEL_OFFSET", "LENGTH_OFFSET", "OK", "TRUNCATED",
    "chw_to_hwc_into", "crc32c", "crc32c_rows", "gather_rows", "pack_uniform", "png_unfilter", "select_crc32c",
    "select_interleave", "unpack_one", "unpack_records",
]

# Status codes of unpack_records and unpack_one.
OK = 0
TRUNCATED = 1
HEADER_MISMATCH = 2
CRC_MISMATCH = 3

CRC32C_IMPL = "numpy"
INTERLEAVE_IMPL = "numpy"
CRC32C_IMPLS = ("numpy",)
INTERLEAVE_IMPLS = ("numpy",)

# The record header (FORMAT.md): record.py asserts at import that these equal
# the offsets of its HEADER_DTYPE. Bytes 0..LABEL_OFFSET-1 are magic, version,
# dtype and shape, which a record of a batch must share with the expected one.
HEADER_SIZE = 32
LABEL_OFFSET = 16
LENGTH_OFFSET = 24
CRC_OFFSET = 28

# Above this many bytes crc32c() splits its input into lanes that NumPy
# checksums side by side, then combines them; below it a byte loop is faster.
_LANE_THRESHOLD = 1 << 14
_LANES = 256


def _make_table():
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0x82F63B78), table >> 1)
    return table.astype(np.uint32)


_TABLE = _make_table()
_TABLE_LIST = [int(v) for v in _TABLE]


def _select(kind, name, impls):
    if name not in impls:
        raise ValueError(f"{kind} implementation {name!r} is not available in the NumPy kernels")
    return impls[0]


def select_interleave(name):
    """Accept ``name`` when it is one of INTERLEAVE_IMPLS (the NumPy kernels have one path).

    The compiled module's switch, test-only there; here a check. Returns the
    name in use before; ValueError for any other name.
    """
    return _select("interleave", name, INTERLEAVE_IMPLS)


def select_crc32c(name):
    """Accept ``name`` when it is one of CRC32C_IMPLS (the NumPy kernels have one path).

    Returns the name in use before; ValueError for any other name.
    """
    return _select("CRC32C", name, CRC32C_IMPLS)


def chw_to_hwc_into(src, dst):
    """Write rows of planes ``src`` (N, C*H*W) into images ``dst`` (N, H, W, C)."""
    n, h, w, c = dst.shape
    if src.shape[0] < n or src.shape[1] < h * w * c:
        raise ValueError("chw_to_hwc_into: src is smaller than dst")
    dst[...] = src[:n, : h * w * c].reshape(n, c, h, w).transpose(0, 2, 3, 1)


def crc32c_rows(rows, out):
    """Write the CRC32C of each row of ``rows`` (N, P) into ``out`` (N,)."""
    if out.shape[0] < rows.shape[0]:
        raise ValueError("crc32c_rows: out is shorter than rows")
    out[: rows.shape[0]] = _crc_of_rows(rows)


def _crc_of_rows(rows, crc=None):
    """CRC32C of every row of a 2-D uint8 array, continuing from ``crc`` (finalised)."""
    value = np.zeros(rows.shape[0], np.uint32) if crc is None else crc.astype(np.uint32)
    value = ~value
    for j in range(rows.shape[1]):
        value = _TABLE[(value ^ rows[:, j]) & 0xFF] ^ (value >> 8)
    return ~value


def _crc32c_bytes(data, value):
    crc = value ^ 0xFFFFFFFF
    table = _TABLE_LIST
    for byte in data.tobytes():
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _gf2_times(matrix, vector):
    total = 0
    for column in matrix:
        if vector & 1:
            total ^= column
        vector >>= 1
        if not vector:
            break
    return total


def _shift_operator(nbytes):
    """The 32x32 GF(2) matrix that appends ``nbytes`` zero bytes to a raw CRC state."""
    # One zero bit: the reflected shift-register step.
    op = [0x82F63B78] + [1 << k for k in range(31)]
    result = [1 << k for k in range(32)]  # identity
    nbits = 8 * nbytes
    while nbits:
        if nbits & 1:
            result = [_gf2_times(op, col) for col in result]
        nbits >>= 1
        if nbits:
            op = [_gf2_times(op, col) for col in op]
    return result


def crc32c(data, value=0):
    """CRC32C of a 1-D uint8 array ``data``, continuing from the finalised CRC ``value``."""
    data = np.asarray(data, dtype=np.uint8).reshape(-1)
    n = data.size
    if n < _LANE_THRESHOLD:
        return _crc32c_bytes(data, value)
    lane = n // _LANES
    body = data[: lane * _LANES].reshape(_LANES, lane)
    # For finalised CRCs, crc(A || B) = Z(crc(A)) ^ crc(B) where Z advances a
    # CRC over len(B) zero bytes (linear over GF(2)); zlib's crc32_combine.
    lanes = _crc_of_rows(body)
    shift = _shift_operator(lane)
    crc = value
    for lane_crc in lanes:
        crc = _gf2_times(shift, crc) ^ int(lane_crc)
    return _crc32c_bytes(data[lane * _LANES:], crc)


def _record_crcs(records, positions):
    """The CRC32C of each record row: header bytes 0..27, the payload, then its position (version 2)."""
    crc = _crc_of_rows(records[:, HEADER_SIZE:], _crc_of_rows(records[:, :CRC_OFFSET]))
    if positions is None:
        return crc
    return _crc_of_rows(np.ascontiguousarray(positions, "<i8").view(np.uint8).reshape(-1, 8), crc)


def pack_uniform(headers, payloads, out, positions=None):
    """Write N records of equal size back to back into ``out`` (see _core)."""
    n, p = payloads.shape
    if headers.shape[0] < n or headers.shape[1] < HEADER_SIZE or out.shape[0] < n * (HEADER_SIZE + p):
        raise ValueError("pack_uniform: headers or out is too small for the payloads")
    if positions is not None and positions.shape[0] < n:
        raise ValueError("pack_uniform: positions is shorter than payloads")
    records = out[: n * (HEADER_SIZE + p)].reshape(n, HEADER_SIZE + p)
    records[:, :CRC_OFFSET] = headers[:, :CRC_OFFSET]
    records[:, HEADER_SIZE:] = payloads
    crc = _record_crcs(records, None if positions is None else positions[:n])
    records[:, CRC_OFFSET:HEADER_SIZE] = crc.astype("<u4").view(np.uint8).reshape(n, 4)


def unpack_records(buffers, sources, offsets, expected, payloads, labels, verify, positions=None):
    """Gather N records of one shape from ``buffers`` (see _core); returns (index, status)."""
    n, p = payloads.shape
    size = HEADER_SIZE + p
    if (sources.shape[0] < n or offsets.shape[0] < n or labels.shape[0] < n or expected.shape[0] < HEADER_SIZE
            or (positions is not None and positions.shape[0] < n)):
        raise ValueError("unpack_records: sources, offsets, labels, positions or expected is too short")
    if n == 0:
        return -1, OK
    sources, offsets = sources[:n], offsets[:n]
    arrays = [np.frombuffer(b, dtype=np.uint8) for b in buffers]
    lengths = np.array([a.size for a in arrays], dtype=np.int64)
    status = np.full(n, OK, dtype=np.int64)
    known = (sources >= 0) & (sources < len(arrays))
    fits = known & (offsets >= 0) & (offsets <= lengths[np.where(known, sources, 0)] - size)
    sources = np.where(known, sources, 0)
    status[~fits] = TRUNCATED
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    whole = np.concatenate(arrays) if arrays else np.zeros(0, np.uint8)
    rows = np.zeros((n, size), np.uint8)
    if fits.any():
        windows = np.lib.stride_tricks.sliding_window_view(whole, size)
        rows[fits] = windows[(starts[sources] + offsets)[fits]]
    header_ok = (rows[:, :LABEL_OFFSET] == expected[:LABEL_OFFSET]).all(axis=1) & (
        rows[:, LENGTH_OFFSET:CRC_OFFSET] == expected[LENGTH_OFFSET:CRC_OFFSET]
    ).all(axis=1)
    status[(status == OK) & ~header_ok] = HEADER_MISMATCH
    if verify:
        crc = _record_crcs(rows, None if positions is None else positions[:n])
        stored = rows[:, CRC_OFFSET:HEADER_SIZE].copy().view("<u4").reshape(n)
        status[(status == OK) & (crc != stored)] = CRC_MISMATCH
    bad = np.flatnonzero(status)
    end = int(bad[0]) if bad.size else n
    payloads[:end] = rows[:end, HEADER_SIZE:]
    labels[:end] = rows[:end, LABEL_OFFSET:LENGTH_OFFSET].copy().view("<i8").reshape(end)
    if bad.size:
        return end, int(status[end])
    return -1, OK


def unpack_one(buffer, offset, expected, payload, verify, position=None):
    """Decode the one record at ``offset`` of ``buffer`` into ``payload`` (see _core); returns (status, label)."""
    label = np.zeros(1, np.int64)
    if expected.shape[0] < HEADER_SIZE:
        raise ValueError("unpack_one: expected is too short")
    positions = None if position is None else np.array([position], np.int64)
    _, status = unpack_records([buffer], np.zeros(1, np.int64), np.array([offset], np.int64), expected,
                                 payload.reshape(1, -1), label, verify, positions)
    return status, int(label[0])


def gather_rows(data, offsets, rows, crcs=None, tails=None):
    """Copy row i of ``rows`` from ``offsets[i]`` of ``data``, the CRC32C of each (continued over its
    ``tails`` row) into ``crcs`` (see _core); returns the index of the first row outside ``data``, or -1."""
    n, p = rows.shape
    if offsets.shape[0] < n or (crcs is not None and crcs.shape[0] < n):
        raise ValueError("gather_rows: offsets or crcs is shorter than rows")
    if tails is not None and (crcs is None or tails.shape[0] < n):
        raise ValueError("gather_rows: tails needs crcs, and a row of tails for every row")
    data = np.frombuffer(data, np.uint8)
    offsets = np.asarray(offsets[:n], np.int64)
    outside = np.flatnonzero((offsets < 0) | (offsets > data.size - p))
    end = int(outside[0]) if outside.size else n
    if end and p:
        rows[:end] = np.lib.stride_tricks.sliding_window_view(data, p)[offsets[:end]]
    if crcs is not None:
        crc = _crc_of_rows(rows[:end])
        if tails is not None:
            crc = _crc_of_rows(np.ascontiguousarray(tails[:end], "<i8").view(np.uint8).reshape(end, -1), crc)
        crcs[:end] = crc
    return end if outside.size else -1


def png_unfilter(data, out, channels):
    """Undo the PNG row filters of ``data`` (H rows of 1 + W*C bytes) into ``out`` (H, W*C) (see _core);
    returns the index of the first row with a filter type other than 0..4, or -1."""
    h, n = out.shape
    if channels < 1 or data.shape[0] < h * (n + 1):
        raise ValueError("png_unfilter: data is shorter than out's rows, or channels is not positive")
    rows = np.asarray(data[: h * (n + 1)]).reshape(h, n + 1)
    prior = np.zeros(n, np.int64)
    for r in range(h):
        kind, line = int(rows[r, 0]), rows[r, 1:].astype(np.int64)
        if kind not in (0, 1, 2, 3, 4):
            return r
        if kind in (0, 2):
            row = line + (prior if kind == 2 else 0)
        elif kind == 1:  # a running sum within each channel (out's rows are whole pixels)
            row = np.cumsum(line.reshape(-1, channels), axis=0).reshape(-1)
        else:
            row = _left_running(line, prior, channels, kind)
        out[r] = row & 0xFF
        prior = out[r].astype(np.int64)
    return -1


def _left_running(line, prior, bpp, kind):
    """One row of the filters that predict from the byte ``bpp`` to the left and the row above (3 Average, 4 Paeth)."""
    row = np.zeros(line.shape[0], np.int64)
    for k in range(line.shape[0]):
        a = int(row[k - bpp]) if k >= bpp else 0
        b = int(prior[k])
        c = int(prior[k - bpp]) if k >= bpp else 0
        if kind == 3:
            guess = (a + b) >> 1
        else:
            pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
            guess = a if pa <= pb and pa <= pc else b if pb <= pc else c
        row[k] = (int(line[k]) + guess) & 0xFF
    return row
