"""`rinnovo reconcile` end to end: the fake provider, a real database and workers, the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from apscheduler.triggers.cron import CronTrigger
from click.testing import CliRunner, Result
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from tests.emails.conftest import Recorder
from tests.fake_provider import FakeProvider, order, subscription
from tests.support import drain, insert_subscription, post_signed, runtime_from_env
from webhooks.app import create_app
from workers.cli import cli
from workers.config import Settings
from workers.jobs import clock
from workers.jobs.reconcile import Difference
from workers.ops import samples
from workers.terminal import visible


def today() -> date:
    """The CLI's today, read when used (a run may cross midnight)."""
    return datetime.now(UTC).date()


def since() -> str:
    return (today() - timedelta(days=30)).isoformat()


TABLES = ("events", "subscriptions", "subscription_history", "orders", "emails", "customers")


@pytest.fixture
def fake(conn, monkeypatch) -> Iterator[FakeProvider]:
    """The provider's API for the test's account, which the CLI is configured to use."""
    conn.execute("TRUNCATE reconcile_runs, reconcile_differences RESTART IDENTITY")
    provider = FakeProvider().start()
    monkeypatch.setenv("TWOCHECKOUT_MERCHANT_CODE", provider.merchant_code)
    monkeypatch.setenv("TWOCHECKOUT_API_URL", provider.url)
    yield provider
    provider.stop()
    conn.execute("TRUNCATE reconcile_runs, reconcile_differences RESTART IDENTITY")


def buy(client, license_code: str, refno: str, expires: str) -> None:
    """A new annual subscription, received as a real IPN and applied by a real worker."""
    item = samples.SampleItem(
        code="AWDOC-TEAM-Y",
        pid="",
        name="AWDoc TEAM (annual)",
        license_ref=license_code,
        price="300.00",
        license_exp=f"{expires} 00:00:00",
    )
    sale = f"{today() - timedelta(days=3)} 09:00:00"
    post_signed(client, "/ipn", samples.ipn_pairs(items=(item,), refno=refno, sale_date=sale))


def reconcile(*args: str) -> Result:
    return CliRunner().invoke(cli, ["reconcile", *args])


def snapshot(conn) -> dict[str, list[dict[str, Any]]]:
    """Every row of the tables a sweep must not change."""
    return {
        table: conn.execute(
            sql.SQL("SELECT * FROM {} ORDER BY id").format(sql.Identifier(table))
        ).fetchall()
        for table in TABLES
    }


def runs(conn) -> list[dict[str, Any]]:
    return conn.execute("SELECT * FROM reconcile_runs ORDER BY id").fetchall()


@pytest.fixture
def shop(client, conn, fake) -> FakeProvider:
    """Three subscriptions Rinnovo holds; the provider holds them as they are, renewed, disabled,
    plus one Rinnovo never heard of, an order it has and an order it never received."""
    for license_code, refno in (("SAME000001", "100000001"), ("RENEW00001", "100000002")):
        buy(client, license_code, refno, "2027-01-10")
    buy(client, "OFF0000001", "100000003", "2027-01-10")
    drain()
    modified = today() - timedelta(days=2)
    fake.add_subscription(subscription("SAME000001", recurring=False), modified)
    fake.add_subscription(
        subscription("RENEW00001", expires="2028-01-10", recurring=True), modified
    )
    fake.add_subscription(subscription("OFF0000001", recurring=False, enabled=False), modified)
    fake.add_subscription(subscription("NEW0000001", email="nuovo@example.com"), modified)
    fake.add_order(order("100000001", ordered=f"{modified} 09:00:00", references=("SAME000001",)))
    fake.add_order(order("100000009", ordered=f"{modified} 10:00:00", references=("NEW0000001",)))
    return fake


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


# --- applying the differences ---------------------------------------------------------------


def stamp(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S}"


def sub_row(conn, license_code: str) -> dict[str, Any] | None:
    return conn.execute(
        "SELECT * FROM subscriptions WHERE license_code = %s", (license_code,)
    ).fetchone()


def history(conn, license_code: str) -> list[dict[str, Any]]:
    return conn.execute(
        """
        SELECT h.change, h.note, e.kind FROM subscription_history h
        JOIN subscriptions s ON s.id = h.subscription_id LEFT JOIN events e ON e.id = h.event_id
        WHERE s.license_code = %s ORDER BY h.id
        """,
        (license_code,),
    ).fetchall()


def emails_of(conn, license_code: str) -> list[str]:
    rows = conn.execute(
        """
        SELECT m.kind FROM emails m JOIN subscriptions s ON s.id = m.subscription_id
        WHERE s.license_code = %s ORDER BY m.id
        """,
        (license_code,),
    ).fetchall()
    return [row["kind"] for row in rows]


@pytest.fixture
def missed(client, conn, fake) -> FakeProvider:
    """While Rinnovo was down, the provider renewed one subscription, disabled another and sold
    a third Rinnovo never heard of (an hour ago)."""
    for license_code, refno in (("RENEW00001", "100000002"), ("OFF0000001", "100000003")):
        buy(client, license_code, refno, "2027-01-10")
    drain()
    fake.add_subscription(subscription("RENEW00001", expires="2028-01-10"), today())
    fake.add_subscription(subscription("OFF0000001", recurring=False, enabled=False), today())
    fake.add_subscription(subscription("NEW0000001", email="nuovo@example.com"), today())
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    fake.add_order(
        order("100000009", ordered=stamp(an_hour_ago), references=("NEW0000001",),
              email="nuovo@example.com")
    )  # fmt: skip
    return fake


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


# --- on the clock ---------------------------------------------------------------------------


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


def metrics(conn) -> dict[str, float]:
    text = create_app({"TESTING": "1"}).test_client().get("/metrics").text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith(("rinnovo_reconcile", "rinnovo_expected"))
    }


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


# --- the expected-notification watchdog -------------------------------------------------------


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


# --- INS confirmation -----------------------------------------------------------------------

INS_LICENSE = "2CO-5001-AWDOC-TEAM-M"


def ins(message_type: str, **values: str) -> list[tuple[str, str]]:
    return samples.ins_pairs(
        message_type=message_type,
        sale_id="5001",
        invoice_id=values.pop("invoice_id", "6001"),
        secret_word="tango",
        customer_email="cliente@example.it",
        items=[("AWDoc TEAM (monthly)", "AWDOC-TEAM-M", "30.00", values.pop("next_date", ""))],
        extra={"invoice_status": "approved", "item_rec_status_1": "live", **values},
    )


def post_ins(client, pairs: list[tuple[str, str]]) -> None:
    from tests.support import FORM
    from workers.protocol import form

    assert client.post("/ins", data=form.encode(pairs), headers=FORM).status_code == 200


@pytest.fixture
def legacy_sale(client, conn, fake) -> FakeProvider:
    """A legacy (INS) sale Rinnovo holds, with the API configured for the workers too."""
    runtime_from_env()
    post_ins(client, ins("ORDER_CREATED", next_date=f"{today() + timedelta(days=20)}"))
    drain()
    assert sub_row(conn, INS_LICENSE)["status"] == "active"
    yield fake


def ins_event(conn) -> dict[str, Any]:
    return conn.execute(
        "SELECT status, attempts, last_error FROM events WHERE kind = 'ins' ORDER BY id DESC"
    ).fetchone()


def test_an_ins_refund_the_provider_does_not_confirm_fails_with_the_provider_s_state(
    legacy_sale, client, conn
):
    legacy_sale.add_order(order("5001", ordered=stamp(datetime.now(UTC)), status="COMPLETE"))
    post_ins(client, ins("REFUND_ISSUED", invoice_id="6002"))
    drain()
    event = ins_event(conn)
    assert event["status"] == "failed"
    assert event["last_error"] == (
        "PermanentEventError: INS REFUND_ISSUED not confirmed: the provider's order 5001 is "
        "COMPLETE, not refunded"
    )
    assert sub_row(conn, INS_LICENSE)["status"] == "active"
    assert "/rest/6.0/orders/5001/" in legacy_sale.paths()


def test_an_ins_refund_the_provider_confirms_is_applied(legacy_sale, client, conn):
    legacy_sale.add_order(order("5001", ordered=stamp(datetime.now(UTC)), status="REFUND"))
    post_ins(client, ins("REFUND_ISSUED", invoice_id="6002"))
    drain()
    assert ins_event(conn)["status"] == "processed"
    assert sub_row(conn, INS_LICENSE)["status"] == "refunded"


def test_an_ins_renewal_is_applied_only_when_the_provider_s_subscription_expires_so(
    legacy_sale, client, conn
):
    renewed_to = today() + timedelta(days=50)
    legacy_sale.add_order(
        order("5001", ordered=stamp(datetime.now(UTC)), references=("SUB0005001",))
    )
    legacy_sale.add_subscription(subscription("SUB0005001", expires=f"{today()}"), today())
    post_ins(
        client, ins("RECURRING_INSTALLMENT_SUCCESS", invoice_id="6002", next_date=f"{renewed_to}")
    )
    drain()
    event = ins_event(conn)
    assert event["status"] == "failed" and event["last_error"].endswith(
        f"the provider's order 5001 has {today()} as expiry, not {renewed_to}"
    )
    assert sub_row(conn, INS_LICENSE)["expires_at"].date() == today() + timedelta(days=20)

    legacy_sale.add_subscription(subscription("SUB0005001", expires=f"{renewed_to}"), today())
    post_ins(
        client, ins("RECURRING_INSTALLMENT_SUCCESS", invoice_id="6003", next_date=f"{renewed_to}")
    )
    drain()
    assert ins_event(conn)["status"] == "processed"
    assert sub_row(conn, INS_LICENSE)["expires_at"].date() == renewed_to


def test_with_the_api_unreachable_an_ins_refund_is_retried_like_any_transient_failure(
    legacy_sale, client, conn, monkeypatch
):
    from workers.billing.apply import ins as ins_rules

    monkeypatch.setattr(ins_rules, "CONFIRM_SECONDS", 0.5)  # one attempt, then the event waits
    legacy_sale.add_order(order("5001", ordered=stamp(datetime.now(UTC)), status="REFUND"))
    legacy_sale.fail_next(1, "503")
    post_ins(client, ins("REFUND_ISSUED", invoice_id="6002"))
    drain()
    event = ins_event(conn)
    assert (event["status"], event["attempts"]) == ("processed", 2)
    assert sub_row(conn, INS_LICENSE)["status"] == "refunded"


def test_without_the_api_an_ins_refund_is_applied_as_it_says(client, conn, monkeypatch):
    monkeypatch.delenv("TWOCHECKOUT_MERCHANT_CODE", raising=False)
    runtime_from_env()
    post_ins(client, ins("ORDER_CREATED", next_date=f"{today() + timedelta(days=20)}"))
    post_ins(client, ins("REFUND_ISSUED", invoice_id="6002"))
    drain()
    assert sub_row(conn, INS_LICENSE)["status"] == "refunded"


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


def test_an_ins_automatic_renewal_change_is_applied_only_as_the_provider_states_it(
    legacy_sale, client, conn
):
    legacy_sale.add_order(
        order("5001", ordered=stamp(datetime.now(UTC)), references=("SUB0005001",))
    )
    legacy_sale.add_subscription(subscription("SUB0005001", recurring=True), today())
    post_ins(client, ins("RECURRING_STOPPED", invoice_id="6002"))
    drain()
    event = ins_event(conn)
    assert event["status"] == "failed" and event["last_error"].endswith(
        "the provider's order 5001 has automatic renewal on, not off"
    )
    assert sub_row(conn, INS_LICENSE)["auto_renew"] is True

    legacy_sale.add_subscription(subscription("SUB0005001", recurring=False), today())
    post_ins(client, ins("RECURRING_STOPPED", invoice_id="6003"))
    drain()
    assert ins_event(conn)["status"] == "processed"
    assert sub_row(conn, INS_LICENSE)["auto_renew"] is False
