"""Checking the page structure and the keys of an LMDB file before liblmdb reads it.

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
CVE-2019-16224 and -16227).

It also checks what makes a lookup find the right value, which liblmdb
takes on trust too: the keys, in tree order, are exactly the chunk keys
0, 1, 2, ... of an imgconv store followed by at most its metadata key (a
flipped bit in a key would otherwise make chunk 2 answer for chunk 3); every
branch key separates its neighbours' subtrees as a search assumes; and no
page is used twice: the runs of overflow pages of the values are disjoint
from each other and from the tree pages (a value pointed at another's pages
would otherwise read that value). What it finds is returned as a
:class:`Summary` (the number of chunks and the sizes of their values),
which the reader compares with the metadata, and with it where each chunk's
value lies in the file (what a lookup of its key reads; the reader's map of
the file gathers from there: :mod:`.mapped`).

Cost: one read per branch or leaf page, a few hundred for a store of
millions of images, and a few operations per value; overflow pages (the
values themselves) are not read.

Layout constants are those of LMDB 0.9 on 64-bit systems (``mdb.c``).

The verdict is kept per file (device, inode, size and modification time) for
the life of the process: a store is immutable once written, and a DataLoader
opens it once per worker, each of which would otherwise walk the tree again.
A changed file has another size or time and is checked again.
"""
import bisect
import os
import struct
from array import array
from typing import Dict, List, NamedTuple, Optional, Tuple

from ..._platform import open_regular, pread_exact
from ...errors import StoreError
from .layout import KEY_STRUCT, METADATA_KEY

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


class Summary(NamedTuple):
    """What the walk found in a sound file: the main database's entries, in key order.

    ``chunks``: the chunk keys are 0 .. chunks - 1; ``metadata``: whether
    the metadata key follows them; ``smallest`` and ``largest``: the sizes of
    the values of chunks 0 .. chunks - 2 (0 when there are fewer than two
    chunks); ``last``: the size of the last chunk's value (0 when none);
    ``starts``: the byte offset in the file of each chunk's value, in chunk
    order (in its overflow pages, or in its leaf page for a small value).
    """

    chunks: int
    metadata: bool
    smallest: int
    largest: int
    last: int
    starts: "array[int]"


# Files found sound in this process: (st_dev, st_ino, st_size, st_mtime_ns) -> what was found.
_SOUND: Dict[Tuple[int, int, int, int], Summary] = {}
_MAX_REMEMBERED = 4096


def check_lmdb_file(data_path: str, store_path: str, stat: Optional[os.stat_result] = None) -> Summary:
    """The :class:`Summary` of the LMDB file ``data_path``; StoreError naming ``store_path`` unless it is safe to read.

    See the module docstring for what is checked, and when a file is not
    checked again. ``stat``, the caller's ``os.stat`` of ``data_path``,
    spares a file already found sound the opening of it.
    """
    if stat is not None:
        known = _SOUND.get((stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns))
        if known is not None:
            return known
    try:
        fd = open_regular(data_path)
        try:
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            found = _SOUND.get(key)
            if found is not None:
                return found
            found = _check(fd, st.st_size)
        finally:
            os.close(fd)
    except _Corrupt as exc:
        raise StoreError(f"{store_path}: corrupt LMDB database (data.mdb {exc}); not read: liblmdb "
                         "would read outside the file or another value than the one asked for") from None
    except OSError as exc:
        raise StoreError(f"{store_path}: cannot read data.mdb: {exc}") from None
    if len(_SOUND) >= _MAX_REMEMBERED:
        _SOUND.clear()
    _SOUND[key] = found
    return found


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


def _check(fd: int, size: int) -> Summary:
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
        return Summary(0, False, 0, 0, 0, array("q"))
    walk = _Walk(psize, last)
    walk.run(fd, root, min(depth, MAX_DEPTH))
    return walk.summary()


class _Walk:
    """One walk of the main database's tree in key order: pages, keys, and the pages of the values."""

    def __init__(self, psize: int, last: int) -> None:
        self.psize, self.last = psize, last
        self.tree_pages: List[int] = []
        self.runs_first, self.runs_count = array("q"), array("q")  # overflow page runs of the values
        self.chunks = 0  # chunk keys seen, in order
        self.metadata = False
        self.smallest: Optional[int] = None
        self.largest = 0
        self.last_size = 0
        self.starts = array("q")  # where each chunk's value lies in the file

    def run(self, fd: int, root: int, depth: int) -> None:
        # Depth first, children in order, so that leaves come in key order.
        pending: List[Tuple[int, int, Optional[bytes], Optional[bytes]]] = [(root, 1, None, None)]
        seen = set()
        while pending:
            pgno, level, low, high = pending.pop()
            if not 2 <= pgno <= self.last:
                raise _Corrupt(f"points to page {pgno}, outside pages 2..{self.last}")
            if pgno in seen or level > depth:
                raise _Corrupt(f"has a loop or a tree deeper than its meta page says at page {pgno}")
            seen.add(pgno)
            self.tree_pages.append(pgno)
            page = _read(fd, pgno * self.psize, self.psize, f"page {pgno}")
            nodes = _check_page(page, pgno, self.psize, self.last, is_leaf=level == depth)
            if level == depth:
                for key, dsize, overflow, at in nodes:
                    start = pgno * self.psize + at if overflow is None else overflow * self.psize + PAGE_HEADER_SIZE
                    self._leaf_entry(pgno, key, dsize, overflow, start, low, high)
                continue
            children = _branch_children(nodes, pgno, low, high)
            pending.extend((child, level + 1, lo, hi) for child, lo, hi in reversed(children))

    def _leaf_entry(self, pgno: int, key: bytes, dsize: int, overflow: Optional[int], start: int,
                    low: Optional[bytes], high: Optional[bytes]) -> None:
        if (low is not None and key < low) or (high is not None and key >= high):
            raise _Corrupt(f"page {pgno} holds key {key.hex()} outside the range its branch key gives it: "
                           "a search would not find it")
        if key == KEY_STRUCT.pack(self.chunks) and not self.metadata:
            if self.chunks:
                self.smallest = self.last_size if self.smallest is None else min(self.smallest, self.last_size)
                self.largest = max(self.largest, self.last_size)
            self.chunks += 1
            self.last_size = dsize
            self.starts.append(start)
        elif key == METADATA_KEY and not self.metadata:
            self.metadata = True
        else:
            expected = "nothing after the metadata key" if self.metadata else \
                f"chunk {self.chunks} ({KEY_STRUCT.pack(self.chunks).hex()}) or the metadata key"
            raise _Corrupt(f"page {pgno} holds key {key.hex()} where the keys in order must be {expected}: "
                           "not the chunk sequence of an imgconv store")
        if overflow is not None:
            self.runs_first.append(overflow)
            self.runs_count.append(-(-(PAGE_HEADER_SIZE + dsize) // self.psize))

    def summary(self) -> Summary:
        """Check that no page is used twice, and say what was found."""
        order = sorted(range(len(self.runs_first)), key=self.runs_first.__getitem__)
        starts = [self.runs_first[k] for k in order]
        ends = [self.runs_first[k] + self.runs_count[k] for k in order]  # one past the run
        for a in range(1, len(starts)):
            if starts[a] < ends[a - 1]:
                raise _Corrupt(f"has two values on the same overflow pages (pages {starts[a - 1]}..{ends[a - 1] - 1} "
                               f"and {starts[a]}..{ends[a] - 1})")
        for pgno in self.tree_pages:
            at = bisect.bisect_right(starts, pgno) - 1
            if at >= 0 and pgno < ends[at]:
                raise _Corrupt(f"has a value on pages {starts[at]}..{ends[at] - 1}, which hold its tree page {pgno}")
        return Summary(self.chunks, self.metadata, self.smallest or 0, self.largest, self.last_size, self.starts)


def _branch_children(nodes: List[Tuple[bytes, int, Optional[int], int]], pgno: int, low: Optional[bytes],
                     high: Optional[bytes]) -> List[Tuple[int, Optional[bytes], Optional[bytes]]]:
    """``(child, low, high)`` of each node of a branch page: the key range a search sends to that child.

    The first node's key is not used (its child holds what is below the
    second key); the others must increase, within the page's own range.
    """
    keys = [key for key, _, _, _ in nodes]
    for k in range(1, len(keys)):
        if (k > 1 and keys[k] <= keys[k - 1]) or (low is not None and keys[k] <= low) or \
                (high is not None and keys[k] >= high):
            raise _Corrupt(f"branch page {pgno} has key {k} {keys[k].hex()} out of order")
    bounds = [low, *keys[1:], high]
    return [(child, bounds[k], bounds[k + 1]) for k, (_, child, _, _) in enumerate(nodes)]


def _check_page(page: bytes, pgno: int, psize: int, last: int,
                is_leaf: bool) -> List[Tuple[bytes, int, Optional[int], int]]:
    """Check one branch or leaf page; returns its nodes in order.

    A leaf node as ``(key, value size, first overflow page or None, offset
    in the page of a value without overflow pages, else 0)``, a branch node
    as ``(key, child page, None, 0)``.
    """
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
    nodes: List[Tuple[bytes, int, Optional[int], int]] = []
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
                nodes.append((page[offset + NODE_SIZE : end], dsize, first, 0))
            elif end + dsize > psize:
                raise _Corrupt(f"page {pgno} node {k}: a {ksize}-byte key and {dsize}-byte value run past its page")
            else:
                nodes.append((page[offset + NODE_SIZE : end], dsize, None, end))
        else:
            if end > psize:
                raise _Corrupt(f"page {pgno} node {k}: a {ksize}-byte key runs past its page")
            nodes.append((page[offset + NODE_SIZE : end], lo | hi << 16 | node_flags << 32, None, 0))
    return nodes
