"""What an attempt finds before it sends: an earlier attempt interrupted (its connection lost, or
the row left `sending`), a subscription that changed since the email was written, no email."""

from __future__ import annotations

import dataclasses

import psycopg
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from psycopg import sql

from tests.conftest import TEST_DATABASE_URL
from tests.emails.conftest import Recorder
from tests.workers.jobs import mailing
from tests.workers.jobs.mailing import new_email, row, smtp_url
from workers.jobs import mailer
from workers.store import outbox as store_outbox

settings = mailing.settings  # the fixture: a mail setup writing to a temporary folder


class CutsTheSender(Recorder):
    """Accepts the message, then kills the sender's database connection (found by its lock)."""

    def __init__(self, email_id: int) -> None:
        super().__init__()
        self.email_id = email_id
        self.killed: list[int] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with psycopg.connect(TEST_DATABASE_URL, autocommit=True) as admin:
            rows = admin.execute(
                """
                SELECT pg_terminate_backend(pid), pid FROM pg_locks
                WHERE locktype = 'advisory' AND classid = %s AND objid = %s
                  -- this session's database only: other test runs hold locks on the same ids
                  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                """,
                (store_outbox.SEND_LOCK_BASE >> 32, self.email_id),
            ).fetchall()
        self.killed = [row[1] for row in rows]
        return await super().handle_DATA(server, session, envelope)


def test_losing_the_database_connection_while_sending_still_records_the_email_sent(
    conn, settings, smtp_server
):
    email_id = new_email(conn, settings)
    recorder = CutsTheSender(email_id)
    smtp = dataclasses.replace(settings, smtp_url=smtp_url(smtp_server(recorder).port))

    mailer.send(smtp, email_id, final=False)

    assert len(recorder.killed) == 1  # the attempt held its lock on a connection now gone
    assert len(recorder.envelopes) == 1
    assert row(conn, email_id)["status"] == "sent"


def test_an_interrupted_smtp_attempt_is_not_sent_again_but_failed_with_the_reason(
    conn, settings, smtp_server
):
    recorder = Recorder()
    smtp = dataclasses.replace(settings, smtp_url=smtp_url(smtp_server(recorder).port))
    email_id = new_email(conn, settings)
    # What a worker killed between the server's acceptance and the `sent` mark leaves behind.
    conn.execute("UPDATE emails SET status = 'sending', attempts = 1 WHERE id = %s", (email_id,))

    mailer.send(smtp, email_id, final=False)

    assert recorder.envelopes == []
    failed = row(conn, email_id)
    assert failed["status"] == "failed"
    assert "may have been delivered" in failed["last_error"]
    assert failed["message_id"] in failed["last_error"]


def test_an_interrupted_file_attempt_is_settled_by_looking_for_the_file(conn, settings):
    written = new_email(conn, settings, fact="WRITTEN")
    mailer.send(settings, written, final=False)
    lost = new_email(conn, settings, fact="LOST", license_code="LOST000001")
    conn.execute("UPDATE emails SET status = 'sending', attempts = 1, sent_at = NULL")

    mailer.send(settings, written, final=False)
    mailer.send(settings, lost, final=False)

    assert row(conn, written)["status"] == "sent" and row(conn, written)["attempts"] == 1
    assert row(conn, lost)["status"] == "sent" and row(conn, lost)["attempts"] == 2
    assert len(list(settings.mail_dir.glob("*.eml"))) == 2


def test_a_reminder_is_not_sent_once_the_subscription_was_renewed(conn, settings, smtp_server):
    recorder = Recorder()
    smtp = dataclasses.replace(settings, smtp_url=smtp_url(smtp_server(recorder).port))
    email_id = new_email(conn, settings, kind="renewal_reminder", fact="2030-06-30T00:00:00Z/7")
    conn.execute("UPDATE subscriptions SET expires_at = expires_at + interval '1 year'")

    mailer.send(smtp, email_id, final=False)

    assert recorder.envelopes == []
    failed = row(conn, email_id)
    assert failed["status"] == "failed" and "superseded" in failed["last_error"]
    assert "2031-06-30T00:00:00Z" in failed["last_error"]


@pytest.mark.parametrize(
    ("kind", "column", "value", "sent"),
    [
        ("renewal_reminder", "auto_renew", True, False),
        ("renewal_reminder", "status", "canceled", False),
        ("renewal_reminder", "status", "past_due", True),
        ("auto_renewal_notice", "auto_renew", False, False),
        ("auto_renewal_notice", "status", "active", True),
        ("expiry_notice", "status", "active", False),
        ("expiry_notice", "status", "expired", True),
        ("order_confirmation", "status", "refunded", True),
    ],
)
def test_clock_emails_are_checked_against_the_subscription_before_sending(
    conn, settings, kind, column, value, sent
):
    auto_renew = kind == "auto_renewal_notice"
    status = "expired" if kind == "expiry_notice" else "active"
    email_id = new_email(conn, settings, kind=kind, fact="F", auto_renew=auto_renew, status=status)
    conn.execute(
        sql.SQL("UPDATE subscriptions SET {} = %s").format(sql.Identifier(column)), (value,)
    )

    mailer.send(settings, email_id, final=False)

    assert row(conn, email_id)["status"] == ("sent" if sent else "failed")


def test_a_missing_email_is_nothing_to_send(conn, settings):
    mailer.send(settings, 12345, final=False)
    assert not settings.mail_dir.exists()
