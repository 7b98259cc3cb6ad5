"""Tests for building the MIME message of a rendered email."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import pytest

from emails.contexts import sample_context
from emails.message import build_message, make_message_id, parse_mailbox
from emails.render import KINDS, Rendered, render

SENDER = "DocFlow <billing@docflow.example>"
TO = "giulia.rossi@example.com"
MESSAGE_ID = "<email-42.0123456789abcdef@docflow.example>"
WHEN = datetime(2026, 5, 31, 9, 0, tzinfo=UTC)


def rendered(kind: str = "order_confirmation", locale: str = "it", **changes: object) -> Rendered:
    """Render ``kind`` from its sample context with ``changes``."""
    return render(kind, locale, sample_context(kind) | changes)


def reparse(message: EmailMessage) -> EmailMessage:
    """Serialize ``message`` as it goes on the wire and parse it back."""
    parsed = BytesParser(policy=policy.default).parsebytes(message.as_bytes())
    assert isinstance(parsed, EmailMessage)
    return parsed


def build(r: Rendered | None = None, /, **kwargs: object) -> EmailMessage:
    """Build a message with the test defaults, overridden by ``kwargs``."""
    args: dict[str, object] = {"to": TO, "sender": SENDER, "message_id": MESSAGE_ID, "date": WHEN}
    return build_message(r or rendered(), **(args | kwargs))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_becomes_multipart_alternative_with_the_contract_headers(kind: str) -> None:
    r = rendered(kind)
    msg = reparse(build(r))
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert all(p.get_content_charset() == "utf-8" for p in parts)
    assert parts[0].get_content().replace("\r\n", "\n") == r.text
    assert parts[1].get_content().replace("\r\n", "\n") == r.html
    assert msg["X-Rinnovo-Kind"] == kind
    assert msg["Message-ID"] == MESSAGE_ID
    assert msg["Subject"] == r.subject
    assert msg["From"].addresses[0].addr_spec == "billing@docflow.example"
    assert msg["From"].addresses[0].display_name == "DocFlow"
    assert msg["To"].addresses[0].addr_spec == TO
    assert msg["Date"].datetime == WHEN
    assert msg["MIME-Version"] == "1.0"


def test_the_date_defaults_to_now_in_rfc_5322_form() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    msg = reparse(build(date=None))
    assert re.match(r"^\w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}$", str(msg["Date"]))
    assert before <= msg["Date"].datetime <= datetime.now(UTC)


def test_a_date_in_another_offset_keeps_its_instant() -> None:
    rome = timezone(timedelta(hours=2))
    msg = reparse(build(date=datetime(2026, 5, 31, 11, 0, tzinfo=rome)))
    assert msg["Date"].datetime == WHEN


def test_a_naive_date_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        build(date=datetime(2026, 5, 31, 9, 0))


def test_a_crlf_in_the_customer_name_never_adds_a_bcc_header() -> None:
    evil = "Mario Rossi\r\nBcc: evil@example.com"
    r = rendered(customer_name=evil, product="DocFlow\r\nBcc: evil@example.com")
    raw = build(r, to=TO, to_name=evil).as_bytes()
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    headers = raw.split(b"\r\n\r\n", 1)[0]
    assert b"\nbcc:" not in headers.lower()
    assert msg["Bcc"] is None and msg["Cc"] is None
    assert all(part["Bcc"] is None for part in msg.walk())
    assert [a.addr_spec for a in msg["To"].addresses] == [TO]
    assert msg["To"].addresses[0].display_name == "Mario Rossi Bcc: evil@example.com"
    assert "\n" not in msg["Subject"]


@pytest.mark.parametrize(
    "field",
    [
        {"to": "mario@example.com\r\nBcc: evil@example.com"},
        {"to": "mario@example.com\nBcc: evil@example.com"},
        {"to": "Mario\r\n <mario@example.com>"},
        {"sender": "billing@docflow.example\r\nBcc: evil@example.com"},
        {"message_id": "<a@b>\r\nBcc: evil@example.com"},
        {"extra_headers": {"Reply-To": "help@docflow.example\r\nBcc: evil@example.com"}},
        {"extra_headers": {"Reply-To": "help@docflow.example\0"}},
        {"to": "mario\0@example.com"},
    ],
)
def test_cr_lf_or_nul_in_an_address_id_or_header_is_a_value_error(field: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        build(**field)


def test_a_subject_with_a_line_break_is_refused_even_if_rendered_by_hand() -> None:
    r = rendered()
    forged = Rendered(r.kind, r.locale, "Hi\r\nBcc: evil@example.com", r.text, r.html)
    with pytest.raises(ValueError, match="subject"):
        build(forged)


@pytest.mark.parametrize(
    "headers",
    [
        {"Bcc": "evil@example.com"},
        {"to": "evil@example.com"},
        {"X-Rinnovo-Kind": "refund_notice"},
        {"Bad Name": "x"},
        {"Bad:Name": "x"},
    ],
)
def test_extra_headers_cannot_replace_the_builders_headers_or_add_recipients(
    headers: dict[str, str],
) -> None:
    with pytest.raises(ValueError):
        build(extra_headers=headers)


def test_extra_headers_are_added() -> None:
    msg = reparse(build(extra_headers={"Reply-To": "help@docflow.example", "X-Outbox-Id": "42"}))
    assert msg["Reply-To"] == "help@docflow.example"
    assert msg["X-Outbox-Id"] == "42"
    assert msg["Auto-Submitted"] == "auto-generated"


@pytest.mark.parametrize("address", ["not an address", "a@b.it, c@d.it", "", "@example.com"])
def test_anything_but_one_address_is_refused(address: str) -> None:
    with pytest.raises(ValueError):
        build(to=address)


def test_display_names_with_special_characters_are_quoted() -> None:
    name = 'Rossi, Giulia "GR" (Uff. Acquisti) <capo>'
    msg = reparse(build(to_name=name))
    assert [a.addr_spec for a in msg["To"].addresses] == [TO]
    assert msg["To"].addresses[0].display_name == name


def test_non_ascii_names_and_subjects_survive_the_wire() -> None:
    msg = reparse(build(rendered(product="Niccolò Café"), to_name="Niccolò Ferrè"))
    assert msg["To"].addresses[0].display_name == "Niccolò Ferrè"
    assert "Niccolò Café" in msg["Subject"]
    assert msg.as_bytes().isascii()


def test_a_sender_with_a_display_name_is_parsed() -> None:
    address = parse_mailbox("Rinnovo Billing <billing@docflow.example>")
    assert (address.display_name, address.addr_spec) == (
        "Rinnovo Billing",
        "billing@docflow.example",
    )


def test_an_invalid_message_id_is_refused() -> None:
    for bad in ("email-42@docflow.example", "<no-at-sign>", "<a b@c>"):
        with pytest.raises(ValueError):
            build(message_id=bad)


def test_message_ids_are_the_same_on_every_retry_of_the_same_email() -> None:
    first = make_message_id(42, "docflow.example")
    assert first == make_message_id(42, "docflow.example")
    assert re.fullmatch(r"<email-42\.[0-9a-f]{16}@docflow\.example>", first)
    assert first != make_message_id(43, "docflow.example")
    assert first != make_message_id(42, "other.example")
    assert first != make_message_id(42, "docflow.example", salt="2026-05-31T09:00:00Z")
    assert reparse(build(message_id=first))["Message-ID"] == first


@pytest.mark.parametrize(
    ("email_id", "domain"),
    [(-1, "docflow.example"), (True, "docflow.example"), (1, "bad domain"), (1, "a\r\nb"), (1, "")],
)
def test_make_message_id_refuses_bad_ids_and_domains(email_id: int, domain: str) -> None:
    with pytest.raises(ValueError):
        make_message_id(email_id, domain)


def test_an_unknown_kind_cannot_be_sent() -> None:
    r = rendered()
    with pytest.raises(ValueError, match="kind"):
        build(Rendered("newsletter\r\nBcc: x@y.z", r.locale, r.subject, r.text, r.html))
