"""The lifecycle end to end: signed notifications over the receiver, a real worker, stored state."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from emails.render import render
from tests.support import drain, post_signed
from workers.billing import policies
from workers.billing.apply import SubscriptionNotYetKnown, apply
from workers.jobs.actors import settings
from workers.ops import samples
from workers.store import events, subscriptions

# What the mailer adds at sending time: the merchant's signature and support line.
VOICE = settings().merchant_voice()


def ipn(
    license_code: str,
    *,
    status: str = "COMPLETE",
    code: str = "AWDOC-TEAM-M",
    refno: str,
    at: str,
    start: str = "",
    exp: str = "",
    price: str = "30.00",
    quantity: int = 1,
    license_type: str = "REGULAR",
    language: str = "en",
    test: bool = False,
    fraud: str = "APPROVED",
    currency: str = "EUR",
) -> list[tuple[str, str]]:
    """An IPN for one license, with the order's times and the license's dates."""
    item = samples.SampleItem(
        code=code,
        pid="",
        name=code,
        license_ref=license_code,
        quantity=quantity,
        price=price,
        license_type=license_type,
        license_start=start,
        license_exp=exp,
    )
    return samples.ipn_pairs(
        status=status,
        items=(item,),
        refno=refno,
        sale_date=at,
        language=language,
        test=test,
        currency=currency,
        email="mario.rossi@example.com",
        extra={"AVANGATE_CUSTOMER_REFERENCE": "CUST-1", "FRAUD_STATUS": fraud},
    )


def lcn(
    license_code: str,
    *,
    status: str = "ACTIVE",
    expires: str,
    updated: str,
    recurring: bool = False,
) -> list[tuple[str, str]]:
    return samples.lcn_pairs(
        license_code=license_code,
        status=status,
        expiration_date=expires,
        date_updated=updated,
        recurring=recurring,
    )


def state(conn, license_code: str) -> dict:
    described = subscriptions.describe(conn, license_code)
    assert described is not None
    return described


def event(conn, event_id: int) -> dict:
    return conn.execute("SELECT * FROM events WHERE id = %s", (event_id,)).fetchone()


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


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


def test_a_restart_upgrade_credits_the_old_period_by_the_second_and_restarts_it(client, conn):
    post_signed(
        client,
        "/ipn",
        ipn(
            "LIC-UP",
            code="AWDOC-TEAM-M",
            price="30.00",
            refno="R10",
            at="2026-01-01 00:00:00",
            exp="2026-02-01 00:00:00",
        ),
    )
    post_signed(
        client,
        "/ipn",
        ipn(
            "LIC-UP",
            code="AWDOC-BUSINESS-Y",
            price="585.00",
            refno="R11",
            at="2026-01-16 12:00:00",
            exp="2027-01-16 12:00:00",
            license_type="UPGRADE",
        ),
    )
    drain(threads=1)
    sub = state(conn, "LIC-UP")
    assert (sub["edition"], sub["cycle"], sub["product_code"]) == (
        "BUSINESS",
        "annual",
        "AWDOC-BUSINESS-Y",
    )
    assert sub["period_start"] == "2026-01-16T12:00:00Z"
    assert sub["expires_at"] == sub["expected_expires_at"] == "2027-01-16T12:00:00Z"
    assert sub["price_paid"] == "600.00"
    upgrade = sub["history"][-1]
    assert upgrade["change"] == "upgraded"
    assert "credit 15.00, due 585.00" in upgrade["note"]


def test_a_maintenance_upgrade_within_90_days_resets_expiry_to_a_year_from_the_upgrade(
    client, conn
):
    post_signed(
        client,
        "/ipn",
        ipn(
            "LIC-GD",
            code="GD-WORDS-NET-SB",
            price="1000.00",
            refno="R12",
            currency="USD",
            at="2026-01-10 00:00:00",
            exp="2027-01-10 00:00:00",
        ),
    )
    post_signed(
        client,
        "/ipn",
        ipn(
            "LIC-GD",
            code="GD-TOTAL-NET-SB",
            price="2000.00",
            refno="R13",
            currency="USD",
            at="2026-03-01 00:00:00",
            exp="2027-03-01 00:00:00",
            license_type="UPGRADE",
        ),
    )
    drain(threads=1)
    sub = state(conn, "LIC-GD")
    assert sub["product_code"] == "GD-TOTAL-NET-SB"
    assert sub["expires_at"] == sub["expected_expires_at"] == "2027-03-01T00:00:00Z"
    assert "due 2000.00" in sub["history"][-1]["note"]


def test_a_cross_platform_upgrade_is_refused_and_the_event_fails_with_the_reason(client, conn):
    post_signed(
        client,
        "/ipn",
        ipn(
            "LIC-X",
            code="GD-WORDS-NET-SB",
            price="1000.00",
            refno="R14",
            at="2026-01-10 00:00:00",
            exp="2027-01-10 00:00:00",
        ),
    )
    drain()
    refused = post_signed(
        client,
        "/ipn",
        ipn(
            "LIC-X",
            code="GD-TOTAL-JAVA-SB",
            price="2000.00",
            refno="R15",
            at="2026-03-01 00:00:00",
            license_type="UPGRADE",
        ),
    )
    drain()
    failed = event(conn, refused)
    assert failed["status"] == "failed"
    assert "upgrade refused" in failed["last_error"]
    assert ".NET" in failed["last_error"] and "Java" in failed["last_error"]
    sub = state(conn, "LIC-X")
    assert sub["product_code"] == "GD-WORDS-NET-SB"
    assert [h["change"] for h in sub["history"]] == ["created"]
    assert conn.execute("SELECT count(*) AS n FROM orders").fetchone()["n"] == 1


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


def test_an_lcn_changes_status_expiry_and_auto_renew(client, conn):
    post_signed(client, "/ipn", ipn("LIC-LCN", refno="R18", at="2026-01-10 00:00:00"))
    drain()
    post_signed(
        client,
        "/lcn",
        lcn(
            "LIC-LCN",
            status="PAST DUE",
            expires="2026-02-10 00:00:00",
            updated="2026-02-10 01:00:00",
            recurring=True,
        ),
    )
    drain()
    sub = state(conn, "LIC-LCN")
    assert (sub["status"], sub["auto_renew"]) == ("past_due", True)
    post_signed(
        client,
        "/lcn",
        lcn(
            "LIC-LCN",
            status="ACTIVE",
            expires="2026-03-10",
            updated="2026-02-12 01:00:00",
            recurring=True,
        ),
    )
    drain()
    sub = state(conn, "LIC-LCN")
    assert (sub["status"], sub["expires_at"]) == ("active", "2026-03-10T00:00:00Z")
    assert sub["expected_expires_at"] == "2026-03-10T00:00:00Z"


def test_an_older_lcn_is_recorded_but_does_not_undo_a_newer_one(client, conn):
    post_signed(client, "/ipn", ipn("LIC-OOO", refno="R19", at="2026-01-10 00:00:00"))
    drain()
    post_signed(
        client,
        "/lcn",
        lcn(
            "LIC-OOO",
            status="DISABLED",
            expires="2026-02-10 00:00:00",
            updated="2026-01-20 00:00:00",
        ),
    )
    drain()
    stale = post_signed(
        client,
        "/lcn",
        lcn(
            "LIC-OOO",
            status="ACTIVE",
            expires="2026-02-10 00:00:00",
            updated="2026-01-15 00:00:00",
            recurring=True,
        ),
    )
    drain()
    sub = state(conn, "LIC-OOO")
    assert (sub["status"], sub["auto_renew"]) == ("canceled", False)
    assert sub["history"][-1]["change"] == "stale"
    assert event(conn, stale)["status"] == "ignored"


def test_an_lcn_for_a_license_not_yet_known_is_retried_not_dropped(client, conn):
    event_id = post_signed(
        client,
        "/lcn",
        lcn("LIC-EARLY", expires="2026-02-10 00:00:00", updated="2026-01-20 00:00:00"),
    )
    with conn.transaction():
        row = conn.execute("SELECT * FROM events WHERE id = %s FOR UPDATE", (event_id,)).fetchone()
        with pytest.raises(SubscriptionNotYetKnown):
            apply(conn, row, settings())


def _ins(message_type: str, **kwargs) -> list[tuple[str, str]]:
    return samples.ins_pairs(
        message_type=message_type,
        sale_id="5001",
        invoice_id=kwargs.pop("invoice_id", "6001"),
        secret_word="tango",
        customer_email="cliente@example.it",
        customer_language="it",
        items=[
            ("AWDoc TEAM (monthly)", "AWDOC-TEAM-M", "30.00", kwargs.pop("next_date", "2026-02-10"))
        ],
        timestamp=kwargs.pop("timestamp", "2026-01-10 00:00:00"),
        extra=kwargs.pop("extra", {"invoice_status": "approved", "item_rec_status_1": "live"}),
    )


def _post_ins(client, pairs) -> None:
    from tests.support import FORM, form

    response = client.post("/ins", data=form.encode(pairs), headers=FORM)
    assert response.status_code == 200


def test_ins_messages_drive_the_legacy_subscription_through_its_life(client, conn):
    _post_ins(client, _ins("ORDER_CREATED"))
    drain()
    code = "2CO-5001-AWDOC-TEAM-M"
    sub = state(conn, code)
    assert (sub["status"], sub["auto_renew"], sub["expires_at"]) == (
        "active",
        True,
        "2026-02-10T00:00:00Z",
    )
    _post_ins(
        client,
        _ins(
            "RECURRING_INSTALLMENT_SUCCESS",
            invoice_id="6002",
            next_date="2026-03-10",
            timestamp="2026-02-10 00:05:00",
        ),
    )
    drain()
    assert state(conn, code)["expires_at"] == "2026-03-10T00:00:00Z"
    _post_ins(
        client,
        _ins("RECURRING_INSTALLMENT_FAILED", invoice_id="6003", timestamp="2026-03-10 00:05:00"),
    )
    drain()
    assert state(conn, code)["status"] == "past_due"
    _post_ins(client, _ins("RECURRING_STOPPED", invoice_id="6003", timestamp="2026-03-11 00:00:00"))
    drain()
    assert state(conn, code)["auto_renew"] is False
    _post_ins(client, _ins("REFUND_ISSUED", invoice_id="6003", timestamp="2026-03-12 00:00:00"))
    drain()
    assert state(conn, code)["status"] == "refunded"


def test_an_unreadable_date_fails_the_event_at_once_with_the_reason(client, conn):
    pairs = _ins("ORDER_CREATED", timestamp="22/11/2026 10:00")
    _post_ins(client, pairs)
    drain()
    row = conn.execute("SELECT status, attempts, last_error FROM events").fetchone()
    assert row["status"] == "failed"
    assert row["attempts"] == 1
    assert (
        "unreadable notification" in row["last_error"] and "22/11/2026 10:00" in row["last_error"]
    )
    assert "timestamp" in row["last_error"]  # the field, so an operator knows what to fix


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


def test_an_lcn_without_recurring_leaves_automatic_renewal_as_it_was(client, conn):
    post_signed(client, "/ipn", ipn("LIC-REC", refno="R30", at="2026-01-10 00:00:00"))
    drain()
    post_signed(
        client,
        "/lcn",
        lcn(
            "LIC-REC", expires="2026-02-10 00:00:00", updated="2026-01-11 00:00:00", recurring=True
        ),
    )
    drain()
    without = [
        (name, value)
        for name, value in lcn(
            "LIC-REC", expires="2026-02-10 00:00:00", updated="2026-01-12 00:00:00"
        )
        if name != "RECURRING"
    ]
    post_signed(client, "/lcn", without)
    drain()
    assert state(conn, "LIC-REC")["auto_renew"] is True


def email_context(conn, kind: str, license_code: str) -> dict:
    row = conn.execute(
        """
        SELECT e.context FROM emails e JOIN subscriptions s ON s.id = e.subscription_id
        WHERE e.kind = %s AND s.license_code = %s
        """,
        (kind, license_code),
    ).fetchone()
    assert row is not None, f"no {kind} email for {license_code}"
    return row["context"]


def test_a_renewal_email_states_the_order_total_with_its_tax_not_the_unit_price(client, conn):
    post_signed(client, "/ipn", ipn("LIC-TAX", refno="R40", at="2026-01-01 00:00:00"))
    post_signed(
        client,
        "/ipn",
        ipn("LIC-TAX", refno="R41", at="2026-01-31 10:00:00", license_type="RENEWAL"),
    )
    drain(threads=1)
    context = email_context(conn, "renewal_confirmation", "LIC-TAX")
    # 30.00 + 22 % VAT: the customer was charged 36.60.
    assert (context["amount"], context["tax"]) == ("36.60", "6.60")
    text = render("renewal_confirmation", "it", context | VOICE).text
    assert "36,60" in text and "6,60" in text and "30,00" not in text


def test_an_upgrade_email_states_what_the_provider_charged_with_its_tax(client, conn):
    post_signed(
        client,
        "/ipn",
        ipn("LIC-UPTAX", refno="R42", at="2026-01-01 00:00:00", exp="2026-02-01 00:00:00"),
    )
    post_signed(
        client,
        "/ipn",
        ipn(
            "LIC-UPTAX",
            code="AWDOC-BUSINESS-Y",
            price="585.00",
            refno="R43",
            at="2026-01-16 12:00:00",
            exp="2027-01-16 12:00:00",
            license_type="UPGRADE",
        ),
    )
    drain(threads=1)
    context = email_context(conn, "upgrade_confirmation", "LIC-UPTAX")
    assert (context["credit"], context["amount"], context["tax"]) == ("15.00", "713.70", "128.70")
    rendered = render("upgrade_confirmation", "en", context | VOICE)
    assert "713.70" in rendered.text and "713.70" in rendered.html
    assert "585.00" not in rendered.text


def test_a_refund_email_states_the_amount_the_refund_notification_carries(client, conn):
    post_signed(client, "/ipn", ipn("LIC-REFUND", refno="R44", at="2026-01-10 00:00:00"))
    drain()
    refund = ipn("LIC-REFUND", status="REFUND", refno="R44", at="2026-01-12 00:00:00")
    # A partial refund: the provider refunds 10.00 of the 36.60 paid.
    refund = [
        (name, "-10.00" if name in ("IPN_TOTAL[]", "IPN_TOTALGENERAL") else value)
        for name, value in refund
    ]
    post_signed(client, "/ipn", refund)
    drain()
    assert email_context(conn, "refund_notice", "LIC-REFUND")["amount"] == "10.00"


def test_a_maintenance_upgrade_after_a_renewal_credits_the_original_purchase(client, conn):
    common = {"currency": "EUR", "code": "GD-WORDS-JAVA-SB"}
    post_signed(
        client,
        "/ipn",
        ipn(
            "LIC-ORIG", price="920.00", refno="R45", at="2025-01-10 00:00:00",
            exp="2026-01-10 00:00:00", **common,
        ),
    )  # fmt: skip
    post_signed(
        client,
        "/ipn",
        ipn(
            "LIC-ORIG", price="552.00", refno="R46", at="2026-02-01 00:00:00",
            exp="2027-02-01 00:00:00", license_type="RENEWAL", **common,
        ),
    )  # fmt: skip
    post_signed(
        client,
        "/ipn",
        ipn(
            "LIC-ORIG", code="GD-TOTAL-JAVA-SB", price="1840.00", refno="R47",
            at="2026-07-01 00:00:00", exp="2027-02-01 00:00:00", license_type="UPGRADE",
        ),
    )  # fmt: skip
    drain(threads=1)
    sub = state(conn, "LIC-ORIG")
    assert sub["product_code"] == "GD-TOTAL-JAVA-SB"
    assert "credit 920.00, due 1840.00" in sub["history"][-1]["note"]


def test_an_upgrade_the_provider_sends_after_expiry_is_recorded_and_flagged_with_the_reason(
    client, conn
):
    post_signed(
        client,
        "/ipn",
        ipn("LIC-LATEUP", refno="R48", at="2026-01-01 00:00:00", exp="2026-02-01 00:00:00"),
    )
    late = post_signed(
        client,
        "/ipn",
        ipn(
            "LIC-LATEUP",
            code="AWDOC-BUSINESS-M",
            price="60.00",
            refno="R49",
            at="2026-02-03 00:00:00",
            exp="2026-03-03 00:00:00",
            license_type="UPGRADE",
        ),
    )
    drain(threads=1)
    assert event(conn, late)["status"] == "processed"
    sub = state(conn, "LIC-LATEUP")
    assert (sub["product_code"], sub["expires_at"]) == ("AWDOC-BUSINESS-M", "2026-03-03T00:00:00Z")
    assert sub["policy_mismatch"] is True
    note = sub["history"][-1]["note"]
    assert "policy mismatch" in note and "only an active subscription can be upgraded" in note
    assert "policy mismatch" in event(conn, late)["outcome"]


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


def test_an_ins_renewal_after_a_lapse_follows_the_one_renewal_rule(client, conn):
    code = "2CO-5001-AWDOC-TEAM-M"
    _post_ins(client, _ins("ORDER_CREATED"))
    drain()
    _post_ins(client, _ins("RECURRING_STOPPED", timestamp="2026-01-20 00:00:00"))
    drain()
    renewal = _ins(
        "RECURRING_INSTALLMENT_SUCCESS",
        invoice_id="6010",
        next_date="2026-04-01",
        timestamp="2026-03-01 00:00:00",
    )
    renewal = [(n, "25.00" if n == "item_list_amount_1" else v) for n, v in renewal]
    _post_ins(client, renewal)
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
    _post_ins(client, _ins("ORDER_CREATED"))
    drain()
    row = conn.execute("SELECT license_codes FROM events").fetchone()
    assert row["license_codes"] == ["2CO-5001-AWDOC-TEAM-M"]
    found = events.search(conn, events.EventFilter(license_code="2CO-5001-AWDOC-TEAM-M"))
    assert [found_event["kind"] for found_event in found] == ["ins"]


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


def test_an_upgrade_for_a_refunded_subscription_still_fails_for_an_operator(client, conn):
    post_signed(
        client,
        "/ipn",
        ipn("LIC-GONE", refno="R51", at="2026-01-01 00:00:00", exp="2026-02-01 00:00:00"),
    )
    post_signed(
        client, "/ipn", ipn("LIC-GONE", status="REFUND", refno="R51", at="2026-01-02 00:00:00")
    )
    drain(threads=1)
    late = post_signed(
        client,
        "/ipn",
        ipn(
            "LIC-GONE",
            code="AWDOC-BUSINESS-M",
            price="60.00",
            refno="R52",
            at="2026-02-03 00:00:00",
            license_type="UPGRADE",
        ),
    )
    drain()
    assert event(conn, late)["status"] == "failed"
    assert state(conn, "LIC-GONE")["status"] == "refunded"


def test_ins_emails_state_the_amounts_the_message_carries_for_the_item(client, conn):
    code = "2CO-5001-AWDOC-TEAM-M"
    _post_ins(client, _ins("ORDER_CREATED"))
    drain()
    failed = _ins(
        "RECURRING_INSTALLMENT_FAILED", invoice_id="6003", timestamp="2026-02-10 00:05:00"
    )
    _post_ins(client, failed)
    drain()
    context = email_context(conn, "payment_failed", code)
    assert (context["amount"], context["automatic"]) == ("30.00", True)
    # A partial refund of this item, on an invoice of 80.00 in all.
    refund = _ins(
        "REFUND_ISSUED",
        invoice_id="6003",
        timestamp="2026-02-12 00:00:00",
        extra={"invoice_list_amount": "80.00"},
    )
    refund = [(n, "12.00" if n == "item_list_amount_1" else v) for n, v in refund]
    _post_ins(client, refund)
    drain()
    assert email_context(conn, "refund_notice", code)["amount"] == "12.00"


def test_an_upgrade_after_an_early_renewal_credits_the_prepaid_month_too(client, conn):
    post_signed(
        client,
        "/ipn",
        ipn("LIC-PREPAID", refno="R60", at="2026-01-01 00:00:00", exp="2026-02-01 00:00:00"),
    )
    post_signed(
        client,
        "/ipn",
        ipn(
            "LIC-PREPAID",
            refno="R61",
            at="2026-01-01 12:00:00",
            exp="2026-03-01 00:00:00",
            license_type="RENEWAL",
        ),
    )  # two months prepaid: 60.00 EUR
    post_signed(
        client,
        "/ipn",
        ipn(
            "LIC-PREPAID",
            code="AWDOC-BUSINESS-M",
            price="0.97",
            refno="R62",
            at="2026-01-02 00:00:00",
            exp="2026-02-02 00:00:00",
            license_type="UPGRADE",
        ),
    )
    drain(threads=1)
    sub = state(conn, "LIC-PREPAID")
    assert sub["product_code"] == "AWDOC-BUSINESS-M"
    # January's 30 unused days at January's rate, and all of February: not just 30.00.
    assert "credit 59.03, due 0.97" in sub["history"][-1]["note"]
