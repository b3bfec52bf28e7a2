"""Reading the pages of an LMDB file in tests, to damage precisely what a lookup trusts (keys, page numbers)."""
import struct
from collections import namedtuple

from imgconv.stores.lmdb import pagecheck as c

# One node of a leaf page: where it is in the file, and what it says.
Node = namedtuple("Node", "page at key_at key flags dsize overflow")


def _root(raw):
    metas = [c.DB.unpack_from(raw, off + c.PAGE_HEADER_SIZE + c.META.size + c.DB.size) for off in (0, 4096)]
    txnids = [struct.unpack_from("<Q", raw, off + c.PAGE_HEADER_SIZE + c.META.size + 2 * c.DB.size + 8)[0]
              for off in (0, 4096)]
    return metas[txnids[1] > txnids[0]][-1]


def leaf_nodes(data_path, psize=4096):
    """Every node of every leaf page of the main database of ``data_path``, in key order."""
    with open(data_path, "rb") as f:
        raw = f.read()
    nodes, pending = [], [_root(raw)]
    while pending:
        pgno = pending.pop()
        base = pgno * psize
        _, _, flags, lower, _ = c.PAGE_HEADER.unpack_from(raw, base)
        offsets = [struct.unpack_from("<H", raw, base + c.PAGE_HEADER_SIZE + 2 * k)[0]
                   for k in range((lower - c.PAGE_HEADER_SIZE) // 2)]
        if flags & c.P_BRANCH:
            children = []
            for offset in offsets:
                lo, hi, nflags, _ = c.NODE.unpack_from(raw, base + offset)
                children.append(lo | hi << 16 | nflags << 32)
            pending.extend(reversed(children))
            continue
        for offset in offsets:
            lo, hi, nflags, ksize = c.NODE.unpack_from(raw, base + offset)
            key_at = base + offset + c.NODE_SIZE
            key = raw[key_at : key_at + ksize]
            overflow = struct.unpack_from("<Q", raw, key_at + ksize)[0] if nflags & c.F_BIGDATA else None
            nodes.append(Node(pgno, base + offset, key_at, key, nflags, lo | hi << 16, overflow))
    return nodes


def chunk_nodes(data_path):
    """The leaf nodes of the chunks (8-byte keys), in chunk order."""
    return [node for node in leaf_nodes(data_path) if len(node.key) == 8]


def poke(path, offset, data):
    """Write ``data`` at ``offset`` of the file ``path``."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
