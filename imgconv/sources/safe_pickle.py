"""Load dataset pickles without letting them run code.

``pickle.load`` calls whatever callable a file names, so a file posing as a
CIFAR batch could run any command. :func:`load_pickle` uses an unpickler that
resolves only the globals a genuine CIFAR batch needs:

- NumPy's array reconstruction (``_reconstruct`` and ``ndarray`` for protocols
  0-4, ``_frombuffer`` for protocol 5), ``dtype`` and ``scalar``, under their
  NumPy 1 names (``numpy.core.*``, as Python 2 wrote them) and NumPy 2 names
  (``numpy._core.*``), each mapped to the object of the NumPy installed here;
- ``_codecs.encode`` with the Latin-1 codec alone, which is how Python 3 writes
  ``bytes`` into a protocol-2 pickle.

Dicts, lists, tuples, strings, bytes and numbers need no global. Any other
global raises :class:`~imgconv.errors.UnsafePickleError` at the moment the
unpickler reads its name, so nothing the file asks for runs. Object arrays are
refused too: a batch holds pixels, never Python objects.

Python-2 pickles store ``str`` as bytes; they are loaded with
``encoding="bytes"``, so keys and names come back as ``bytes`` (the array data
too, which NumPy rebuilds byte for byte).
"""
import codecs
import io
import pickle

import numpy as np

from ..errors import SourceError, UnsafePickleError

_LATIN1 = codecs.lookup("latin-1").name


def _reconstruct_function():
    # The function ndarray.__reduce__ names, whatever module NumPy keeps it in.
    return np.ndarray.__reduce__(np.zeros(1, np.uint8))[0]


def _frombuffer_function():
    return np.zeros(1, np.uint8).__reduce_ex__(5)[0]


def _scalar_function():
    return np.uint8(0).__reduce__()[0]


def _refuse_objects(dtype, where):
    if dtype.hasobject:
        raise UnsafePickleError(
            f"{where}: the pickle holds an object array ({dtype}); a dataset batch holds pixels only"
        )


class _ArrayClass:
    """What the name ``numpy.ndarray`` resolves to: a token ``_reconstruct`` accepts.

    The real class would let a pickle call ``ndarray(shape)`` itself and get
    uninitialised memory, or any size of it.
    """


class _Allowed:
    """Checked stand-ins for the NumPy callables a batch may name."""

    def __init__(self, where):
        self.where = where
        self.reconstruct = _reconstruct_function()
        self.frombuffer = _frombuffer_function()
        self.scalar = _scalar_function()

    def dtype(self, *args):
        dtype = np.dtype(*args)
        _refuse_objects(dtype, self.where)
        return dtype

    def checked_reconstruct(self, subtype, shape, typecode):
        if subtype is not _ArrayClass:
            raise UnsafePickleError(f"{self.where}: the pickle rebuilds a {subtype!r}, not a plain NumPy array")
        return self.reconstruct(np.ndarray, shape, typecode)

    def checked_frombuffer(self, buffer, dtype, shape, order):
        _refuse_objects(np.dtype(dtype), self.where)
        return self.frombuffer(buffer, dtype, shape, order)

    def checked_scalar(self, dtype, *args):
        _refuse_objects(np.dtype(dtype), self.where)
        return self.scalar(dtype, *args)

    def latin1_encode(self, text, encoding="utf-8", errors="strict"):
        if not isinstance(text, str) or codecs.lookup(encoding).name != _LATIN1 or errors != "strict":
            raise UnsafePickleError(
                f"{self.where}: the pickle calls _codecs.encode with {encoding!r}; "
                "only the Latin-1 encoding Python uses for bytes is allowed"
            )
        return text.encode("latin-1")

    def table(self):
        """(module, name) -> callable, for every global a batch may name."""
        numpy_names = {
            "_reconstruct": self.checked_reconstruct,
            "scalar": self.checked_scalar,
        }
        table = {("numpy", "ndarray"): _ArrayClass, ("numpy", "dtype"): self.dtype}
        for package in ("numpy.core", "numpy._core"):
            for name, value in numpy_names.items():
                table[(f"{package}.multiarray", name)] = value
            table[(f"{package}.numeric", "_frombuffer")] = self.checked_frombuffer
        table[("_codecs", "encode")] = self.latin1_encode
        return table


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, where):
        super().__init__(file, encoding="bytes")
        self._where = where
        self._globals = _Allowed(where).table()

    def find_class(self, module, name):
        # pickle calls this while reading a GLOBAL/STACK_GLOBAL/INST opcode,
        # before any REDUCE could call the result: refusing here runs nothing.
        try:
            return self._globals[(module, name)]
        except (KeyError, TypeError):
            raise UnsafePickleError(
                f"{self._where}: the pickle asks for {module}.{name}, which a dataset batch never needs; "
                "refused before anything ran (allowed: NumPy arrays, dtypes, dicts, lists, strings, numbers)"
            ) from None

    def persistent_load(self, pid):
        raise UnsafePickleError(
            f"{self._where}: the pickle asks for a persistent object, which a dataset batch never has"
        )


def load_pickle(data, where):
    """Unpickle ``data`` (bytes or a binary file object) allowing only plain data and NumPy arrays.

    ``where`` names the file in error messages. Raises UnsafePickleError for a
    global outside the allowed set (before anything runs) and SourceError for
    a truncated or corrupt pickle.
    """
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        return _RestrictedUnpickler(stream, where).load()
    except SourceError:
        raise
    except (EOFError, pickle.UnpicklingError) as exc:
        if isinstance(exc, EOFError) or "truncated" in str(exc):
            raise SourceError(f"{where}: truncated pickle (the data ends before the pickle does)") from None
        raise SourceError(f"{where}: not a readable pickle ({exc})") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError,
            OverflowError, MemoryError, UnicodeDecodeError, RecursionError) as exc:
        # Corrupt opcodes, or arguments that NumPy's setstate rejects, land here.
        raise SourceError(f"{where}: not a readable pickle ({type(exc).__name__}: {exc})") from None
