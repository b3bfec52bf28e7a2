"""The input files of a conversion, fingerprinted: what a resume checks has not changed.

Every file the source reads (:meth:`imgconv.sources.Source.input_files`: the
images of a folder, the CIFAR batch files actually read, the ``.npy``, the
archive, every file of a source store) is described by a ``stat``, never by
reading it: its path, size, modification time in nanoseconds and inode, in
the order the source reads them. A file rewritten in place changes its size
or time, a file replaced (even by a copy with the same time) its inode, a
file added, removed or renamed the list.

The journal's header holds the number of files and a SHA-256 digest of the
list (:meth:`InputFiles.summary`), so comparing two runs costs one stat per
file. The list itself is kept beside the journal in ``inputs.gz`` (one JSON
array per line, gzip-compressed: about 10 bytes a file), so that a resume
refused because the input changed can say which files were added, removed or
modified (:meth:`InputFiles.changes_since`).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib
from collections.abc import Iterable, Iterator
from typing import Any, Dict, List, Tuple

INPUTS = "inputs.gz"
SHOWN = 3  # file names a message quotes per kind of change

Row = Tuple[Any, ...]  # [path, size, mtime_ns, inode]; None for a file that could not be stat'ed


class InputFiles:
    """The fingerprint of the files a conversion reads (see the module docstring)."""

    def __init__(self, count: int, digest: str, listing: bytes) -> None:
        self.count = count
        self.digest = digest
        self._listing = listing  # the rows, gzip-compressed

    @classmethod
    def of(cls, paths: Iterable[str]) -> "InputFiles":
        """Stat every file of ``paths`` (in order) and fingerprint the list."""
        digest = hashlib.sha256()
        packer = zlib.compressobj(1, zlib.DEFLATED, 31)  # 31: the gzip container
        parts, count = [], 0
        for path in paths:
            line = _line(path)
            digest.update(line)
            parts.append(packer.compress(line))
            count += 1
        parts.append(packer.flush())
        return cls(count, digest.hexdigest(), b"".join(parts))

    def summary(self) -> Dict[str, Any]:
        """What the journal's header keeps of the fingerprint: ``{"files": count, "sha256": digest}``."""
        return {"files": self.count, "sha256": self.digest}

    def save(self, directory: str) -> None:
        """Keep the list in ``directory`` (replacing an older one in one step)."""
        path = os.path.join(directory, INPUTS)
        with open(path + ".new", "wb") as f:
            f.write(self._listing)
        os.replace(path + ".new", path)

    def rows(self) -> Iterator[Row]:
        """The ``(path, size, mtime_ns, inode)`` of each file, in order."""
        return _rows(gzip.decompress(self._listing))

    def changes_since(self, directory: str, summary: Any) -> str:
        """What changed between the list kept in ``directory`` (``summary`` in its header) and this one.

        A sentence such as ``2 files added (a/x.png, a/y.png), 1 modified
        (b/z.png)``; counts alone when the old list cannot be read.
        """
        then = summary.get("files") if isinstance(summary, dict) else None
        try:
            with open(os.path.join(directory, INPUTS), "rb") as f:
                old = {row[0]: (number, row[1:]) for number, row in enumerate(_rows(gzip.decompress(f.read())))}
        except (OSError, EOFError, ValueError, zlib.error, IndexError, TypeError):
            return f"the input files differ ({then if then is not None else 'an unknown number of'} files then, " \
                   f"{self.count} now)"
        added: List[str] = []
        modified: List[str] = []
        moved = False
        for number, row in enumerate(self.rows()):
            before = old.pop(row[0], None)
            if before is None:
                added.append(row[0])
            elif before[1] != tuple(row[1:]):
                modified.append(row[0])
            moved = moved or (before is not None and before[0] != number)
        removed = list(old)
        said = [_said(len(names), kind, names) for names, kind in
                ((added, "added"), (removed, "removed"), (modified, "modified")) if names]
        if said:
            return ", ".join(said)
        return "the same files are read in another order" if moved else "the input files differ"


def _line(path: str) -> bytes:
    try:
        st = os.stat(path)
        row: List[Any] = [path, st.st_size, st.st_mtime_ns, st.st_ino]
    except (OSError, ValueError):
        row = [path, None, None, None]  # gone or unreadable: reading it will say why
    return json.dumps(row, separators=(",", ":")).encode("ascii") + b"\n"


def _rows(data: bytes) -> Iterator[Row]:
    for line in data.splitlines():
        row = json.loads(line)
        yield (str(row[0]), *row[1:4])


def _said(count: int, kind: str, names: List[str]) -> str:
    shown = ", ".join(names[:SHOWN]) + (f" and {count - SHOWN} more" if count > SHOWN else "")
    return f"{count} file{'s' if count != 1 else ''} {kind} ({shown})"
