"""Resuming interrupted conversions, as a layer above the store writers.

:mod:`.resumable` is what a format implements (four hooks), :mod:`.journal`
the JSON-lines journal kept beside a partial output, and :mod:`.session` the
decisions (continue, start over, refuse) and checkpoints a converter drives.
"""
from .journal import JOURNAL, JOURNAL_VERSION, Journal
from .resumable import Resumable
from .session import ResumeSession

__all__ = ["JOURNAL", "JOURNAL_VERSION", "Journal", "ResumeSession", "Resumable"]
