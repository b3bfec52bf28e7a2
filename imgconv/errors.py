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


class OptionError(ImgconvError, ValueError):
    """A keyword option with a bad value, or options that do not go together: the caller's mistake.

    ``options`` names the keyword parameters at fault, so that a command line
    can speak of its flags instead (see :func:`imgconv.options.speak_flags`):
    the message uses those names for the parameters alone, never as words.
    """

    def __init__(self, message, options=()):
        super().__init__(message)
        self.options = tuple(options)

    def __reduce__(self):
        return type(self), (str(self), self.options)


class SourceOptionError(OptionError, SourceError):
    """A source option with a bad value, or one the source does not take (a SourceError, as before)."""


class StoreOptionError(OptionError, StoreError):
    """A store option with a bad value, or options that do not go together (a StoreError, as before)."""
