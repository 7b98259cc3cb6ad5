"""What reaches the customer: one-click headers, suppressions, EMAILS_OFF (over real SMTP)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from emails import unsubscribe
from tests.conftest import SECRET_KEYS
from tests.emails.conftest import Recorder
from tests.support import drain, runtime_from_env
from tests.workers.billing.test_dunning import messages, outbox_smtp  # noqa: F401 (a fixture)
from tests.workers.jobs.mailing import new_email, received, row, settings, smtp_url  # noqa: F401
from workers.cli import cli
from workers.config import Settings
from workers.jobs import mailer
from workers.store import outbox as store_outbox
from workers.store import suppressions

KEYS = SECRET_KEYS.split(",")


@pytest.fixture
def smtp(settings, smtp_server):  # noqa: F811
    """The settings with a real SMTP server, the public URL and an unsubscribe mailbox; its log."""
    recorder = Recorder()
    configured = dataclasses.replace(
        settings,
        smtp_url=smtp_url(smtp_server(recorder).port),
        public_url="https://shop.example.com",
        unsubscribe_mailto="unsubscribe@shop.example.com",
    )
    return configured, recorder


def customer_of(conn, email_id: int) -> int:
    return conn.execute(
        "SELECT s.customer_id FROM emails e JOIN subscriptions s ON s.id = e.subscription_id "
        "WHERE e.id = %s",
        (email_id,),
    ).fetchone()["customer_id"]


def test_a_reminder_carries_exactly_the_rfc_8058_headers(conn, smtp):
    configured, recorder = smtp
    email_id = new_email(conn, configured, kind="renewal_reminder", fact="2030-06-30T00:00:00Z/7")

    mailer.send(configured, email_id, final=False)

    message = received(recorder.envelopes[0])
    token = unsubscribe.make(KEYS, customer_of(conn, email_id), "reminders")
    assert message.get_all("List-Unsubscribe") == [
        f"<https://shop.example.com/unsubscribe/{token}>, "
        f"<mailto:unsubscribe@shop.example.com?subject=unsubscribe%20{token}>"
    ]
    assert message.get_all("List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
    assert message.get_all("Auto-Submitted") == ["auto-generated"]
    # RFC 2369: the header is not encoded; it folds only between its two URIs.
    raw = recorder.envelopes[0].original_content.decode("ascii")
    assert "=?utf-8?" not in raw.split("\r\n\r\n", 1)[0]
    assert urlsplit(message["List-Unsubscribe"].split(">")[0][1:]).scheme == "https"


@pytest.mark.parametrize(
    "kind", ["order_confirmation", "payment_failed", "expiry_notice", "renewal_confirmation"]
)
def test_a_transactional_email_carries_no_unsubscribe_header(conn, smtp, kind):
    configured, recorder = smtp
    status = {"payment_failed": "past_due", "expiry_notice": "expired"}.get(kind, "active")
    email_id = new_email(conn, configured, kind=kind, fact="F", status=status)

    mailer.send(configured, email_id, final=False)

    message = received(recorder.envelopes[0])
    assert message["List-Unsubscribe"] is None and message["List-Unsubscribe-Post"] is None
    assert message["Auto-Submitted"] == "auto-generated"


def test_a_reminder_to_an_unsubscribed_address_ends_suppressed_with_when_and_how(conn, smtp):
    configured, recorder = smtp
    email_id = new_email(conn, configured, kind="renewal_reminder", fact="2030-06-30T00:00:00Z/7")
    assert suppressions.record(conn, customer_of(conn, email_id), "reminders", "one-click")
    when = conn.execute("SELECT created_at FROM email_suppressions").fetchone()["created_at"]

    mailer.send(configured, email_id, final=False)

    assert recorder.envelopes == []
    suppressed = row(conn, email_id)
    assert suppressed["status"] == "suppressed"
    stamp = when.astimezone(UTC).isoformat().replace("+00:00", "Z")
    assert suppressed["last_error"] == (
        f"not sent: the customer unsubscribed from reminders on {stamp} (one-click)"
    )
    # A transactional email to the same address still goes out.
    receipt = store_outbox.add(
        conn,
        configured,
        subscription_id=suppressed["subscription_id"],
        kind="order_confirmation",
        fact="order/1",
        event_id=None,
    )
    assert receipt is not None
    mailer.send(configured, receipt, final=False)
    assert len(recorder.envelopes) == 1


def test_an_operator_lists_and_lifts_a_suppression(conn, smtp):
    configured, recorder = smtp
    email_id = new_email(
        conn, configured, kind="renewal_reminder", fact="F/7", email="Giulia@Example.com"
    )
    suppressions.record(conn, customer_of(conn, email_id), "reminders", "page")
    runner = CliRunner()

    listed = runner.invoke(cli, ["emails", "suppressions"])
    lifted = runner.invoke(cli, ["emails", "unsuppress", "GIULIA@example.com"])
    again = runner.invoke(cli, ["emails", "unsuppress", "giulia@example.com"])

    assert listed.exit_code == 0, listed.output
    assert "giulia@example.com" in listed.output and "reminders" in listed.output
    assert "page" in listed.output
    assert lifted.exit_code == 0 and "lifted 1" in lifted.output
    assert again.exit_code == 3, again.output
    mailer.send(configured, email_id, final=False)
    assert len(recorder.envelopes) == 1


def test_emails_off_writes_the_rows_and_sends_nothing(conn, client, monkeypatch, outbox_smtp):  # noqa: F811
    monkeypatch.setenv("EMAILS_OFF", "renewal_reminder,order_confirmation")
    from workers.jobs import actors

    runtime_from_env()
    today = datetime.now(UTC).date()
    expires = datetime.combine(today + timedelta(days=7), datetime.min.time(), tzinfo=UTC)
    new_email(
        conn, actors.settings(), kind="order_confirmation", fact="order/1", expires_at=expires
    )

    result = CliRunner().invoke(cli, ["reminders", "run", "--as-of", today.isoformat()])
    drain()

    assert result.exit_code == 0, result.output
    rows = conn.execute("SELECT kind, status FROM emails ORDER BY id").fetchall()
    assert rows == [
        {"kind": "order_confirmation", "status": "off"},
        {"kind": "renewal_reminder", "status": "off"},
    ]
    assert messages(outbox_smtp) == []


def test_emails_off_refuses_a_kind_that_does_not_exist():
    from workers.config import Settings
    from workers.errors import ConfigError

    with pytest.raises(ConfigError, match="EMAILS_OFF names unknown kind"):
        Settings.from_env({"EMAILS_OFF": "renewal_reminders"})


def test_a_mailto_with_a_display_name_keeps_only_the_address():
    named = Settings.from_env({"UNSUBSCRIBE_MAILTO": "Shop <unsubscribe@shop.example.com>"})
    assert named.unsubscribe_mailto == "unsubscribe@shop.example.com"
