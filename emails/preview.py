"""Render an email kind with sample data, for ``rinnovo emails preview``."""

from __future__ import annotations

from collections.abc import Mapping

from emails.contexts import sample_context
from emails.render import KINDS, LOCALES, render, template_locale

FORMATS: tuple[str, ...] = ("text", "html")


def preview(
    kind: str, locale: str, fmt: str = "text", voice: Mapping[str, str] | None = None
) -> str:
    """Return ``kind`` rendered from sample data in the merchant's ``voice`` (signature, support).

    The subject and text body, or the HTML document. A locale without templates is a ValueError
    naming the ones there are: a preview never stands in another language for the one asked.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown email kind {kind!r}; expected one of {', '.join(KINDS)}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown preview format {fmt!r}; expected one of {', '.join(FORMATS)}")
    chosen = template_locale(locale)
    if chosen is None:
        raise ValueError(f"no templates in locale {locale!r}; there are: {', '.join(LOCALES)}")
    rendered = render(kind, chosen, sample_context(kind) | dict(voice or {}), default_locale=chosen)
    if fmt == "html":
        return rendered.html
    return f"Subject: {rendered.subject}\n\n{rendered.text}"
