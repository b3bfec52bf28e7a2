"""The store registry (stores/__init__.py): which format a destination's name asks for."""
import os
import sys

import numpy as np
import pytest

import imgconv
from imgconv import stores
from imgconv.errors import UnknownFormatError


@pytest.mark.parametrize("path, fmt", [
    ("x.lmdb", "lmdb"), ("X.LMDB", "lmdb"), ("a/b.h5", "hdf5"), ("b.hdf5", "hdf5"),
    ("out", "png"), ("out/", "png"), ("some.dir/", "png"), (".hidden", "png"), ("dir.v2/out", "png"),
])
def test_the_suffix_picks_the_format(path, fmt):
    assert stores.format_for_path(path) == fmt


@pytest.mark.parametrize("path, suffix", [("x.lmbd", ".lmbd"), ("z.txt", ".txt"), ("cifar.png", ".png")])
def test_an_unknown_suffix_is_refused_naming_it_and_the_known_ones(path, suffix):
    with pytest.raises(UnknownFormatError) as caught:
        stores.format_for_path(path)
    message = str(caught.value)
    assert f"unknown store suffix {suffix!r}" in message and ".lmdb" in message and ".h5, .hdf5" in message
    assert "no suffix or a trailing /" in message and "format=NAME" in message
    assert isinstance(caught.value, ValueError)


def test_convert_refuses_an_unknown_suffix_before_reading_unless_the_format_is_given(tmp_path, monkeypatch):
    np.save(tmp_path / "a.npy", np.zeros((3, 2, 2, 3), np.uint8))
    opened = []
    monkeypatch.setattr(sys.modules["imgconv.convert"], "open_source", lambda *a, **k: opened.append(a))
    with pytest.raises(UnknownFormatError, match="x.lmbd: unknown store suffix '.lmbd'"):
        imgconv.convert(tmp_path / "a.npy", tmp_path / "x.lmbd", workers=0)
    with pytest.raises(UnknownFormatError):
        stores.create(tmp_path / "x.lmbd")
    assert opened == [] and os.listdir(tmp_path) == ["a.npy"]
    monkeypatch.undo()
    result = imgconv.convert(tmp_path / "a.npy", tmp_path / "z.txt", format="png", workers=0)
    assert result.format == "png" and len(imgconv.open(tmp_path / "z.txt")) == 3
