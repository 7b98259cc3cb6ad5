"""Orders: a new purchase, the same order again, pending then complete, renewals, amounts.

End to end: signed notifications over the receiver, a real worker, stored state."""

from __future__ import annotations

from decimal import Decimal

import pytest

from emails.render import render
from tests.support import drain, post_signed
from tests.workers.billing.apply.support import (
    VOICE,
    email_context,
    event,
    ipn,
    lcn,
    state,
)
from workers.billing import policies
from workers.billing.apply import apply
from workers.jobs.actors import settings


def test_a_completed_new_order_creates_an_active_subscription_with_customer_order_and_history(
    client, conn
):
    post_signed(
        client,
        "/ipn",
        ipn("LIC-NEW-1", refno="R1", at="2026-01-10 09:00:00", language="it", test=True),
    )
    drain()

    sub = state(conn, "LIC-NEW-1")
    assert sub["status"] == "active"
    assert (sub["product"], sub["edition"], sub["cycle"]) == ("AWDoc", "TEAM", "monthly")
    assert sub["test"] is True
    assert sub["period_start"] == "2026-01-10T09:00:00Z"
    assert sub["expires_at"] == "2026-02-10T09:00:00Z"
    assert sub["expected_expires_at"] == "2026-02-10T09:00:00Z"
    assert sub["policy_mismatch"] is False
    assert sub["customer"] == {
        "email": "mario.rossi@example.com",
        "name": "Mario Rossi",
        "locale": "it",
    }
    assert [h["change"] for h in sub["history"]] == ["created"]
    orders = conn.execute("SELECT refno, kind, order_status, amount FROM orders").fetchall()
    assert orders == [
        {"refno": "R1", "kind": "new", "order_status": "COMPLETE", "amount": Decimal("30.00")}
    ]
    assert event(conn, 1)["status"] == "processed"


def test_applying_the_same_event_again_changes_nothing(client, conn):
    event_id = post_signed(client, "/ipn", ipn("LIC-TWICE", refno="R2", at="2026-01-10 09:00:00"))
    drain()
    before = state(conn, "LIC-TWICE")
    with conn.transaction():
        row = conn.execute("SELECT * FROM events WHERE id = %s FOR UPDATE", (event_id,)).fetchone()
        applied = apply(conn, row, settings())
    assert applied.changes == [] and applied.email_ids == []
    assert state(conn, "LIC-TWICE") == before
    assert conn.execute("SELECT count(*) AS n FROM orders").fetchone()["n"] == 1


def test_a_pending_order_becomes_active_when_it_completes_and_a_late_pending_changes_nothing(
    client, conn
):
    post_signed(
        client,
        "/ipn",
        ipn("LIC-PEND", status="PAYMENT_AUTHORIZED", refno="R3", at="2026-01-10 09:00:00"),
    )
    drain()
    assert state(conn, "LIC-PEND")["status"] == "pending"
    post_signed(client, "/ipn", ipn("LIC-PEND", refno="R3", at="2026-01-10 09:05:00"))
    drain()
    assert state(conn, "LIC-PEND")["status"] == "active"
    post_signed(
        client, "/ipn", ipn("LIC-PEND", status="PENDING", refno="R3", at="2026-01-10 09:06:00")
    )
    drain()
    sub = state(conn, "LIC-PEND")
    assert sub["status"] == "active"
    assert [h["change"] for h in sub["history"]] == ["created", "activated"]


def test_a_manual_renewal_before_expiry_adds_the_period_to_the_natural_expiry(client, conn):
    post_signed(
        client,
        "/ipn",
        ipn(
            "LIC-REN",
            code="AWDOC-TEAM-Y",
            price="300.00",
            refno="R4",
            at="2025-06-30 00:00:00",
            exp="2026-06-30 00:00:00",
        ),
    )
    post_signed(
        client,
        "/ipn",
        ipn(
            "LIC-REN",
            code="AWDOC-TEAM-Y",
            price="300.00",
            refno="R5",
            at="2026-05-01 10:00:00",
            start="2026-05-01 10:00:00",
            exp="2027-06-30 00:00:00",
            license_type="RENEWAL",
        ),
    )
    drain(threads=1)
    sub = state(conn, "LIC-REN")
    assert sub["expires_at"] == "2027-06-30T00:00:00Z"
    assert sub["expected_expires_at"] == "2027-06-30T00:00:00Z"
    assert sub["policy_mismatch"] is False
    assert sub["history"][-1]["change"] == "renewed"
    assert "natural" in sub["history"][-1]["note"]


def test_a_provider_expiry_that_differs_from_the_policy_is_recorded_and_flagged(client, conn):
    post_signed(
        client,
        "/ipn",
        ipn(
            "LIC-MISM",
            code="AWDOC-TEAM-Y",
            price="300.00",
            refno="R6",
            at="2025-06-30 00:00:00",
            exp="2026-06-30 00:00:00",
        ),
    )
    post_signed(
        client,
        "/ipn",
        ipn(
            "LIC-MISM",
            code="AWDOC-TEAM-Y",
            price="300.00",
            refno="R7",
            at="2026-05-01 10:00:00",
            exp="2027-05-01 10:00:00",
            license_type="RENEWAL",
        ),
    )
    drain(threads=1)
    sub = state(conn, "LIC-MISM")
    assert sub["expires_at"] == "2027-05-01T10:00:00Z"  # the provider is the authority
    assert sub["expected_expires_at"] == "2027-06-30T00:00:00Z"
    assert sub["policy_mismatch"] is True


def test_a_renewal_after_expiry_starts_a_new_period_at_the_payment(client, conn):
    post_signed(
        client,
        "/ipn",
        ipn(
            "LIC-LATE",
            code="AWDOC-TEAM-Y",
            price="300.00",
            refno="R8",
            at="2025-06-30 00:00:00",
            exp="2026-06-30 00:00:00",
        ),
    )
    post_signed(
        client,
        "/ipn",
        ipn(
            "LIC-LATE",
            code="AWDOC-TEAM-Y",
            price="300.00",
            refno="R9",
            at="2026-07-15 08:00:00",
            exp="2027-07-15 08:00:00",
            license_type="RENEWAL",
        ),
    )
    drain(threads=1)
    sub = state(conn, "LIC-LATE")
    assert sub["expires_at"] == sub["expected_expires_at"] == "2027-07-15T08:00:00Z"


def test_an_unknown_product_fails_the_event_naming_the_product(client, conn):
    failed = post_signed(
        client, "/ipn", ipn("LIC-UNK", code="NOT-IN-CATALOG", refno="R16", at="2026-01-10 00:00:00")
    )
    drain()
    row = event(conn, failed)
    assert row["status"] == "failed"
    assert "unknown product NOT-IN-CATALOG" in row["last_error"]
    assert row["last_traceback"]


@pytest.mark.parametrize(
    ("status", "fraud", "expected"),
    [
        ("REFUND", "APPROVED", "refunded"),
        ("REVERSED", "APPROVED", "refunded"),
        ("CANCELED", "APPROVED", "canceled"),
        ("COMPLETE", "DENIED", "canceled"),
    ],
)
def test_refunds_reversals_cancellations_and_denied_fraud_end_access(
    client, conn, status, fraud, expected
):
    post_signed(client, "/ipn", ipn("LIC-END", refno="R17", at="2026-01-10 00:00:00"))
    drain()
    post_signed(
        client,
        "/ipn",
        ipn("LIC-END", status=status, fraud=fraud, refno="R17", at="2026-01-12 00:00:00"),
    )
    drain()
    assert state(conn, "LIC-END")["status"] == expected


@pytest.mark.parametrize(
    ("currency", "price", "stored"),
    [("BHD", "12.345", "12.345"), ("KWD", "0.125", "0.125"), ("JPY", "3000", "3000")],
)
def test_amounts_are_stored_to_the_minor_unit_of_their_currency(
    client, conn, currency, price, stored
):
    post_signed(
        client,
        "/ipn",
        ipn(f"LIC-{currency}", refno=f"R-{currency}", at="2026-01-10 00:00:00",
            price=price, currency=currency),
    )  # fmt: skip
    drain()
    assert state(conn, f"LIC-{currency}")["price_paid"] == stored
    order = conn.execute("SELECT amount FROM orders").fetchone()
    assert str(order["amount"]) == stored


def test_a_bug_in_the_rules_fails_as_a_bug_not_as_an_unreadable_notification(
    client, conn, monkeypatch
):
    post_signed(client, "/ipn", ipn("LIC-BUG", refno="R40", at="2026-01-10 00:00:00"))
    drain()
    renewal = ipn("LIC-BUG", refno="R41", at="2026-02-10 00:00:00", license_type="RENEWAL")
    event_id = post_signed(client, "/ipn", renewal)

    def broken(*args, **kwargs):
        raise ValueError("a bug in the renewal rule")

    monkeypatch.setattr(policies, "quote_renewal", broken)
    with conn.transaction():
        row = conn.execute("SELECT * FROM events WHERE id = %s FOR UPDATE", (event_id,)).fetchone()
        with pytest.raises(ValueError, match="a bug in the renewal rule"):
            apply(conn, row, settings())


def test_a_past_due_without_automatic_renewal_asks_the_customer_to_renew(client, conn):
    post_signed(client, "/ipn", ipn("LIC-MANUAL", refno="R50", at="2026-01-10 00:00:00"))
    drain()
    post_signed(
        client,
        "/lcn",
        lcn(
            "LIC-MANUAL",
            status="PASTDUE",
            expires="2026-02-10 00:00:00",
            updated="2026-02-10 01:00:00",
            recurring=False,
        ),
    )
    drain()
    context = email_context(conn, "payment_failed", "LIC-MANUAL")
    for locale in ("en", "it"):
        rendered = render("payment_failed", locale, context | VOICE)
        for part in (rendered.text, rendered.html):
            assert (
                context["renewal_url"].replace("&", "&amp;" if part is rendered.html else "&")
                in part
            )
        assert "unable to charge" not in rendered.text
        assert "riusciti ad addebitare" not in rendered.text
        assert "retried" not in rendered.text and "ritentato" not in rendered.text
