"""A stored body read once into typed notifications: amounts, UTC times, enums, named errors."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from workers.ops import samples
from workers.protocol import form
from workers.protocol.errors import MalformedNotification
from workers.protocol.notifications import (
    InsMessage,
    LicenseChange,
    LicenseKind,
    LicenseStatus,
    MessageType,
    OrderNotification,
    parse,
)


def _body(pairs: list[tuple[str, str]]) -> bytes:
    return form.encode(pairs)


def _order(**extra: str) -> OrderNotification:
    items = (
        samples.SampleItem(license_ref="LIC-1", quantity=3, price="10.00", license_type="renew"),
        samples.SampleItem(code="AWDOC-PRO-A", license_ref="LIC-2", license_type="UPGRADE"),
        samples.SampleItem(code="SHIPPING", license_ref="", license_exp="2026-02-10 00:00:00"),
    )
    pairs = samples.ipn_pairs(
        items=items, refno="R1", sale_date="2026-01-10 09:00:00", extra=extra, language="IT"
    )
    parsed = parse("ipn", _body(pairs))
    assert isinstance(parsed, OrderNotification)
    return parsed


def test_an_ipn_becomes_an_order_with_decimal_amounts_utc_times_and_license_kinds() -> None:
    order = _order(CUSTOMEREMAIL="anna@example.com", FRAUD_STATUS="denied")
    assert (order.refno, order.status, order.fraud, order.currency) == (
        "R1", "COMPLETE", "DENIED", "EUR",
    )  # fmt: skip
    assert order.at == datetime(2026, 1, 10, 9, tzinfo=UTC)
    assert order.customer.email == "anna@example.com" and order.customer.language == "IT"
    first, second, shipping = order.lines
    assert (first.license_ref, first.kind, first.quantity) == ("LIC-1", LicenseKind.RENEWAL, 3)
    assert first.price == Decimal("10.00") and isinstance(first.total, Decimal)
    assert first.vat is not None and first.total == Decimal("30.00") + first.vat
    assert second.kind is LicenseKind.UPGRADE and second.code == "AWDOC-PRO-A"
    assert shipping.expires == datetime(2026, 2, 10, tzinfo=UTC)
    assert order.total == sum((line.total or Decimal(0) for line in order.lines), Decimal(0))


def test_an_unreadable_amount_or_quantity_is_one_not_stated_as_it_always_was() -> None:
    order = _order(**{"IPN_PRICE[]": "ten", "IPN_QTY[]": "-2", "IPN_TOTALGENERAL": ""})
    assert order.lines[0].price is None and order.lines[0].quantity == 1
    assert order.total is None


def test_an_unreadable_date_is_malformed_naming_its_field() -> None:
    with pytest.raises(MalformedNotification) as raised:
        _order(PAYMENTDATE="10/01/2026")
    assert raised.value.field == "PAYMENTDATE" and "10/01/2026" in str(raised.value)
    pairs = samples.lcn_pairs(
        license_code="L", expiration_date="2026-02-10", date_updated="yesterday"
    )
    with pytest.raises(MalformedNotification) as raised:
        parse("lcn", _body(pairs))
    assert raised.value.field == "DATE_UPDATED"


def _change(recurring: str | None, status: str = "PAST DUE") -> LicenseChange:
    pairs = samples.lcn_pairs(
        license_code="LIC-9",
        status=status,
        expiration_date="2026-02-10",
        date_updated="2026-01-20 08:00:00",
    )
    pairs = [pair for pair in pairs if pair[0] != "RECURRING"]
    if recurring is not None:
        pairs.append(("RECURRING", recurring))
    parsed = parse("lcn", _body(pairs))
    assert isinstance(parsed, LicenseChange)
    return parsed


def test_an_lcn_becomes_a_license_change_with_its_status_folded_and_recurring_tri_state() -> None:
    change = _change("1")
    assert change.license_code == "LIC-9" and change.status is LicenseStatus.PAST_DUE
    assert change.stated_status == "PAST DUE" and change.changed_by == "SYSTEM"
    assert change.expires == datetime(2026, 2, 10, tzinfo=UTC)
    assert change.updated == datetime(2026, 1, 20, 8, tzinfo=UTC)
    assert [_change(value).recurring for value in ("1", "0", None)] == [True, False, None]
    assert _change("1", status="cancelled").status is LicenseStatus.CANCELED
    unknown = _change("1", status="frozen")
    assert unknown.status is None and unknown.stated_status == "FROZEN"


def _message(message_type: str, **extra: str) -> InsMessage:
    pairs = samples.ins_pairs(
        message_type=message_type,
        sale_id="5001",
        invoice_id="6001",
        secret_word="word",
        customer_email="anna@example.com",
        customer_language="it",
        items=(("Team", "AWD-TEAM-M", "30.50", "2026-02-10"), ("Pro", "AWD-PRO-A", "-5", "")),
        timestamp="2026-01-10 09:00:00",
        extra=extra,
    )
    parsed = parse("ins", _body(pairs))
    assert isinstance(parsed, InsMessage)
    return parsed


def test_an_ins_becomes_a_message_with_its_type_items_amounts_and_next_dates() -> None:
    message = _message("recurring_installment_success", fraud_status="PASS")
    assert message.type is MessageType.RECURRING_INSTALLMENT_SUCCESS
    assert (message.sale_id, message.invoice_id, message.currency) == ("5001", "6001", "EUR")
    assert message.at == datetime(2026, 1, 10, 9, tzinfo=UTC) and message.fraud == "pass"
    assert message.customer.email == "anna@example.com" and message.customer.language == "it"
    team, pro = message.items
    assert (team.item_id, team.amount, team.next_date) == (
        "AWD-TEAM-M", Decimal("30.50"), datetime(2026, 2, 10, tzinfo=UTC),
    )  # fmt: skip
    assert (pro.amount, pro.next_date) == (Decimal("-5"), None)
    assert message.license_code(team) == "2CO-5001-AWD-TEAM-M"


def test_an_unknown_ins_message_keeps_its_name_and_a_missing_time_is_none() -> None:
    message = _message("NEW_THING", timestamp="", sale_date_placed="")
    assert message.type is None and message.message == "NEW_THING" and message.at is None
    with pytest.raises(MalformedNotification) as raised:
        _message("ORDER_CREATED", timestamp="22/11/2026 10:00")
    assert raised.value.field == "timestamp"
