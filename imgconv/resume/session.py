"""Resuming an interrupted conversion: the decisions, the checkpoints and the journal, in one place.

A converter wraps its writer in a :class:`ResumeSession`:

* :meth:`ResumeSession.begin` locks the writer's partial output and reads the
  journal an earlier writer of the same path left. Same job (the header:
  format, options, the converter's job fingerprint) and ``resume``: the
  output is reopened, checked, cut back to its last checkpoint that is
  safely on disk, and continued; ``position`` and ``earlier_skipped`` then
  say where the source stands. An output that cannot be reopened is
  discarded and ``restart_reason`` says why. Without ``resume``, output worth
  keeping is an error unless the writer may overwrite;
* :meth:`ResumeSession.checkpoint` after every batch records how far the
  source got, the files it skipped, and how many images are durable;
* :meth:`ResumeSession.suspend` on an interruption keeps the output for the
  next run, or removes it when nothing in it can be continued.

The writer itself knows nothing of jobs, positions or skipped files: it
offers ``lock``/``begin``/``reopen``/``truncate``/``durable_count``/``suspend``
(see :mod:`imgconv.resume.resumable`).
"""
import json
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .._version import __version__
from ..errors import StoreError
from .inputs import InputFiles
from .journal import JOURNAL_VERSION, Entry, Journal

if TYPE_CHECKING:
    from ..stores.writer import Writer


class ResumeSession:
    """One writer's output made resumable for one job (see the module docstring).

    ``job`` is what the caller says makes two runs the same conversion (for
    the converter: the source, its size and time, the options); it must be
    JSON-ready. After :meth:`begin`: ``resumed`` images were kept from an
    interrupted run, ``position`` is the source position they came up to,
    ``earlier_skipped`` the (path, reason) of the files skipped before it,
    and ``restart_reason`` says why an earlier output was discarded, if so.
    """

    def __init__(self, writer: "Writer", job: Mapping[str, Any], inputs: Optional[InputFiles] = None) -> None:
        self.writer = writer
        self.journal = Journal(writer.partial.path)
        self.inputs = inputs
        self.header = _header(writer, job if inputs is None else {**job, "inputs": inputs.summary()})
        self.resumed = 0
        self.position = 0
        self.earlier_skipped: List[Tuple[str, ...]] = []
        self.restart_reason: Optional[str] = None
        self._counts: List[int] = []  # image counts of the checkpoints the journal holds
        self._last_entry: Optional[Entry] = None

    @property
    def partial_path(self) -> str:
        """The partial-output directory where an interrupted run leaves its output."""
        return self.writer.partial.path

    def begin(self, resume: bool = False) -> int:
        """Lock the partial output; continue (``resume``) or discard what an earlier writer left.

        Returns the number of images kept. Raises StoreError when another
        process writes the store; when ``resume`` is asked for an earlier job
        that differs (naming what differs; a writer that may overwrite
        discards it instead); and when an earlier run of the same job left
        images and neither ``resume`` nor overwriting says what to do with them.
        """
        writer = self.writer
        writer.lock()
        try:
            header, checkpoints = self.journal.read()
            kept: Sequence[Entry] = ()
            if resume and header is not None:
                kept = self._continue(header, checkpoints)
            elif resume and writer.partial.has_output():
                self._refuse_other_version()
            elif header == self.header and images_kept(checkpoints) > 0 and writer.partial.has_output():
                self._refuse_silent_discard(images_kept(checkpoints))
            if not kept:
                writer.begin()
            self.journal.start(self.header, kept)
            if self.inputs is not None:
                self.inputs.save(self.partial_path)
        except OSError as exc:
            # Writing the journal failed (a full disk, say): like any failed write, remove the output.
            writer.abort()
            raise StoreError(f"{writer.path}: cannot prepare the partial output {self.partial_path}: {exc}") from None
        except BaseException:
            writer.abort()  # a refusal leaves what is there to its owner; anything begun goes
            raise
        return self.resumed

    def checkpoint(self, position: int, skipped: Iterable[Sequence[Any]] = ()) -> None:
        """Record that the images written so far come from the source up to ``position``.

        ``skipped`` lists the (path, reason) of the files skipped since the
        last checkpoint. A later run with ``resume`` continues from the last
        checkpoint whose images are all safely in the output. Raises
        StoreError when the output or the journal cannot be written.
        """
        writer = self.writer
        stored = writer.durable_count()
        entry = {"count": writer.count, "stored": stored, "position": int(position),
                 "skipped": [[str(part) for part in item] for item in skipped], "state": writer.choices()}
        try:
            self.journal.append(entry)
        except OSError as exc:
            raise StoreError(f"{writer.path}: writing failed: {exc}") from None
        self._last_entry = entry
        self._counts.append(writer.count)

    def suspend(self) -> int:
        """Stop the writer but keep its output for a resume; returns how many images a resume will keep.

        Those of the last checkpoint the output holds entirely. When that is
        none, there is nothing worth keeping: the writer is aborted and 0
        returned. Nothing is ever left at the store's path.
        """
        writer = self.writer
        held = writer.suspend()
        kept = max([count for count in self._counts if count <= held], default=0)
        if kept and self._last_entry is not None:
            try:
                # What suspending stored beyond the last checkpoint's figure (LMDB's waiting chunks).
                self.journal.append({**self._last_entry, "skipped": [], "stored": held})
            except OSError:
                kept = 0
        if kept:
            writer.release()
        else:
            writer.abort()
        return kept

    # helpers ---------------------------------------------------------------

    def _continue(self, header: Entry, checkpoints: List[Entry]) -> List[Entry]:
        """Continue the output an earlier writer left; returns the checkpoints kept (none: start afresh)."""
        writer = self.writer
        if header != self.header:
            if writer.overwrite:
                return []
            raise StoreError(f"{writer.path}: cannot resume: {self._what_differs(header)}; "
                             "pass overwrite=True to discard it and start over")
        if not writer.partial.has_output() or images_kept(checkpoints) == 0:
            return []  # nothing ever reached the output: nothing to continue
        try:
            intact = writer.reopen(checkpoints[-1].get("state") or {})
            kept = [c for c in checkpoints if c["count"] <= intact]
            if kept:
                writer.truncate(kept[-1]["count"])
        except (StoreError, OSError) as exc:
            self.restart_reason = (f"the partial output {writer.partial.store} cannot be continued ({exc}); "
                                   "started over")
            return []
        if kept:
            self.resumed = kept[-1]["count"]
            self.position = kept[-1]["position"]
            self.earlier_skipped = [tuple(item) for c in kept for item in c.get("skipped", [])]
            self._counts = [c["count"] for c in kept]
        return kept

    def _what_differs(self, header: Entry) -> str:
        """Why the interrupted conversion that wrote ``header`` is not this one, in words."""
        return what_differs(header, self.header, self.inputs, self.partial_path)

    def _refuse_other_version(self) -> None:
        version = self.journal.other_version()
        if version is not None and not self.writer.overwrite:
            raise StoreError(
                f"{self.writer.path}: cannot resume: the interrupted conversion in {self.partial_path} was left by "
                f"an imgconv whose journal is version {version!r} (this one writes version {JOURNAL_VERSION}); "
                "pass overwrite=True to discard it and start over"
            )

    def _refuse_silent_discard(self, kept: int) -> None:
        if not self.writer.overwrite:
            raise StoreError(
                f"{self.writer.path}: an interrupted conversion left {kept} images in "
                f"{self.partial_path}; pass resume=True to continue it, or overwrite=True to discard it and "
                f"start over"
            )


def _header(writer: "Writer", job: Mapping[str, Any]) -> Entry:
    """The journal header of ``writer`` (before its first write) for ``job``: what must match to resume."""
    shape = writer.shape
    return {
        "journal": JOURNAL_VERSION, "format": writer.format_name, "format_version": writer.format_version,
        "imgconv_version": __version__, "label_names": writer.label_names, "source": writer.source,
        "shape": None if shape is None else (shape if isinstance(shape, str) else list(shape)),
        "options": _json_ready(writer.options), "job": _json_ready(job),
    }


def _json_ready(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so headers compare equal."""
    return json.loads(json.dumps(value, sort_keys=True))


def images_kept(checkpoints: List[Entry]) -> int:
    """The images a resume should find in the output: those of the last checkpoint it had stored."""
    stored = checkpoints[-1].get("stored", checkpoints[-1]["count"]) if checkpoints else 0
    return max([c["count"] for c in checkpoints if c["count"] <= stored], default=0)


def what_differs(old: Entry, new: Entry, inputs: Optional[InputFiles], partial_path: str) -> str:
    """Why the interrupted conversion in ``partial_path`` (journal header ``old``) is not the job ``new``, in words.

    Changed input files are named from the list ``inputs`` compares with
    the one kept in ``partial_path``.
    """
    names = differences(old, new)
    said = []
    if "job.inputs.sha256" in names and inputs is not None:
        changes = inputs.changes_since(partial_path, (old.get("job") or {}).get("inputs"))
        said.append(f"its input changed since: {changes}")
        names = [name for name in names if not name.startswith("job.inputs.")]
    if names:
        said.append(f"it was made with a different {', '.join(names)}")
    return f"the interrupted conversion in {partial_path} is another job: {'; '.join(said)}"


def differences(old: Dict[str, Any], new: Dict[str, Any], prefix: str = "") -> List[str]:
    """The keys (dotted) whose values differ between two JSON-like dicts."""
    names = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            names.extend(differences(a, b, f"{prefix}{key}."))
        elif a != b:
            names.append(f"{prefix}{key}")
    return names
