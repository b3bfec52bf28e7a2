"""Text for a terminal: names from the input shown as they are, never acted on.

File, folder and class names come from the data, and a name may hold
characters a terminal obeys: escape sequences (``\\x1b[31m`` recolours,
``\\x1b]0;...\\x07`` retitles the window, others move the cursor), a carriage
return that overwrites the line before, bidirectional overrides that show
``exe.txt`` as ``txt.exe``, and bytes that are not UTF-8 at all. Everything
the command line prints goes through :func:`escape_for_terminal` (one line
at a time, names included), which shows those characters as escapes instead;
every other character, accented or not, is printed as it is. A name printed
as JSON (``info --json``) keeps its exact characters: JSON escapes them itself.
"""
import re

# C0 and C1 controls and DEL, line and paragraph separators, the bidirectional controls
# (marks, embeddings, overrides, isolates), and lone surrogates: how Python keeps the bytes of
# a name that is not UTF-8 (U+DC80..U+DCFF for bytes 0x80..0xFF), never printable themselves.
_ACTED_ON = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: "re.Match[str]") -> str:
    char = match.group()
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"  # the byte the file name holds there
    if code < 0x100:
        return _NAMED.get(char, f"\\x{code:02x}")
    return f"\\u{code:04x}"


def escape_for_terminal(text: str) -> str:
    """``text`` with every character a terminal would act on written as an escape (``\\x1b``, ``\\r``, ``\\u202e``).

    Control characters, line separators and bidirectional controls become
    Python-style escapes; a byte of a name that is not UTF-8 (kept by Python
    as a lone surrogate) becomes ``\\xNN``, the byte itself. Backslashes
    stay as they are.
    """
    return _ACTED_ON.sub(_escaped, text)


def escape_lines(text: str) -> str:
    """:func:`escape_for_terminal` of each line of ``text``, a report of several lines: its newlines stay."""
    return "\n".join(escape_for_terminal(line) for line in text.split("\n"))
