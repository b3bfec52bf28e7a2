"""Sources: every input imgconv reads, as a stream of ``(images, labels)`` batches.

:func:`open_source` looks at a path and asks the registered readers, in
order, whether it is theirs; the first that says yes reads it. ``READERS``
is that registry: add a reader by appending a :class:`SourceKind`.
"""
import os
from collections import namedtuple

from .._moved import forward
from ..errors import SourceError
from . import cifar, folder, numpy_files, store
from .base import SkippedFile, SkippedImageWarning, Source
from .cifar import CifarSource
from .folder import FolderSource
from .numpy_files import NumpySource
from .store import StoreSource

SourceKind = namedtuple("SourceKind", "name detect source options")
SourceKind.__doc__ = """A registered reader: ``detect(path)`` says whether ``path`` is its kind (it may
raise SourceError when the path is its kind but unusable); ``source(path, **options)``
opens it; ``options`` names the keyword options it takes."""

READERS = [
    SourceKind("store", store.detect, StoreSource, ()),
    SourceKind("cifar", cifar.is_cifar, CifarSource, ("split", "label_kind")),
    SourceKind("numpy", numpy_files.detect, NumpySource, ("split", "images_key", "labels_key")),
    SourceKind("folder", folder.detect, FolderSource, ("mode", "resize", "resize_policy", "on_error", "labels_csv",
                                                    "max_pixels")),
]

# Every option a reader takes, with its default. open_source accepts the
# whole set so a command line can pass all of them; an option the chosen
# reader does not take must stay at its default.
OPTION_DEFAULTS = {
    "split": "train",
    "label_kind": "fine",
    "mode": "RGB",
    "resize": None,
    "resize_policy": "stretch",
    "on_error": "fail",
    "labels_csv": None,
    "images_key": None,
    "labels_key": None,
    "max_pixels": None,
}


def open_source(path, **options):
    """Open the dataset at ``path`` with the reader that fits what is there.

    ``path`` is an imgconv store (PNG folder, LMDB, HDF5), a CIFAR batch
    directory (or its parent, or an official ``.tar.gz``), a
    ``.npy``/``.npz`` file, or a folder of images. Options
    (see each reader): ``split``, ``label_kind`` (CIFAR); ``split``,
    ``images_key``, ``labels_key`` (NumPy); ``mode``, ``resize``,
    ``resize_policy``, ``on_error``, ``labels_csv``, ``max_pixels`` (folders). An option left
    at its default or None is ignored by readers that do not take it.

    Returns a :class:`Source`. Raises TypeError for an unknown option name and
    SourceError when nothing can read the path (saying what is there), when an
    option set away from its default does not apply to the reader chosen, or
    when the reader finds the data unreadable.
    """
    unknown = sorted(set(options) - set(OPTION_DEFAULTS))
    if unknown:
        raise TypeError(
            f"open_source() got unknown option(s) {', '.join(unknown)}; known: {', '.join(OPTION_DEFAULTS)}"
        )
    path = os.fspath(path)
    if not os.path.exists(path):
        raise SourceError(f"{path}: no such file or directory")
    for reader in READERS:
        if reader.detect(path):
            return reader.source(path, **_options_for(reader, path, options))
    raise SourceError(_why_nothing_reads(path))


def _options_for(reader, path, options):
    chosen = {}
    for name, value in options.items():
        if name in reader.options:
            if value is not None:
                chosen[name] = value
        elif value is not None and value != OPTION_DEFAULTS[name]:
            takers = ", ".join(r.name for r in READERS if name in r.options)
            raise SourceError(
                f"{path} is read as {reader.name}, which takes no option {name} "
                f"(set to {value!r}; it applies to: {takers})"
            )
    return chosen


def _listing(names, limit=5):
    shown = ", ".join(names[:limit])
    return shown + (", ..." if len(names) > limit else "")


def _why_nothing_reads(path):
    """The message for a path no reader takes: what is there and why it does not fit."""
    batch_names = {n for layout in cifar.LAYOUTS for n in layout.train + layout.test}
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
    if os.path.getsize(path) == 0:
        return f"file {path} is empty (0 bytes)"
    if os.path.basename(path) in batch_names:
        return (
            f"{path} is a single CIFAR batch; open its directory {os.path.dirname(path) or '.'} "
            "and choose the part with split='train', 'test' or 'all'"
        )
    with open(path, "rb") as f:
        head = f.read(8)
    return (
        f"file {path} is not a CIFAR archive (.tar.gz), a .npy or a .npz file (it starts with {head!r}); "
        "to read images, open the folder that holds them"
    )


__all__ = [
    "OPTION_DEFAULTS",
    "READERS",
    "CifarSource",
    "FolderSource",
    "NumpySource",
    "SourceKind",
    "SkippedFile",
    "SkippedImageWarning",
    "Source",
    "StoreSource",
    "open_source",
]

# The registry's entries were called Reader, as the store readers are: SourceKind now.
__getattr__ = forward(__name__, {"Reader": "imgconv.sources:SourceKind"})
