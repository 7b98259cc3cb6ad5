"""INS messages: the legacy subscription through its life, by the one renewal rule.

End to end: signed notifications over the receiver, a real worker, stored state."""

from __future__ import annotations

from tests.support import drain
from tests.workers.billing.apply.support import email_context, ins, post_ins, state, t
from workers.store import events


def test_ins_messages_drive_the_legacy_subscription_through_its_life(client, conn):
    post_ins(client, ins("ORDER_CREATED"))
    drain()
    code = "2CO-5001-AWDOC-TEAM-M"
    sub = state(conn, code)
    assert (sub["status"], sub["auto_renew"], sub["expires_at"]) == (
        "active",
        True,
        "2026-02-10T00:00:00Z",
    )
    post_ins(
        client,
        ins(
            "RECURRING_INSTALLMENT_SUCCESS",
            invoice_id="6002",
            next_date="2026-03-10",
            timestamp="2026-02-10 00:05:00",
        ),
    )
    drain()
    assert state(conn, code)["expires_at"] == "2026-03-10T00:00:00Z"
    post_ins(
        client,
        ins("RECURRING_INSTALLMENT_FAILED", invoice_id="6003", timestamp="2026-03-10 00:05:00"),
    )
    drain()
    assert state(conn, code)["status"] == "past_due"
    post_ins(client, ins("RECURRING_STOPPED", invoice_id="6003", timestamp="2026-03-11 00:00:00"))
    drain()
    assert state(conn, code)["auto_renew"] is False
    post_ins(client, ins("REFUND_ISSUED", invoice_id="6003", timestamp="2026-03-12 00:00:00"))
    drain()
    assert state(conn, code)["status"] == "refunded"


def test_an_unreadable_date_fails_the_event_at_once_with_the_reason(client, conn):
    pairs = ins("ORDER_CREATED", timestamp="22/11/2026 10:00")
    post_ins(client, pairs)
    drain()
    row = conn.execute("SELECT status, attempts, last_error FROM events").fetchone()
    assert row["status"] == "failed"
    assert row["attempts"] == 1
    assert (
        "unreadable notification" in row["last_error"] and "22/11/2026 10:00" in row["last_error"]
    )
    assert "timestamp" in row["last_error"]  # the field, so an operator knows what to fix


def test_an_ins_renewal_after_a_lapse_follows_the_one_renewal_rule(client, conn):
    code = "2CO-5001-AWDOC-TEAM-M"
    post_ins(client, ins("ORDER_CREATED"))
    drain()
    post_ins(client, ins("RECURRING_STOPPED", timestamp="2026-01-20 00:00:00"))
    drain()
    renewal = ins(
        "RECURRING_INSTALLMENT_SUCCESS",
        invoice_id="6010",
        next_date="2026-04-01",
        timestamp="2026-03-01 00:00:00",
    )
    renewal = [(n, "25.00" if n == "item_list_amount_1" else v) for n, v in renewal]
    post_ins(client, renewal)
    drain()
    sub = state(conn, code)
    # Lapsed on 2026-02-10: the new period starts at the payment, not at the old expiry.
    assert (sub["period_start"], sub["expires_at"]) == (
        "2026-03-01T00:00:00Z",
        "2026-04-01T00:00:00Z",
    )
    assert sub["price_paid"] == "25.00"
    assert sub["policy_mismatch"] is False
    row = conn.execute(
        "SELECT last_change_at FROM subscriptions WHERE license_code = %s", (code,)
    ).fetchone()
    assert row["last_change_at"] == t("2026-03-01 00:00:00")
    assert email_context(conn, "renewal_confirmation", code)["amount"] == "25.00"


def test_ins_events_record_their_license_so_they_can_be_found_by_it(client, conn):
    post_ins(client, ins("ORDER_CREATED"))
    drain()
    row = conn.execute("SELECT license_codes FROM events").fetchone()
    assert row["license_codes"] == ["2CO-5001-AWDOC-TEAM-M"]
    found = events.search(conn, events.EventFilter(license_code="2CO-5001-AWDOC-TEAM-M"))
    assert [found_event["kind"] for found_event in found] == ["ins"]


def test_ins_emails_state_the_amounts_the_message_carries_for_the_item(client, conn):
    code = "2CO-5001-AWDOC-TEAM-M"
    post_ins(client, ins("ORDER_CREATED"))
    drain()
    failed = ins("RECURRING_INSTALLMENT_FAILED", invoice_id="6003", timestamp="2026-02-10 00:05:00")
    post_ins(client, failed)
    drain()
    context = email_context(conn, "payment_failed", code)
    assert (context["amount"], context["automatic"]) == ("30.00", True)
    # A partial refund of this item, on an invoice of 80.00 in all.
    refund = ins(
        "REFUND_ISSUED",
        invoice_id="6003",
        timestamp="2026-02-12 00:00:00",
        extra={"invoice_list_amount": "80.00"},
    )
    refund = [(n, "12.00" if n == "item_list_amount_1" else v) for n, v in refund]
    post_ins(client, refund)
    drain()
    assert email_context(conn, "refund_notice", code)["amount"] == "12.00"
