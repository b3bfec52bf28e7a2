"""Options declared once (imgconv/options.py): the registries declare, everything else is derived."""
import argparse
import inspect

import numpy as np
import pytest

import imgconv
from imgconv import cli, sources, stores
from imgconv.errors import SourceOptionError
from imgconv.options import Option, merge, show_width_by_height, speak_flags, whole_number, width_by_height
from imgconv.sources import OPTION_DEFAULTS, SOURCE_KINDS, Source, SourceKind

COMMON_WRITER_KEYWORDS = {"path", "overwrite", "label_names", "source", "shape", "job", "common"}


def _convert_parser():
    parser = cli.build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subcommands.choices["convert"]


def _flag(parser, flag):
    return next(a for a in parser._actions if flag in a.option_strings)


def test_every_store_format_declares_exactly_what_its_writer_takes_with_its_defaults():
    for spec in stores.FORMATS.values():
        parameters = inspect.signature(spec.writer).parameters
        taken = {name for name in parameters if name not in COMMON_WRITER_KEYWORDS}
        assert taken == {option.name for option in spec.options}, spec.name
        for option in spec.options:
            assert parameters[option.name].default == option.default, (spec.name, option.name)


def test_option_defaults_come_from_the_declarations():
    declared = {o.name: o.default for kind in SOURCE_KINDS for o in kind.options}
    assert OPTION_DEFAULTS == declared
    assert OPTION_DEFAULTS["split"] == "train" and OPTION_DEFAULTS["mode"] == "RGB"


def test_every_declared_option_is_a_flag_with_its_choices_and_no_hidden_default():
    parser = _convert_parser()
    declared = [*cli.convert_options(), *sources.source_options().values(),
                *(o for spec in stores.FORMATS.values() for o in spec.options)]
    for option in declared:
        if not option.cli:
            assert all(option.name != a.dest for a in parser._actions)
            continue
        action = _flag(parser, option.flag)
        assert action.dest == option.dest and action.default is argparse.SUPPRESS
        assert action.choices == option.choices
        if option.default not in (None, False):
            assert f"(default {option.show(option.default)})" in action.help
    assert _flag(parser, "--png-level").help.startswith("png: ")
    assert _flag(parser, "--split").help.startswith("CIFAR and NumPy: ")


def test_a_new_source_option_is_one_declaration(tmp_path, monkeypatch):
    """Declared on a kind: it becomes a flag, reaches the source, and other kinds refuse it by its flag."""
    seen = {}
    tint = Option("tint", type=whole_number(0, 255), default=0, help="added to every pixel")

    class Tinted(Source):
        OPTIONS = (tint,)
        description = "tinted"
        length = 2
        shape = (1, 1, 1)

        def __init__(self, path, *, tint=tint.default):
            seen["tint"] = tint

        def batches(self, batch_size, start=0, stop=None):
            yield np.full((stop - start, 1, 1, 1), seen["tint"], np.uint8), np.zeros(stop - start, np.int64)

    kind = SourceKind("tinted", lambda p: p.endswith(".tint"), Tinted, Tinted.OPTIONS, "tinted files")
    monkeypatch.setattr(sources, "SOURCE_KINDS", [kind, *SOURCE_KINDS])
    (tmp_path / "x.tint").write_text("")
    assert cli.main(["convert", str(tmp_path / "x.tint"), str(tmp_path / "out.lmdb"), "--tint", "7", "--quiet",
                     "--workers", "0"]) == 0
    assert seen == {"tint": 7}
    assert (imgconv.open(tmp_path / "out.lmdb")[0][0] == 7).all()
    assert "tinted files: added to every pixel (default 0)" in _flag(_convert_parser(), "--tint").help
    np.save(tmp_path / "a.npy", np.zeros((1, 1, 1), np.uint8))
    with pytest.raises(SourceOptionError, match=r"which takes no tint=7 \(tint applies to tinted files\)"):
        sources.open_source(tmp_path / "a.npy", tint=7)


def test_one_name_declared_two_ways_is_refused():
    one = Option("split", default="train")
    assert merge([(one,), (one,)]) == {"split": one}
    with pytest.raises(ValueError, match="declared twice"):
        merge([(one,), (Option("split", default="test"),)])


def test_flags_and_destinations_come_from_the_names():
    assert Option("label_kind").flag == "--label-kind" and Option("label_kind").dest == "label_kind"
    level = Option("compress_level", flag="--png-level")
    assert level.dest == "png_level" and not level.switch and Option("x", type=bool).switch
    assert Option("map_size", cli=False).flag is None


@pytest.mark.parametrize("text, value", [("0", 0), ("1_000", 1000), ("2,500", 2500)])
def test_whole_numbers(text, value):
    assert whole_number(0)(text) == value


@pytest.mark.parametrize("parse, text, message", [
    (whole_number(0), "x", "not a whole number: 'x'"),
    (whole_number(0), "-1", "must be 0 or more, got -1"),
    (whole_number(1), "0", "must be at least 1, got 0"),
    (whole_number(0, 9), "12", "must be 0..9, got 12"),
    (width_by_height, "12", "not WIDTHxHEIGHT: '12'"),
    (width_by_height, "0x3", "at least 1"),
])
def test_bad_text_says_what_was_expected(parse, text, message):
    with pytest.raises(ValueError, match=message):
        parse(text)


def test_width_by_height_round_trips():
    assert width_by_height("64X32") == (64, 32) and show_width_by_height((64, 32)) == "64x32"


def _everything():
    named = {o.name: o for o in cli.convert_options()}
    named.update(sources.source_options())
    for spec in stores.FORMATS.values():
        named.update({o.name: o for o in spec.options})
    return named


@pytest.mark.parametrize("message, named, spoken", [
    ("x: label_kind='coarse' applies to CIFAR-100", ("label_kind",), "x: --label-kind coarse applies to CIFAR-100"),
    ("x: already exists; to replace it, pass overwrite=True", (), "x: already exists; to replace it, pass --overwrite"),
    ("pass resume=True to continue it, or overwrite=True to discard it", (),
     "pass --resume to continue it, or --overwrite to discard it"),
    ("x.h5: compression_level applies to compression='gzip' only", ("compression_level", "compression"),
     "x.h5: --hdf5-level applies to --hdf5-compression gzip only"),
    ("resize must be two positive integers, got (0, 3)", ("resize",),
     "--resize must be two positive integers, got (0, 3)"),
    ("made with resize=(64, 32)", (), "made with --resize 64x32"),
    ("raise the limit with max_pixels=N", (), "raise the limit with --max-pixels N"),
    # Paths and longer names keep their words, and a name is a flag only where the error names it.
    ("/data/mode/split=train/a.png: the mode of the image", (), "/data/mode/split=train/a.png: the mode of the image"),
    ("/data/mode/a.npy takes no mode='L' (mode applies to image folders)", ("mode",),
     "/data/mode/a.npy takes no --mode L (--mode applies to image folders)"),
    ("different options.chunk_images", ("chunk_images",), "different options.chunk_images"),
    ("map_size=5 and colour='red'", (), "map_size=5 and colour='red'"),  # no flag, no such option
])
def test_messages_speak_flags(message, named, spoken):
    assert speak_flags(message, _everything(), named) == spoken
