"""Render an email kind with sample data, for ``rinnovo emails preview``."""

from __future__ import annotations

from emails.contexts import sample_context
from emails.render import KINDS, LOCALES, render

FORMATS: tuple[str, ...] = ("text", "html")


def preview(kind: str, locale: str, fmt: str = "text") -> str:
    """Return ``kind`` rendered from sample data: subject and text body, or the HTML document."""
    if kind not in KINDS:
        raise ValueError(f"unknown email kind {kind!r}; expected one of {', '.join(KINDS)}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown preview format {fmt!r}; expected one of {', '.join(FORMATS)}")
    rendered = render(kind, locale, sample_context(kind), default_locale=LOCALES[0])
    if fmt == "html":
        return rendered.html
    return f"Subject: {rendered.subject}\n\n{rendered.text}"
