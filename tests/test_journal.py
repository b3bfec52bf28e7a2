"""The resume journal: JSON lines, a header then checkpoints; a torn last line is ignored."""
import json

from imgconv.resume.journal import JOURNAL_VERSION, Journal

HEADER = {"journal": JOURNAL_VERSION, "format": "png", "job": {"source": "x"}}


def _checkpoint(count, position):
    return {"count": count, "stored": count, "position": position, "skipped": [], "state": {"shape": None}}


def test_start_then_append_reads_back(tmp_path):
    journal = Journal(str(tmp_path))
    assert journal.read() == (None, [])  # none yet
    journal.start(HEADER, [_checkpoint(10, 10)])
    journal.append(_checkpoint(20, 20))
    assert journal.read() == (HEADER, [_checkpoint(10, 10), _checkpoint(20, 20)])
    journal.start(HEADER)  # replaces the whole journal
    assert journal.read() == (HEADER, [])


def test_a_torn_last_line_is_ignored(tmp_path):
    journal = Journal(str(tmp_path))
    journal.start(HEADER, [_checkpoint(10, 10)])
    with open(journal.path, "ab") as f:
        f.write(json.dumps(_checkpoint(20, 20)).encode()[:17])  # a kill in the middle of the write
    assert journal.read() == (HEADER, [_checkpoint(10, 10)])


def test_a_torn_or_foreign_header_means_no_journal(tmp_path):
    journal = Journal(str(tmp_path))
    with open(journal.path, "wb") as f:
        f.write(b'{"journal": 1, "form')
    assert journal.read() == (None, [])
    journal.start({**HEADER, "journal": JOURNAL_VERSION + 1}, [_checkpoint(1, 1)])
    assert journal.read() == (None, [])


def test_entries_without_count_or_position_are_not_checkpoints(tmp_path):
    journal = Journal(str(tmp_path))
    journal.start(HEADER, [_checkpoint(5, 5), {"count": "6", "position": 6}, {"count": 7}, [1, 2]])
    assert journal.read()[1] == [_checkpoint(5, 5)]
