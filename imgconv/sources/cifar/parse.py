"""The bytes of CIFAR batch and label files, as arrays: python (pickled) and binary batches.

Python batches are pickled dicts (``data``: uint8 (N, 3072) rows of colour
planes, ``labels`` or ``fine_labels``/``coarse_labels``), loaded with the
restricted unpickler of :mod:`imgconv.sources.safe_pickle`. Binary batches are
records of label bytes (CIFAR-10: label; CIFAR-100: coarse, fine) and 3072
pixel bytes, read with no pickle at all, only the records a batch needs.
Every function returns rows as they are stored (colour planes); the source
turns them into (32, 32, 3) images. ``where`` names the file in errors.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import SourceError
from ..archive import DECODE_ERRORS, Bytes, Container, read_exactly
from ..safe_pickle import load_pickle
from .layouts import COARSE_CLASSES, ROW_BYTES, Layout


def _decoded_str_or_none(value: Any) -> str | None:
    """``value`` as str: a str as it is, bytes decoded as UTF-8 (bad bytes replaced); None for anything else.

    Never ``str()`` of data from a file: a key or name that is not text is
    no CIFAR key or name.
    """
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _str_keys(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise SourceError(f"{where}: holds a {type(obj).__name__}, not the dict of a CIFAR batch")
    # Keys that are not strings cannot be CIFAR keys; they are left out, not printed.
    decoded = ((_decoded_str_or_none(key), value) for key, value in obj.items())
    return {text: value for text, value in decoded if text is not None}


def _key_list(mapping: dict[str, Any], limit: int = 10) -> str:
    keys = sorted(mapping)
    shown = ", ".join(repr(k[:40]) if len(k) > 40 else k for k in keys[:limit])
    return shown + (f", ... ({len(keys)} keys)" if len(keys) > limit else "") if keys else "none"


def labels_array(values: Any, n: int, classes: int, where: str, key: str) -> np.ndarray:
    """Check ``values`` (a list of integers, or a 1-D integer array) as ``n`` labels in ``0..classes-1``.

    The list's integers are Python ints or NumPy integer scalars (a batch
    written from NumPy data holds those); never bools, floats or anything
    else. Returns an int64 array. The list is checked element by element
    before NumPy sees it: ``np.asarray`` on a list of lists (which a pickle
    can make huge from a few bytes by repeating one reference) would build
    all of it.
    """
    if isinstance(values, np.ndarray):
        if values.ndim != 1 or (values.size and values.dtype.kind not in "iu"):
            raise SourceError(
                f"{where}: {key} must be a flat list of integers, got {values.dtype} of shape {values.shape}"
            )
        count = values.shape[0]
    elif type(values) is list:
        count = len(values)
    else:
        raise SourceError(f"{where}: {key} must be a list of integers, got a {type(values).__name__}")
    if count != n:
        raise SourceError(f"{where}: the arrays disagree in length: {n} images but {count} {key}")
    if isinstance(values, list):
        for position, value in enumerate(values):
            if type(value) is not int and not isinstance(value, np.integer):
                raise SourceError(
                    f"{where}: {key} must be integers, but {key}[{position}] is a {type(value).__name__}"
                )
        try:
            values = np.fromiter(values, np.int64, n)
        except OverflowError:
            raise SourceError(f"{where}: {key} holds an integer beyond 64 bits") from None
        except MemoryError:
            raise SourceError(f"{where}: not enough memory for {n} {key}") from None
    if values.size and (values.min() < 0 or values.max() >= classes):
        bad = values[(values < 0) | (values >= classes)][0]
        raise SourceError(f"{where}: {key} holds {bad}, outside 0..{classes - 1}")
    return values.astype(np.int64)


def python_batch(container: Container, name: str, layout: Layout, label_kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Load the pickled batch ``name`` of ``container``: ``(rows (N, 3072) uint8, labels (N,) int64)``.

    The file is read whole (its size checked against what a batch can be
    first, by the container): the pure-Python unpickler makes many small
    reads, each costly through tarfile and gzip, and the batch's array is
    most of the file anyway.
    """
    try:
        data = container.read(name)
    except DECODE_ERRORS as exc:
        raise SourceError(f"{container.where(name)}: cannot read ({exc})") from None
    return parse_python_batch(data, container.where(name), layout, label_kind)


def parse_python_batch(data: Bytes, where: str, layout: Layout, label_kind: str) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, labels)`` of a pickled batch held in ``data``."""
    batch = _str_keys(load_pickle(data, where), where)
    key = f"{label_kind}_labels" if layout.cifar100 else "labels"
    missing = [k for k in ("data", key) if k not in batch]
    if missing:
        raise SourceError(
            f"{where}: not a {layout.name} batch: no {' or '.join(missing)} (keys: {_key_list(batch)})"
        )
    rows = batch["data"]
    if not isinstance(rows, np.ndarray) or rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != ROW_BYTES:
        got = f"{rows.dtype} array of shape {rows.shape}" if isinstance(rows, np.ndarray) else type(rows).__name__
        raise SourceError(f"{where}: data must be a uint8 array (N, {ROW_BYTES}), got {got}")
    classes = layout.classes if label_kind == "fine" else COARSE_CLASSES
    return rows, labels_array(batch[key], rows.shape[0], classes, where, key)


def binary_record_size(layout: Layout) -> int:
    """The bytes of one record of a binary batch: its label bytes and its pixels."""
    return layout.record_bytes


def binary_count(container: Container, name: str, layout: Layout) -> int:
    """The number of records in binary batch ``name``, from its size alone (checked against its limit)."""
    return records_in(container.size(name), container.where(name), layout)


def records_in(size: int, where: str, layout: Layout) -> int:
    """The number of records in a binary batch of ``size`` bytes; SourceError unless whole."""
    record = binary_record_size(layout)
    if size == 0:
        raise SourceError(f"{where}: empty file (0 bytes), a batch holds {record}-byte records")
    count, rest = divmod(size, record)
    if rest:
        raise SourceError(
            f"{where}: truncated or not a {layout.name} batch: {size} bytes is {count} records of "
            f"{record} bytes and {rest} bytes left over"
        )
    return count


def binary_records(container: Container, name: str, layout: Layout, label_kind: str, lo: int,
                   hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Read records ``lo..hi`` of binary batch ``name``: ``(rows (n, 3072) uint8, labels (n,) int64)``."""
    record = binary_record_size(layout)
    data = read_exactly(container, name, lo * record, (hi - lo) * record)
    return split_records(data, hi - lo, container.where(name), layout, label_kind)


def split_records(data: Bytes, n: int, where: str, layout: Layout, label_kind: str) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, labels)`` of ``n`` whole binary records in ``data``."""
    records = np.frombuffer(data, np.uint8).reshape(n, binary_record_size(layout))
    if layout.cifar100:
        column, classes = (1, layout.classes) if label_kind == "fine" else (0, COARSE_CLASSES)
    else:
        column, classes = 0, layout.classes
    key = f"{label_kind} label" if layout.cifar100 else "label"
    labels = labels_array(records[:, column], n, classes, where, key)
    return records[:, layout.label_bytes :], labels


def decode_batch(data: Bytes, where: str, layout: Layout, label_kind: str) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, labels)`` of a whole batch file held in ``data``, python or binary."""
    if layout.kind == "python":
        return parse_python_batch(data, where, layout, label_kind)
    return split_records(data, records_in(len(data), where, layout), where, layout, label_kind)


def read_label_names(container: Container, layout: Layout, label_kind: str) -> list[str] | None:
    """Label names from the layout's meta file in ``container``, or None when the file is absent."""
    name = layout.meta_name(label_kind)
    if not container.has(name):
        return None
    try:
        data = container.read(name)
    except DECODE_ERRORS as exc:
        raise SourceError(f"{container.where(name)}: cannot read ({exc})") from None
    return parse_label_names(data, container.where(name), layout, label_kind)


def parse_label_names(data: Bytes, where: str, layout: Layout, label_kind: str) -> list[str]:
    """Label names from the bytes of the meta file at ``where``."""
    if layout.kind == "binary":
        return [line.strip() for line in bytes(data).decode("utf-8", "replace").splitlines() if line.strip()]
    meta = _str_keys(load_pickle(data, where), where)
    key = f"{label_kind}_label_names" if layout.cifar100 else "label_names"
    if not isinstance(meta.get(key), (list, tuple)):
        raise SourceError(f"{where}: no list {key} (keys: {_key_list(meta)})")
    names = [_decoded_str_or_none(n) for n in meta[key]]
    if None in names:
        bad = meta[key][names.index(None)]
        raise SourceError(f"{where}: {key} holds a {type(bad).__name__}, not a name")
    return names  # type: ignore[return-value]
