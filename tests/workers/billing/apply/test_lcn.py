"""License changes: status, expiry and automatic renewal, in DATE_UPDATED order.

End to end: signed notifications over the receiver, a real worker, stored state."""

from __future__ import annotations

import pytest

from tests.support import drain, post_signed
from tests.workers.billing.apply.support import (
    event,
    ipn,
    lcn,
    state,
)
from workers.billing.apply import SubscriptionNotYetKnown, apply
from workers.jobs.actors import settings


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
