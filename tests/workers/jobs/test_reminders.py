"""Tests for the reminder scan: reminders once per offset, notices, expiries, index use."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.support import insert_subscription, queued_event_ids
from workers.billing import dunning
from workers.config import Settings
from workers.jobs import reminders
from workers.store import reminders as store_reminders
from workers.store.jsonable import iso

EXPIRES = datetime(2030, 6, 30, tzinfo=UTC)
EXPIRY_DAY = EXPIRES.date()
# Far from the expiries above, so nothing expires for real while these tests run.
NOW = datetime(2026, 1, 15, 12, tzinfo=UTC)


@pytest.fixture
def settings() -> Settings:
    return dataclasses.replace(
        Settings.from_env(),
        reminder_days=(30, 7, 1),
        auto_renewal_notice_days=7,
        expiry_grace_days=3,
        mail_from="DocFlow <billing@docflow.example>",
    )


def subscription(conn: psycopg.Connection, **values: Any) -> int:
    """Insert a customer and an active annual subscription; the subscription's id."""
    return insert_subscription(conn, **({"expires_at": EXPIRES} | values))


def emails(conn: psycopg.Connection, kind: str | None = None) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT * FROM emails WHERE kind = coalesce(%s, kind) ORDER BY id", (kind,)
    ).fetchall()


def days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def run_days(settings: Settings, first: date, last: date) -> dict[str, int]:
    """Run the scan for every day from `first` to `last`; the summed counts."""
    total: dict[str, int] = {}
    for day in days(first, last):
        for name, count in reminders.run(settings, day, now=NOW).items():
            total[name] = total.get(name, 0) + count
    return total


def test_on_each_offset_day_exactly_one_reminder_per_offset_is_written(conn, settings):
    sub_id = subscription(conn)
    written: dict[date, list[str]] = {}

    for day in days(EXPIRY_DAY - timedelta(days=40), EXPIRY_DAY):
        before = {row["id"] for row in emails(conn)}
        reminders.run(settings, day, now=NOW)
        written[day] = [row["fact"] for row in emails(conn) if row["id"] not in before]

    assert {day: facts for day, facts in written.items() if facts} == {
        EXPIRY_DAY - timedelta(days=30): ["2030-06-30T00:00:00Z/30"],
        EXPIRY_DAY - timedelta(days=7): ["2030-06-30T00:00:00Z/7"],
        EXPIRY_DAY - timedelta(days=1): ["2030-06-30T00:00:00Z/1"],
    }
    rows = emails(conn)
    assert {row["kind"] for row in rows} == {"renewal_reminder"}
    assert {row["subscription_id"] for row in rows} == {sub_id}
    assert [row["context"]["days_left"] for row in rows] == [30, 7, 1]
    assert all(row["context"]["expires_at"] == "2030-06-30T00:00:00Z" for row in rows)
    assert all(row["event_id"] is None and row["locale"] == "it" for row in rows)


def test_running_a_day_again_writes_nothing_more(conn, settings):
    subscription(conn)
    day = EXPIRY_DAY - timedelta(days=7)

    first = reminders.run(settings, day, now=NOW)
    again = reminders.run(settings, day, now=NOW)

    assert first == {
        "expired": 0,
        "expiry_notice": 0,
        "renewal_reminder": 1,
        "auto_renewal_notice": 0,
        "payment_failed": 0,
    }
    assert again == dict.fromkeys(first, 0)
    assert len(emails(conn)) == 1


def test_the_day_is_the_utc_calendar_day_of_the_expiry(conn, settings):
    late = subscription(conn, expires_at=datetime(2030, 6, 30, 23, 59, 59, tzinfo=UTC))
    early = subscription(conn, expires_at=datetime(2030, 7, 1, 0, 0, 0, tzinfo=UTC))

    reminders.run(settings, date(2030, 6, 23), now=NOW)

    assert [(row["subscription_id"], row["fact"]) for row in emails(conn)] == [
        (late, "2030-06-30T23:59:59Z/7")
    ]
    assert early


def test_with_automatic_renewal_on_there_is_no_reminder_but_one_renewal_notice(conn, settings):
    sub_id = subscription(conn, auto_renew=True)

    totals = run_days(settings, EXPIRY_DAY - timedelta(days=40), EXPIRY_DAY)

    rows = emails(conn)
    assert [(row["kind"], row["fact"]) for row in rows] == [
        ("auto_renewal_notice", "2030-06-30T00:00:00Z")
    ]
    assert rows[0]["subscription_id"] == sub_id
    assert totals["renewal_reminder"] == 0 and totals["auto_renewal_notice"] == 1


def test_the_renewal_notice_comes_the_configured_days_ahead(conn, settings):
    subscription(conn, auto_renew=True)
    three_days = dataclasses.replace(settings, auto_renewal_notice_days=3)

    assert (
        reminders.run(three_days, EXPIRY_DAY - timedelta(days=7), now=NOW)["auto_renewal_notice"]
        == 0
    )
    assert (
        reminders.run(three_days, EXPIRY_DAY - timedelta(days=3), now=NOW)["auto_renewal_notice"]
        == 1
    )


def test_after_a_renewal_the_next_cycles_reminders_follow_the_new_expiry(conn, settings):
    sub_id = subscription(conn)
    run_days(settings, EXPIRY_DAY - timedelta(days=30), EXPIRY_DAY - timedelta(days=10))
    assert [row["fact"] for row in emails(conn)] == ["2030-06-30T00:00:00Z/30"]

    # Renewed by hand before expiry: one year from the natural expiry.
    conn.execute(
        "UPDATE subscriptions SET expires_at = %s WHERE id = %s",
        (datetime(2031, 6, 30, tzinfo=UTC), sub_id),
    )
    old_cycle = run_days(settings, EXPIRY_DAY - timedelta(days=9), EXPIRY_DAY)
    new_cycle = run_days(settings, date(2031, 5, 25), date(2031, 6, 30))

    assert old_cycle["renewal_reminder"] == 0
    assert new_cycle["renewal_reminder"] == 3
    assert [row["fact"] for row in emails(conn)] == [
        "2030-06-30T00:00:00Z/30",
        "2031-06-30T00:00:00Z/30",
        "2031-06-30T00:00:00Z/7",
        "2031-06-30T00:00:00Z/1",
    ]


def test_only_live_non_lifetime_subscriptions_get_reminders(conn, settings):
    live = subscription(conn)
    past_due = subscription(conn, status="past_due")
    for status in ("pending", "expired", "canceled", "refunded"):
        subscription(conn, status=status)
    subscription(conn, cycle="lifetime")

    reminders.run(settings, EXPIRY_DAY - timedelta(days=7), now=NOW)

    assert sorted(row["subscription_id"] for row in emails(conn)) == [live, past_due]


def test_lifetime_subscriptions_never_get_reminders_or_expire(conn, settings):
    lifetime = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    subscription(conn, cycle="lifetime", expires_at=lifetime)
    subscription(conn, cycle="annual", expires_at=lifetime)  # the expiry alone says lifetime
    subscription(conn, cycle="lifetime", expires_at=NOW - timedelta(days=1))
    every_offset = dataclasses.replace(settings, reminder_days=(30, 7, 1, 0))

    for day in (date(9999, 12, 30), date(9999, 12, 31), NOW.date()):
        assert sum(reminders.run(every_offset, day, now=NOW).values()) == 0

    statuses = conn.execute("SELECT DISTINCT status FROM subscriptions").fetchall()
    assert statuses == [{"status": "active"}]


def test_a_passed_expiry_expires_the_subscription_with_history_and_one_notice(conn, settings):
    now = datetime(2030, 7, 1, 9, tzinfo=UTC)
    gone = subscription(conn, expires_at=datetime(2030, 7, 1, 8, tzinfo=UTC))
    later_today = subscription(conn, expires_at=datetime(2030, 7, 1, 10, tzinfo=UTC))
    past_due = subscription(conn, status="past_due", expires_at=datetime(2030, 6, 1, tzinfo=UTC))

    counts = reminders.run(settings, now.date(), now=now)
    again = reminders.run(settings, now.date(), now=now)

    assert counts["expired"] == 2 and counts["expiry_notice"] == 2
    assert again["expired"] == 0 and again["expiry_notice"] == 0
    statuses = {
        row["id"]: row["status"]
        for row in conn.execute("SELECT id, status FROM subscriptions").fetchall()
    }
    assert statuses == {gone: "expired", later_today: "active", past_due: "expired"}
    history = conn.execute(
        "SELECT subscription_id, event_id, change, before, after, note "
        "FROM subscription_history ORDER BY subscription_id"
    ).fetchall()
    assert history == [
        {
            "subscription_id": sub_id,
            "event_id": None,
            "change": "expired",
            "before": {"status": before},
            "after": {"status": "expired"},
            "note": "expiry passed without renewal (clock)",
        }
        for sub_id, before in ((gone, "active"), (past_due, "past_due"))
    ]
    notices = emails(conn, "expiry_notice")
    assert sorted((row["subscription_id"], row["fact"]) for row in notices) == [
        (gone, "2030-07-01T08:00:00Z"),
        (past_due, "2030-06-01T00:00:00Z"),
    ]


def test_a_run_never_expires_a_subscription_before_its_expiry_has_really_passed(conn, settings):
    sub_id = subscription(conn, expires_at=datetime(2030, 7, 1, 10, tzinfo=UTC))

    counts = reminders.run(settings, date(2030, 7, 5), now=datetime(2030, 7, 1, 9, tzinfo=UTC))

    assert counts["expired"] == 0
    assert (
        conn.execute("SELECT status FROM subscriptions WHERE id = %s", (sub_id,)).fetchone()[
            "status"
        ]
        == "active"
    )


def test_a_run_for_a_past_day_expires_what_had_expired_by_the_end_of_that_day(conn, settings):
    subscription(conn, expires_at=datetime(2030, 7, 1, 23, tzinfo=UTC))
    subscription(conn, expires_at=datetime(2030, 7, 2, 1, tzinfo=UTC))

    counts = reminders.run(settings, date(2030, 7, 1), now=datetime(2030, 7, 9, tzinfo=UTC))

    assert counts["expired"] == 1


def test_auto_renewing_subscriptions_expire_only_after_the_grace_days(conn, settings):
    expired_at = datetime(2030, 7, 1, 12, tzinfo=UTC)
    sub_id = subscription(conn, auto_renew=True, expires_at=expired_at)

    within = reminders.run(settings, date(2030, 7, 3), now=expired_at + timedelta(days=2))
    after = reminders.run(settings, date(2030, 7, 4), now=expired_at + timedelta(days=3, hours=1))

    assert within["expired"] == 0 and after["expired"] == 1
    assert (
        conn.execute("SELECT status FROM subscriptions WHERE id = %s", (sub_id,)).fetchone()[
            "status"
        ]
        == "expired"
    )


def test_many_due_subscriptions_are_handled_in_batches(conn, settings, monkeypatch):
    monkeypatch.setattr(reminders, "BATCH", 3)
    due = [subscription(conn) for _ in range(8)]
    gone = [subscription(conn, expires_at=NOW - timedelta(days=1)) for _ in range(7)]

    counts = reminders.run(settings, EXPIRY_DAY - timedelta(days=1), now=NOW)

    assert counts == {
        "expired": 7,
        "expiry_notice": 7,
        "renewal_reminder": 8,
        "auto_renewal_notice": 0,
        "payment_failed": 0,
    }
    rows = emails(conn)
    assert sorted(row["subscription_id"] for row in rows) == sorted(due + gone)


def test_the_emails_written_are_enqueued_for_sending(conn, settings):
    subscription(conn)
    reminders.run(settings, EXPIRY_DAY - timedelta(days=30), now=NOW)

    rows = emails(conn)
    assert queued_event_ids() == [row["id"] for row in rows]  # send_email carries the email id
    assert all(row["enqueued_at"] is not None for row in rows)


def test_two_scans_at_once_write_each_reminder_once(conn, settings):
    for _ in range(40):
        subscription(conn)
    barrier = threading.Barrier(2)
    results: list[dict[str, int]] = []

    def scan() -> None:
        barrier.wait()
        results.append(reminders.run(settings, EXPIRY_DAY - timedelta(days=7), now=NOW))

    threads = [threading.Thread(target=scan) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(result["renewal_reminder"] for result in results) == 40
    assert len(emails(conn)) == 40


@pytest.mark.parametrize(
    "instant",
    [
        datetime(2030, 6, 30, tzinfo=UTC),
        datetime(2030, 6, 30, 23, 59, 59, tzinfo=UTC),
        datetime(2030, 6, 30, 1, 2, 3, 450, tzinfo=UTC),
        datetime(2030, 6, 30, 1, 2, 3, 999999, tzinfo=UTC),
    ],
)
def test_facts_spell_the_expiry_as_the_lifecycle_does(conn, instant):
    subscription(conn, expires_at=instant)
    query = sql.SQL("SELECT {} AS fact FROM subscriptions s").format(store_reminders.FACT_TIME)
    assert conn.execute(query).fetchone()["fact"] == iso(instant)


@pytest.mark.parametrize("query", ["DUE", "EXPIRED", "DUNNING"])
def test_the_scan_queries_can_use_their_partial_index(conn, query):
    subscription(conn)
    params = {
        "lo": EXPIRES,
        "hi": EXPIRES + timedelta(days=1),
        "after_at": EXPIRES,
        "after_id": 0,
        "auto_renew": False,
        "kind": "renewal_reminder",
        "suffix": "/7",
        "limit": 500,
        "cutoff": NOW,
        "grace_cutoff": NOW,
        "dunning_cutoff": NOW,
        "lifetime": reminders.LIFETIME_FROM,
        "begun_by": NOW,
        "day": "3",
    }
    index = "subscriptions_past_due_idx" if query == "DUNNING" else "subscriptions_live_expiry_idx"
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        plan = conn.execute(
            sql.SQL("EXPLAIN {}").format(getattr(store_reminders, query)), params
        ).fetchall()
    text = "\n".join(row["QUERY PLAN"] for row in plan)
    assert index in text


@pytest.mark.parametrize(
    "instant",
    [datetime(2030, 6, 30, tzinfo=UTC), datetime(2030, 6, 30, 1, 2, 3, 450, tzinfo=UTC)],
)
def test_dunning_facts_spell_the_episode_as_the_lifecycle_does(conn, instant):
    sub_id = subscription(conn, status="past_due")
    conn.execute("UPDATE subscriptions SET past_due_since = %s WHERE id = %s", (instant, sub_id))
    query = sql.SQL("SELECT {} || '3' AS fact FROM subscriptions s").format(
        store_reminders.SINCE_FACT
    )
    assert conn.execute(query).fetchone()["fact"] == dunning.fact(instant, 3)


def bought(conn: psycopg.Connection, at: datetime, expires: datetime, **values: Any) -> int:
    """A monthly subscription whose current period started at `at`; its id."""
    return subscription(conn, cycle="monthly", expires_at=expires, period_start=at, **values)


def test_no_reminder_goes_out_for_an_offset_that_falls_on_the_day_of_purchase(conn, settings):
    # A 30-day month: the 30-days-before offset falls on the day it was bought.
    today = bought(conn, datetime(2030, 4, 1, 10, tzinfo=UTC), datetime(2030, 5, 1, 10, tzinfo=UTC))
    # Bought the day before: the whole offset day was inside its period.
    earlier = bought(
        conn, datetime(2030, 3, 31, 23, tzinfo=UTC), datetime(2030, 5, 1, 9, tzinfo=UTC)
    )
    run_days(settings, date(2030, 3, 30), date(2030, 5, 1))
    written = {
        sub_id: [row["fact"][-3:] for row in emails(conn) if row["subscription_id"] == sub_id]
        for sub_id in (today, earlier)
    }
    assert written == {today: ["Z/7", "Z/1"], earlier: ["/30", "Z/7", "Z/1"]}


def test_no_reminder_goes_out_for_an_offset_before_the_current_period_started(conn, settings):
    # Renewed early by hand: the new period starts at the old expiry, 2030-06-01.
    sub_id = bought(conn, datetime(2030, 6, 1, tzinfo=UTC), datetime(2030, 7, 1, tzinfo=UTC))
    run_days(settings, date(2030, 5, 25), date(2030, 7, 1))
    assert [row["fact"] for row in emails(conn) if row["subscription_id"] == sub_id] == [
        "2030-07-01T00:00:00Z/7",
        "2030-07-01T00:00:00Z/1",
    ]


def test_no_automatic_renewal_notice_goes_out_on_the_day_of_purchase(conn, settings):
    fresh = bought(
        conn,
        datetime(2030, 6, 23, 8, tzinfo=UTC),
        datetime(2030, 6, 30, 8, tzinfo=UTC),
        auto_renew=True,
    )
    reminders.run(settings, date(2030, 6, 23), now=NOW)
    assert [row for row in emails(conn) if row["subscription_id"] == fresh] == []
