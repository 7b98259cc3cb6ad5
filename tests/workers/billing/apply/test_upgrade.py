"""Upgrades: the restart and maintenance policies, their credits, and the upgrades refused.

End to end: signed notifications over the receiver, a real worker, stored state."""

from __future__ import annotations

from tests.support import drain, post_signed
from tests.workers.billing.apply.support import (
    event,
    ipn,
    state,
)


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
