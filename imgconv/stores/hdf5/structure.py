"""What an imgconv HDF5 store may hold, checked before any of its data is read.

HDF5 can make a dataset read bytes from elsewhere: external storage (raw
data in other files, named by the dataset), virtual datasets (mapped from
datasets of other files), external links (a name that opens another file)
and soft links (a name that points at another object). It can also pass
data through filters a store never uses (any registered plugin). imgconv
writes none of these: its datasets are hard links in the root group, chunked
or contiguous, unfiltered but for gzip or lzf on the pixels, of fixed types.
:func:`check_datasets` refuses anything else with a StoreError naming the
dataset and the feature, before a byte of data is read, so that a crafted
file can make a reader read (and a conversion copy) nothing from outside
the store.

Links are inspected without being followed (``H5Lget_info``): asking
whether an external link exists, as ``name in file`` does, would open the
file it names.
"""
from typing import Any, Dict, Iterable

import h5py
import numpy as np

from ...errors import StoreError
from .lowlevel import open_dataset

# The pixel datasets may be compressed (the writer's compression option); nothing else is filtered.
PIXEL_DATASETS = ("images", "pixels")
# imgconv's filters: gzip (deflate) and lzf, one at most.
_FILTERS = {h5py.h5z.FILTER_DEFLATE: "gzip", 32000: "lzf"}
_LAYOUTS = {h5py.h5d.CHUNKED, h5py.h5d.CONTIGUOUS, h5py.h5d.COMPACT}
# The type each dataset must have: (kind, item size) as NumPy says.
DTYPES = {"images": ("u", 1), "pixels": ("u", 1), "labels": ("i", 8), "crc32c": ("u", 4), "offsets": ("i", 8),
          "shapes": ("i", 8)}
_LINK_KINDS = {h5py.h5l.TYPE_SOFT: "a soft link", h5py.h5l.TYPE_EXTERNAL: "an external link"}


def has_member(group: Any, name: str) -> bool:
    """Whether the group ``group`` (a low-level id: ``h5py.h5g.GroupID`` or ``h5py.h5f.FileID``) has a
    link called ``name`` (not followed: see the module docstring)."""
    return bool(group.links.exists(name.encode("utf-8")))


def check_datasets(group: Any, path: str, names: Iterable[str]) -> Dict[str, Any]:
    """The datasets ``names`` of ``group`` (a low-level id), each checked (see the module docstring), as
    ``h5py.h5d.DatasetID`` by name; StoreError naming ``path``.

    Every name must be present: the caller leaves out what may be missing.
    """
    found = {}
    for name in names:
        if not has_member(group, name):
            raise StoreError(f"{path}: the dataset /{name} is missing")
        link = group.links.get_info(name.encode("utf-8")).type
        if link != h5py.h5l.TYPE_HARD:
            kind = _LINK_KINDS.get(link, f"a link of type {link}")
            raise StoreError(f"{path}: /{name} is {kind}, not a dataset of the file; an imgconv store holds its "
                             "data itself (refused before reading: a link can lead outside the store)")
        item = open_dataset(group, name)
        if item is None:
            raise StoreError(f"{path}: /{name} is not a dataset")
        _check_storage(item, name, path)
        found[name] = item
    return found


def _check_storage(ds: Any, name: str, path: str) -> None:
    dcpl = ds.get_create_plist()
    layout = dcpl.get_layout()
    if layout == h5py.h5d.VIRTUAL:
        raise StoreError(f"{path}: /{name} is a virtual dataset (mapped from other datasets or files); an imgconv "
                         "store holds its data itself (refused before reading)")
    if layout not in _LAYOUTS:
        raise StoreError(f"{path}: /{name} has storage layout {layout}, which imgconv does not write")
    if dcpl.get_external_count():
        target = dcpl.get_external(0)[0].decode("utf-8", "backslashreplace")
        raise StoreError(f"{path}: /{name} keeps its data in external files ({target!r}, ...); an imgconv store "
                         "holds its data itself (refused before reading: it could read any file)")
    filters = [dcpl.get_filter(k)[0] for k in range(dcpl.get_nfilters())]
    allowed = len(filters) <= 1 and all(code in _FILTERS for code in filters) and (
        not filters or name in PIXEL_DATASETS)
    if not allowed:
        raise StoreError(f"{path}: /{name} is filtered with HDF5 filter(s) {filters}; imgconv writes at most gzip "
                         "or lzf, on the pixels only (refused before reading)")
    dtype = ds.dtype
    kind, size = DTYPES[name]
    if dtype.kind != kind or dtype.itemsize != size or dtype.fields is not None:
        raise StoreError(f"{path}: /{name} holds {dtype}, not {np.dtype(f'{kind}{size}')}")
