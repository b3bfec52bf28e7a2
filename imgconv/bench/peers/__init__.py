"""The peers beside imgconv's stores: ``python -m imgconv bench --peers`` (a plug-in, see :mod:`imgconv.bench`).

LitData, MosaicML streaming (MDS), WebDataset (tar shards, raw and PNG) and
Hugging Face datasets (Arrow) are registered as methods of the opt-in group
``peers``, each measured against imgconv's LMDB store (its ``baseline``):
the grid's experiments write, read, randomly read and weigh them beside
imgconv's stores, on the same images, checking every read. The ``peers``
experiment of the same group adds what the grid cannot measure in its own
process, the writer's peak memory, and the block of the table and
``peers.png`` that put the figures side by side. Each peer is written and
read the way its own documentation recommends (the module of each says
which, and ``Method.doc`` names the page).

The modules: ``common`` (what the adapters share); ``litdata_peer``,
``mosaic_peer``, ``webdataset_peer``, ``hf_peer`` (one per peer);
``runner`` and ``child`` (a store written by a fresh process, its memory
sampled); ``experiment``; ``table`` and ``plot``.

The peers are optional (``pip install "imgconv[peers]"``): one that is not
installed, or does not import, is skipped with a one-line reason. Importing
this package imports none of them.
"""
from ..methods import register_method
from . import experiment  # noqa: F401 - registers the peers experiment
from .hf_peer import HF_DATASETS
from .litdata_peer import LITDATA
from .mosaic_peer import MOSAIC_MDS
from .webdataset_peer import WEBDATASET_PNG, WEBDATASET_RAW

PEERS = (LITDATA, MOSAIC_MDS, WEBDATASET_RAW, WEBDATASET_PNG, HF_DATASETS)
for _peer in PEERS:
    register_method(_peer)
