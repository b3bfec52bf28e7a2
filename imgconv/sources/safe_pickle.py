"""Load dataset pickles without letting them run code or corrupt memory.

``pickle.load`` calls whatever callable a file names, so a file posing as a
CIFAR batch could run any command. :func:`load_pickle` uses an unpickler that
resolves only the globals a genuine CIFAR batch needs, each to a checking
stand-in made afresh for every load:

- NumPy's array reconstruction (``_reconstruct`` and ``ndarray`` for protocols
  0-4, ``_frombuffer`` for protocol 5), ``dtype`` and ``scalar``, under their
  NumPy 1 names (``numpy.core.*``, as Python 2 wrote them) and NumPy 2 names
  (``numpy._core.*``);
- ``_codecs.encode`` with the Latin-1 codec alone, which is how Python 3 writes
  ``bytes`` into a protocol-2 pickle.

Refusing unknown globals is not enough: NumPy's own functions, fed crafted
arguments, hand out uninitialised memory (``_reconstruct`` with a large
shape), and the ``BUILD`` opcode calls ``__setstate__`` on whatever object it
finds, which lets a pickle give a dtype a false item size (reads past the end
of an array) or set it on an existing array. So, on top of the global list:

- dtypes are plain numbers only: ``b1``, ``i1``-``i8``, ``u1``-``u8``,
  ``f4``, ``f8``, either byte order; never objects, records, raw bytes,
  sub-arrays or metadata;
- ``_reconstruct`` is accepted only as NumPy calls it (an empty ``(0,)``
  array of type code ``b``);
- ``BUILD`` is accepted only on an array ``_reconstruct`` just made, once,
  with a state whose data is exactly as long as its shape and dtype say, and
  on a new dtype, once, with the standard state of a plain number type;
  every other ``BUILD`` is refused;
- dict keys are plain scalars (str, bytes, numbers), sets are refused, and
  protocol-5 out-of-band buffers are refused (a dataset file is one stream).
  In-band ``bytearray`` data, which protocol 5 writes for NumPy arrays, is
  plain data and loads.

Anything else raises :class:`~imgconv.errors.UnsafePickleError` at the moment
the unpickler reads it, so nothing the file asks for runs. Python-2 pickles
store ``str`` as bytes; they are loaded with ``encoding="bytes"``, so keys and
names come back as ``bytes`` (the array data too, which NumPy rebuilds byte
for byte).

The unpickler is the pure-Python one of the standard library (``BUILD`` can
only be intercepted there); a CIFAR batch has some tens of thousands of
opcodes, a few tens of milliseconds of work.
"""
import _compat_pickle
import io
import math
import pickle
import struct
import sys
from typing import Any

import numpy as np

from ..errors import SourceError, UnsafePickleError

# What NumPy writes as the first argument of dtype() for the types allowed.
_DTYPE_NAMES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f4", "f8"})
_LATIN1_NAMES = frozenset({"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "iso_8859_1", "l1"})
_KEY_TYPES = (str, bytes, int, float, bool, type(None))
_MAX_DIMS = 32
_SHOWN = 60  # characters of a name from the file quoted in a message


def _reconstruct_function():
    # The function ndarray.__reduce__ names, whatever module NumPy keeps it in.
    return np.ndarray.__reduce__(np.zeros(1, np.uint8))[0]


def _frombuffer_function():
    return np.zeros(1, np.uint8).__reduce_ex__(5)[0]


def _scalar_function():
    return np.uint8(0).__reduce__()[0]


_RECONSTRUCT = _reconstruct_function()
_FROMBUFFER = _frombuffer_function()
_SCALAR = _scalar_function()


def _is_int(value, expected=None):
    """True for a plain int (not bool), equal to ``expected`` when given."""
    return type(value) is int and (expected is None or value == expected)


def _is_flag(value):
    # NumPy writes booleans; Python 2 protocol 0/1 pickles may hold 0/1 ints.
    return type(value) is bool or (type(value) is int and value in (0, 1))


def _ascii_str_or_none(value):
    """``value`` as str: a str as it is, bytes only when they are ASCII; None for anything else.

    Strict on purpose: it reads names and codes (module names, dtype codes,
    "C"/"F"), which a genuine file spells in ASCII; never repr() data from the file.
    """
    if type(value) is bytes:
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return None
    return value if type(value) is str else None


def _clip(text):
    return text[:_SHOWN] + ("..." if len(text) > _SHOWN else "")


def _shown(value):
    """A short quote of ``value`` from the file for a message: its text, or only its type."""
    text = _ascii_str_or_none(value)
    return f"a {type(value).__name__}" if text is None else repr(_clip(text))


def _is_plain_number_dtype(dtype):
    return (
        isinstance(dtype, np.dtype)
        and dtype.kind in "biuf"
        and f"{dtype.kind}{dtype.itemsize}" in _DTYPE_NAMES
        and dtype.fields is None
        and dtype.subdtype is None
        and not dtype.hasobject
        and dtype.metadata is None
    )


def _is_shape(shape):
    return type(shape) is tuple and len(shape) <= _MAX_DIMS and all(_is_int(d) and 0 <= d < 2**63 for d in shape)


class _ArrayToken:
    """What the name ``numpy.ndarray`` resolves to: a marker only ``_reconstruct`` accepts.

    The real class would let a pickle call ``ndarray(shape)`` and get
    uninitialised memory, or set attributes on it with ``BUILD``. A new token
    is made for each load; it is not callable and has no state to set.
    """

    __slots__ = ()


class _Checks:
    """The checked stand-ins of one load, and what they made that may still receive a ``BUILD``."""

    def __init__(self, where):
        self.where = where
        self.array_token = _ArrayToken()
        # id -> object, for objects allowed one BUILD; holding the object keeps its id unique.
        self.unbuilt_arrays = {}
        self.unbuilt_dtypes = {}

    def refuse(self, what):
        raise UnsafePickleError(f"{self.where}: {what}; a dataset batch never needs that, refused before it ran")

    # --- the globals --------------------------------------------------------

    def dtype(self, name, align=False, copy=True):
        text = _ascii_str_or_none(name)
        if text not in _DTYPE_NAMES:
            self.refuse(
                f"the pickle asks for the NumPy dtype {_shown(name)}; only plain numbers are allowed "
                "(bool, integers, float32/64), never objects, records or raw bytes"
            )
        if not _is_flag(align) or align or not _is_flag(copy):
            self.refuse("the pickle asks for an aligned dtype or passes odd dtype arguments")
        # copy=True: a fresh dtype, never NumPy's shared built-in one, so a BUILD cannot touch that.
        dtype = np.dtype(text, copy=True)
        self.unbuilt_dtypes[id(dtype)] = dtype
        return dtype

    def reconstruct(self, subtype, shape, typecode):
        if subtype is not self.array_token:
            self.refuse(f"the pickle rebuilds a {type(subtype).__name__}, not a plain NumPy array")
        # NumPy always writes _reconstruct(ndarray, (0,), b'b') and sets the real contents with BUILD.
        one_empty_axis = type(shape) is tuple and len(shape) == 1 and _is_int(shape[0], 0)
        if not one_empty_axis or _ascii_str_or_none(typecode) != "b":
            self.refuse("the pickle calls numpy _reconstruct with a shape or type code NumPy never writes")
        array = _RECONSTRUCT(np.ndarray, (0,), b"b")
        self.unbuilt_arrays[id(array)] = array
        return array

    def frombuffer(self, buffer, dtype, shape, order):
        dtype = self.settled_dtype(dtype)
        order_text = _ascii_str_or_none(order)
        if type(buffer) not in (bytes, bytearray) or not _is_shape(shape) or order_text not in ("C", "F"):
            self.refuse("the pickle calls numpy _frombuffer with arguments NumPy never writes")
        if len(buffer) != math.prod(shape) * dtype.itemsize:
            self.refuse(
                f"the pickle gives an array of shape {shape} {dtype} {len(buffer)} bytes of data "
                f"instead of {math.prod(shape) * dtype.itemsize}"
            )
        return _FROMBUFFER(buffer, dtype, shape, _ascii_str_or_none(order))

    def scalar(self, dtype, data):
        dtype = self.settled_dtype(dtype)
        if type(data) is not bytes or len(data) != dtype.itemsize:
            self.refuse(f"the pickle makes a NumPy {dtype} scalar from something other than its {dtype.itemsize} bytes")
        return _SCALAR(dtype, data)

    def latin1_encode(self, text, encoding="utf-8", errors="strict"):
        # A fixed list of spellings: looking the name up would import codec modules the file names.
        if type(encoding) is not str or encoding.lower() not in _LATIN1_NAMES:
            self.refuse(
                f"the pickle calls _codecs.encode with {_shown(encoding)}; "
                "only the Latin-1 encoding Python uses for bytes is allowed"
            )
        if type(text) is not str or _ascii_str_or_none(errors) != "strict":
            self.refuse("the pickle calls _codecs.encode with arguments Python never writes")
        return text.encode("latin-1")

    def table(self):
        """(module, name) -> object, for every global a batch may name."""
        numpy_names = {"_reconstruct": self.reconstruct, "scalar": self.scalar}
        table = {("numpy", "ndarray"): self.array_token, ("numpy", "dtype"): self.dtype}
        for package in ("numpy.core", "numpy._core"):
            for name, value in numpy_names.items():
                table[(f"{package}.multiarray", name)] = value
            table[(f"{package}.numeric", "_frombuffer")] = self.frombuffer
        table[("_codecs", "encode")] = self.latin1_encode
        return table

    # --- BUILD --------------------------------------------------------------

    def settled_dtype(self, dtype):
        """``dtype`` if it is an allowed dtype of this load; it may not be BUILT from now on."""
        if not _is_plain_number_dtype(dtype):
            self.refuse(f"the pickle uses a {type(dtype).__name__} where NumPy writes a plain number dtype")
        # Used by an array or scalar: changing it afterwards would change them.
        self.unbuilt_dtypes.pop(id(dtype), None)
        return dtype

    def build(self, target, state):
        """Apply a BUILD opcode's ``state`` to ``target``, or refuse it."""
        key = id(target)
        if self.unbuilt_arrays.get(key) is target:
            del self.unbuilt_arrays[key]
            self.build_array(target, state)
        elif self.unbuilt_dtypes.get(key) is target:
            del self.unbuilt_dtypes[key]
            self.build_dtype(target, state)
        else:
            self.refuse(
                f"the pickle sets the state of a {type(target).__name__} (BUILD); only a NumPy array or dtype "
                "the pickle has just made gets its state, once"
            )

    def build_dtype(self, dtype, state):
        # (version 3, byte order, subarray, names, fields, item size, alignment, flags): the state
        # NumPy writes for a plain number type. Anything else could change its size or flags.
        ok = (
            type(state) is tuple
            and len(state) == 8
            and _is_int(state[0], 3)
            and all(value is None for value in state[2:5])
            and _is_int(state[5], -1)
            and _is_int(state[6], -1)
            and _is_int(state[7], 0)
        )
        order = _ascii_str_or_none(state[1]) if ok else None
        if order not in (("|",) if dtype.itemsize == 1 else ("<", ">")):
            self.refuse(f"the pickle sets a state on the dtype {dtype} other than the one NumPy writes for it")
        dtype.__setstate__((3, order, None, None, None, -1, -1, 0))
        if not _is_plain_number_dtype(dtype):  # cannot happen with the state above; cheap to be sure
            self.refuse(f"the pickle turns a dtype into {dtype}")

    def build_array(self, array, state):
        # (version 1, shape, dtype, Fortran order, data bytes): what ndarray.__reduce__ writes.
        if not (type(state) is tuple and len(state) == 5 and _is_int(state[0], 1)):
            self.refuse("the pickle sets a state on an array other than the one NumPy writes")
        _, shape, dtype, fortran, data = state
        dtype = self.settled_dtype(dtype)
        if not _is_shape(shape) or not _is_flag(fortran) or type(data) is not bytes:
            self.refuse("the pickle sets a state on an array other than the one NumPy writes")
        needed = math.prod(shape) * dtype.itemsize
        if len(data) != needed:
            self.refuse(
                f"the pickle gives an array of shape {shape} {dtype} {len(data)} bytes of data instead of {needed}"
            )
        array.__setstate__((1, shape, dtype, bool(fortran), data))


(_SHORT_BINSTRING, _SHORT_BINUNICODE, _BININT1, _BINPUT, _LONG_BINPUT, _MEMOIZE, _FRAME, _STOP) = (
    op[0] for op in (pickle.SHORT_BINSTRING, pickle.SHORT_BINUNICODE, pickle.BININT1, pickle.BINPUT,
                     pickle.LONG_BINPUT, pickle.MEMOIZE, pickle.FRAME, pickle.STOP)
)


def _refuse_opcode(what):
    def load(self):
        self._checks.refuse(f"the pickle holds {what}")

    return load


def _unknown_opcode(code):
    def load(self):
        raise pickle.UnpicklingError(f"unknown opcode 0x{code:02x}")

    return load


def _python3_name(module, name, protocol):
    """' (subprocess.call in Python 3)' when a Python 2 name maps to another, else ''.

    Python 3 pickles of protocol 0-2 write some globals under their Python 2
    names (``subprocess.call`` as ``commands.call``); the message names both.
    """
    if protocol >= 3 or not isinstance(module, str) or not isinstance(name, str):
        return ""
    new_module, new_name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    new_module = _compat_pickle.IMPORT_MAPPING.get(new_module, new_module)
    if (new_module, new_name) == (module, name):
        return ""
    return f" ({_clip(new_module)}.{_clip(new_name)} in Python 3)"


class _RestrictedUnpickler(pickle._Unpickler):
    """The standard library's pure-Python unpickler with the checks of the module docstring.

    Its opcode table is per instance, so ``BUILD``, the set opcodes and the
    out-of-band buffer opcodes can be replaced by checked versions.
    """

    def __init__(self, file, where):
        super().__init__(file, encoding="bytes")
        self._where = where
        self._checks = _Checks(where)
        self._globals = self._checks.table()
        dispatch = {code: _unknown_opcode(code) for code in range(256)}
        dispatch.update(pickle._Unpickler.dispatch)
        dispatch[pickle.BYTEARRAY8[0]] = _RestrictedUnpickler._load_bytearray8
        dispatch[pickle.BUILD[0]] = _RestrictedUnpickler._load_build
        dispatch[pickle.SETITEM[0]] = _RestrictedUnpickler._load_setitem
        dispatch[pickle.SETITEMS[0]] = _RestrictedUnpickler._load_setitems
        for opcode, what in (
            (pickle.EMPTY_SET, "a set"),
            (pickle.FROZENSET, "a frozenset"),
            (pickle.ADDITEMS, "a set"),
            (pickle.NEXT_BUFFER, "an out-of-band buffer (protocol 5)"),
            (pickle.READONLY_BUFFER, "an out-of-band buffer (protocol 5)"),
        ):
            dispatch[opcode[0]] = _refuse_opcode(what)
        self.dispatch = dispatch  # type: ignore[misc]  # per instance, on purpose (the class docstring)

    def _load_bytearray8(self):
        # The standard version allocates (and zero-fills) the announced size before reading:
        # a few bytes of file could claim gigabytes. Reading first bounds it by the file.
        (size,) = struct.unpack("<Q", self.read(8))
        if size > sys.maxsize:
            raise pickle.UnpicklingError(f"BYTEARRAY8 of {size} bytes, more than this system can hold")
        data = self.read(size)
        if len(data) != size:
            raise pickle.UnpicklingError("pickle data was truncated")
        self.append(bytearray(data))

    def _load_build(self):
        state = self.stack.pop()
        self._checks.build(self.stack[-1], state)

    def _set_items(self, target, items):
        if type(target) is not dict:
            self._checks.refuse(f"the pickle sets items on a {type(target).__name__}")
        for k in range(0, len(items) - 1, 2):
            # Hashing a key is the only work done on it: a tuple key nested through the memo
            # could take forever to hash, so keys are scalars, as in every dataset dict.
            if type(items[k]) not in _KEY_TYPES:
                self._checks.refuse(f"the pickle uses a {type(items[k]).__name__} as a dict key")
            target[items[k]] = items[k + 1]

    def _load_setitem(self):
        value = self.stack.pop()
        key = self.stack.pop()
        self._set_items(self.stack[-1], [key, value])

    def _load_setitems(self):
        items = self.pop_mark()  # type: ignore[attr-defined]  # the pure-Python unpickler's, untyped
        self._set_items(self.stack[-1], items)

    def load_from(self, data):
        """Unpickle ``data`` (bytes held in memory); the opcodes a dataset has by the ten thousand inline.

        The same opcodes with the same meaning as the standard ``load``: the
        few that a CIFAR batch repeats for every image (its file names and
        labels: short strings, small ints, memo puts) are decoded here straight
        from ``data``; every other opcode goes to the checked opcode table,
        reading from a stream placed where it starts. Frames (protocol 4 and
        up) only say how the data was buffered when written, so with all of
        it in memory they are stepped over. About ten times faster than
        ``load`` on a CIFAR batch, which spends nearly all its time on those
        ten thousand names. Bytes after the pickle's end are refused
        (SourceError).
        """
        stream = io.BytesIO(data)
        self.read, self.readline, self.readinto = stream.read, stream.readline, stream.readinto
        self.metastack = []
        self.stack: list[Any] = []
        self.append = self.stack.append
        self.proto = 0
        memo, dispatch, end, pos = self.memo, self.dispatch, len(data), 0  # type: ignore[attr-defined]
        while True:
            if pos >= end:
                raise EOFError
            op = data[pos]
            if op == _SHORT_BINSTRING or op == _SHORT_BINUNICODE:
                stop = pos + 2 + (data[pos + 1] if pos + 1 < end else 0)
                if stop > end:
                    raise pickle.UnpicklingError("pickle data was truncated")
                value = data[pos + 2 : stop]
                self.stack.append(self._decode_string(value) if op == _SHORT_BINSTRING else  # type: ignore[attr-defined]
                                  str(value, "utf-8", "surrogatepass"))
                pos = stop
            elif op == _BININT1 and pos + 1 < end:
                self.stack.append(data[pos + 1])
                pos += 2
            elif op == _BINPUT and pos + 1 < end:
                memo[data[pos + 1]] = self.stack[-1]
                pos += 2
            elif op == _LONG_BINPUT and pos + 4 < end:
                memo[int.from_bytes(data[pos + 1 : pos + 5], "little")] = self.stack[-1]
                pos += 5
            elif op == _MEMOIZE:
                memo[len(memo)] = self.stack[-1]
                pos += 1
            elif op == _FRAME:
                pos += 9
            elif op == _STOP:
                if pos + 1 != end:
                    # A dataset file is one pickle; what follows it is damage, or data hidden from the loader.
                    raise SourceError(
                        f"{self._where}: {end - pos - 1:,} bytes follow the end of the pickle; "
                        "a dataset file holds one pickle and nothing after it"
                    )
                return self.stack.pop()
            else:
                stream.seek(pos + 1)
                dispatch[op](self)  # type: ignore[arg-type]  # this class's table, taking this class
                pos = stream.tell()

    def find_class(self, module, name):
        # Called while reading a GLOBAL/STACK_GLOBAL/INST opcode, before any REDUCE
        # could call the result: refusing here runs nothing.
        try:
            return self._globals[(module, name)]
        except (KeyError, TypeError):
            raise UnsafePickleError(
                f"{self._where}: the pickle asks for {_clip(str(module))}.{_clip(str(name))}"
                f"{_python3_name(module, name, self.proto)}, which a dataset "
                "batch never needs; refused before anything ran (allowed: NumPy arrays, dtypes, dicts, lists, "
                "strings, numbers)"
            ) from None

    def persistent_load(self, pid):
        raise UnsafePickleError(
            f"{self._where}: the pickle asks for a persistent object, which a dataset batch never has"
        )


def load_pickle(data, where):
    """Unpickle ``data`` (bytes or a binary file object) allowing only plain data and NumPy arrays.

    ``where`` names the file in error messages. Raises UnsafePickleError for a
    global, dtype, state or opcode outside the allowed set (see the module
    docstring; before anything runs) and SourceError for a truncated or
    corrupt pickle.
    """
    data = bytes(data) if isinstance(data, (bytearray, memoryview)) else data
    try:
        if not isinstance(data, bytes):
            data = data.read()  # a dataset pickle is read whole anyway: its array is most of it
        return _RestrictedUnpickler(io.BytesIO(b""), where).load_from(data)
    except SourceError:
        raise
    except (EOFError, pickle.UnpicklingError) as exc:
        if isinstance(exc, EOFError) or "truncated" in str(exc):
            raise SourceError(f"{where}: truncated pickle (the data ends before the pickle does)") from None
        raise SourceError(f"{where}: not a readable pickle ({exc})") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, struct.error,
            OverflowError, MemoryError, UnicodeDecodeError, RecursionError) as exc:
        # Corrupt opcodes, or arguments that NumPy's setstate rejects, land here.
        raise SourceError(f"{where}: not a readable pickle ({type(exc).__name__}: {exc})") from None

