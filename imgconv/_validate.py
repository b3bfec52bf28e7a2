"""Argument checks shared by every layer, so that each check is written (and worded) once.

Each function returns the value normalised (a Python ``int``, an int64
array) or raises ``error`` (ValueError unless the caller names another kind,
such as :class:`~imgconv.errors.StoreArgumentError` or
:class:`~imgconv.errors.SourceError`) with a message starting ``where``
(say, a store's path and ": "). Integers are ``int`` or NumPy integers;
``bool`` is refused although Python counts it as an int: ``workers=True`` is
a mistake, not 1.
"""
import operator
from typing import Any, Collection, Optional, Type, TypeVar

import numpy as np

from .errors import OptionError

T = TypeVar("T")

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _error(error: Type[Exception], message: str, name: str) -> Exception:
    """``error(message)``; an :class:`~imgconv.errors.OptionError` also learns which parameter is at fault."""
    if issubclass(error, OptionError):
        return error(message, (name,))
    return error(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def integer(name: str, value: Any, *, minimum: Optional[int] = None, maximum: Optional[int] = None,
            error: Type[Exception] = ValueError, where: str = "") -> int:
    """``value`` as an int within ``minimum .. maximum`` (either end may be open)."""
    if not _is_int(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise _error(error, f"{where}{name} must be {_integer_range(minimum, maximum)}, got {value!r}", name)
    return int(value)


def _integer_range(minimum: Optional[int], maximum: Optional[int]) -> str:
    if minimum == 1 and maximum is None:
        return "a positive integer"
    if minimum == 0 and maximum is None:
        return "a non-negative integer"
    if maximum is None:
        return f"an integer >= {minimum}"
    if minimum is None:
        return f"an integer <= {maximum}"
    return f"an integer in {minimum}..{maximum}"


def positive_int(name: str, value: Any, **how: Any) -> int:
    """``value`` as an int >= 1 (a batch size, a count of workers per chunk, ...)."""
    return integer(name, value, minimum=1, **how)


def non_negative_int(name: str, value: Any, **how: Any) -> int:
    """``value`` as an int >= 0."""
    return integer(name, value, minimum=0, **how)


def optional_non_negative_int(name: str, value: Any, **how: Any) -> Optional[int]:
    """None, or ``value`` as an int >= 0 (a limit)."""
    return None if value is None else non_negative_int(name, value, **how)


def positive_number(name: str, value: Any, *, error: Type[Exception] = ValueError, where: str = "") -> float:
    """``value`` (an int or a float, not a bool) as a finite float > 0 (a time in seconds)."""
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if not number or not 0 < float(value) < float("inf"):
        raise _error(error, f"{where}{name} must be a positive number, got {value!r}", name)
    return float(value)


def choice(name: str, value: T, choices: Collection[T], *, error: Type[Exception] = ValueError,
           where: str = "") -> T:
    """``value`` when it is one of ``choices``."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise _error(error, f"{where}{name} must be one of {allowed}, got {value!r}", name)
    return value


def int64_labels(labels: Any, count: Optional[int] = None, *, error: Type[Exception] = ValueError,
                 where: str = "") -> np.ndarray:
    """``labels`` as a C-contiguous (N,) int64 array.

    ``labels`` is a sequence or array of integers (or booleans), each within
    the int64 range; with ``count`` it must hold exactly that many. A float,
    a string or a 2-D array is refused rather than converted.
    """
    array = np.asarray(labels)
    if count is not None and array.shape != (count,):
        raise error(f"{where}labels of shape {array.shape} for {count} images")
    if array.ndim != 1:
        raise error(f"{where}labels must be one-dimensional, got shape {array.shape}")
    if array.size and array.dtype.kind not in "iub":
        raise error(f"{where}labels must be integers, got dtype {array.dtype}")
    if array.dtype.kind == "u" and array.size and int(array.max()) > INT64_MAX:
        raise error(f"{where}labels must fit in a signed 64-bit integer")
    return np.ascontiguousarray(array, np.int64)


def int64_indices(indices: Any, length: Optional[int], *, negative: bool, flatten: bool = False,
                  error: Type[Exception] = IndexError, type_error: Type[Exception] = TypeError,
                  where: str = "", out_of_range: str = "is out of range") -> np.ndarray:
    """``indices`` as a C-contiguous 1-D int64 array, each within ``0 .. length - 1``.

    With ``negative`` an index below 0 counts from the end (as in a list);
    ``flatten`` accepts any shape and flattens it, else the indices must be
    1-D. A non-integer array raises ``type_error``, an index out of range
    ``error``: "index 12 {out_of_range}", naming the first such index as
    given. ``length`` None (not known) checks only that indices are >= 0.
    """
    given = np.asarray(indices)
    if (given.size and given.dtype.kind not in "iu") or (not flatten and given.ndim != 1):
        form = "integers" if flatten else "a 1-D sequence of integers"
        raise type_error(f"{where}indices must be {form}, got {given.dtype} of shape {given.shape}")
    flat = given.reshape(-1)
    if flat.dtype.kind == "u" and flat.size and int(flat.max()) > INT64_MAX:
        first = flat[int(np.argmax(flat > INT64_MAX))]
        raise error(f"{where}index {first} {out_of_range}")
    idx = flat.astype(np.int64, copy=False)
    if not idx.size:
        return np.ascontiguousarray(idx)
    if negative and length is not None:
        idx = np.where(idx < 0, idx + length, idx)
    bad = (idx < 0) if length is None else (idx < 0) | (idx >= length)
    if bad.any():
        raise error(f"{where}index {flat[int(np.argmax(bad))]} {out_of_range}")
    return np.ascontiguousarray(idx)


def index(value: Any, length: int, *, error: Type[Exception] = IndexError, where: str = "",
          out_of_range: str = "is out of range") -> int:
    """One index as an int within ``0 .. length - 1``, negative ones counting from the end.

    TypeError for a value that is not an integer (``operator.index`` decides).
    """
    try:
        i = operator.index(value)
    except TypeError:
        raise TypeError(f"{where}indices must be integers, got {type(value).__name__}") from None
    if i < 0:
        i += length
    if not 0 <= i < length:
        raise error(f"{where}index {value} {out_of_range}")
    return i
