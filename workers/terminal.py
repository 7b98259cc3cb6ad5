"""Text from notifications made safe to print on an operator's terminal."""

from __future__ import annotations

import re
import unicodedata

# In ASCII: C0 (newlines and tabs included), DEL and the backslash (so an escape cannot be faked).
_ASCII_UNSAFE = re.compile("[\x00-\x1f\x7f\\\\]")
# Beyond ASCII, by category: C1 controls, format characters (the bidirectional overrides that
# reorder what is shown, zero-width characters) and the line and paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def _escape(char: str) -> str:
    return char.encode("unicode_escape").decode("ascii")  # \x1b, \n, \u202e, \\


def _visible_char(char: str) -> str:
    if char == "\\" or unicodedata.category(char) in _UNSAFE_CATEGORIES:
        return _escape(char)
    return char


def visible(value: object) -> str:
    """`value` as text with every control character shown as its escape (\\x1b, \\n, \\u202e).

    An ESC sequence in a customer's name cannot retitle or clear the terminal, nor a newline fake
    a line of output; what was received stays readable, as Python's repr shows it.
    """
    text = value if isinstance(value, str) else str(value)
    if text.isascii():
        return _ASCII_UNSAFE.sub(lambda match: _escape(match.group()), text)
    return "".join(map(_visible_char, text))


def printable(text: str) -> bool:
    """Whether `text` holds nothing that `visible` would escape."""
    return visible(text) == text
