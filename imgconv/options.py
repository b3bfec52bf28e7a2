"""Keyword options declared once: name, type, default, choices and help.

Each source kind (:data:`imgconv.sources.SOURCE_KINDS`) and each store format
(:data:`imgconv.stores.FORMATS`) lists the keyword options it takes as
:class:`Option` declarations, next to the code that takes them. Everything
else is derived from those: the command line's flags with their types,
choices, defaults and help (:mod:`imgconv.cli`), the defaults
:func:`imgconv.open_source` accepts (``sources.OPTION_DEFAULTS``), the
keyword defaults of the source classes themselves (``split=SPLIT.default``),
and the flags an error message speaks of on the command line where the
library names a parameter (:func:`speak_flags`;
:class:`imgconv.errors.OptionError` carries the names). A new option is one
declaration.

``type`` turns the command line's text into the value (raising ValueError
with a message that says what was expected); ``bool`` declares a switch that
takes no value: it turns the keyword on, or, for a keyword that defaults to
True (``durable``, flag ``--no-sync``), off. ``show`` is the inverse, a value
as the command line writes it.
"""
from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Option:
    """One keyword option: what a source kind or a store format declares, once.

    ``name`` is the keyword (``label_kind``); ``flag`` the command line's
    (by default ``--`` and the name with "-": ``--label-kind``), or None with
    ``cli=False`` for a keyword of the library alone. ``default`` is what
    the keyword defaults to (None: the code decides, and ``help`` says
    how); ``choices`` the values allowed, when they are few.
    """

    name: str
    type: Callable[[str], Any] = str
    default: Any = None
    choices: tuple[Any, ...] | None = None
    help: str = ""
    flag: str | None = None
    metavar: str | None = None
    show: Callable[[Any], str] = field(default=str, repr=False)
    cli: bool = True

    def __post_init__(self) -> None:
        if self.flag is None and self.cli:
            object.__setattr__(self, "flag", "--" + self.name.replace("_", "-"))

    @property
    def dest(self) -> str:
        """The attribute the parsed command line keeps the value in (from the flag: ``png_level``)."""
        return (self.flag or self.name).lstrip("-").replace("-", "_")

    @property
    def switch(self) -> bool:
        """True for an option that takes no value on the command line (``type=bool``)."""
        return self.type is bool

    @property
    def switch_value(self) -> bool:
        """The value a switch's flag gives the keyword: the opposite of its default (True unless that is True)."""
        return self.default is not True


def merge(groups: Iterable[Iterable[Option]]) -> dict[str, Option]:
    """The options of several declarations by name; ValueError when one name is declared two ways.

    Sources share options by sharing one declaration (``split`` of CIFAR and
    NumPy is ``sources.base.SPLIT``), so a name means one thing everywhere.
    """
    merged: dict[str, Option] = {}
    for group in groups:
        for option in group:
            known = merged.setdefault(option.name, option)
            if known != option:
                raise ValueError(f"option {option.name!r} is declared twice, differently: {known} and {option}")
    return merged


def whole_number(minimum: int = 0, maximum: int | None = None) -> Callable[[str], int]:
    """A parser of whole numbers in ``minimum..maximum`` ("1_000" and "1,000" read as 1000)."""

    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", "").replace(",", ""))
        except ValueError:
            raise ValueError(f"not a whole number: {text!r}") from None
        if maximum is not None and not minimum <= value <= maximum:
            raise ValueError(f"must be {minimum}..{maximum}, got {value}")
        if value < minimum:
            raise ValueError(f"must be {'0 or more' if minimum == 0 else f'at least {minimum}'}, got {value}")
        return value

    parse.__name__ = "whole number"
    return parse


_BYTE_UNITS = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "m": 2**20, "mib": 2**20, "g": 2**30, "gib": 2**30,
               "kb": 10**3, "mb": 10**6, "gb": 10**9}


def byte_size(text: str) -> int:
    """A number of bytes, at least 1: "33554432", "32M" or "32MiB" (2**20), "32MB" (10**6); K and G alike."""
    match = re.fullmatch(r"\s*([0-9][0-9_,]*(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    unit = _BYTE_UNITS.get(match.group(2).lower()) if match else None
    if match is None or unit is None:
        raise ValueError(f"not a size in bytes: {text!r} (write it as 33554432, 32M, 32MiB or 32MB)")
    value = int(float(match.group(1).replace("_", "").replace(",", "")) * unit)
    if value < 1:
        raise ValueError(f"must be at least 1 byte, got {text!r}")
    return value


def show_byte_size(value: int) -> str:
    """A number of bytes as :func:`byte_size` reads it back, in the largest binary unit it fills exactly."""
    for suffix, unit in (("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if value % unit == 0:
            return f"{value // unit}{suffix}"
    return str(value)


def seconds(text: str) -> float:
    """A time in seconds, more than 0 ("300", "2.5")."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise ValueError(f"must be more than 0 seconds, got {text}")
    return value


seconds.__name__ = "seconds"


def width_by_height(text: str) -> tuple[int, int]:
    """``"WxH"`` as ``(W, H)``, both at least 1."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"not WIDTHxHEIGHT: {text!r}") from None
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be at least 1, got {text!r}")
    return width, height


def show_width_by_height(value: Any) -> str:
    """``(W, H)`` as ``"WxH"``, the inverse of :func:`width_by_height`."""
    width, height = value
    return f"{width}x{height}"


# How a message of the library writes a value after "name=": a Python literal,
# or a placeholder in capitals ("max_pixels=N").
_VALUE = r"""'[^']*'|"[^"]*"|\([^()]*\)|True|False|None|-?\d+|[A-Z][A-Z_]*\b"""


def _as_flag(option: Option, text: str) -> str:
    """``name=text`` of a message as the command line writes it: ``--flag value``."""
    if option.switch and text in ("True", "False"):
        given = text == str(option.switch_value)
        return str(option.flag) if given else f"no {option.flag}"
    if text in ("False", "None"):
        return f"no {option.flag}"
    if option.switch:
        return str(option.flag)
    if text[0] in "'\"(":
        text = option.show(ast.literal_eval(text))
    return f"{option.flag} {text}"


def speak_flags(message: str, options: Mapping[str, Option], named: Iterable[str] = ()) -> str:
    """``message`` with the library's keyword parameters written as the command line's flags.

    Library messages spell parameters as Python does: ``label_kind='coarse'``
    becomes ``--label-kind coarse``, ``overwrite=True`` becomes
    ``--overwrite``, for every option of ``options`` (by name) that has a
    flag. The bare names in ``named`` (the parameters an
    :class:`~imgconv.errors.OptionError` names) become their flags too:
    ``compression_level applies to ...`` -> ``--hdf5-level applies to ...``.
    """
    flagged = {name: option for name, option in options.items() if option.flag}
    if not flagged:
        return message
    names = "|".join(re.escape(name) for name in sorted(flagged, key=len, reverse=True))
    # Not inside a path or a longer name: "/data/split=train/x.png" stays as it is.
    message = re.sub(rf"(?<![\w./\\-])({names})=({_VALUE})",
                     lambda match: _as_flag(flagged[match.group(1)], match.group(2)), message)
    for name in named:
        if name in flagged:
            message = re.sub(rf"(?<![\w./\\-]){re.escape(name)}(?![\w/\\=-])", str(flagged[name].flag), message)
    return message
