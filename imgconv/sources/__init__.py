"""Sources: every input imgconv reads, as a stream of ``(images, labels)`` batches.

:func:`open_source` looks at a path and asks the registered source kinds, in
order, whether it is theirs; the first that says yes reads it.
``SOURCE_KINDS`` is that registry: add a kind by appending a
:class:`SourceKind`, whose ``options`` declare (once, see
:mod:`imgconv.options`) the keyword options it takes; ``OPTION_DEFAULTS``
and the command line's flags are derived from them.
"""
from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from typing import Any, Callable, NamedTuple

from .._moved import forward
from .._platform import file_kind, special_file
from ..errors import SourceError, SourceOptionError
from ..options import Option, merge
from . import cifar, folder, multi, numpy_files, store
from .base import SkippedFile, SkippedImageWarning, Source, open_input
from .cifar import CifarSource
from .folder import FolderSource
from .multi import MultiSource
from .numpy_files import NumpySource
from .store import StoreSource


class SourceKind(NamedTuple):
    """A registered kind of source.

    ``detect(path)`` says whether ``path`` is of this kind (it may raise
    SourceError when the path is of the kind but unusable); ``source(path,
    **options)`` opens it; ``options`` declares the keyword options it takes;
    ``title`` is how help and messages name the kind ("image folders").
    """

    name: str
    detect: Callable[[str], bool]
    source: Callable[..., Source]
    options: tuple[Option, ...] = ()
    title: str = ""

    @property
    def label(self) -> str:
        """The kind as messages name it: its title, else its name."""
        return self.title or self.name


SOURCE_KINDS = [
    SourceKind("store", store.detect, StoreSource, StoreSource.OPTIONS, "imgconv stores"),
    SourceKind("cifar", cifar.is_cifar, CifarSource, CifarSource.OPTIONS, "CIFAR"),
    SourceKind("numpy", numpy_files.detect, NumpySource, NumpySource.OPTIONS, "NumPy"),
    SourceKind("folder", folder.detect, FolderSource, FolderSource.OPTIONS, "image folders"),
]


def source_options(kinds: Iterable[SourceKind] | None = None) -> dict[str, Option]:
    """Every option the source kinds declare, by name (one declaration per name)."""
    return merge(kind.options for kind in (SOURCE_KINDS if kinds is None else kinds))


def kinds_taking(name: str, kinds: Iterable[SourceKind] | None = None) -> list[SourceKind]:
    """The source kinds that take the option called ``name``."""
    return [kind for kind in (SOURCE_KINDS if kinds is None else kinds) if any(o.name == name for o in kind.options)]


# Every option a source kind takes, with its default. open_source accepts the
# whole set so a command line can pass all of them; an option the chosen
# kind does not take must stay at its default (or None).
OPTION_DEFAULTS = {name: option.default for name, option in source_options().items()}


def open_source(path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], **options: Any) -> Source:
    """Open the dataset at ``path`` with the source kind that fits what is there.

    ``path`` is an imgconv store (PNG folder, LMDB, HDF5, sharded dataset),
    a CIFAR batch directory (or its parent, or an official ``.tar.gz``), a
    ``.npy``/``.npz`` file, or a folder of images; or several of them, as a
    list of paths or a glob pattern (``"parts/*.tar.gz"``), read one after
    another as one dataset (a :class:`MultiSource`, each opened with the
    same options). Options
    (see each kind): ``split``, ``label_kind`` (CIFAR); ``split``,
    ``images_key``, ``labels_key`` (NumPy); ``mode``, ``resize``,
    ``resize_policy``, ``on_error``, ``labels_csv``, ``max_pixels`` (folders). An option left
    at its default or None is ignored by kinds that do not take it.

    Returns a :class:`Source`. Raises TypeError for an unknown option name and
    SourceError when nothing can read the path (saying what is there),
    SourceOptionError when an option set away from its default does not
    apply to the kind chosen or has a bad value, and SourceError when the
    source finds the data unreadable.
    """
    known = source_options()
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"open_source() got unknown option(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if isinstance(path, (list, tuple)) or multi.is_pattern(path):
        paths = multi.expand(path)
        return open_source(paths[0], **options) if len(paths) == 1 else MultiSource(paths, open_source, **options)
    path = os.fspath(path)  # type: ignore[arg-type]  # a list is dealt with above
    if not os.path.exists(path):
        raise SourceError(f"{path}: no such file or directory")
    special = special_file(path)
    if special is not None:  # opening it to look inside could wait forever
        raise SourceError(f"{path}: {special}, not a dataset (imgconv reads regular files and directories)")
    for kind in SOURCE_KINDS:
        if kind.detect(path):
            return kind.source(path, **_options_for(kind, path, options, known))
    raise SourceError(_why_nothing_reads(path))


def _options_for(kind: SourceKind, path: str, options: dict[str, Any], known: dict[str, Option]) -> dict[str, Any]:
    taken = {option.name for option in kind.options}
    chosen = {}
    for name, value in options.items():
        if name in taken:
            if value is not None:
                chosen[name] = value
        elif value is not None and value != known[name].default:
            takers = " and ".join(k.label for k in kinds_taking(name))
            raise SourceOptionError(
                f"{path} is read as {kind.label}, which takes no {name}={value!r} ({name} applies to {takers})",
                (name,),
            )
    return chosen


def _listing(names, limit=5):
    shown = ", ".join(names[:limit])
    return shown + (", ..." if len(names) > limit else "")


def _why_nothing_reads(path):
    """The message for a path no reader takes: what is there and why it does not fit."""
    batch_names = {n for layout in cifar.LAYOUTS for n in layout.train + layout.test}
    # Never opened unless it is a regular file: a FIFO would block the read of its first bytes forever.
    if os.path.isdir(path):
        try:
            entries = sorted(os.listdir(path))
        except OSError as exc:
            return f"{path}: cannot list the directory ({exc.strerror})"
        if not entries:
            return f"directory {path} is empty"
        files = [e for e in entries if os.path.isfile(os.path.join(path, e))]
        folders = [e for e in entries if os.path.isdir(os.path.join(path, e))]
        arrays = [f for f in files if f.lower().endswith((".npy", ".npz"))]
        if arrays:
            return (
                f"directory {path} holds NumPy files ({_listing(arrays)}) but no images; "
                f"open the file itself, e.g. {os.path.join(path, arrays[0])}"
            )
        held = []
        if files:
            held.append(f"{len(files)} file(s) ({_listing(files)})")
        if folders:
            held.append(f"{len(folders)} folder(s) ({_listing(folders)})")
        return (
            f"directory {path} holds no images, no CIFAR batches (data_batch_1..5, test_batch, train/test with meta, "
            f"or their .bin versions) and no .npy/.npz files; it holds {' and '.join(held)}"
        )
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        return f"{path} is {file_kind(mode)}, not a file or directory imgconv reads"
    if os.path.getsize(path) == 0:
        return f"file {path} is empty (0 bytes)"
    if os.path.basename(path) in batch_names:
        return (
            f"{path} is a single CIFAR batch; open its directory {os.path.dirname(path) or '.'} "
            "and choose the part with split='train', 'test' or 'all'"
        )
    with open_input(path, "a file imgconv reads") as f:  # a FIFO swapped in since the stat is refused, not waited on
        head = f.read(8)
    return (
        f"file {path} is not a CIFAR archive (.tar.gz), a .npy or a .npz file (it starts with {head!r}); "
        "to read images, open the folder that holds them"
    )


__all__ = [
    "OPTION_DEFAULTS",
    "READERS",
    "SOURCE_KINDS",
    "CifarSource",
    "FolderSource",
    "MultiSource",
    "NumpySource",
    "SourceKind",
    "SkippedFile",
    "SkippedImageWarning",
    "Source",
    "SourceKind",
    "StoreSource",
    "kinds_taking",
    "open_source",
    "source_options",
]

# The registry and its entries were called READERS and Reader, as the store readers are.
__getattr__ = forward(__name__, {"Reader": "imgconv.sources:SourceKind", "READERS": "imgconv.sources:SOURCE_KINDS"})
