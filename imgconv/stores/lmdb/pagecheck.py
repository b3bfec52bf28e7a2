"""Checking the page structure of an LMDB file before liblmdb reads it.

liblmdb trusts the file it maps. A node offset, key size or data size
damaged inside a B-tree page makes its search read past the page, and past
the end of the file it kills the process with SIGBUS (measured with py-lmdb
3.0.0 / LMDB 0.9.36: three flipped bytes in a leaf page of a 24 KiB store).
The CVE fixes of py-lmdb 2.1 cover other paths (duplicate-sort flags,
dirty-page flags, node deletion, a zero page size), not these.

:func:`check_lmdb_file` reads, with ordinary ``pread`` calls, exactly what a
read-only lookup in the main database makes liblmdb touch, and checks it
first: the meta page LMDB will pick (the one with the larger transaction id),
every branch and leaf page reachable from the main database's root (page
number within the file, page type, bounds of the node pointer array, every
node and key inside its page), and for each value the page or the run of
overflow pages it lies in. An imgconv store never uses duplicate-sort or
sub-databases, so nodes flagged that way are refused too (the code paths of
CVE-2019-16224 and -16227). Cost: one read per branch or leaf page, a few
hundred for a store of millions of images; overflow pages (the values
themselves) are not read.

Layout constants are those of LMDB 0.9 on 64-bit systems (``mdb.c``).

The verdict is kept per file (device, inode, size and modification time) for
the life of the process: a store is immutable once written, and a DataLoader
opens it once per worker, each of which would otherwise walk the tree again.
A changed file has another size or time and is checked again.
"""
import os
import struct
from typing import List, Optional, Set, Tuple

from ..._platform import pread_exact
from ...errors import StoreError

PAGE_HEADER = struct.Struct("<QHHHH")  # pgno, pad, flags, lower, upper
PAGE_HEADER_SIZE = PAGE_HEADER.size  # 16
META = struct.Struct("<IIQQ")  # magic, version, address, mapsize
DB = struct.Struct("<IHHQQQQQ")  # pad (page size in the free DB), flags, depth, branch, leaf, overflow, entries, root
NODE = struct.Struct("<HHHH")  # lo, hi, flags, ksize
NODE_SIZE = NODE.size  # 8

MAGIC = 0xBEEFC0DE
DATA_VERSION = 1
P_BRANCH, P_LEAF, P_META = 0x01, 0x02, 0x08
F_BIGDATA, F_SUBDATA, F_DUPDATA = 0x01, 0x02, 0x04
P_INVALID = 0xFFFFFFFFFFFFFFFF
MAX_DEPTH = 32  # liblmdb's cursor stack


class _Corrupt(Exception):
    pass


# Files found sound in this process: (st_dev, st_ino, st_size, st_mtime_ns).
_SOUND: Set[Tuple[int, int, int, int]] = set()
_MAX_REMEMBERED = 4096


def check_lmdb_file(data_path: str, store_path: str, stat: Optional[os.stat_result] = None) -> None:
    """Raise StoreError naming ``store_path`` unless the LMDB file ``data_path`` is safe to read.

    See the module docstring for what is checked, and when a file is not
    checked again. ``stat``, the caller's ``os.stat`` of ``data_path``,
    spares a file already found sound the opening of it.
    """
    if stat is not None and (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns) in _SOUND:
        return
    try:
        with open(data_path, "rb") as f:
            st = os.fstat(f.fileno())
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if key in _SOUND:
                return
            _check(f.fileno(), st.st_size)
    except _Corrupt as exc:
        raise StoreError(f"{store_path}: corrupt LMDB database (data.mdb {exc}); not read, "
                         "liblmdb would read outside the file") from None
    except OSError as exc:
        raise StoreError(f"{store_path}: cannot read data.mdb: {exc}") from None
    if len(_SOUND) >= _MAX_REMEMBERED:
        _SOUND.clear()
    _SOUND.add(key)


def _read(fd: int, offset: int, size: int, what: str) -> bytes:
    data = bytearray(size)
    if pread_exact(fd, memoryview(data), offset) != size:
        raise _Corrupt(f"ends inside {what}")
    return bytes(data)


def _meta(fd, offset):
    page = _read(fd, offset, PAGE_HEADER_SIZE + META.size + 2 * DB.size + 16, "a meta page")
    _, _, flags, _, _ = PAGE_HEADER.unpack_from(page)
    magic, version, _, _ = META.unpack_from(page, PAGE_HEADER_SIZE)
    at = PAGE_HEADER_SIZE + META.size
    free_db, main_db = DB.unpack_from(page, at), DB.unpack_from(page, at + DB.size)
    last_page, txnid = struct.unpack_from("<QQ", page, at + 2 * DB.size)
    return {"flags": flags, "magic": magic, "version": version, "psize": free_db[0], "main": main_db,
            "last_page": last_page, "txnid": txnid}


def _check(fd: int, size: int) -> None:
    first = _meta(fd, 0)
    psize = first["psize"]
    if first["magic"] != MAGIC or not first["flags"] & P_META:
        raise _Corrupt("has no LMDB meta page at offset 0")
    if psize < 512 or psize > 65536 or psize & (psize - 1):
        raise _Corrupt(f"declares a page size of {psize}")
    second = _meta(fd, psize)
    # liblmdb reads through the meta page with the larger transaction id.
    meta = second if first["txnid"] < second["txnid"] else first
    if meta["magic"] != MAGIC or meta["version"] != DATA_VERSION or not meta["flags"] & P_META:
        raise _Corrupt("has a damaged meta page")
    if meta["psize"] != psize:
        # liblmdb takes the page size of the meta page it picks; the pages were read with the first's.
        raise _Corrupt(f"has meta pages of page sizes {psize} and {meta['psize']}")
    last = meta["last_page"]
    if (last + 1) * psize > size or last < 1:
        raise _Corrupt(f"is {size} bytes, its meta page says {last + 1} pages of {psize}")
    _, db_flags, depth, _, _, _, entries, root = meta["main"]
    if db_flags != 0:
        raise _Corrupt(f"main database has flags {db_flags:#x}; imgconv stores use none")
    if root == P_INVALID:
        if entries:
            raise _Corrupt(f"main database has {entries} entries and no root page")
        return
    _walk(fd, psize, last, root, min(depth, MAX_DEPTH))


def _walk(fd: int, psize: int, last: int, root: int, depth: int) -> None:
    pending, seen = [(root, 1)], set()
    while pending:
        pgno, level = pending.pop()
        if not 2 <= pgno <= last:
            raise _Corrupt(f"points to page {pgno}, outside pages 2..{last}")
        if pgno in seen or level > depth:
            raise _Corrupt(f"has a loop or a tree deeper than its meta page says at page {pgno}")
        seen.add(pgno)
        page = _read(fd, pgno * psize, psize, f"page {pgno}")
        for child in _check_page(page, pgno, psize, last, is_leaf=level == depth):
            pending.append((child, level + 1))


def _check_page(page: bytes, pgno: int, psize: int, last: int, is_leaf: bool) -> List[int]:
    """Check one branch or leaf page; returns the child page numbers of a branch page."""
    number, _, flags, lower, upper = PAGE_HEADER.unpack_from(page)
    want = P_LEAF if is_leaf else P_BRANCH
    if number != pgno or flags != want:
        raise _Corrupt(f"page {pgno} has header page number {number} and flags {flags:#x}, "
                       f"expected {pgno} and {want:#x}")
    if not (PAGE_HEADER_SIZE <= lower <= upper <= psize) or (lower - PAGE_HEADER_SIZE) % 2:
        raise _Corrupt(f"page {pgno} has free-space bounds {lower}..{upper}")
    count = (lower - PAGE_HEADER_SIZE) // 2
    if count < 2 and not is_leaf:
        # liblmdb asserts (aborts the process) on a branch page of fewer than two keys.
        raise _Corrupt(f"branch page {pgno} holds {count} keys")
    children: List[int] = []
    for k in range(count):
        (offset,) = struct.unpack_from("<H", page, PAGE_HEADER_SIZE + 2 * k)
        if offset < upper or offset + NODE_SIZE > psize:
            raise _Corrupt(f"page {pgno} node {k} at offset {offset} lies outside {upper}..{psize}")
        lo, hi, node_flags, ksize = NODE.unpack_from(page, offset)
        end = offset + NODE_SIZE + ksize
        if is_leaf:
            dsize = lo | hi << 16
            if node_flags & (F_SUBDATA | F_DUPDATA) or node_flags & ~F_BIGDATA:
                raise _Corrupt(f"page {pgno} node {k} has flags {node_flags:#x}; imgconv stores use none")
            if node_flags & F_BIGDATA:
                if end + 8 > psize:
                    raise _Corrupt(f"page {pgno} node {k} runs past its page")
                (first,) = struct.unpack_from("<Q", page, end)
                pages = -(-(PAGE_HEADER_SIZE + dsize) // psize)
                if not 2 <= first or first + pages - 1 > last:
                    raise _Corrupt(f"page {pgno} node {k}: a value of {dsize} bytes on pages {first}.."
                                   f"{first + pages - 1}, outside pages 2..{last}")
            elif end + dsize > psize:
                raise _Corrupt(f"page {pgno} node {k}: a {ksize}-byte key and {dsize}-byte value run past its page")
        else:
            if end > psize:
                raise _Corrupt(f"page {pgno} node {k}: a {ksize}-byte key runs past its page")
            children.append(lo | hi << 16 | node_flags << 32)
    return children
