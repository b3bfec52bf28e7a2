"""Sharded datasets: a directory of ordinary stores (the shards) and a manifest written last.

:mod:`.manifest` is the format (``dataset.json``: the shards, their counts,
sizes and metadata checksums), :mod:`.reader` reads a dataset as one store
(:func:`imgconv.open` returns it), :mod:`.verify` checks its shards in
parallel, :mod:`.plan` says where shards begin and end (the same whatever
the engine), :mod:`.output` is a dataset being written (the locked partial
output, the journal, the shard writers) and :mod:`.convert` writes one here
or on a Dask cluster (:func:`imgconv.convert` with ``shard_size`` or
``engine="dask"``).
"""
from .manifest import MANIFEST, ShardEntry, is_dataset

__all__ = ["MANIFEST", "ShardEntry", "is_dataset"]
