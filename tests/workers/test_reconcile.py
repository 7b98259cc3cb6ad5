"""`rinnovo reconcile --dry-run` end to end: the fake provider, a real database, the real CLI."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner, Result
from psycopg import sql

from tests.fake_provider import FakeProvider, order, subscription
from tests.support import drain, post_signed
from webhooks.protocol import samples
from workers.cli import cli
from workers.reconcile import Difference, visible


def today() -> date:
    """The CLI's today, read when used (a run may cross midnight)."""
    return datetime.now(UTC).date()


def since() -> str:
    return (today() - timedelta(days=30)).isoformat()


TABLES = ("events", "subscriptions", "subscription_history", "orders", "emails", "customers")


@pytest.fixture
def fake(conn, monkeypatch) -> Iterator[FakeProvider]:
    """The provider's API for the test's account, which the CLI is configured to use."""
    conn.execute("TRUNCATE reconcile_runs RESTART IDENTITY")
    provider = FakeProvider().start()
    monkeypatch.setenv("TWOCHECKOUT_MERCHANT_CODE", provider.merchant_code)
    monkeypatch.setenv("TWOCHECKOUT_API_URL", provider.url)
    yield provider
    provider.stop()
    conn.execute("TRUNCATE reconcile_runs RESTART IDENTITY")


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


def test_without_dry_run_the_command_refuses_and_asks_the_provider_nothing(shop, conn):
    result = reconcile("--since", since())
    assert result.exit_code == 2
    assert "applying differences is not available yet; use --dry-run" in result.output
    assert shop.seen == [] and runs(conn) == []


def test_a_wrong_key_stops_with_one_clear_line_and_changes_nothing(shop, conn, monkeypatch):
    monkeypatch.setenv("TWOCHECKOUT_SECRET_KEY", "NOT-THE-KEY")
    before = snapshot(conn)
    result = reconcile("--dry-run", "--since", since())
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
