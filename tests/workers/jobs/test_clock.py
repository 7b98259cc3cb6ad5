"""Tests for the clock's jobs: event relay, email relay and the reminder scan for today."""

from __future__ import annotations

import dataclasses
import itertools
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from tests.support import queued_event_ids
from workers.config import Settings
from workers.jobs import clock


@pytest.fixture
def settings() -> Settings:
    return dataclasses.replace(
        Settings.from_env(), reminder_days=(30, 7, 1), mail_from="Shop <shop@example.com>"
    )


def subscription(conn: psycopg.Connection, expires_at: datetime, **values: Any) -> int:
    customer_id = conn.execute(
        """
        INSERT INTO customers (email, first_name, locale, customer_key)
        VALUES ('giulia@example.com', 'Giulia', 'it', gen_random_uuid()::text) RETURNING id
        """
    ).fetchone()["id"]
    row = {"license_code": "LIC0000001", "auto_renew": False} | values
    return conn.execute(
        """
        INSERT INTO subscriptions (license_code, customer_id, product_code, product, status,
            auto_renew, currency, expires_at, period_start)
        VALUES (%(license_code)s, %(customer_id)s, 'DOCFLOW-BIZ', 'DocFlow', 'active',
            %(auto_renew)s, 'EUR', %(expires_at)s, %(expires_at)s - interval '1 year')
        RETURNING id
        """,
        row | {"customer_id": customer_id, "expires_at": expires_at},
    ).fetchone()["id"]


def today_at_noon() -> datetime:
    return datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)


def test_the_schedule_has_the_event_relay_the_email_relay_and_an_hourly_reminder_scan(settings):
    scheduler = clock.build_scheduler(settings)
    jobs = {job.id: job for job in scheduler.get_jobs()}

    assert set(jobs) == {"relay", "email_relay", "reminders"}
    assert jobs["relay"].func is clock.relay_job
    assert jobs["email_relay"].func is clock.email_relay_job
    assert jobs["reminders"].func is clock.reminder_job
    for relay in ("relay", "email_relay"):  # often enough for the recovery objective
        assert isinstance(jobs[relay].trigger, IntervalTrigger)
        assert jobs[relay].trigger.interval == timedelta(seconds=10)
    trigger = jobs["reminders"].trigger
    assert isinstance(trigger, CronTrigger)
    fires = []
    moment = datetime(2030, 1, 1, tzinfo=UTC)
    for _ in range(3):
        moment = trigger.get_next_fire_time(None, moment + timedelta(seconds=1))
        fires.append(moment)
    assert [b - a for a, b in itertools.pairwise(fires)] == [timedelta(hours=1)] * 2
    assert all(job.max_instances == 1 for job in jobs.values())


def test_the_reminder_job_runs_the_scan_for_today(conn, settings):
    week = subscription(conn, today_at_noon() + timedelta(days=7))
    auto = subscription(
        conn, today_at_noon() + timedelta(days=7), license_code="LIC0000002", auto_renew=True
    )
    gone = subscription(conn, today_at_noon() - timedelta(days=1), license_code="LIC0000003")

    clock.reminder_job(settings)
    clock.reminder_job(settings)  # the next hour's run finds nothing new

    rows = conn.execute("SELECT subscription_id, kind, fact FROM emails ORDER BY id").fetchall()
    assert sorted((row["subscription_id"], row["kind"]) for row in rows) == sorted(
        [(gone, "expiry_notice"), (week, "renewal_reminder"), (auto, "auto_renewal_notice")]
    )
    assert queued_event_ids() == sorted(row["id"] for row in conn.execute("SELECT id FROM emails"))


def test_the_email_relay_job_enqueues_emails_the_broker_never_took(conn, settings):
    sub_id = subscription(conn, today_at_noon() + timedelta(days=100))
    email_id = conn.execute(
        """
        INSERT INTO emails (subscription_id, kind, fact, to_address, locale, context, message_id,
                            created_at)
        VALUES (%s, 'expiry_notice', 'F', 'giulia@example.com', 'it', '{}', '<x@example.com>',
                now() - interval '10 minutes')
        RETURNING id
        """,
        (sub_id,),
    ).fetchone()["id"]

    clock.email_relay_job(settings)
    clock.email_relay_job(settings)

    assert queued_event_ids() == [email_id]


def test_with_redis_down_the_jobs_write_the_emails_and_leave_them_for_a_later_tick(
    conn, settings, redis_down, caplog
):
    subscription(conn, today_at_noon() + timedelta(days=30))
    caplog.set_level(logging.WARNING)

    clock.reminder_job(settings)
    conn.execute("UPDATE emails SET created_at = now() - interval '10 minutes'")
    clock.email_relay_job(settings)

    rows = conn.execute("SELECT kind, enqueued_at FROM emails").fetchall()
    assert rows == [{"kind": "renewal_reminder", "enqueued_at": None}]
    assert "left for the relay" in caplog.text
    assert "email relay skipped this tick" in caplog.text


def test_the_scheduler_s_per_run_chatter_is_left_out_but_its_warnings_are_kept():
    executor = logging.getLogger("apscheduler.executors.default")
    before = logging.getLogger("apscheduler").level
    try:
        clock.quiet_scheduler()
        assert not executor.isEnabledFor(logging.INFO)
        assert executor.isEnabledFor(logging.WARNING)
    finally:
        logging.getLogger("apscheduler").setLevel(before)
