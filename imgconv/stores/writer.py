"""The Writer base class: one parent process writes a store, batch after batch, atomically.

A format module (``png_folder``, ``lmdb``, ``hdf5``) provides

* ``encode_batch(images, labels, **options)``: a pure, picklable function that
  checks a batch and turns it into the format's finished payload (records,
  PNG bytes, contiguous arrays). Worker processes call it; it touches no file.
* a :class:`Writer` subclass implementing the format contract: ``encoder()``
  and the hooks ``_start``, ``_write``, ``_finish`` and ``_abort`` (and
  ``format_metadata`` for what the format adds to the metadata); a format
  whose output can be continued after an interruption also implements the
  four hooks of :class:`~imgconv.resume.resumable.Resumable`;
* a :class:`~imgconv.stores.reader.Reader` subclass.

The life cycle of a writer is an explicit :class:`WriterState`; the base
class alone moves it, whatever the format.
"""
import abc
import enum
import os
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Union

from ..errors import StoreArgumentError, StoreError
from ..resume.resumable import Resumable
from .atomic import check_target, commit, temporary_sibling
from .batch import VARIABLE, EncodedBatch, Shape, StoreShape, shape_text, store_shape
from .metadata import Metadata, make_metadata
from .partial import PartialOutput, remove_finished_partial

Encoder = Callable[[Any, Any], EncodedBatch]
PathLike = Union[str, "os.PathLike[str]"]


class WriterState(enum.Enum):
    """Where a writer is in its life.

    ::

        NEW --lock()--> LOCKED --begin()--> READY --first write--> WRITING --close()--> CLOSED
         |                 |  reopen(state) + truncate(n) (a resume)  ^   |
         +-- begin() ------|------------------------------------------+   +--a write fails--> FAILED
        any state but CLOSED --abort()--> ABORTED
        READY/WRITING --suspend()--> SUSPENDED (output kept for a resume) --abort()--> ABORTED

    A direct user only sees NEW -> READY -> WRITING -> CLOSED (or ABORTED):
    the first write locks and prepares the partial output itself.
    """

    NEW = "new"  # nothing locked yet
    LOCKED = "locked"  # the partial output is locked; what an earlier writer left is still in it
    READY = "ready"  # the partial output is emptied; the output is created by the first write
    WRITING = "writing"  # the output exists: started, or continued from an earlier writer's
    FAILED = "failed"  # a write failed: the output can only be aborted
    SUSPENDED = "suspended"  # stopped, the output kept beside the path for a resume
    CLOSED = "closed"  # finished and renamed into place
    ABORTED = "aborted"  # stopped and removed (or, never prepared, left to whoever owns it)


_ENDED = (WriterState.SUSPENDED, WriterState.CLOSED, WriterState.ABORTED)
_UNSET = object()


class Writer(abc.ABC):
    """Writes a store in batches, in a partial output renamed into place by :meth:`close`.

    Use it as a context manager: leaving the block normally closes (finishes)
    the store; leaving it with an exception aborts and removes the partial
    output, leaving nothing at ``path``.

    The output grows in a partial-output directory beside ``path`` (see
    :mod:`imgconv.stores.partial`), locked while the writer works. A writer
    that was killed leaves it there: the next writer of ``path`` removes it,
    unless a resume layer continues it (``lock``, ``reopen``, ``truncate``).

    Subclasses set ``format_name``, ``format_version`` and ``options`` (the
    options they were given, JSON-ready: what makes two outputs of the same
    data differ) and implement ``encoder``, ``_start``, ``_write``,
    ``_finish`` (metadata dict in, output finished at ``self.temporary``) and
    ``_abort``.
    """

    format_name: str = ""
    format_version: int = 0
    # Whether encode_batch is CPU work worth a worker process (PNG
    # compression) rather than a pass at memory speed (packing records,
    # checksums), which costs less than sending the batch to a worker.
    heavy_encoding: bool = False

    def __init__(self, path: PathLike, *, overwrite: bool = False,
                 label_names: Optional[Sequence[str]] = None, source: Optional[str] = None,
                 shape: Any = None, durable: bool = True) -> None:
        self.path = os.path.abspath(os.fspath(path))
        remove_finished_partial(self.path)
        check_target(self.path, overwrite)
        self.overwrite = bool(overwrite)
        # Sync the output to disk before the rename (the format's data where it
        # syncs any, the directory entry): see create().
        self.durable = bool(durable)
        self.label_names = None if label_names is None else [str(n) for n in label_names]
        self.source = None if source is None else str(source)
        self.shape: Optional[StoreShape] = store_shape(shape, f"{self.path}: ")
        self.options: Dict[str, Any] = {}
        self.count = 0
        self.partial = PartialOutput(self.path)
        self.temporary = self.partial.store
        self.state = WriterState.NEW
        self._failure: Optional[str] = None  # why a write failed, when FAILED
        self._pid = os.getpid()

    # public API -----------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the writer has ended: closed, aborted or suspended."""
        return self.state in _ENDED

    @property
    def resumable(self) -> bool:
        """Whether this format's output can be continued after an interruption (see :meth:`reopen`)."""
        return isinstance(self, Resumable)

    def append(self, images: Any, labels: Any) -> None:
        """Check, encode and write one batch (see :func:`~imgconv.stores.batch.check_batch` for the forms).

        Raises StoreArgumentError (a ValueError) naming the path when the
        batch disagrees with the store (image shape, fixed versus varying
        sizes, dtype, label count), StoreError when writing fails.
        """
        try:
            encoded = self.encode_batch(images, labels)
        except StoreError as exc:
            raise type(exc)(f"{self.path}: {exc}") from None
        self.write_encoded(encoded)

    def encode_batch(self, images: Any, labels: Any) -> EncodedBatch:
        """This writer's pure encode step: ``encode_batch(images, labels, **options)`` of its format."""
        return self.encoder()(images, labels)

    @abc.abstractmethod
    def encoder(self) -> Encoder:
        """A picklable callable ``(images, labels) -> encoded batch`` for worker processes."""

    def describe(self, *, label_names: Any = _UNSET, source: Any = _UNSET) -> None:
        """Replace the label names or the source description the metadata will hold.

        For a writer fed by a stream that learns them on the way (a
        compressed archive); they are written by :meth:`close`.
        """
        if label_names is not _UNSET:
            self.label_names = None if label_names is None else [str(n) for n in label_names]
        if source is not _UNSET:
            self.source = None if source is None else str(source)

    def write_encoded(self, encoded: EncodedBatch) -> None:
        """Write a batch that the format's ``encode_batch`` produced, after the ones before it."""
        self._check_usable()
        if len(encoded) == 0:
            return
        self._check_shape(encoded.variable, encoded.shape_of_batch())
        self.begin()  # a refusal (another writer holds the lock) is no failed write
        try:
            self._ensure_started()
            self._write(encoded)
        except StoreError as exc:
            self._fail(str(exc))
            raise
        except OSError as exc:
            raise self._fail(f"{self.path}: writing failed: {exc}") from None
        except BaseException:
            self._fail(f"{self.path}: a write was interrupted")
            raise
        self.count += len(encoded)

    def close(self) -> None:
        """Finish the store (metadata, index files) and rename it into place.

        Closing twice (or after :meth:`abort`) is harmless. An empty store (no
        batch appended) needs a fixed ``shape=`` given to the writer, else
        StoreError. On any error the partial output is removed.
        """
        if self.closed:
            return
        try:
            self._finish_output()
        except BaseException:
            self.abort()
            raise
        self.state = WriterState.CLOSED
        self._commit()

    def abort(self) -> None:
        """Stop writing and remove the partial output; ``path`` is left untouched.

        A writer that never prepared its partial output (``begin`` refused,
        or nothing was written) leaves whatever is there to its owner.
        """
        if self.state in (WriterState.CLOSED, WriterState.ABORTED):
            return
        # Only what this writer prepared (locked and emptied) is its to remove.
        prepared = self.partial.locked and self.state not in (WriterState.NEW, WriterState.LOCKED)
        self.state = WriterState.ABORTED
        try:
            self._abort()
        finally:
            if prepared:
                self.partial.remove()
            else:
                self.partial.release()

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        # A writer dropped without close() must not leave temporary output behind,
        # and a forked child must never abort its parent's writer.
        try:
            if not self.closed and self._pid == os.getpid():
                self.abort()
        except Exception:
            pass  # also: __init__ failed before the writer had a state, or the interpreter is exiting

    def __reduce__(self) -> Any:
        raise TypeError(
            f"{type(self).__name__} cannot be pickled: the parent process is the only writer; "
            "send workers writer.encoder() and pass its results to write_encoded()"
        )

    def format_metadata(self) -> Dict[str, Any]:
        """What the format adds to the metadata (JSON-ready): its choices, such as chunk sizes.

        Called once the shape is known; a format fixes here what it would
        otherwise decide on its first write.
        """
        return {}

    # for a resume layer ------------------------------------------------------

    def lock(self) -> None:
        """Lock the partial output beside ``path`` without touching what an earlier writer left in it.

        Raises StoreError when another process writes ``path``. Then either
        :meth:`begin` (start afresh) or :meth:`reopen` (continue).
        """
        self._check_not_ended()
        if self.state is WriterState.NEW:
            self.partial.acquire()
            self.state = WriterState.LOCKED

    def begin(self) -> None:
        """Lock the partial output (if not yet done) and empty it: a fresh start.

        Also after :meth:`reopen`, to discard the earlier output after all.
        The first write calls this if the caller did not. Raises StoreError
        when another process writes ``path``.
        """
        self._check_not_ended()
        if self.state not in (WriterState.NEW, WriterState.LOCKED):
            return
        self.lock()
        self._abort()  # whatever reopen() opened of an earlier writer's output
        try:
            self.partial.clear()
        except OSError as exc:
            self.partial.release()
            self.state = WriterState.ABORTED
            raise StoreError(f"{self.path}: cannot prepare the partial output {self.partial.path}: {exc}") from None
        self.state = WriterState.READY

    def reopen(self, state: Mapping[str, Any]) -> int:
        """Open the output an interrupted writer of ``path`` left, to continue it; returns how many of
        its first images are intact.

        Needs :meth:`lock` first and a resumable format. ``state`` is what
        :meth:`choices` said at that writer's last checkpoint. Follow with
        :meth:`truncate`, or with :meth:`begin` to discard the output instead.
        Raises StoreError (or OSError) when the output cannot be continued;
        its handles are closed then, and :meth:`begin` starts afresh.
        """
        self._expect(WriterState.LOCKED, "reopen")
        if not isinstance(self, Resumable):
            raise StoreError(f"{self.format_name} output cannot be resumed")
        if state.get("shape") is not None:
            self.shape = store_shape(state["shape"], f"{self.path}: ")
        try:
            return self._reopen(state)
        except BaseException:
            self._abort()
            raise

    def truncate(self, count: int) -> None:
        """Cut the reopened output back to its first ``count`` images; writing continues from there."""
        self._expect(WriterState.LOCKED, "truncate")
        assert isinstance(self, Resumable)
        try:
            self._truncate(count)
        except BaseException:
            self._abort()
            raise
        self.count = count
        self.state = WriterState.WRITING

    def choices(self) -> Dict[str, Any]:
        """The choices :meth:`reopen` needs to continue this output: the shape and :meth:`format_metadata`."""
        if self.shape is None:
            return {"shape": None}
        return {"shape": VARIABLE if self.shape == VARIABLE else list(self.shape), **self.format_metadata()}

    def durable_count(self) -> int:
        """Make what was written reopenable and return how many images that covers (0 for a
        format that cannot resume). A failure to do so is a failed write (StoreError)."""
        self._check_usable()
        if self.state is not WriterState.WRITING or not isinstance(self, Resumable):
            return 0
        try:
            return self._durable_count()
        except StoreError as exc:
            self._fail(str(exc))
            raise
        except OSError as exc:
            raise self._fail(f"{self.path}: writing failed: {exc}") from None

    def suspend(self) -> int:
        """Stop writing but keep the output in the partial output, for a resume; returns how many
        images it holds (reopenable).

        For interruptions (a signal, a killed worker). Nothing is left at
        ``path``; the lock is kept until :meth:`release` (or :meth:`abort`
        discards the output after all). A writer that cannot keep anything
        (a failed write, a format that cannot resume, nothing started) is
        aborted instead, and 0 returned.
        """
        if self.state not in (WriterState.READY, WriterState.WRITING) or not isinstance(self, Resumable):
            self.abort()
            return 0
        held = 0
        if self.state is WriterState.WRITING:
            try:
                held = self._suspend()
            except (StoreError, OSError):
                self.abort()
                return 0
        self.state = WriterState.SUSPENDED
        return held

    def release(self) -> None:
        """Drop the lock of a suspended writer, leaving its output to the next writer of ``path``."""
        self._expect(WriterState.SUSPENDED, "release")
        self.partial.release()

    # the format contract -----------------------------------------------------

    @abc.abstractmethod
    def _start(self) -> None:
        """Create the output at ``self.temporary`` (called before the first write)."""

    @abc.abstractmethod
    def _write(self, encoded: Any) -> None:
        """Write one encoded batch (the format's own EncodedBatch) after the ones before it."""

    @abc.abstractmethod
    def _finish(self, meta: Metadata) -> None:
        """Write the metadata and finish the output at ``self.temporary``."""

    def _abort(self) -> None:  # noqa: B027 - optional hook
        """Close whatever the output holds open; the base class removes the files."""

    # helpers ---------------------------------------------------------------

    def _finish_output(self) -> None:
        if self._failure is not None:
            raise StoreError(f"{self._failure}; the store cannot be finished and was removed")
        if self.shape is None:
            raise StoreError(
                f"{self.path}: no image was appended and no shape given; the store would have no image shape"
            )
        try:
            self._ensure_started()
        except OSError as exc:
            raise StoreError(f"{self.path}: writing failed: {exc}") from None
        meta = make_metadata(self.format_name, self.format_version, self.count, self.shape, self.label_names,
                             self.source, **self.format_metadata())
        self._finish(meta)

    def _commit(self) -> None:
        try:
            commit(self.temporary, self.path, self.overwrite, sync=self.durable)
        except StoreError as exc:
            # The finished store is kept where the message says; out of the
            # partial output, which the next writer of path would take over.
            kept = temporary_sibling(self.path)
            try:
                os.rename(self.temporary, kept)
            except OSError:
                self.partial.release()
                raise exc from None
            self.partial.remove()
            raise StoreError(str(exc).replace(self.temporary, kept)) from None
        except BaseException:
            self.partial.remove()  # interrupted: the target holds the old store or the new one
            raise
        self.partial.remove()

    def _fail(self, message: str) -> StoreError:
        """Record that a write failed (the output can then only be aborted); returns the error to raise."""
        self._failure = message
        self.state = WriterState.FAILED
        return StoreError(message)

    def _check_not_ended(self) -> None:
        if self.closed:
            raise StoreError(f"{self.path}: the writer is closed")

    def _check_usable(self) -> None:
        self._check_not_ended()
        if self._failure is not None:
            raise StoreError(f"{self._failure}; the store cannot be continued, only aborted")

    def _expect(self, state: WriterState, action: str) -> None:
        if self.state is not state:
            raise StoreError(f"{self.path}: cannot {action} a writer in state {self.state.value}")

    def _check_shape(self, variable: bool, shape: Optional[Shape]) -> None:
        if self.shape is None:
            self.shape = VARIABLE if variable else shape
            return
        if self.shape == VARIABLE:
            return
        if shape != self.shape:
            found = "images of varying sizes" if shape is None else f"images of {shape_text(shape)}"
            raise StoreArgumentError(
                f"{self.path}: the batch holds {found}, the store holds {shape_text(self.shape)} uint8 images")

    def _ensure_started(self) -> None:
        if self.state in (WriterState.NEW, WriterState.LOCKED):
            self.begin()
        if self.state is WriterState.READY:
            self._start()
            self.state = WriterState.WRITING
