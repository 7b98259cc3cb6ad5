"""Tests for sending outbox emails over real SMTP (aiosmtpd) and to files, once each."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import dramatiq
import psycopg
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from psycopg import sql

from emails.transport import PermanentEmailError, TransientEmailError
from tests.conftest import TEST_DATABASE_URL
from tests.emails.conftest import HOST, Recorder, free_port
from tests.support import broker, insert_subscription, runtime_from_env
from workers.config import Settings
from workers.errors import ConfigError
from workers.jobs import actors, mailer
from workers.store import outbox as store_outbox

EXPIRES = datetime(2030, 6, 30, tzinfo=UTC)
Start = Callable[..., Controller]


class Slow(Recorder):
    """Takes its time over DATA, so a second sender arrives while the first is sending."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await asyncio.sleep(0.5)
        return await super().handle_DATA(server, session, envelope)


class Refuse(Recorder):
    """Refuses every recipient with a permanent error."""

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        return "550 5.1.1 No such user here"


def smtp_url(port: int) -> str:
    return f"smtp://{HOST}:{port}"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return dataclasses.replace(
        Settings.from_env(),
        mail_from="DocFlow <billing@docflow.example>",
        smtp_url=None,
        mail_dir=tmp_path / "mail",
        default_locale="en",
    )


def subscription(conn: psycopg.Connection, **values: Any) -> int:
    """Insert a customer and an active subscription; the subscription's id."""
    defaults = {
        "email": "giulia.rossi@example.com",
        "license_code": "DF7K2M9QX4",
        "expires_at": EXPIRES,
    }
    return insert_subscription(conn, **(defaults | values))


def new_email(
    conn: psycopg.Connection,
    settings: Settings,
    kind: str = "renewal_confirmation",
    fact: str = "RENEW-1",
    **values: Any,
) -> int:
    """Write one outbox email for a fresh subscription; its id."""
    extra = {
        "renewal_confirmation": {
            "amount": Decimal("1000.00"),
            "new_expires_at": EXPIRES + timedelta(days=365),
        },
        "renewal_reminder": {"days_left": 7},
    }.get(kind, {})
    sub_id = subscription(conn, **values)
    email_id = store_outbox.add(
        conn, settings, subscription_id=sub_id, kind=kind, fact=fact, event_id=None, extra=extra
    )
    assert email_id is not None
    return email_id


def row(conn: psycopg.Connection, email_id: int) -> dict[str, Any]:
    return conn.execute("SELECT * FROM emails WHERE id = %s", (email_id,)).fetchone()


def received(envelope: Envelope) -> EmailMessage:
    content = envelope.original_content or envelope.content
    assert isinstance(content, bytes)
    parsed = BytesParser(policy=policy.default).parsebytes(content)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_an_email_is_delivered_once_over_smtp_multipart_with_the_contract_headers(
    conn, settings, smtp_server
):
    recorder = Recorder()
    server = smtp_server(recorder)
    email_id = new_email(conn, settings)
    stored = row(conn, email_id)

    mailer.send(
        dataclasses.replace(settings, smtp_url=smtp_url(server.port)), email_id, final=False
    )

    assert len(recorder.envelopes) == 1
    envelope = recorder.envelopes[0]
    assert envelope.mail_from == "billing@docflow.example"
    assert envelope.rcpt_tos == ["giulia.rossi@example.com"]
    message = received(envelope)
    assert message.get_content_type() == "multipart/alternative"
    parts = [part.get_content_type() for part in message.iter_parts()]
    assert parts == ["text/plain", "text/html"]
    assert message["X-Rinnovo-Kind"] == "renewal_confirmation"
    assert message["Message-ID"] == stored["message_id"]
    assert message["To"] == "Giulia Rossi <giulia.rossi@example.com>"
    assert message["From"] == "DocFlow <billing@docflow.example>"
    assert abs(message["Date"].datetime - datetime.now(UTC)) < timedelta(minutes=1)
    assert "Giulia Rossi" in message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    after = row(conn, email_id)
    assert after["status"] == "sent" and after["sent_at"] is not None
    assert after["attempts"] == 1 and after["last_error"] is None


def test_sending_the_same_email_twice_delivers_it_once(conn, settings, smtp_server):
    recorder = Recorder()
    smtp = dataclasses.replace(settings, smtp_url=smtp_url(smtp_server(recorder).port))
    email_id = new_email(conn, settings)

    mailer.send(smtp, email_id, final=False)
    mailer.send(smtp, email_id, final=False)

    assert len(recorder.envelopes) == 1
    assert row(conn, email_id)["attempts"] == 1


def test_two_threads_sending_the_same_email_at_once_deliver_it_once(conn, settings, smtp_server):
    recorder = Slow()
    smtp = dataclasses.replace(settings, smtp_url=smtp_url(smtp_server(recorder).port))
    email_id = new_email(conn, settings)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def send() -> None:
        barrier.wait()
        try:
            mailer.send(smtp, email_id, final=False)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(recorder.envelopes) == 1
    assert row(conn, email_id)["status"] == "sent"


def test_with_the_smtp_port_closed_the_attempt_is_recorded_and_retried_later_once(
    conn, settings, smtp_server
):
    port = free_port()
    smtp = dataclasses.replace(settings, smtp_url=smtp_url(port))
    email_id = new_email(conn, settings)

    with pytest.raises(TransientEmailError):
        mailer.send(smtp, email_id, final=False)

    failed = row(conn, email_id)
    assert failed["status"] == "pending" and failed["attempts"] == 1
    assert f"{HOST}:{port}" in failed["last_error"]
    assert failed["enqueued_at"] is not None  # the broker holds the retry

    recorder = Recorder()
    smtp_server(recorder, port=port)  # the server comes back on the same port
    mailer.send(smtp, email_id, final=False)
    mailer.send(smtp, email_id, final=False)

    assert len(recorder.envelopes) == 1
    sent = row(conn, email_id)
    assert sent["status"] == "sent" and sent["attempts"] == 2 and sent["last_error"] is None


def test_with_smtp_cut_off_for_a_while_the_email_is_delivered_once_it_is_back(
    conn, settings, smtp_server, proxy_factory
):
    recorder = Recorder()
    server = smtp_server(recorder)
    proxy = proxy_factory(HOST, server.port)
    smtp = dataclasses.replace(settings, smtp_url=smtp_url(proxy.port))
    email_id = new_email(conn, settings)
    proxy.cut()

    for _ in range(3):
        with pytest.raises(TransientEmailError):
            mailer.send(smtp, email_id, final=False)
    assert row(conn, email_id)["attempts"] == 3

    proxy.start()
    mailer.send(smtp, email_id, final=False)

    assert len(recorder.envelopes) == 1
    assert row(conn, email_id)["status"] == "sent"


def test_on_the_last_attempt_a_transient_failure_marks_the_email_failed_with_the_reason(
    conn, settings
):
    smtp = dataclasses.replace(settings, smtp_url=smtp_url(free_port()))
    email_id = new_email(conn, settings)

    with pytest.raises(TransientEmailError):
        mailer.send(smtp, email_id, final=True)

    failed = row(conn, email_id)
    assert failed["status"] == "failed" and failed["attempts"] == 1
    assert HOST in failed["last_error"]
    mailer.send(smtp, email_id, final=False)  # a stray job later changes nothing
    assert row(conn, email_id)["attempts"] == 1


def test_a_refused_recipient_marks_the_email_failed_with_the_reason_and_is_not_retried(
    conn, settings, smtp_server
):
    recorder = Refuse()
    smtp = dataclasses.replace(settings, smtp_url=smtp_url(smtp_server(recorder).port))
    email_id = new_email(conn, settings)

    with pytest.raises(PermanentEmailError, match="550"):
        mailer.send(smtp, email_id, final=False)

    failed = row(conn, email_id)
    assert failed["status"] == "failed" and failed["attempts"] == 1
    assert "550" in failed["last_error"] and "No such user" in failed["last_error"]
    mailer.send(smtp, email_id, final=False)
    assert row(conn, email_id)["attempts"] == 1
    assert recorder.envelopes == []


def test_a_context_the_template_cannot_render_marks_the_email_failed(conn, settings, smtp_server):
    recorder = Recorder()
    smtp = dataclasses.replace(settings, smtp_url=smtp_url(smtp_server(recorder).port))
    email_id = new_email(conn, settings)
    conn.execute(
        "UPDATE emails SET context = context - 'new_expires_at' WHERE id = %s", (email_id,)
    )

    with pytest.raises(PermanentEmailError, match="new_expires_at"):
        mailer.send(smtp, email_id, final=False)

    failed = row(conn, email_id)
    assert failed["status"] == "failed" and "cannot render" in failed["last_error"]
    assert recorder.envelopes == []


def test_a_malformed_smtp_url_is_retried_as_a_configuration_error(conn, settings):
    email_id = new_email(conn, settings)
    broken = dataclasses.replace(settings, smtp_url="smtpx://mail.example")

    with pytest.raises(ConfigError, match="SMTP_URL"):
        mailer.send(broken, email_id, final=False)
    waiting = row(conn, email_id)
    assert waiting["status"] == "pending" and "smtpx" in waiting["last_error"]

    with pytest.raises(ConfigError):
        mailer.send(broken, email_id, final=True)
    assert row(conn, email_id)["status"] == "failed"


@pytest.mark.parametrize("locale", ["en", "it"])
def test_a_sent_email_is_signed_by_the_merchant_and_names_the_support_address(
    conn, settings, locale
):
    voice = dataclasses.replace(
        settings,
        merchant_name="Bottega Nova",
        support_email="aiuto@bottega.example",
        support_url="https://bottega.example/help",
    )
    email_id = new_email(conn, settings, locale=locale)

    mailer.send(voice, email_id, final=False)

    [path] = voice.mail_dir.glob("*.eml")
    message = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
    assert isinstance(message, EmailMessage)
    for part in ("plain", "html"):
        body = message.get_body((part,))
        assert body is not None
        content = body.get_content()
        assert "Bottega Nova" in content and "aiuto@bottega.example" in content
        assert "https://bottega.example/help" in content


@pytest.mark.parametrize("unset", ["merchant_name", "support_email"])
def test_without_the_merchant_voice_an_email_waits_as_a_configuration_error(conn, settings, unset):
    email_id = new_email(conn, settings)
    silent = dataclasses.replace(settings, **{unset: ""})

    with pytest.raises(ConfigError, match=unset.upper()):
        mailer.send(silent, email_id, final=False)

    waiting = row(conn, email_id)
    assert waiting["status"] == "pending" and unset.upper() in waiting["last_error"]
    assert not settings.mail_dir.exists()
    mailer.send(settings, email_id, final=False)  # set in time: it is delivered
    assert row(conn, email_id)["status"] == "sent"


def test_without_smtp_url_the_email_is_written_once_as_an_eml_file(conn, settings):
    email_id = new_email(conn, settings)

    mailer.send(settings, email_id, final=False)
    mailer.send(settings, email_id, final=False)

    files = list(settings.mail_dir.glob("*.eml"))
    assert len(files) == 1
    message = BytesParser(policy=policy.default).parsebytes(files[0].read_bytes())
    assert message["Message-ID"] == row(conn, email_id)["message_id"]
    assert message["X-Rinnovo-Kind"] == "renewal_confirmation"
    assert row(conn, email_id)["status"] == "sent"


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


@pytest.fixture
def worker_env(monkeypatch, settings) -> Iterator[Callable[[str | None], None]]:
    """Point the actors' settings at a mail setup; a dramatiq worker in this process runs them."""

    def configure(smtp: str | None) -> None:
        monkeypatch.setenv("MAIL_FROM", settings.mail_from)
        monkeypatch.setenv("MAIL_DIR", str(settings.mail_dir))
        if smtp is None:
            monkeypatch.delenv("SMTP_URL", raising=False)
        else:
            monkeypatch.setenv("SMTP_URL", smtp)
        runtime_from_env()

    yield configure


def wait_for(conn: psycopg.Connection, email_id: int, status: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while row(conn, email_id)["status"] != status:
        assert time.monotonic() < deadline, row(conn, email_id)
        time.sleep(0.05)


def test_the_send_email_actor_delivers_through_a_dramatiq_worker(
    conn, settings, smtp_server, worker_env
):
    recorder = Recorder()
    worker_env(smtp_url(smtp_server(recorder).port))
    email_id = new_email(conn, settings)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        actors.dispatch_emails(TEST_DATABASE_URL, [email_id])
        actors.dispatch_emails(TEST_DATABASE_URL, [email_id])  # a duplicate job
        wait_for(conn, email_id, "sent")
        broker.join(actors.send_email.queue_name, timeout=10_000)
        worker.join()
    finally:
        worker.stop()

    assert len(recorder.envelopes) == 1
    assert received(recorder.envelopes[0])["X-Rinnovo-Kind"] == "renewal_confirmation"


def test_through_the_worker_an_smtp_outage_is_retried_until_delivered(
    conn, settings, smtp_server, worker_env
):
    port = free_port()
    worker_env(smtp_url(port))
    email_id = new_email(conn, settings)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        # Short backoff for the test; production waits seconds to hours between tries.
        actors.send_email.send_with_options(args=(email_id,), min_backoff=200, max_backoff=400)
        deadline = time.monotonic() + 20
        # Two attempts over and failed: the server comes back before the third.
        while (state := row(conn, email_id))["attempts"] < 2 or state["status"] != "pending":
            assert time.monotonic() < deadline, state
            time.sleep(0.02)
        recorder = Recorder()
        smtp_server(recorder, port=port)
        wait_for(conn, email_id, "sent")
    finally:
        worker.stop()

    assert len(recorder.envelopes) == 1
    assert row(conn, email_id)["attempts"] >= 3


def test_a_worker_started_without_the_merchant_voice_says_at_once_that_emails_will_wait():
    env = {key: value for key, value in os.environ.items() if key != "SUPPORT_EMAIL"}
    started = subprocess.run(
        [sys.executable, "-c", "import workers.jobs.worker"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    assert "emails will wait until this is fixed: SUPPORT_EMAIL not set" in started.stderr


class Busy(Recorder):
    """Refuses every recipient for now, naming the address in its reply, as many servers do."""

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        return f"450 4.2.0 <{address}> mailbox busy, try later"


def test_a_refusal_naming_the_address_is_logged_without_it(conn, settings, smtp_server, caplog):
    smtp = dataclasses.replace(settings, smtp_url=smtp_url(smtp_server(Busy()).port))
    email_id = new_email(conn, settings)
    address = row(conn, email_id)["to_address"]

    with caplog.at_level("DEBUG", logger="workers.jobs.mailer"), pytest.raises(TransientEmailError):
        mailer.send(smtp, email_id, final=False)

    logged = [r for r in caplog.records if r.name == "workers.jobs.mailer"]
    assert any("mailbox busy" in r.getMessage() for r in logged)
    assert all(address not in r.getMessage() for r in logged if r.levelno >= logging.INFO)
    assert address in row(conn, email_id)["last_error"]  # the operator still sees it
