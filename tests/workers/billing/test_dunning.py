"""Dunning end to end: notifications in, the clock's days (--as-of), emails out over real SMTP."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import pytest
from click.testing import CliRunner

from tests.emails.conftest import HOST, Recorder
from tests.support import drain, post_signed, runtime_from_env
from tests.workers.billing.apply.support import ins, ipn, lcn, post_ins
from workers.billing import dunning
from workers.cli import cli
from workers.config import Settings
from workers.jobs import reminders

LICENSE = "LIC-DUNNING"
TODAY = datetime.now(UTC).date()
BEGAN = TODAY - timedelta(days=8)  # the day the renewal failed


def stamp(day: date, hour: int = 9) -> str:
    return f"{day.isoformat()} {hour:02d}:00:00"


@pytest.fixture
def outbox_smtp(monkeypatch, smtp_server) -> Iterator[Recorder]:
    """The worker and the CLI send through a real SMTP server; what it received."""
    recorder = Recorder()
    server = smtp_server(recorder)
    monkeypatch.setenv("SMTP_URL", f"smtp://{HOST}:{server.port}")
    monkeypatch.setenv("PUBLIC_URL", "https://shop.example.com/billing")
    runtime_from_env()
    yield recorder


def messages(recorder: Recorder) -> list[EmailMessage]:
    parsed = []
    for envelope in recorder.envelopes:
        message = BytesParser(policy=policy.default).parsebytes(envelope.original_content)
        assert isinstance(message, EmailMessage)
        parsed.append(message)
    return parsed


def kinds(recorder: Recorder) -> list[str]:
    return [str(message["X-Rinnovo-Kind"]) for message in messages(recorder)]


def run_day(day: date) -> str:
    result = CliRunner().invoke(cli, ["reminders", "run", "--as-of", day.isoformat()])
    assert result.exit_code == 0, result.output
    drain()
    return result.output


def fall_past_due(client) -> None:
    """A monthly subscription with automatic renewal whose renewal failed on BEGAN."""
    post_signed(
        client,
        "/ipn",
        ipn(LICENSE, refno="R1", at=stamp(BEGAN - timedelta(days=30)), exp=stamp(BEGAN, 0)),
    )
    drain()
    past_due = lcn(
        LICENSE, status="PASTDUE", expires=stamp(BEGAN, 0), updated=stamp(BEGAN), recurring=True
    )
    post_signed(client, "/lcn", past_due)
    drain()


def recover(client, day: date) -> None:
    renewed = lcn(
        LICENSE,
        status="ACTIVE",
        expires=stamp(BEGAN + timedelta(days=30), 0),
        updated=stamp(day),
        recurring=True,
    )
    post_signed(client, "/lcn", renewed)
    drain()


def test_a_past_due_subscription_receives_the_sequence_on_its_days_and_each_once(
    client, conn, outbox_smtp
):
    fall_past_due(client)
    assert kinds(outbox_smtp) == ["order_confirmation", "payment_failed"]

    sent_on = {}
    for offset in range(0, 9):
        before = len(outbox_smtp.envelopes)
        run_day(BEGAN + timedelta(days=offset))
        sent_on[offset] = kinds(outbox_smtp)[before:]
    run_day(BEGAN + timedelta(days=3))  # a second clock, or an operator, runs a day again

    assert sent_on == {
        0: [],  # day 0 went out with the notification
        1: [],
        2: [],
        3: ["payment_failed"],
        4: [],
        5: [],
        6: [],
        7: ["payment_failed"],
        8: [],
    }
    assert len(outbox_smtp.envelopes) == 4
    facts = conn.execute(
        "SELECT fact FROM emails WHERE kind = 'payment_failed' ORDER BY id"
    ).fetchall()
    since = conn.execute("SELECT past_due_since FROM subscriptions").fetchone()["past_due_since"]
    assert [row["fact"] for row in facts] == [dunning.fact(since, day) for day in (0, 3, 7)]
    last = messages(outbox_smtp)[-1]
    text = last.get_body(("plain",)).get_content()
    access_ends = BEGAN + timedelta(days=10)  # DUNNING_GRACE_DAYS after the failure
    assert f"access ends on {access_ends.strftime('%b')} {access_ends.day}," in text
    assert "update your payment method" in text and "renew it by hand" in text
    # Transactional: no unsubscribe link, but marked automatic like every email.
    assert last["List-Unsubscribe"] is None and last["Auto-Submitted"] == "auto-generated"


def test_the_sequence_stops_on_recovery_with_one_recovery_email(client, conn, outbox_smtp):
    fall_past_due(client)
    run_day(BEGAN + timedelta(days=3))

    recover(client, BEGAN + timedelta(days=5))
    recover(client, BEGAN + timedelta(days=5))  # the provider delivers it again
    for offset in (6, 7, 8):
        run_day(BEGAN + timedelta(days=offset))

    assert kinds(outbox_smtp) == [
        "order_confirmation",
        "payment_failed",
        "payment_failed",
        "payment_recovered",
    ]
    recovered = messages(outbox_smtp)[-1]
    assert "all set" in str(recovered["Subject"])
    row = conn.execute("SELECT status, past_due_since FROM subscriptions").fetchone()
    assert (row["status"], row["past_due_since"]) == ("active", None)


def test_a_queued_sequence_email_is_not_sent_once_the_payment_is_recovered(
    client, conn, outbox_smtp
):
    fall_past_due(client)
    settings = Settings.from_env()
    reminders.run(settings, BEGAN + timedelta(days=3))  # written and queued, not yet sent
    conn.execute("UPDATE subscriptions SET status = 'active', past_due_since = NULL")

    drain()

    row = conn.execute(
        "SELECT status, last_error FROM emails WHERE fact LIKE %s", ("%/3",)
    ).fetchone()
    assert row["status"] == "failed"
    assert row["last_error"] == "not sent: superseded, the subscription is active"
    assert kinds(outbox_smtp) == ["order_confirmation", "payment_failed"]


def test_a_subscription_left_past_due_expires_when_its_emails_said(client, conn, outbox_smtp):
    fall_past_due(client)
    settings = Settings.from_env()
    now = datetime.now(UTC)

    before = reminders.run(settings, BEGAN + timedelta(days=9), now=now)
    after = reminders.run(settings, BEGAN + timedelta(days=10), now=now + timedelta(days=3))

    assert (before["expired"], after["expired"]) == (0, 1)
    row = conn.execute("SELECT status, past_due_since FROM subscriptions").fetchone()
    assert (row["status"], row["past_due_since"]) == ("expired", None)


def test_where_each_past_due_subscription_is_in_the_sequence_is_listed(client, conn):
    fall_past_due(client)
    run_day(BEGAN + timedelta(days=3))

    result = CliRunner().invoke(cli, ["subscriptions", "list", "--status", "past_due"])

    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if LICENSE in line)
    assert "day 8, emails: day 0 sent, day 3 sent;" in line and "next day" not in line
    assert (BEGAN + timedelta(days=10)).isoformat() in line


Check = Callable[[str], None]


def test_a_dry_run_lists_the_sequence_email_of_a_day_and_writes_nothing(client, conn):
    fall_past_due(client)
    day = (BEGAN + timedelta(days=3)).isoformat()

    result = CliRunner().invoke(cli, ["reminders", "run", "--as-of", day, "--dry-run"])

    assert result.exit_code == 0, result.output
    assert f"payment_failed       {LICENSE}  past_due/" in result.output
    assert "payment_failed: 1" in result.output
    count = conn.execute("SELECT count(*) AS n FROM emails WHERE kind = 'payment_failed'")
    assert count.fetchone()["n"] == 1  # day 0 only, from the notification


def test_a_future_day_is_refused_and_writes_no_sequence_email(client, conn):
    fall_past_due(client)
    future = (TODAY + timedelta(days=1)).isoformat()

    result = CliRunner().invoke(cli, ["reminders", "run", "--as-of", future])

    assert result.exit_code == 2
    count = conn.execute("SELECT count(*) AS n FROM emails WHERE kind = 'payment_failed'")
    assert count.fetchone()["n"] == 1


def test_an_ins_installment_paid_after_a_failure_sends_one_recovery_email_with_the_amount(
    client, conn
):
    post_ins(client, ins("ORDER_CREATED"))
    drain()
    failed = ins("RECURRING_INSTALLMENT_FAILED", invoice_id="6002", timestamp="2026-02-10 00:05:00")
    post_ins(client, failed)
    drain()
    paid = ins(
        "RECURRING_INSTALLMENT_SUCCESS",
        invoice_id="6003",
        timestamp="2026-02-12 10:00:00",
        next_date="2026-03-10",
    )
    post_ins(client, paid)
    post_ins(client, paid)
    drain()

    rows = conn.execute("SELECT kind, fact, context FROM emails ORDER BY id").fetchall()
    assert [row["kind"] for row in rows] == [
        "order_confirmation",
        "payment_failed",
        "payment_recovered",
    ]
    assert rows[1]["fact"] == "past_due/2026-02-10T00:05:00Z/0"
    assert rows[2]["fact"] == "recovered/2026-02-10T00:05:00Z"
    assert rows[2]["context"]["amount"] == "30.00"
    assert rows[2]["context"]["past_due_since"] == "2026-02-10T00:05:00Z"
