"""The LMDB page check runs once per file and process: a changed file is checked again."""
import os

import numpy as np
import pytest

from imgconv import stores
from imgconv.errors import StoreError
from imgconv.stores.lmdb import pagecheck


def test_the_verdict_is_kept_per_file_until_the_file_changes(tmp_path, monkeypatch):
    path = tmp_path / "x.lmdb"
    with stores.create(path) as writer:
        writer.append(np.zeros((3, 4, 4, 3), np.uint8), [0, 1, 2])
    walks = []
    real = pagecheck._check
    monkeypatch.setattr(pagecheck, "_check", lambda fd, size: walks.append(size) or real(fd, size))
    monkeypatch.setattr(pagecheck, "_SOUND", {})
    for _ in range(3):  # a DataLoader opens the store once per worker
        with stores.open(path) as store:
            assert len(store) == 3
    assert len(walks) == 1
    data = path / "data.mdb"
    os.utime(data, ns=(0, 0))  # another file now, as far as the check can tell
    with stores.open(path) as store:
        assert len(store) == 3
    assert len(walks) == 2


def test_a_damaged_file_is_refused_every_time(tmp_path, monkeypatch):
    path = tmp_path / "x.lmdb"
    with stores.create(path) as writer:
        writer.append(np.zeros((3, 4, 4, 3), np.uint8), [0, 1, 2])
    data = path / "data.mdb"
    raw = bytearray(data.read_bytes())
    raw[16:20] = b"\0\0\0\0"  # the first meta page's magic
    data.write_bytes(bytes(raw))
    monkeypatch.setattr(pagecheck, "_SOUND", {})
    for _ in range(2):
        with pytest.raises(StoreError, match="corrupt LMDB"):
            stores.open(path)
