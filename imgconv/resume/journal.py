"""The resume journal: JSON lines beside a partial output, saying what it holds and where it came from.

``journal.jsonl`` in the partial-output directory
(:mod:`imgconv.stores.partial`) starts with a header describing the job
(format, options, the converter's source fingerprint) and then has one
checkpoint per batch: the image ``count`` the store had, how many of them
were ``stored`` reopenably, the source ``position`` it corresponds to, the
files ``skipped`` in that batch and the writer's ``state`` (the choices it
made on its first write). Lines are appended with one ``write`` each, so a
killed writer leaves at most one torn last line, which is ignored. The
journal is only ever touched by the holder of the partial output's lock.
"""
import json
import os
from typing import Any, Dict, Iterable, List, Optional, Tuple

JOURNAL = "journal.jsonl"
# 2: the job's header holds the fingerprint of every input file (imgconv.resume.inputs),
# not the size and time of the source's path alone.
JOURNAL_VERSION = 2

Entry = Dict[str, Any]


class Journal:
    """The journal file in the partial-output directory ``directory``."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, JOURNAL)

    def read(self) -> Tuple[Optional[Entry], List[Entry]]:
        """``(header, checkpoints)``; ``(None, [])`` when there is no journal or its header is torn."""
        try:
            with open(self.path, "rb") as f:
                lines = f.read().split(b"\n")
        except OSError:
            return None, []
        entries = []
        for line in lines:
            try:
                entries.append(json.loads(line.decode("utf-8")))
            except (UnicodeDecodeError, json.JSONDecodeError):
                break  # a torn last line (or garbage): nothing after it counts
        if not entries or not isinstance(entries[0], dict) or entries[0].get("journal") != JOURNAL_VERSION:
            return None, []
        checkpoints = [e for e in entries[1:] if isinstance(e, dict) and isinstance(e.get("count"), int)
                       and isinstance(e.get("position"), int)]
        return entries[0], checkpoints

    def other_version(self) -> Optional[Any]:
        """The version of a journal written by an imgconv with another journal format, else None."""
        try:
            with open(self.path, "rb") as f:
                first = json.loads(f.readline().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        version = first.get("journal") if isinstance(first, dict) else None
        return version if version is not None and version != JOURNAL_VERSION else None

    def start(self, header: Entry, checkpoints: Iterable[Entry] = ()) -> None:
        """Write a new journal: ``header`` then ``checkpoints`` (replacing any journal atomically)."""
        data = b"".join(_line(entry) for entry in [header, *checkpoints])
        temporary = self.path + ".new"
        with open(temporary, "wb") as f:
            f.write(data)
        os.replace(temporary, self.path)

    def append(self, entry: Entry) -> None:
        """Append one checkpoint to the journal, in one write."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, _line(entry))
        finally:
            os.close(fd)


def _line(entry: Entry) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n"
