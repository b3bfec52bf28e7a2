"""The exceptions imgconv raises: one root, a few kinds.

Every message names the file or record and what is wrong with it.
"""


class ImgconvError(Exception):
    """Root of every error imgconv raises on purpose."""


class RecordError(ImgconvError, ValueError):
    """A binary record is malformed: truncated, bad magic, unknown version,
    sizes that do not add up, or a checksum that does not match."""


class ExtensionMissingError(ImgconvError, ImportError):
    """The compiled core was required (IMGCONV_REQUIRE_EXT=1) but cannot be imported."""


class SourceError(ImgconvError, ValueError):
    """An input dataset (CIFAR batch, image file, NumPy file, folder) cannot be read as asked."""


class UnsafePickleError(SourceError):
    """A pickle asks for something a genuine dataset file never needs; nothing of it was run."""


class StoreError(ImgconvError):
    """A store cannot be created, written, opened or read: the message names the path and the problem."""


class UnknownFormatError(ImgconvError, ValueError):
    """A path or format name that no registered reader or writer handles."""


class LoaderError(ImgconvError):
    """A training loader cannot go on: a worker process died, or the store cannot be read as batches."""
