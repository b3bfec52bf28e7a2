"""Random reads of an LMDB store of one image shape in one kernel call: where each chunk's value lies
in data.mdb, found once, and the file mapped read-only by this process.

A batch read the plain way asks LMDB for the value of every chunk it touches
(``txn.get``) and hands the kernel one buffer per value: at 63 CIFAR records
per value a shuffled batch of 256 touches some 240 values, and those lookups
and buffer exports cost more than the copy. Instead, data.mdb is mapped once
more, read-only, by this module, and where each chunk's value lies in the
file is known: the page check (:mod:`.pagecheck`), which walks the whole
tree before liblmdb may touch the file, records it. Record i is then at
byte ``starts[i // k] + (i % k) * record_size`` of the map, and a batch is
one call of :meth:`imgconv.record.Gather.into` over that one buffer.

Those offsets are confirmed once against LMDB's own lookups before they are
used (:func:`map_values`): every chunk's value, asked of LMDB, is a buffer
inside LMDB's map of the same file, and its address minus its offset must
be one and the same number for all chunks (the address of that map; liblmdb
maps the file from byte 0). So the map gathers exactly what the lookups
would return.

Why this is safe:

- The store is immutable: imgconv never writes a store after its commit, and
  the reader opens it read-only without a lock table. Offsets found once stay
  true for the life of the file; the map is of the very file the environment
  opened (same device and inode, checked).
- The kernel checks every record's bounds against the map (nothing is read
  outside it, whatever the offsets say), its header, and its CRC32C, which
  (record version 2) ends with the image's index: a record found at a wrong
  offset fails like a damaged one. Nothing is trusted that is not checked
  again on every read.
- Offsets are used only when the page check found every value sound (each
  chunk present, of exactly its records' size, inside the file) and LMDB's
  lookups agree with all of them. Otherwise (and for stores of varying image sizes) there is no map
  and the reader asks LMDB value by value, which names what is wrong; so
  does a batch in which the kernel finds a bad record.
- The map is a Python ``mmap`` whose buffer the arrays viewing it keep
  alive: closing a reader while another thread still gathers from it cannot
  unmap it under that thread. A forked child drops it with the environment
  and maps the file again.
"""
import mmap
import os
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from ... import _platform
from .layout import KEY_STRUCT


class MappedValues:
    """data.mdb mapped read-only (``data``, a uint8 array) and where each chunk's value starts in it."""

    __slots__ = ("data", "starts", "k", "record_size")

    def __init__(self, data: np.ndarray, starts: np.ndarray, k: int, record_size: int) -> None:
        self.data = data
        self.starts = starts
        self.k = k
        self.record_size = record_size

    def offsets(self, indices: np.ndarray) -> np.ndarray:
        """The byte offset in :attr:`data` of the record of each image in ``indices`` (an int64 array)."""
        chunks, slots = np.divmod(indices, self.k)
        offsets: np.ndarray = self.starts[chunks]
        offsets += slots * self.record_size
        return offsets


def map_values(env: Any, data_path: str, file_key: Tuple[int, int], starts: Sequence[int], count: int, k: int,
               record_size: int, readahead: bool) -> Optional[MappedValues]:
    """The :class:`MappedValues` of the store whose environment is ``env``, or None when its values
    are not all where a store of ``count`` records of ``record_size`` bytes, ``k`` per value, has them.

    ``data_path`` is its data.mdb, ``file_key`` the (st_dev, st_ino) the
    environment was opened on, ``starts`` the offsets in the file of the
    chunks' values that the page check found (:attr:`.pagecheck.Summary.starts`).
    ``readahead`` False advises the OS of random access, as liblmdb does
    for its own map. Raises lmdb.Error or OSError as the environment or the
    file do.
    """
    chunks = -(-count // k)
    if not chunks or len(starts) != chunks:
        return None
    table = np.array(starts, np.int64)
    lengths = np.full(chunks, k * record_size, np.int64)
    lengths[-1] = (count - (chunks - 1) * k) * record_size
    fd = _platform.open_regular(data_path)
    try:
        st = os.fstat(fd)
        inside = bool((table >= 0).all() and (table + lengths <= st.st_size).all())
        if (st.st_dev, st.st_ino) != file_key or not inside or not _confirmed(env, table, lengths):
            return None
        mapping = mmap.mmap(fd, st.st_size, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    if not readahead and hasattr(mapping, "madvise") and hasattr(mmap, "MADV_RANDOM"):
        mapping.madvise(mmap.MADV_RANDOM)
    return MappedValues(np.frombuffer(mapping, np.uint8), table, k, record_size)


def _confirmed(env: Any, starts: np.ndarray, lengths: np.ndarray) -> bool:
    """Whether LMDB finds the value of every chunk where ``starts`` puts it in the file, of the size
    ``lengths`` says: the value's address in LMDB's map minus its offset the same for all chunks
    (that is where LMDB mapped the file)."""
    with env.begin(buffers=True) as txn:
        get, pack = txn.get, KEY_STRUCT.pack
        base = None
        for chunk, (start, length) in enumerate(zip(starts.tolist(), lengths.tolist())):
            value = get(pack(chunk))
            if value is None or len(value) != length:
                return False
            # The buffer's address in LMDB's map, taken while the transaction holds it.
            here = np.frombuffer(value, np.uint8).ctypes.data - start
            if base is None:
                base = here
            elif here != base:
                return False
    return True
