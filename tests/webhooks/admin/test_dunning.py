"""Operators see dunning and suppressions: /metrics, the admin API and the admin page."""

from __future__ import annotations

from datetime import timedelta

from tests.webhooks.admin.test_page import TOKEN, admin, logged_in, plain  # noqa: F401
from tests.webhooks.test_metrics import parse, value
from tests.workers.billing.test_dunning import BEGAN, LICENSE, fall_past_due, recover
from workers.store import suppressions


def unsubscribe_someone(conn) -> None:
    customer_id = conn.execute("SELECT id FROM customers").fetchone()["id"]
    suppressions.record(conn, customer_id, "reminders", "one-click")


def test_metrics_count_past_due_subscriptions_and_recoveries(client, conn):
    fall_past_due(client)
    during = parse(client.get("/metrics").text)
    recover(client, BEGAN + timedelta(days=2))
    after = parse(client.get("/metrics").text)

    assert value(during, "rinnovo_dunning_past_due") == 1
    assert value(during, "rinnovo_dunning_recovered_total") == 0
    assert value(after, "rinnovo_dunning_past_due") == 0
    assert value(after, "rinnovo_dunning_recovered_total") == 1


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_the_api_lists_suppressions_and_email_statuses_off_and_suppressed(admin, client, conn):  # noqa: F811
    api = admin
    fall_past_due(client)
    unsubscribe_someone(conn)
    conn.execute("UPDATE emails SET status = 'off' WHERE kind = 'order_confirmation'")

    listed = api.get("/admin/api/suppressions", headers=AUTH)
    off = api.get("/admin/api/emails?status=off", headers=AUTH)

    assert listed.status_code == 200
    [row] = listed.get_json()["suppressions"]
    assert (row["address"], row["family"], row["how"]) == (
        "mario.rossi@example.com",
        "reminders",
        "one-click",
    )
    assert row["created_at"].endswith("Z")
    assert [email["kind"] for email in off.get_json()["emails"]] == ["order_confirmation"]
    assert api.get("/admin/api/suppressions?colour=red", headers=AUTH).status_code == 400


def test_the_admin_page_shows_suppressions_and_what_a_subscription_was_sent(
    logged_in,  # noqa: F811
    client,
    conn,
):
    fall_past_due(client)
    unsubscribe_someone(conn)
    conn.execute("UPDATE emails SET status = 'off' WHERE kind = 'order_confirmation'")

    listing = logged_in.get("/admin/suppressions")
    subscription = logged_in.get(f"/admin/subscriptions/{LICENSE}")

    assert listing.status_code == 200
    assert "mario.rossi@example.com reminders one-click" in plain(listing.text)
    text = plain(subscription.text)
    assert "order_confirmation" in text and " off " in text
    assert "payment_failed past_due/" in text
