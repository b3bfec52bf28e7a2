"""The manifest of a sharded dataset: ``dataset.json``, written last, saying what the shards are.

A sharded dataset is a directory of shards, each an ordinary imgconv store of
one format (``shard-00000.lmdb``, ``shard-00001.lmdb``, ...; ``.h5`` for
HDF5, no suffix for PNG folders) that opens on its own, and this manifest.
The manifest holds the format, the image count, shape and label names of
the whole, the source it came from, the writer options, the shard size
asked for, the versions that wrote it, and for every shard in order its
path (relative to the dataset), image count, size in bytes and the CRC32C
of its own metadata (``metadata_crc32c``), so that a shard replaced or
damaged behind the dataset's back is found when it is opened. The manifest
carries its own CRC32C too, computed as a store's metadata checksum is
(:func:`imgconv.stores.metadata.metadata_checksum`).

A directory of shards without the manifest is an unfinished dataset:
readers refuse it (:func:`refuse_unfinished`).
"""
import json
import os
import re
from collections import namedtuple
from typing import Any, Dict, List, Optional, Sequence

from .. import _platform
from .._version import __version__
from ..errors import StoreError
from ..stores.batch import VARIABLE, StoreShape
from ..stores.metadata import METADATA_CHECKSUM, metadata_checksum

MANIFEST = "dataset.json"
DATASET_VERSION = 1
KIND = "imgconv sharded dataset"

# shard-00000, shard-00001.lmdb, shard-123456.h5: the names the converter gives.
SHARD_NAME = re.compile(r"^shard-\d{5,}(\.[a-z0-9]+)?$")

ShardEntry = namedtuple("ShardEntry", "path count bytes metadata_crc32c")
ShardEntry.__doc__ = """One shard in the manifest: its ``path`` relative to the dataset, its image
``count``, its size in ``bytes`` (the sum of its file sizes) and the CRC32C of its
metadata (the ``metadata_crc32c`` the shard itself holds)."""


def shard_name(number: int, suffix: str) -> str:
    """The name of shard ``number``: ``shard-00042`` and the format's suffix (``.lmdb``, ``.h5``, none)."""
    return f"shard-{number:05d}{suffix}"


def is_dataset(path: Any) -> bool:
    """True when ``path`` is a directory holding a dataset manifest (finished or not, sound or not).

    Anything named like the manifest counts (a FIFO too): reading it says what is wrong.
    """
    path = os.fspath(path)
    return os.path.isdir(path) and os.path.lexists(os.path.join(path, MANIFEST))


def unfinished_shards(path: Any) -> List[str]:
    """The shard names in the directory ``path`` when it has no manifest (an unfinished dataset); else []."""
    path = os.fspath(path)
    if not os.path.isdir(path) or os.path.exists(os.path.join(path, MANIFEST)):
        return []
    try:
        names = os.listdir(path)
    except OSError:
        return []
    return sorted(name for name in names if SHARD_NAME.match(name))


def refuse_unfinished(path: Any) -> None:
    """Raise StoreError when ``path`` is a directory of shards without a manifest: an unfinished dataset."""
    shards = unfinished_shards(path)
    if shards:
        shown = ", ".join(shards[:3]) + (", ..." if len(shards) > 3 else "")
        raise StoreError(
            f"{os.fspath(path)}: an unfinished sharded dataset: it holds {len(shards)} shard(s) ({shown}) but no "
            f"{MANIFEST}, which the converter writes last, when every shard is done: the shards are not known to "
            f"be all there, or sound; convert again (an interrupted conversion continues with resume=True)"
        )


def make_manifest(*, format_name: str, format_version: int, shape: StoreShape,
                  label_names: Optional[Sequence[str]], source: Optional[str], options: Dict[str, Any],
                  shard_size: Dict[str, int], shards: Sequence[ShardEntry]) -> Dict[str, Any]:
    """The manifest of a finished dataset, as a JSON-ready dict with its checksum."""
    manifest: Dict[str, Any] = {
        "kind": KIND,
        "dataset_version": DATASET_VERSION,
        "format": format_name,
        "format_version": int(format_version),
        "imgconv_version": __version__,
        "count": int(sum(entry.count for entry in shards)),
        "shape": VARIABLE if shape == VARIABLE else [int(v) for v in shape],
        "dtype": "uint8",
        "label_names": None if label_names is None else [str(n) for n in label_names],
        "source": None if source is None else str(source),
        "options": options,
        "shard_size": dict(shard_size),  # {"images": N} or {"bytes": B}
        "shards": [{"path": e.path, "count": int(e.count), "bytes": int(e.bytes),
                    "metadata_crc32c": int(e.metadata_crc32c)} for e in shards],
    }
    manifest[METADATA_CHECKSUM] = metadata_checksum(manifest)
    return manifest


def write_manifest(directory: str, manifest: Dict[str, Any], sync: bool = True) -> None:
    """Write ``manifest`` into ``directory`` as its last file: to a temporary name, synced (unless not
    ``sync``: a conversion with ``durable=False``), then renamed."""
    data = json.dumps(manifest, sort_keys=True, indent=1).encode("utf-8")
    final = os.path.join(directory, MANIFEST)
    temporary = final + ".tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, final)
    if sync:
        _platform.fsync_dir(directory)


def read_manifest(path: str) -> Dict[str, Any]:
    """The checked manifest of the dataset at ``path``, with ``shape`` as a tuple and the shards as
    :class:`ShardEntry`.

    Raises StoreError naming the dataset for a manifest that is not JSON, is
    damaged (its CRC32C), comes from a newer imgconv, or does not add up.
    """
    where = os.path.join(path, MANIFEST)
    try:
        with _platform.open_regular_file(where) as f:  # a FIFO there would block a plain open
            manifest = json.loads(f.read().decode("utf-8"))
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the dataset manifest {MANIFEST}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"{path}: the dataset manifest {MANIFEST} is not valid JSON ({exc})") from None
    return check_manifest(manifest, path)


def check_manifest(manifest: Any, path: str) -> Dict[str, Any]:
    """Check a manifest read from JSON (see :func:`read_manifest`); returns it ready to use."""
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise StoreError(f"{path}: {MANIFEST} is not the manifest of an imgconv sharded dataset")
    try:
        intact = manifest.get(METADATA_CHECKSUM) == metadata_checksum(manifest)
    except (TypeError, ValueError):
        intact = False
    if not intact:
        raise StoreError(f"{path}: the dataset manifest {MANIFEST} is damaged (its CRC32C does not match its contents)")
    version = manifest.get("dataset_version")
    if not isinstance(version, int) or version > DATASET_VERSION:
        raise StoreError(f"{path}: sharded dataset version {version!r}; this imgconv ({__version__}) reads versions "
                         f"up to {DATASET_VERSION}")
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not shards:
        raise StoreError(f"{path}: the dataset manifest lists no shards")
    entries = []
    for number, shard in enumerate(shards):
        entry = _shard_entry(shard, path, number)
        entries.append(entry)
    if sum(e.count for e in entries) != manifest.get("count"):
        raise StoreError(f"{path}: the dataset manifest says {manifest.get('count')!r} images, its shards hold "
                         f"{sum(e.count for e in entries)}")
    shape = manifest.get("shape")
    if shape != VARIABLE:
        if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape)):
            raise StoreError(f"{path}: invalid image shape {shape!r} in the dataset manifest")
        manifest["shape"] = tuple(shape)
    manifest["shards"] = entries
    manifest.setdefault("label_names", None)
    manifest.setdefault("source", None)
    return manifest


def _shard_entry(shard: Any, path: str, number: int) -> ShardEntry:
    fields = ("path", "count", "bytes", "metadata_crc32c")
    if not isinstance(shard, dict) or any(name not in shard for name in fields):
        raise StoreError(f"{path}: shard {number} of the dataset manifest lacks {', '.join(fields)}")
    name = shard["path"]
    # A shard lies inside the dataset: a manifest must not send readers elsewhere.
    if (not isinstance(name, str) or not name or os.path.isabs(name) or os.sep in name or "/" in name
            or name in (".", "..")):
        raise StoreError(f"{path}: shard {number} of the dataset manifest has the invalid path {name!r}")
    numbers = [shard["count"], shard["bytes"], shard["metadata_crc32c"]]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in numbers):
        raise StoreError(f"{path}: shard {name} of the dataset manifest has invalid counts {numbers!r}")
    return ShardEntry(name, *numbers)
