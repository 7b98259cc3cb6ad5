"""Text from notifications made safe to print on an operator's terminal."""

from __future__ import annotations

import re

# C0 (newlines and tabs included), DEL, C1, the line and paragraph separators, the bidirectional
# overrides that reorder what is shown, and the backslash (so an escape cannot be faked).
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\\\\]"
)


def _escape(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def visible(value: object) -> str:
    """`value` as text with every control character shown as its escape (\\x1b, \\n, \\u202e).

    An ESC sequence in a customer's name cannot retitle or clear the terminal, nor a newline fake
    a line of output; what was received stays readable, as Python's repr shows it.
    """
    text = value if isinstance(value, str) else str(value)
    return _UNSAFE.sub(_escape, text)


def printable(text: str) -> bool:
    """Whether `text` holds nothing that `visible` would escape."""
    return _UNSAFE.search(text) is None
