"""The old home of the LMDB page check, now :mod:`imgconv.stores.lmdb.pagecheck`.

Kept so that imports written against it keep working; each name warns
(DeprecationWarning) and says where it lives now.
"""
from .._moved import forward

__getattr__ = forward(__name__, {name: "imgconv.stores.lmdb.pagecheck" for name in (
    "check_lmdb_file", "PAGE_HEADER", "PAGE_HEADER_SIZE", "META", "DB", "NODE", "NODE_SIZE", "MAGIC", "DATA_VERSION",
    "P_BRANCH", "P_LEAF", "P_META", "F_BIGDATA", "F_SUBDATA", "F_DUPDATA", "P_INVALID", "MAX_DEPTH")})
