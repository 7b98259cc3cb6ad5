"""Tests for sending outbox emails over real SMTP (aiosmtpd) and to files, once each."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from emails.transport import PermanentEmailError, TransientEmailError
from tests.emails.conftest import HOST, Recorder, free_port
from tests.workers.jobs import mailing
from tests.workers.jobs.mailing import new_email, received, row, smtp_url
from workers.errors import ConfigError
from workers.jobs import mailer

settings = mailing.settings  # the fixture: a mail setup writing to a temporary folder


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
