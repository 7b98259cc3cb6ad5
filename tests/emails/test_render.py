"""Tests for rendering every email kind in every locale."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from emails.contexts import OPTIONAL_KEYS, REQUIRED_KEYS, sample_context
from emails.render import (
    KINDS,
    LOCALES,
    TEMPLATES_DIR,
    Rendered,
    TemplateError,
    render,
    resolve_locale,
)

LEFTOVERS = ("{{", "}}", "{%", "%}", "{#", "#}", "None", "undefined", "Undefined")

# The sample data's dates and amounts as each locale writes them (NBSP shown as a space).
EXPECTED: dict[str, dict[str, Any]] = {
    "it": {"expiry": "30 giu 2026", "money": "1.000,00 €", "upgrade": ("16 gen 2027", "713,70 €")},
    "en": {"expiry": "Jun 30, 2026", "money": "€1,000.00", "upgrade": ("Jan 16, 2027", "€713.70")},
}
# Refunds and cancellations end access: no expiry date is shown.
WITHOUT_DATES = {"refund_notice", "cancellation_notice"}
WITH_AMOUNT = {
    "auto_renewal_notice",
    "renewal_confirmation",
    "payment_failed",
    "refund_notice",
}


def spaced(text: str) -> str:
    """Return ``text`` with no-break spaces as plain spaces, for readable expectations."""
    return text.replace("\xa0", " ").replace("\u202f", " ")


def context(kind: str, **changes: Any) -> dict[str, Any]:
    """Return the sample context of ``kind`` with ``changes`` applied."""
    return sample_context(kind) | changes


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_renders_in_every_locale_with_nothing_left_unfilled(
    kind: str, locale: str
) -> None:
    rendered = render(kind, locale, sample_context(kind))
    assert rendered.kind == kind
    assert rendered.locale == locale
    for part in (rendered.subject, rendered.text, rendered.html):
        assert part.strip()
        for leftover in LEFTOVERS:
            assert leftover not in part, f"{leftover!r} left in {kind}/{locale}"
    assert "\n" not in rendered.subject and "\r" not in rendered.subject
    assert rendered.html.startswith("<!DOCTYPE html>")
    assert f'<html lang="{locale}">' in rendered.html
    assert "DF7K2M9QX4" in rendered.text and "DF7K2M9QX4" in rendered.html


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("kind", KINDS)
def test_dates_and_money_are_written_the_way_the_locale_writes_them(kind: str, locale: str) -> None:
    rendered = render(kind, locale, sample_context(kind))
    text, html = spaced(rendered.text), spaced(rendered.html)
    expected = EXPECTED[locale]
    if kind == "upgrade_confirmation":
        new_expiry, amount_due = expected["upgrade"]
        assert new_expiry in text and new_expiry in html
        assert amount_due in text and amount_due in html
    elif kind not in WITHOUT_DATES:
        assert expected["expiry"] in text and expected["expiry"] in html
    if kind in WITH_AMOUNT:
        assert expected["money"] in text and expected["money"] in html


@pytest.mark.parametrize("kind", KINDS)
def test_every_template_exists_for_every_locale(kind: str) -> None:
    for locale in LOCALES:
        for name in ("subject.txt", "body.txt", "body.html"):
            assert (TEMPLATES_DIR / kind / locale / name).is_file()


def test_no_template_builds_a_link_by_hand() -> None:
    for path in Path(TEMPLATES_DIR).rglob("*.*"):
        source = path.read_text(encoding="utf-8")
        assert "://" not in source, path
        assert "mailto:" not in source, path
        for href in re.findall(r'href="([^"]*)"', source):
            assert href in (
                "{{ url }}",
                "{{ portal_url }}",
                "{{ renewal_url }}",
                "{{ support_url }}",
            ), (path, href)


@pytest.mark.parametrize("kind", KINDS)
def test_a_missing_required_value_is_a_template_error_never_a_blank(kind: str) -> None:
    for key in REQUIRED_KEYS[kind]:
        incomplete = sample_context(kind)
        del incomplete[key]
        with pytest.raises(TemplateError, match=key):
            render(kind, "it", incomplete)
        with pytest.raises(TemplateError, match=key):
            render(kind, "en", incomplete | {key: None})


@pytest.mark.parametrize("kind", KINDS)
def test_optional_values_may_be_left_out(kind: str) -> None:
    minimal = {key: sample_context(kind)[key] for key in REQUIRED_KEYS[kind]}
    for locale in LOCALES:
        rendered = render(kind, locale, minimal)
        assert "None" not in rendered.text + rendered.html
    assert "support_url" in OPTIONAL_KEYS[kind]


def test_an_unknown_kind_is_a_template_error() -> None:
    with pytest.raises(TemplateError, match="unknown email kind"):
        render("newsletter", "it", sample_context("order_confirmation"))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("expires_at", datetime(2026, 6, 30)),  # naive: times must be aware
        ("expires_at", "the end of June"),
        ("cycle", "weekly"),
        ("quantity", "many"),
        ("portal_url", "javascript:alert(1)"),
        ("renewal_url", "ftp://example.com/renew"),
    ],
)
def test_a_value_the_template_cannot_use_is_a_template_error(key: str, value: object) -> None:
    with pytest.raises(TemplateError):
        render("renewal_reminder", "it", context("renewal_reminder", **{key: value}))


def test_iso_dates_without_a_time_are_accepted_for_dates() -> None:
    ctx = context("expiry_notice", expires_at="2026-06-30")
    assert "30 giu 2026" in render("expiry_notice", "it", ctx).text


def test_iso_strings_are_accepted_for_dates() -> None:
    rendered = render(
        "expiry_notice", "it", context("expiry_notice", expires_at="2026-06-30T00:00:00Z")
    )
    assert "30 giu 2026" in rendered.text


def test_dates_are_shown_in_utc_whatever_the_offset_given() -> None:
    late_evening_in_new_york = "2026-06-29T20:00:00-04:00"  # 2026-06-30 00:00 UTC
    rendered = render(
        "expiry_notice", "en", context("expiry_notice", expires_at=late_evening_in_new_york)
    )
    assert "Jun 30, 2026" in rendered.text


def test_a_customer_named_like_a_script_is_escaped_in_html() -> None:
    name = "<script>alert(1)</script>"
    for kind in KINDS:
        rendered = render(kind, "it", context(kind, customer_name=name, product='Doc "Flow" & Co'))
        assert "<script>" not in rendered.html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered.html
        assert "Doc &#34;Flow&#34; &amp; Co" in rendered.html
        assert name in rendered.text  # plain text is not HTML: shown as written


def test_links_with_ampersands_are_escaped_inside_html_attributes() -> None:
    url = "https://shop.example.com/renew?license=L1&email=a%40b.it"
    rendered = render("renewal_reminder", "en", context("renewal_reminder", renewal_url=url))
    assert 'href="https://shop.example.com/renew?license=L1&amp;email=a%40b.it"' in rendered.html
    assert url in rendered.text


def test_a_line_break_in_a_value_cannot_break_the_subject() -> None:
    rendered = render(
        "order_confirmation",
        "en",
        context("order_confirmation", product="DocFlow\r\nBcc: evil@example.com\u2028X"),
    )
    assert "\r" not in rendered.subject and "\n" not in rendered.subject
    assert "\u2028" not in rendered.subject
    assert rendered.subject == "Order 170623894 confirmed: DocFlow Bcc: evil@example.com X BUSINESS"


@pytest.mark.parametrize(
    ("requested", "default", "expected"),
    [
        ("it", "en", "it"),
        ("it_IT", "en", "it"),
        ("IT", "en", "it"),
        ("it-CH", "en", "it"),
        ("it_IT.UTF-8", "en", "it"),
        ("en_GB", "it", "en"),
        ("de", "it", "it"),
        ("de_DE", "it_IT", "it"),
        (None, "it", "it"),
        ("", "it", "it"),
        ("de", "fr", "en"),
        (None, "", "en"),
    ],
)
def test_resolve_locale_picks_the_language_else_the_default_else_english(
    requested: str | None, default: str, expected: str
) -> None:
    assert resolve_locale(requested, default) == expected


def test_an_unsupported_locale_falls_back_to_the_default_locale() -> None:
    rendered = render(
        "order_confirmation", "de_DE", sample_context("order_confirmation"), default_locale="it"
    )
    assert rendered.locale == "it"
    assert rendered.subject.startswith("Conferma ordine")


def test_billing_cycles_are_translated() -> None:
    monthly = context("order_confirmation", cycle="monthly")
    assert "Cadenza di fatturazione: mensile" in render("order_confirmation", "it", monthly).text
    assert "Billing cycle: monthly" in render("order_confirmation", "en", monthly).text
    annual = render("renewal_reminder", "it", sample_context("renewal_reminder")).text
    assert "annuale" in annual and "un anno dopo il 30 giu 2026" in annual


@pytest.mark.parametrize(
    ("days_left", "italian", "english"),
    [(0, "scade oggi", "expires today"), (1, "scade domani", "expires tomorrow"),
     (7, "scade tra 7 giorni", "expires in 7 days")],
)  # fmt: skip
def test_the_renewal_reminder_says_when_in_words(
    days_left: int, italian: str, english: str
) -> None:
    ctx = context("renewal_reminder", days_left=days_left)
    assert render("renewal_reminder", "it", ctx).subject.endswith(italian)
    assert render("renewal_reminder", "en", ctx).subject.endswith(english)


def test_the_renewal_reminder_explains_that_early_renewal_adds_to_the_natural_expiry() -> None:
    it = render("renewal_reminder", "it", sample_context("renewal_reminder")).text
    en = render("renewal_reminder", "en", sample_context("renewal_reminder")).text
    assert "si aggiunge alla data di scadenza naturale" in it
    assert "is added to your natural expiry date" in en
    assert sample_context("renewal_reminder")["renewal_url"] in it


def test_the_order_confirmation_says_what_the_portal_holds() -> None:
    it = render("order_confirmation", "it", sample_context("order_confirmation")).text
    assert "https://secure.2checkout.com/myaccount/" in it
    for item in ("fattura", "date di scadenza", "copia dell'ordine"):
        assert item in it
    for item in ("Quantità: 10", "Riferimento ordine: 170623894", "Edizione: BUSINESS"):
        assert item in it


def test_the_upgrade_confirmation_shows_what_changed_and_the_credit() -> None:
    text = spaced(render("upgrade_confirmation", "it", sample_context("upgrade_confirmation")).text)
    assert "Edizione: TEAM → BUSINESS" in text
    assert "Quantità: 5 → 10" in text
    assert "Cadenza di fatturazione: mensile → annuale" in text
    assert "Prodotto: DocFlow\n" in text  # unchanged: no arrow
    assert "Credito dall'abbonamento precedente: 15,00 €" in text
    # What the provider charged, tax included, and the tax in it.
    assert "Importo addebitato: 713,70 €" in text and "di cui IVA: 128,70 €" in text


def test_amounts_are_left_out_where_no_notification_stated_them() -> None:
    ctx = context("renewal_confirmation", amount=None, tax=None)
    text = render("renewal_confirmation", "en", ctx).text
    assert "Amount paid" not in text and "Tax included" not in text
    ctx = context("payment_failed", amount=None)
    rendered = render("payment_failed", "it", ctx)
    assert "addebitare per il rinnovo" in spaced(rendered.text)
    assert "Importo" not in rendered.text and "Importo" not in rendered.html


def test_italian_dates_take_the_right_article() -> None:
    ctx = context("expiry_notice", expires_at=datetime(2026, 8, 8, tzinfo=UTC))
    assert "è scaduto l'8 ago 2026" in render("expiry_notice", "it", ctx).text
    ctx = context(
        "renewal_confirmation",
        expires_at=datetime(2026, 1, 11, tzinfo=UTC),
        new_expires_at=datetime(2027, 1, 11, tzinfo=UTC),
    )
    assert render("renewal_confirmation", "it", ctx).subject.endswith("fino all'11 gen 2027")


def test_a_test_order_is_flagged_in_subject_and_body() -> None:
    ctx = context("order_confirmation", test=True)
    it, en = render("order_confirmation", "it", ctx), render("order_confirmation", "en", ctx)
    assert it.subject.startswith("[PROVA] ") and "ordine di prova" in it.html.lower()
    assert en.subject.startswith("[TEST] ") and "[TEST ORDER]" in en.text
    assert (
        "[PROVA]"
        not in render("order_confirmation", "it", sample_context("order_confirmation")).subject
    )


def test_an_empty_customer_name_gives_a_plain_greeting() -> None:
    rendered = render("expiry_notice", "it", context("expiry_notice", customer_name=""))
    assert rendered.text.startswith("Ciao,\n")


def test_optional_amounts_and_retry_dates_appear_only_when_given() -> None:
    with_amount = render("auto_renewal_notice", "it", sample_context("auto_renewal_notice"))
    without = render("auto_renewal_notice", "it", context("auto_renewal_notice", amount=None))
    assert "1.000,00" in with_amount.text and "addebito di" in with_amount.text
    assert "addebito di" not in without.text
    retry = render("payment_failed", "en", sample_context("payment_failed")).text
    no_retry = render("payment_failed", "en", context("payment_failed", next_retry_at=None)).text
    assert "retried automatically on Jul 3, 2026" in retry
    assert "retried" not in no_retry


def test_amounts_may_be_decimals_strings_or_integers() -> None:
    for amount in (Decimal("1000.00"), "1000", 1000):
        text = spaced(render("refund_notice", "it", context("refund_notice", amount=amount)).text)
        assert "1.000,00 €" in text


def test_rendered_is_a_frozen_value() -> None:
    rendered = render("expiry_notice", "en", sample_context("expiry_notice"))
    assert isinstance(rendered, Rendered)
    with pytest.raises(AttributeError):
        rendered.subject = "changed"  # type: ignore[misc]


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("kind", KINDS)
def test_every_email_is_signed_by_the_merchant_and_gives_the_support_address(
    kind: str, locale: str
) -> None:
    voice = {
        "merchant_name": "Bottega Nova",
        "support_email": "aiuto@bottega.example",
        "support_url": "https://bottega.example/help",
    }
    rendered = render(kind, locale, sample_context(kind) | voice)
    for body in (rendered.text, rendered.html):
        assert "Bottega Nova" in body
        assert "aiuto@bottega.example" in body
        assert "https://bottega.example/help" in body


@pytest.mark.parametrize("key", ["merchant_name", "support_email"])
def test_an_email_without_the_merchant_voice_is_refused_never_rendered_blank(key: str) -> None:
    context = sample_context("expiry_notice")
    del context[key]
    with pytest.raises(TemplateError, match=key):
        render("expiry_notice", "en", context)
