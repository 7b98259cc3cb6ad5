"""Tests for previewing an email kind with sample data."""

from __future__ import annotations

import pytest

from emails.preview import preview
from emails.render import KINDS, LOCALES


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("kind", KINDS)
def test_the_text_preview_shows_the_subject_then_the_body(kind: str, locale: str) -> None:
    text = preview(kind, locale)
    subject, _, body = text.partition("\n\n")
    assert subject.startswith("Subject: ") and len(subject) > len("Subject: ")
    assert body.startswith("Ciao Giulia Rossi," if locale == "it" else "Hello Giulia Rossi,")


def test_the_html_preview_is_a_whole_document_in_the_locale() -> None:
    html = preview("renewal_reminder", "it_IT", "html")
    assert html.startswith("<!DOCTYPE html>")
    assert '<html lang="it">' in html
    assert html.rstrip().endswith("</html>")


def test_an_unsupported_locale_previews_in_english() -> None:
    assert preview("expiry_notice", "de").startswith("Subject: Your DocFlow BUSINESS")


def test_an_unknown_kind_or_format_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="order_confirmation"):
        preview("newsletter", "it")
    with pytest.raises(ValueError, match="html"):
        preview("expiry_notice", "it", "pdf")
