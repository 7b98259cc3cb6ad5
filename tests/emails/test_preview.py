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


def test_a_locale_without_templates_is_refused_naming_the_locales_there_are() -> None:
    with pytest.raises(ValueError, match=r"'fr'.*en, it"):
        preview("expiry_notice", "fr")


def test_the_preview_speaks_in_the_voice_it_is_given() -> None:
    voice = {"merchant_name": "Bottega Nova", "support_email": "aiuto@bottega.example"}
    text = preview("expiry_notice", "en", "text", voice)
    assert "support team at aiuto@bottega.example." in text
    assert text.rstrip().split("--")[0].rstrip().endswith("The Bottega Nova team")


def test_an_unknown_kind_or_format_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="order_confirmation"):
        preview("newsletter", "it")
    with pytest.raises(ValueError, match="html"):
        preview("expiry_notice", "it", "pdf")
