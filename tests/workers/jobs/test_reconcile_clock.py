"""Reconciliation on the clock: the daily sweep and the expected-notification watchdog, what
/metrics and the admin page show of them, and their events replayed like any other."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from apscheduler.triggers.cron import CronTrigger
from click.testing import CliRunner

from tests.fake_provider import subscription
from tests.support import drain, insert_subscription
from tests.workers.jobs.reconciling import (
    buy,
    history,
    metrics,
    reconcile,
    runs,
    since,
    snapshot,
    sub_row,
    today,
)
from webhooks.app import create_app
from workers.cli import cli
from workers.config import Settings
from workers.jobs import clock


def test_the_clock_sweeps_daily_at_reconcile_at_and_watches_hourly_only_with_a_merchant_code(
    monkeypatch,
):
    monkeypatch.setenv("TWOCHECKOUT_MERCHANT_CODE", "RINNOVOTEST")
    monkeypatch.setenv("RECONCILE_AT", "04:15")
    jobs = {job.id: job for job in clock.build_scheduler(Settings.from_env()).get_jobs()}
    assert jobs["reconcile"].func is clock.reconcile_job
    assert jobs["watchdog"].func is clock.watchdog_job
    start = datetime(2030, 1, 1, 5, tzinfo=UTC)
    daily = jobs["reconcile"].trigger
    assert isinstance(daily, CronTrigger)
    assert daily.get_next_fire_time(None, start) == datetime(2030, 1, 2, 4, 15, tzinfo=UTC)
    hourly = jobs["watchdog"].trigger
    assert hourly.get_next_fire_time(None, start) == datetime(2030, 1, 1, 5, 37, tzinfo=UTC)

    monkeypatch.setenv("RECONCILE_AT", "off")
    assert "reconcile" not in {
        job.id for job in clock.build_scheduler(Settings.from_env()).get_jobs()
    }
    monkeypatch.delenv("TWOCHECKOUT_MERCHANT_CODE")
    monkeypatch.setenv("RECONCILE_AT", "04:15")
    ids = {job.id for job in clock.build_scheduler(Settings.from_env()).get_jobs()}
    assert not ids & {"reconcile", "watchdog"}


def test_the_clock_sweep_applies_what_it_finds_records_its_run_and_shows_in_metrics(missed, conn):
    assert metrics(conn) == {
        "rinnovo_reconcile_last_success_timestamp": 0.0,
        "rinnovo_reconcile_differences_total": 0.0,
        "rinnovo_expected_notifications_missing": 0.0,
    }
    clock.reconcile_job(Settings.from_env())
    drain()
    assert sub_row(conn, "RENEW00001")["expires_at"] == datetime(2028, 1, 10, tzinfo=UTC)
    (run,) = runs(conn)
    assert (run["source"], run["dry_run"], run["outcome"], run["differing"]) == (
        "clock", False, "succeeded", 4,
    )  # fmt: skip
    # No sweep before: the window opens a day before the first notification stored.
    assert run["window_start"] == today() - timedelta(days=1)
    figures = metrics(conn)
    assert figures["rinnovo_reconcile_differences_total"] == 4
    assert figures["rinnovo_reconcile_last_success_timestamp"] == run["finished_at"].timestamp()
    clock.reconcile_job(Settings.from_env())  # the next day's finds nothing new
    assert metrics(conn)["rinnovo_reconcile_differences_total"] == 4


def test_a_clock_sweep_the_provider_refuses_is_recorded_failed_and_logged(
    missed, conn, monkeypatch, caplog
):
    monkeypatch.setenv("TWOCHECKOUT_SECRET_KEY", "NOT-THE-KEY")
    clock.reconcile_job(Settings.from_env())
    (run,) = runs(conn)
    assert run["outcome"] == "failed" and "RINNOVOTEST" in run["error"]
    assert "reconcile sweep stopped" in caplog.text and "NOT-THE-KEY" not in caplog.text
    assert metrics(conn)["rinnovo_reconcile_last_success_timestamp"] == 0


def test_the_admin_page_lists_the_sweeps_and_what_each_changed(missed, conn):
    token = "correct horse battery staple"
    admin = create_app({"ADMIN_TOKEN": token}).test_client()
    page = admin.get("/admin/login").text
    csrf = page.split('name="csrf_token" value="')[1].split('"')[0]
    admin.post("/admin/login", data={"csrf_token": csrf, "token": token})
    assert reconcile("--since", since(), "--wait", "0").exit_code == 0
    drain()
    listing = admin.get("/admin/reconcile")
    assert listing.status_code == 200
    assert 'href="/admin/reconcile/1"' in listing.text and "succeeded" in listing.text
    detail = admin.get("/admin/reconcile/1")
    assert detail.status_code == 200
    assert "subscription OFF0000001" in detail.text and "disabled" in detail.text
    assert "renewed" in detail.text and 'href="/admin/subscriptions/RENEW00001"' in detail.text
    event_id = conn.execute("SELECT min(id) AS id FROM events WHERE kind = 'api'").fetchone()["id"]
    event = admin.get(f"/admin/events/{event_id}")
    assert event.status_code == 200 and "SubscriptionReference" in event.text
    fields = event.text.split('id="fields">')[1].split("</table>")[0]
    assert "<tr>" not in fields  # the provider's JSON is no form: no fields to list
    assert admin.get("/admin/reconcile/99").status_code == 404
    assert admin.get("/admin/reconcile/x%3Cb").status_code == 404


@pytest.fixture
def silent(conn) -> str:
    """An auto-renewing subscription that expired two days ago and heard nothing since."""
    insert_subscription(
        conn, expires_at=datetime.now(UTC) - timedelta(days=2), auto_renew=True,
        license_code="QUIET00001",
    )  # fmt: skip
    insert_subscription(  # renewal off: no notification is expected
        conn, expires_at=datetime.now(UTC) - timedelta(days=2), license_code="MANUAL0001"
    )
    insert_subscription(  # expired an hour ago: within the grace
        conn, expires_at=datetime.now(UTC) - timedelta(hours=1), auto_renew=True,
        license_code="RECENT0001",
    )  # fmt: skip
    return "QUIET00001"


def test_without_the_api_an_overdue_subscription_is_listed_and_counted(silent, conn):
    result = CliRunner().invoke(cli, ["subscriptions", "list", "--overdue"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 2 and lines[0].startswith("QUIET00001  active")
    assert "auto-renew on, no notification since" in lines[0]
    assert lines[-1] == "1 subscription(s) overdue by more than 6 hour(s)"
    assert metrics(conn)["rinnovo_expected_notifications_missing"] == 1


def test_a_notification_since_the_expiry_ends_the_silence(silent, conn, client):
    buy(client, "QUIET00001", "600000001", "2027-01-10")  # an IPN naming it arrives
    assert metrics(conn)["rinnovo_expected_notifications_missing"] == 0


def test_the_watchdog_looks_the_overdue_subscription_up_and_reconciles_it(silent, conn, fake):
    renewed_to = (datetime.now(UTC) - timedelta(days=2) + timedelta(days=365)).date()
    fake.add_subscription(
        subscription(silent, product_code="DOCFLOW-BIZ", quantity=10,
                     expires=renewed_to.isoformat()),
        today() - timedelta(days=400),  # a day-window sweep would not see it
    )  # fmt: skip
    clock.watchdog_job(Settings.from_env())
    assert fake.paths() == [f"/rest/6.0/subscriptions/{silent}/"]
    drain()
    row = sub_row(conn, silent)
    assert row["expires_at"].date() == renewed_to and row["status"] == "active"
    assert "renewed" in [h["change"] for h in history(conn, silent)]
    (run,) = runs(conn)
    assert (run["source"], run["subscriptions_checked"], run["differing"]) == ("watchdog", 1, 1)
    assert metrics(conn)["rinnovo_expected_notifications_missing"] == 0
    clock.watchdog_job(Settings.from_env())  # nothing overdue now: the provider is not asked
    assert len(fake.seen) == 1 and len(runs(conn)) == 1


def test_a_reconciliation_event_is_shown_and_replayed_like_a_notification(missed, conn):
    assert reconcile("--since", since(), "--wait", "0").exit_code == 0
    drain()
    event_id = conn.execute(
        "SELECT id FROM events WHERE kind = 'api' AND 'RENEW00001' = ANY(license_codes)"
    ).fetchone()["id"]
    shown = CliRunner().invoke(cli, ["events", "show", "--raw", str(event_id)])
    assert shown.exit_code == 0, shown.output
    assert '"SubscriptionReference": "RENEW00001"' in shown.output
    before = snapshot(conn)
    for args in (["--dry-run"], []):
        replayed = CliRunner().invoke(cli, ["events", "replay", str(event_id), *args])
        assert replayed.exit_code == 0, replayed.output
        drain()
    assert snapshot(conn)["subscriptions"] == before["subscriptions"]
    assert snapshot(conn)["emails"] == before["emails"]
    listed = CliRunner().invoke(cli, ["events", "list", "--kind", "api"])
    assert listed.exit_code == 0 and str(event_id) in listed.output


def test_a_state_the_provider_returns_to_is_applied_again(missed, conn):
    assert reconcile("--since", since(), "--wait", "0").exit_code == 0
    drain()
    assert sub_row(conn, "OFF0000001")["status"] == "canceled"
    # The provider enabled it again (that LCN was applied), then disabled it again: that LCN was
    # lost, and the provider's record is back in the state an earlier sweep already applied.
    conn.execute("UPDATE subscriptions SET status = 'active' WHERE license_code = 'OFF0000001'")

    again = reconcile("--since", since(), "--wait", "0")

    assert again.exit_code == 0, again.output
    assert "1 differ" in again.output.splitlines()[-1]
    drain()
    assert sub_row(conn, "OFF0000001")["status"] == "canceled"
    # A sweep that overlaps, before the workers apply it, stores nothing more.
    conn.execute("UPDATE subscriptions SET status = 'active' WHERE license_code = 'OFF0000001'")
    assert reconcile("--since", since(), "--wait", "0").exit_code == 0
    assert reconcile("--since", since(), "--wait", "0").exit_code == 0
    keys = conn.execute(
        "SELECT dedupe_key FROM events WHERE kind = 'api' AND 'OFF0000001' = ANY(license_codes)"
    ).fetchall()
    assert len(keys) == 3  # the first state, its return, and its second return: once each
