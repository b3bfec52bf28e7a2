"""The metadata every store writes last (format, version, count, shape, label names, source)
and the CRC32C that covers it: label names, shape and count are data too, and a flipped byte
in them must not go unnoticed.

Each format keeps the same dict in its own way (a JSON manifest, an LMDB value,
HDF5 attributes) and checks it on open with :func:`check_metadata`.
"""
import json
from typing import Any, Dict, Optional, Sequence, Set

from .. import kernels
from .._version import __version__
from ..errors import StoreError
from .batch import VARIABLE, StoreShape

Metadata = Dict[str, Any]

# The field holding the CRC32C of the rest of the metadata.
METADATA_CHECKSUM = "metadata_crc32c"


def make_metadata(format_name: str, format_version: int, count: int, shape: StoreShape,
                  label_names: Optional[Sequence[str]], source: Optional[str], **extra: Any) -> Metadata:
    """The metadata every store writes with its data, as a JSON-ready dict with its checksum."""
    meta = {
        "format": format_name,
        "format_version": int(format_version),
        "imgconv_version": __version__,
        "count": int(count),
        "shape": shape if shape == VARIABLE else [int(v) for v in shape],
        "dtype": "uint8",
        "label_names": None if label_names is None else [str(n) for n in label_names],
        "source": None if source is None else str(source),
    }
    meta.update(extra)
    meta[METADATA_CHECKSUM] = metadata_checksum(meta)
    return meta


def metadata_checksum(meta: Metadata) -> int:
    """CRC32C of ``meta`` without its checksum field, as compact JSON with sorted keys.

    Computed on what every format can say, so metadata read back from JSON
    or from HDF5 attributes gives the same number: tuples count as lists and
    a field set to None as one left out (HDF5 has no None attribute).
    """
    body = {key: list(value) if isinstance(value, tuple) else value
            for key, value in meta.items() if key != METADATA_CHECKSUM and value is not None}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return int(kernels.crc32c(text.encode("ascii")))


def dump_metadata(meta: Metadata) -> bytes:
    """Metadata as UTF-8 JSON bytes (sorted keys, so equal metadata gives equal bytes)."""
    return json.dumps(meta, sort_keys=True, indent=1).encode("utf-8")


def load_metadata(data: bytes, path: str, format_name: str, known_version: int) -> Metadata:
    """Parse and check metadata bytes written by :func:`dump_metadata`.

    Raises StoreError naming ``path`` when the JSON is malformed, belongs to
    another format, has a newer format version, or lacks a field.
    """
    text = bytes(data)
    try:
        meta = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"{path}: the store metadata is not valid JSON ({exc})") from None
    # A text whose checksum matched once matches again: a store opened over
    # and over (a Dataset opening it per item) is not hashed every time.
    known = text in _INTACT_TEXTS
    meta = check_metadata(meta, path, format_name, known_version, checksum_known=known)
    if not known:
        if len(_INTACT_TEXTS) >= _MAX_REMEMBERED:
            _INTACT_TEXTS.clear()
        _INTACT_TEXTS.add(text)
    return meta


# Metadata texts (as stored) whose checksum was found intact in this process.
_INTACT_TEXTS: Set[bytes] = set()
_MAX_REMEMBERED = 1024


def check_metadata(meta: Any, path: str, format_name: str, known_version: int, *,
                   checksum_known: bool = False) -> Metadata:
    """Check a metadata dict (see :func:`load_metadata`); returns it with ``shape`` as a tuple.

    ``checksum_known``: the caller has already found this very metadata's
    checksum intact, so it is not computed again.
    """
    if not isinstance(meta, dict) or meta.get("format") != format_name:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise StoreError(f"{path}: metadata says format {found!r}, expected {format_name!r}")
    if not checksum_known:
        _check_checksum(meta, path)
    missing = [k for k in ("format_version", "count", "shape", "dtype") if k not in meta]
    if missing:
        raise StoreError(f"{path}: the store metadata lacks {', '.join(missing)}")
    if not isinstance(meta["format_version"], int) or meta["format_version"] > known_version:
        raise StoreError(
            f"{path}: {format_name} store format version {meta['format_version']!r}; "
            f"this imgconv ({__version__}) reads versions up to {known_version}"
        )
    if meta["dtype"] != "uint8":
        raise StoreError(f"{path}: images of dtype {meta['dtype']!r} are not supported")
    if not isinstance(meta["count"], int) or meta["count"] < 0:
        raise StoreError(f"{path}: invalid image count {meta['count']!r} in the metadata")
    shape = meta["shape"]
    if shape != VARIABLE:
        if not (isinstance(shape, (list, tuple)) and len(shape) == 3
                and all(isinstance(v, int) and v > 0 for v in shape)):
            raise StoreError(f"{path}: invalid image shape {shape!r} in the metadata")
        meta["shape"] = tuple(shape)
    meta.setdefault("label_names", None)
    meta.setdefault("source", None)
    return meta


def _check_checksum(meta: Metadata, path: str) -> None:
    # Stores written before the checksum existed have none; every one since has.
    if METADATA_CHECKSUM not in meta:
        return
    try:
        intact = meta[METADATA_CHECKSUM] == metadata_checksum(meta)
    except (TypeError, ValueError):  # values JSON cannot hold: not what was written
        intact = False
    if not intact:
        raise StoreError(f"{path}: the store metadata is damaged (its CRC32C does not match its contents)")
