"""Every exception and warning imgconv raises on purpose: one root, a few kinds.

The rule callers can rely on:

* a bad **argument** (a value of the wrong type or out of range, an option
  that does not apply, an index out of range) raises ``TypeError``,
  ``ValueError`` or ``IndexError``, or an :class:`ImgconvError` subclass that
  is also one of them (:class:`StoreArgumentError`, :class:`UnknownFormatError`,
  :class:`StoreIndexError`, :class:`SourceError`, :class:`OptionError`), so that ``except
  ValueError`` catches every "you passed a bad option";
* bad **files or data** (a damaged store, an unreadable image, a malformed
  record) raise :class:`SourceError`, :class:`StoreError` or :class:`RecordError`;
* a failed or interrupted **conversion** raises :class:`ConversionError`
  (:class:`WorkerDied` when a worker process died) or :class:`Interrupted`.

Every message names the file or record and what is wrong with it.
:class:`SourceError` is also a ``ValueError`` for historical reasons: options
of a source (``split``, ``mode``, ...) are checked by the source itself and
reported with its path.
"""
import signal
from typing import Any, Sequence, Tuple

__all__ = [
    "BenchCheckError",
    "BenchInputError",
    "ConversionError",
    "ExtensionMissingError",
    "ImgconvError",
    "Interrupted",
    "LoaderError",
    "OptionError",
    "OverlapError",
    "RecordError",
    "SkippedImageWarning",
    "SourceError",
    "SourceOptionError",
    "StalledWorkersWarning",
    "StoreArgumentError",
    "StoreError",
    "StoreIndexError",
    "StoreOptionError",
    "UnknownFormatError",
    "UnsafePickleError",
    "UsageError",
    "WorkerDied",
]


class ImgconvError(Exception):
    """Root of every error imgconv raises on purpose."""


# --------------------------------------------------------------------------- data


class RecordError(ImgconvError, ValueError):
    """A binary record is malformed: truncated, bad magic, unknown version,
    sizes that do not add up, or a checksum that does not match."""


class SourceError(ImgconvError, ValueError):
    """An input dataset (CIFAR batch, image file, NumPy file, folder) cannot be read as asked."""


class UnsafePickleError(SourceError):
    """A pickle asks for something a genuine dataset file never needs; nothing of it was run."""


class StoreError(ImgconvError):
    """A store cannot be created, written, opened or read: the message names the path and the problem."""


# --------------------------------------------------------------------------- arguments


class StoreArgumentError(StoreError, ValueError):
    """A value given to a store is not acceptable: a writer option, a batch, an ``out=`` array.

    A StoreError (code that caught StoreError for these still does) and a
    ValueError (the rule: a bad argument is a ValueError).
    """


class StoreIndexError(StoreError, IndexError):
    """An index outside ``0 .. len(store) - 1`` (negative indices count from the end)."""


class UnknownFormatError(ImgconvError, ValueError):
    """A path or format name that no registered reader or writer handles."""


class OptionError(ImgconvError, ValueError):
    """A keyword option with a bad value, or options that do not go together: the caller's mistake.

    ``options`` names the keyword parameters at fault, so that a command line
    can speak of its flags instead (see :func:`imgconv.options.speak_flags`):
    the message uses those names for the parameters alone, never as words.
    """

    def __init__(self, message: str, options: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.options = tuple(options)

    def __reduce__(self) -> Tuple[Any, Tuple[str, Tuple[str, ...]]]:
        return type(self), (str(self), self.options)


class SourceOptionError(OptionError, SourceError):
    """A source option with a bad value, or one the source does not take (a SourceError, as before)."""


class StoreOptionError(OptionError, StoreArgumentError):
    """A store option with a bad value, or options that do not go together (a StoreArgumentError, as before)."""


class UsageError(ImgconvError):
    """Command-line arguments that do not go together; the command line reports it with exit status 2."""


class OverlapError(UsageError, ValueError):
    """A conversion's DST is its SRC, holds SRC or a file the source reads, or lies inside SRC (a bad argument)."""


# --------------------------------------------------------------------------- environment


class ExtensionMissingError(ImgconvError, ImportError):
    """The compiled core was required (IMGCONV_REQUIRE_EXT=1) but cannot be imported."""


# --------------------------------------------------------------------------- conversions


class ConversionError(ImgconvError):
    """A conversion failed in a worker or in the pool; the message says where and why."""


class WorkerDied(ConversionError):
    """A worker process died (killed, out of memory); the work done so far can be resumed."""


class Interrupted(ImgconvError):
    """The conversion was stopped by a signal (SIGINT or SIGTERM); ``signum`` says which."""

    def __init__(self, signum: int, detail: str = "nothing was written at the destination") -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}; {detail}")
        self.signum = signum


# --------------------------------------------------------------------------- the benchmark harness


class BenchInputError(ImgconvError):
    """The benchmark harness cannot use the given input (images of varying sizes, none at all)."""


class BenchCheckError(ImgconvError):
    """A benchmarked method returned images or labels other than those written: the run fails."""


# --------------------------------------------------------------------------- training


class LoaderError(ImgconvError):
    """A training loader cannot go on: a worker process died, or the store cannot be read as batches."""


# --------------------------------------------------------------------------- warnings


class SkippedImageWarning(UserWarning):
    """Issued when a source skipped unreadable files under ``on_error='skip'``; the message names them."""


class StalledWorkersWarning(UserWarning):
    """Issued when a conversion's workers have returned nothing for a long time while work is in flight.

    The message names each worker process and its state (a stopped one
    above all) and how to go on or stop; the conversion itself goes on.
    """


def kept_for_resume(exc: BaseException, kept: str) -> BaseException:
    """The error to raise for an interrupted conversion (``Interrupted`` or ``WorkerDied`` ``exc``),
    saying what was kept for a resume: ``kept`` ("" when nothing was) follows "nothing was written at
    the destination"."""
    detail = "nothing was written at the destination" + (f"; {kept}" if kept else "")
    if isinstance(exc, Interrupted):
        return Interrupted(exc.signum, detail)
    return WorkerDied(f"{exc}; {detail}")
