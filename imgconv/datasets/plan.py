"""Where a sharded dataset's shards begin and end: a function of the source and the options alone.

The shard size is a number of images or a number of bytes of pixels (what
a read returns: H x W x C per image, not the size of the files, which for
PNG is smaller). Shards are cut in the source's order (or the seeded
permutation's, with ``shuffle``), so their boundaries and contents do not
depend on the engine, the number of workers or machines, or the batch
size: any run of the same job writes the same shards.

A source of several inputs (:class:`~imgconv.sources.multi.MultiSource`: a
list or glob of archives or folders) is cut input by input, a shard never
spanning two: each input is a partition a worker can read on its own. An
input read as a stream (an archive) is one shard whole; the others are cut
by the shard size.
"""
import re
from collections import namedtuple
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..errors import SourceError, SourceOptionError
from ..options import Option
from ..pipeline.plan import plan_tasks, stream_batches

# Default when a sharded output is asked for without a size (--engine dask): about the
# chunk size peers use (LitData, MosaicML MDS); 64 MB is ~21,000 CIFAR images.
DEFAULT_SHARD_BYTES = 64 * 1000 * 1000

_UNITS = {"": 1, "k": 1000, "m": 1000 ** 2, "g": 1000 ** 3, "t": 1000 ** 4,
          "ki": 1024, "mi": 1024 ** 2, "gi": 1024 ** 3, "ti": 1024 ** 4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]i?)?b\s*$", re.IGNORECASE)


class ShardSize(NamedTuple):
    """How big a shard is: ``images`` per shard, or ``bytes`` of pixels per shard (one of the two)."""

    images: Optional[int] = None
    bytes: Optional[int] = None

    def as_json(self) -> Dict[str, int]:
        """``{"images": N}`` or ``{"bytes": B}``, as the manifest and the journal keep it."""
        return {"images": int(self.images)} if self.images is not None else {"bytes": int(self.bytes or 0)}

    def per_shard(self, shape: Sequence[int]) -> int:
        """The images of a shard of images of ``shape`` (H, W, C): at least one."""
        if self.images is not None:
            return self.images
        return max(1, int(self.bytes or 0) // (int(shape[0]) * int(shape[1]) * int(shape[2])))

    def __str__(self) -> str:
        return f"{self.images} images" if self.images is not None else f"{self.bytes} bytes"


DEFAULT_SHARD_SIZE = ShardSize(bytes=DEFAULT_SHARD_BYTES)


def parse_shard_size(value: Any) -> ShardSize:
    """A shard size from what a caller gives: a whole number of images (``10000``, ``"10_000"``), a
    size in bytes with a unit ending in B (``"256MB"``, ``"1.5GiB"``, ``"4096B"``), or a ShardSize.

    kB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB of 1024. Raises
    SourceOptionError (a ValueError) for anything else, or a size below one
    image or one byte.
    """
    if isinstance(value, ShardSize):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if value < 1:
            raise SourceOptionError(f"shard_size must be at least 1 image, got {value}", ("shard_size",))
        return ShardSize(images=int(value))
    if isinstance(value, str):
        text = value.strip().replace("_", "").replace(",", "")
        if text.isdigit():
            return parse_shard_size(int(text))
        match = _SIZE.match(text)
        if match:
            size = int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])
            if size < 1:
                raise SourceOptionError(f"shard_size must be at least 1 byte, got {value!r}", ("shard_size",))
            return ShardSize(bytes=size)
    raise SourceOptionError(
        f"shard_size={value!r} is neither a number of images (10000) nor a size in bytes (256MB, 1GiB)",
        ("shard_size",))


def _parse_option(text: str) -> ShardSize:
    try:
        return parse_shard_size(text)
    except SourceOptionError as exc:
        raise ValueError(str(exc).replace("shard_size=", "")) from None


def _show(value: Any) -> str:
    size = parse_shard_size(value)
    return str(size.images) if size.images is not None else f"{size.bytes}B"


SHARD_SIZE = Option(
    "shard_size", type=_parse_option, metavar="N|SIZE", show=_show,
    help="write a sharded dataset (a directory of stores and a dataset.json manifest): N images per shard, or a "
         "size of pixels per shard such as 256MB or 1GiB (--engine dask without it: 64MB)")


class Shard(NamedTuple):
    """One shard of the plan: ``number``, and what it holds.

    ``member`` None: source positions ``start .. stop - 1`` of the whole
    source, or with ``indices`` (a shuffled conversion) those positions in
    that order. ``member`` m: positions ``start .. stop - 1`` of input m of a
    source of several inputs (``stop`` None: to its end, an input read as a
    stream). Under ``on_error="skip"`` a shard may hold fewer images.
    """

    number: int
    start: int
    stop: Optional[int]
    indices: Optional[np.ndarray] = None
    member: Optional[int] = None

    @property
    def size(self) -> Optional[int]:
        """The images planned for it (None: not known before the input is read)."""
        if self.indices is not None:
            return int(self.indices.size)
        return None if self.stop is None else self.stop - self.start

    def identity(self) -> Dict[str, Any]:
        """What the journal records of the shard, to check it is the same shard on resume."""
        return {"shard": self.number, "start": self.start, "stop": self.stop, "member": self.member}


Plan = namedtuple("Plan", "shards per_shard total")
Plan.__doc__ = """A shard plan: ``shards`` (a list, or None for a single stream cut as it is read),
``per_shard`` the images of each shard of a stream (its last one fewer), ``total``
the images planned (None: not known before the stream is read)."""


def plan_shards(src: Any, size: ShardSize, limit: Optional[int], shuffle: bool, seed: int, streamed: bool) -> Plan:
    """The shards of converting ``src`` (``limit`` images at most, shuffled with ``seed``).

    ``streamed``: the source is read once, as a stream, without counting it
    first (a single archive): its shards are cut every ``per_shard`` images
    as they arrive. Raises SourceError when a byte size cannot be turned into
    shards (images of varying sizes in a stream).
    """
    members = getattr(src, "members", None)
    if members is not None and not shuffle:
        return _plan_members(src, size, limit)
    if streamed:
        shape = src.shape
        if size.images is None and shape is None:
            raise SourceError(f"{src.description}: a shard size in bytes needs images of one size, and a stream "
                              "does not say its images' sizes before reading them; give the size in images")
        return Plan(None, size.per_shard(shape), None)
    total = src.length if limit is None else min(src.length, limit)
    order = np.random.default_rng(seed).permutation(src.length)[:total] if shuffle else None
    bounds = _bounds(src, size, total, order)
    shards = [Shard(k, a, b, None if order is None else order[a:b])
              for k, (a, b) in enumerate(zip(bounds, bounds[1:]))]
    return Plan(shards, None, total)


def _plan_members(src: Any, size: ShardSize, limit: Optional[int]) -> Plan:
    """Shards input by input: a stream one shard whole, the others cut by ``size``."""
    shards: List[Shard] = []
    left = limit
    counted = limit is not None  # a limit needs every input's length, streams included
    for m, member in enumerate(src.members):
        if left == 0:
            break
        if member.sequential and not counted:
            shards.append(Shard(len(shards), 0, None, None, m))
            continue
        length = member.length if left is None else min(member.length, left)
        if left is not None:
            left -= length
        cuts = [0, length] if member.sequential else _bounds(member, size, length, None)
        for a, b in zip(cuts, cuts[1:]):
            shards.append(Shard(len(shards), a, b, None, m))
    sizes = [s.size for s in shards]
    return Plan(shards, None, None if None in sizes else sum(n for n in sizes if n is not None))


def _bounds(src: Any, size: ShardSize, total: int, order: Optional[np.ndarray]) -> List[int]:
    """Shard boundaries over ``total`` images (positions in the output order); at least one shard."""
    if total == 0:
        return [0, 0]
    if size.images is not None or src.shape is not None:
        return list(range(0, total, size.per_shard(src.shape))) + [total]
    sizes = image_bytes(src)
    sizes = sizes[order] if order is not None else sizes[:total]
    return _cut_by_bytes(sizes, int(size.bytes or 0))


def _cut_by_bytes(sizes: np.ndarray, budget: int) -> List[int]:
    """Boundaries of runs of ``sizes`` each within ``budget`` bytes (an image larger alone: a shard)."""
    bounds, filled = [0], 0
    for i, nbytes in enumerate(sizes.tolist()):
        if filled and filled + nbytes > budget:
            bounds.append(i)
            filled = 0
        filled += nbytes
    bounds.append(len(sizes))
    return bounds


def image_bytes(src: Any) -> np.ndarray:
    """The pixel bytes (H x W x C) of every image of a source of varying sizes, without decoding them.

    A source that can say them offers ``image_shapes()`` (an image folder
    reads each file's header, a store its shapes). Raises SourceError for
    another source.
    """
    shapes = getattr(src, "image_shapes", None)
    if shapes is not None:
        found = shapes()
        return found[:, 0] * found[:, 1] * found[:, 2]
    raise SourceError(f"{src.description}: a shard size in bytes needs the images' sizes before converting them, "
                      "which this source does not say; give the shard size in images")


def shard_batches(src: Any, shard: Shard, batch_size: int, batch_bytes: Optional[int] = None) -> Iterator[Any]:
    """The batches of ``shard`` read from ``src``, in order (what a worker converting it reads), each of
    ``batch_size`` images and ``batch_bytes`` bytes of decoded pixels at most (one image at least)."""
    source = src if shard.member is None else src.members[shard.member]
    if shard.indices is not None:
        for first, last in shard_parts(src, shard, batch_size, batch_bytes):
            yield source.take(shard.indices[first:last])
    elif shard.stop is None or (source.sequential and shard.start == 0):
        yield from stream_batches(source, batch_size, shard.stop, batch_bytes)
    elif shard.stop > shard.start:
        for first, last in shard_parts(src, shard, batch_size, batch_bytes):
            yield next(source.batches(last - first, shard.start + first, shard.start + last))


def shard_parts(src: Any, shard: Shard, batch_size: int, batch_bytes: Optional[int]) -> List[Tuple[int, int]]:
    """``(first, last)``: the parts of a planned shard read as one batch each, as offsets in the shard.

    At most ``batch_size`` images and ``batch_bytes`` bytes of decoded
    pixels each (sized from the images' shape or headers, without decoding;
    one image at least). A shard of no images is one empty part.
    """
    size = shard.size or 0
    if size == 0:
        return [(0, 0)]
    source = src if shard.member is None else src.members[shard.member]
    if source.shape is not None:
        nbytes: Any = int(np.prod(source.shape))
    else:
        positions = shard.indices if shard.indices is not None else np.arange(shard.start, shard.start + size,
                                                                                 dtype=np.int64)
        nbytes = source.image_nbytes(positions)
    return [(task.start, task.stop) for task in plan_tasks(size, batch_size, nbytes=nbytes, batch_bytes=batch_bytes)]
