"""`rinnovo reconcile` end to end: the fake provider, a real database and workers, the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from tests.emails.conftest import Recorder
from tests.fake_provider import order, subscription
from tests.support import drain, runtime_from_env
from tests.workers.jobs.reconciling import (
    buy,
    emails_of,
    history,
    reconcile,
    runs,
    since,
    snapshot,
    stamp,
    sub_row,
    today,
)
from workers.jobs.reconcile import Difference
from workers.terminal import visible


def test_a_dry_run_prints_every_difference_and_a_summary_and_changes_nothing(shop, conn):
    before = snapshot(conn)
    result = reconcile("--dry-run", "--since", since())
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == (
        f"dry run: subscriptions changed since {since()}, orders of {since()} to {today()}; "
        "nothing is changed"
    )
    assert lines[1:-1] == [
        "subscription RENEW00001: expiry: Rinnovo 2027-01-10, provider 2028-01-10",
        "subscription RENEW00001: automatic renewal: Rinnovo off, provider on",
        "subscription OFF0000001: enabled: Rinnovo active, provider disabled",
        "subscription NEW0000001: never received: Rinnovo has no such subscription, provider "
        "AWDOC-TEAM-Y x 1, expires 2027-01-10, enabled, auto-renew on, "
        "customer Mario Rossi <nuovo@example.com>",
        f"order 100000009: never received: Rinnovo has no such order, provider COMPLETE "
        f"300.00 EUR of {today() - timedelta(days=2)} 10:00:00, subscriptions NEW0000001",
    ]
    assert lines[-1] == "checked 4 subscription(s) and 2 order(s): 4 differ"
    assert snapshot(conn) == before
    (run,) = runs(conn)
    assert run["outcome"] == "succeeded" and run["dry_run"] and run["finished_at"] is not None
    assert (str(run["window_start"]), run["window_end"], run["license_code"]) == (
        since(),
        today(),
        None,
    )
    counts = [run[name] for name in ("subscriptions_checked", "orders_checked", "differing")]
    assert counts == [4, 2, 4]


def test_the_sweep_asks_for_two_hundred_a_page_from_the_day_given(shop):
    assert reconcile("--dry-run", "--since", since()).exit_code == 0
    assert shop.paths() == [
        f"/rest/6.0/subscriptions/?ModifiedAfter={since()}&Limit=200&Page=1",
        f"/rest/6.0/orders/?StartDate={since()}&EndDate={today()}&Limit=200&Page=1",
    ]


@pytest.mark.parametrize("mode", [["--dry-run"], ["--wait", "0"]], ids=["dry run", "applying"])
def test_a_wrong_key_stops_with_one_clear_line_and_changes_nothing(shop, conn, monkeypatch, mode):
    monkeypatch.setenv("TWOCHECKOUT_SECRET_KEY", "NOT-THE-KEY")
    before = snapshot(conn)
    result = reconcile(*mode, "--since", since())
    assert result.exit_code == 1
    (error,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert "merchant code RINNOVOTEST with algorithm sha3-256" in error
    assert "NOT-THE-KEY" not in result.output
    assert snapshot(conn) == before
    (run,) = runs(conn)
    assert run["outcome"] == "failed" and "RINNOVOTEST" in run["error"]
    assert run["finished_at"] is not None


def test_a_page_that_cannot_be_parsed_stops_the_sweep_with_the_reason(shop, conn):
    for n in range(200):
        shop.add_subscription(subscription(f"MORE{n:06d}", email="x@example.com"), today())
    shop.fail_next(1, "garbage", after=1)  # the first page is answered, the second is garbage
    result = reconcile("--dry-run", "--since", since())
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == (
        "Error: sweep 1 stopped: the provider's answer to /subscriptions/ page 2 is not JSON "
        "(text/html)"
    )
    (run,) = runs(conn)
    assert run["outcome"] == "failed" and "not JSON" in run["error"]
    assert len(shop.seen) == 2  # nothing after the bad page: no orders either


def test_a_429_then_a_200_sweeps_as_usual(shop, conn):
    shop.fail_next(1, "429", retry_after="0")
    result = reconcile("--dry-run", "--since", since())
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "checked 4 subscription(s) and 2 order(s): 4 differ"
    assert runs(conn)[0]["outcome"] == "succeeded"


def test_young_orders_without_subscriptions_wait_for_the_next_sweep(fake, conn):
    now = datetime.now(UTC)
    fake.add_order(order("200000001", ordered=f"{now - timedelta(minutes=1):%Y-%m-%d %H:%M:%S}"))
    fake.add_order(order("200000002", ordered=f"{now - timedelta(minutes=30):%Y-%m-%d %H:%M:%S}"))
    result = reconcile("--dry-run", "--since", since())
    assert result.exit_code == 0, result.output
    assert "order 200000001" not in result.output
    assert "order 200000002: never received" in result.output
    assert result.output.splitlines()[-1] == (
        "checked 0 subscription(s) and 1 order(s): 1 differ, "
        "1 young order(s) left for the next sweep"
    )
    # Each order without subscriptions was looked up whole, in case the search left them out.
    assert "/rest/6.0/orders/200000001/" in fake.paths()
    assert runs(conn)[0]["deferred"] == 1


def test_control_characters_from_the_provider_are_shown_escaped(fake, conn):
    fake.add_subscription(
        subscription("EVIL000001", product_code="AW\x1b[2J\u202eDOC", email="a\r\nb@example.com"),
        today(),
    )
    result = reconcile("--dry-run", "--since", since())
    assert result.exit_code == 0, result.output
    assert "AW\\x1b[2J\\u202eDOC" in result.output and "a\\r\\nb@example.com" in result.output
    assert "\x1b" not in result.output and "\u202e" not in result.output


def test_one_license_is_looked_up_by_reference(shop, conn):
    result = reconcile("--dry-run", "--since", since(), "--license", "RENEW00001")
    assert result.exit_code == 0, result.output
    assert shop.paths()[0] == "/rest/6.0/subscriptions/RENEW00001/"
    assert "subscription RENEW00001: expiry" in result.output
    assert "NEW0000001" not in result.output.replace("RENEW00001", "")
    assert result.output.splitlines()[-1] == "checked 1 subscription(s) and 0 order(s): 1 differ"
    assert runs(conn)[0]["license_code"] == "RENEW00001"
    gone = reconcile("--dry-run", "--since", since(), "--license", "GONE000001")
    assert "subscription GONE000001: unknown to the provider" in gone.output


def test_without_since_the_window_starts_a_day_before_the_last_sweep_that_applied(fake, conn):
    conn.execute(
        """
        INSERT INTO reconcile_runs (window_start, window_end, dry_run, outcome, finished_at)
        VALUES ('2026-01-01', '2026-03-10', false, 'succeeded', now()),
               ('2026-01-01', '2026-03-20', true, 'succeeded', now()),
               ('2026-01-01', '2026-03-21', false, 'failed', now())
        """
    )
    conn.execute(  # the watchdog looks a few subscriptions up: it covers no window
        """
        INSERT INTO reconcile_runs (window_start, window_end, dry_run, outcome, finished_at, source)
        VALUES ('2026-03-22', '2026-03-22', false, 'succeeded', now(), 'watchdog')
        """
    )
    assert reconcile("--dry-run").exit_code == 0
    assert "ModifiedAfter=2026-03-09" in fake.paths()[0]


def test_without_since_or_a_sweep_the_first_notification_stored_opens_the_window(
    client, fake, conn
):
    assert "pass --since DATE" in reconcile("--dry-run").output
    buy(client, "FIRST00001", "300000001", "2027-01-10")
    conn.execute("UPDATE events SET received_at = '2026-02-15 08:00:00+00'")
    assert reconcile("--dry-run").exit_code == 0
    assert "ModifiedAfter=2026-02-14" in fake.paths()[0]


def test_the_api_is_off_without_a_merchant_code(conn, monkeypatch):
    monkeypatch.delenv("TWOCHECKOUT_MERCHANT_CODE", raising=False)
    result = reconcile("--dry-run", "--since", since())
    assert result.exit_code == 1
    assert "TWOCHECKOUT_MERCHANT_CODE is not set" in result.output


def test_a_difference_line_escapes_every_value():
    found = Difference("order 1\n2", "never received", "x\x07", "y\\z")
    assert found.line() == "order 1\\n2: never received: Rinnovo x\\x07, provider y\\\\z"
    assert visible("Città, 東京") == "Città, 東京"


def test_a_sweep_applies_each_difference_through_the_workers_and_a_second_changes_nothing(
    missed, conn
):
    result = reconcile("--since", since(), "--wait", "0")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith(f"sweep: subscriptions changed since {since()}")
    assert result.output.splitlines()[-1] == (
        "checked 3 subscription(s) and 1 order(s): 4 differ; "
        "0 applied, 0 failed, 4 waiting for the workers"
    )
    drain()

    renewed = sub_row(conn, "RENEW00001")
    assert renewed["status"] == "active" and renewed["auto_renew"] is True
    assert renewed["expires_at"] == datetime(2028, 1, 10, tzinfo=UTC)
    assert [(h["change"], h["kind"]) for h in history(conn, "RENEW00001")][-2:] == [
        ("renewed", "api"),
        ("auto_renew", "api"),
    ]
    assert sub_row(conn, "OFF0000001")["status"] == "canceled"
    assert ("canceled", "api") in [(h["change"], h["kind"]) for h in history(conn, "OFF0000001")]
    created = sub_row(conn, "NEW0000001")
    assert created["status"] == "active" and created["auto_renew"] is True
    assert created["expires_at"] == datetime(2027, 1, 10, tzinfo=UTC)
    assert conn.execute(
        "SELECT refno, kind FROM orders WHERE subscription_id = %s", (created["id"],)
    ).fetchall() == [{"refno": "100000009", "kind": "new"}]
    # The facts are recent: each calls for its email.
    assert "renewal_confirmation" in emails_of(conn, "RENEW00001")
    assert "cancellation_notice" in emails_of(conn, "OFF0000001")
    assert emails_of(conn, "NEW0000001") == ["order_confirmation"]
    statuses = conn.execute("SELECT status FROM events WHERE kind = 'api'").fetchall()
    assert [row["status"] for row in statuses] == ["processed"] * 4

    before = snapshot(conn)
    again = reconcile("--since", since(), "--wait", "0")
    assert again.exit_code == 0, again.output
    assert again.output.splitlines()[-1] == (
        "checked 3 subscription(s) and 1 order(s): 0 differ; 0 applied, 0 failed"
    )
    drain()
    assert snapshot(conn) == before


def test_a_second_sweep_before_the_workers_ran_stores_nothing_twice(missed, conn):
    assert reconcile("--since", since(), "--wait", "0").exit_code == 0
    assert reconcile("--since", since(), "--wait", "0").exit_code == 0
    assert conn.execute("SELECT count(*) AS n FROM events").fetchone()["n"] == 2 + 4
    drain()
    assert sub_row(conn, "RENEW00001")["expires_at"] == datetime(2028, 1, 10, tzinfo=UTC)
    renewals = [h for h in history(conn, "RENEW00001") if h["change"] == "renewed"]
    assert len(renewals) == 1


@pytest.fixture
def worker() -> Iterator[None]:
    """A real Dramatiq worker running while the test runs the command."""
    import dramatiq

    from tests.support import broker

    running = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    running.start()
    yield
    running.stop()


def test_the_summary_counts_what_the_workers_applied(missed, conn, worker):
    result = reconcile("--since", since())
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == (
        "checked 3 subscription(s) and 1 order(s): 4 differ; 4 applied, 0 failed"
    )


def test_a_429_then_a_200_applies_as_usual(missed, conn):
    missed.fail_next(1, "429", retry_after="0")
    result = reconcile("--since", since(), "--wait", "0")
    assert result.exit_code == 0, result.output
    drain()
    assert sub_row(conn, "RENEW00001")["expires_at"] == datetime(2028, 1, 10, tzinfo=UTC)


@pytest.fixture
def smtp_sink(monkeypatch, smtp_server) -> Iterator[Recorder]:
    """A real SMTP server the workers in this process send to."""
    recorder = Recorder()
    monkeypatch.setenv("SMTP_URL", f"smtp://127.0.0.1:{smtp_server(recorder).port}")
    runtime_from_env()
    yield recorder


def test_a_renewal_missed_while_down_is_applied_with_history_and_its_email(
    client, conn, fake, smtp_sink
):
    due = today() + timedelta(days=1)
    buy(client, "LATE000001", "400000001", due.isoformat())
    drain()
    smtp_sink.envelopes.clear()
    fake.add_subscription(
        subscription("LATE000001", expires=due.replace(year=due.year + 1).isoformat()), today()
    )
    assert reconcile("--since", since(), "--wait", "0").exit_code == 0
    drain()
    row = sub_row(conn, "LATE000001")
    assert row["expires_at"].date() == due.replace(year=due.year + 1)
    assert "renewed" in [h["change"] for h in history(conn, "LATE000001")]
    kinds = [envelope.original_content for envelope in smtp_sink.envelopes]
    assert len(kinds) == 1 and b"X-Rinnovo-Kind: renewal_confirmation" in kinds[0]


def test_a_renewal_found_weeks_late_is_applied_but_its_email_is_skipped_with_the_reason(
    client, conn, fake
):
    lapsed = today() - timedelta(days=21)
    buy(client, "OLD0000001", "400000002", lapsed.isoformat())
    drain()
    renewed_to = lapsed.replace(year=lapsed.year + 1)
    fake.add_subscription(subscription("OLD0000001", expires=renewed_to.isoformat()), today())
    assert reconcile("--since", since(), "--wait", "0").exit_code == 0
    drain()
    assert sub_row(conn, "OLD0000001")["expires_at"].date() == renewed_to
    assert emails_of(conn, "OLD0000001") == ["order_confirmation"]  # from the purchase
    (skipped,) = [h for h in history(conn, "OLD0000001") if h["change"] == "email_skipped"]
    assert skipped["note"] == (
        f"renewal_confirmation not sent: found by reconciliation, the fact of {lapsed} is older "
        "than RECONCILE_EMAIL_MAX_AGE (2 day(s))"
    )


def test_an_order_never_received_creates_its_subscription_even_before_the_subscription_record(
    conn, fake
):
    ordered = datetime.now(UTC) - timedelta(days=10)
    fake.add_order(
        order("500000001", ordered=stamp(ordered), references=("SOLD000001",),
              email="buyer@example.com")
    )  # fmt: skip
    result = reconcile("--since", since(), "--wait", "0")
    assert result.exit_code == 0, result.output
    drain()
    row = sub_row(conn, "SOLD000001")
    assert row["status"] == "active" and row["last_order_ref"] == "500000001"
    assert row["expires_at"].date() == (ordered + timedelta(days=365)).date()
    # Ten days old: the confirmation is not sent now, and history says so.
    assert emails_of(conn, "SOLD000001") == []
    assert [h["change"] for h in history(conn, "SOLD000001")] == ["created", "email_skipped"]
