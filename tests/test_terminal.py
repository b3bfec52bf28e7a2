"""Names from the input never reach the terminal raw: escape sequences, carriage returns, bidi overrides, bad bytes.

The command line runs in a subprocess with names that would recolour the
terminal (``\\x1b[31m``), overwrite the line (``\\r``), reverse the text
(U+202E) or are not UTF-8; every byte it writes is checked.
"""
import io
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from imgconv import cli
from imgconv._terminal import escape_for_terminal, escape_lines

HOSTILE = "evil\x1b[31m\rname\u202etxt.exe"
SHOWN = "evil\\x1b[31m\\rname\\u202etxt.exe"


@pytest.mark.parametrize("text, shown", [
    ("plain café 猫.png", "plain café 猫.png"),
    ("a\x1b[31mred\x1b[0m", "a\\x1b[31mred\\x1b[0m"),
    ("over\rwrite", "over\\rwrite"),
    ("two\nlines\ttab", "two\\nlines\\ttab"),
    ("bell\x07 del\x7f c1\x9b", "bell\\x07 del\\x7f c1\\x9b"),
    ("right-to-left \u202egnp.exe", "right-to-left \\u202egnp.exe"),
    ("isolate\u2066x\u2069 mark\u200f sep\u2028", "isolate\\u2066x\\u2069 mark\\u200f sep\\u2028"),
    (os.fsdecode(b"caf\xe9.png"), "caf\\xe9.png"),  # a Latin-1 name, not UTF-8: the byte, shown
    ("back\\slash", "back\\slash"),
])
def test_escape_for_terminal(text, shown):
    assert escape_for_terminal(text) == shown
    assert escape_for_terminal(text).isprintable()
    if "\n" not in text:
        assert escape_lines(f"{text}\n{text}") == f"{shown}\n{shown}"


def _run(*args):
    done = subprocess.run([sys.executable, "-m", "imgconv", *map(os.fsencode, map(str, args))], capture_output=True,
                          timeout=300)
    for stream in (done.stdout, done.stderr):
        assert b"\x1b" not in stream and b"\r" not in stream and "\u202e".encode() not in stream, stream
        assert b"\xe9" not in stream, stream  # the raw byte of the Latin-1 name
        stream.decode("utf-8")  # and nothing else that is not UTF-8
    return done.returncode, done.stdout.decode(), done.stderr.decode()


@pytest.fixture
def hostile_folder(tmp_path):
    root = tmp_path / "photos"
    for name in (HOSTILE, os.fsdecode(b"caf\xe9")):
        (root / name).mkdir(parents=True)
        Image.new("RGB", (4, 3), (9, 9, 9)).save(root / name / "a.png")
    (root / HOSTILE / f"{HOSTILE}.png").write_bytes(b"not an image")
    return root


def test_convert_info_and_verify_print_names_escaped(tmp_path, hostile_folder):
    dest = tmp_path / f"out{HOSTILE}.lmdb"
    code, out, err = _run("convert", hostile_folder, dest, "--workers", "0", "--quiet")
    assert code == 1 and f"{SHOWN}.png: cannot decode the image" in err, err
    code, out, err = _run("convert", hostile_folder, dest, "--workers", "0", "--on-error", "skip")
    assert code == 0 and f"{SHOWN}.png: cannot decode the image" in err and f"out{SHOWN}.lmdb (lmdb)" in out, err
    code, out, err = _run("info", dest)
    assert code == 0 and f"labels:  caf\\xe9 1, {SHOWN} 1" in out and f"out{SHOWN}.lmdb" in out, out
    code, out, err = _run("info", dest, "--json")
    assert code == 0 and json.loads(out)["label_names"] == [os.fsdecode(b"caf\xe9"), HOSTILE]  # exact, as JSON
    code, out, err = _run("verify", dest)
    assert code == 0 and f"out{SHOWN}.lmdb" in out, out
    code, out, err = _run("verify", tmp_path / HOSTILE)
    assert code == 1 and f"{SHOWN}: no such file or directory" in err, err


def test_the_progress_bar_names_the_store_escaped(tmp_path, hostile_folder, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    dest = tmp_path / f"bar{HOSTILE}.lmdb"
    assert cli.main(["convert", str(hostile_folder), str(dest), "--workers", "0", "--on-error", "skip"]) == 0
    drawn = terminal.getvalue()
    assert f"bar{SHOWN}.lmdb" in drawn and "\x1b[31m" not in drawn and "\u202e" not in drawn, drawn
