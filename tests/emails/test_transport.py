"""Tests for delivering messages over real SMTP (aiosmtpd on localhost) and to files."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from emails.contexts import sample_context
from emails.message import build_message, make_message_id
from emails.render import KINDS, render
from emails.transport import (
    FileTransport,
    PermanentEmailError,
    SmtpTransport,
    TransientEmailError,
    transport_from_url,
)
from tests.emails.conftest import HOST, Certificate, Recorder, free_port

Start = Callable[..., Controller]
TO = "giulia.rossi@example.com"
SENDER = "DocFlow <billing@docflow.example>"
USER, PASSWORD = "mailer", "s3cr3t p@ss/:"
QUOTED_PASSWORD = "s3cr3t%20p%40ss%2F%3A"
# Plain AUTH without TLS keeps these tests free of certificates; aiosmtpd warns about it.
plain_auth = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


def message(kind: str = "order_confirmation", email_id: int = 1) -> EmailMessage:
    """Build the message of outbox email ``email_id`` of ``kind`` from sample data."""
    rendered = render(kind, "it", sample_context(kind))
    return build_message(
        rendered,
        to=TO,
        sender=SENDER,
        message_id=make_message_id(email_id, "docflow.example"),
        date=datetime(2026, 5, 31, 9, tzinfo=UTC),
    )


def received(envelope: Envelope) -> EmailMessage:
    """Parse what the server received."""
    content = envelope.original_content or envelope.content
    assert isinstance(content, bytes)
    parsed = BytesParser(policy=policy.default).parsebytes(content)
    assert isinstance(parsed, EmailMessage)
    return parsed


def smtp_url(controller: Controller, scheme: str = "smtp", userinfo: str = "") -> str:
    """Return the URL of ``controller``."""
    return f"{scheme}://{userinfo}{HOST}:{controller.port}"


def transport(url: str, **kwargs: Any) -> SmtpTransport:
    """Return an SMTP transport with a short timeout and no DNS lookups for our own name."""
    return SmtpTransport(url, timeout=5, local_hostname="rinnovo.test", **kwargs)


class Answer(Recorder):
    """A server that answers RCPT or DATA with a fixed reply."""

    def __init__(self, *, rcpt: str | None = None, data: str | None = None) -> None:
        """Reply ``rcpt`` to RCPT TO and ``data`` to DATA (``None``: accept)."""
        super().__init__()
        self.rcpt, self.data = rcpt, data

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        """Refuse or accept the recipient."""
        if self.rcpt:
            return self.rcpt
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Refuse or accept the message."""
        if self.data:
            return self.data
        return await super().handle_DATA(server, session, envelope)


class HangUpOnQuit(Recorder):
    """A server that accepts the message, then drops the connection instead of saying bye."""

    hung_up = False

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Abort the connection."""
        assert isinstance(server.transport, asyncio.Transport)
        self.hung_up = True
        server.transport.abort()
        return "221 Bye"


def authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: object
) -> AuthResult:
    """Accept only USER / PASSWORD."""
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)


def test_every_kind_is_delivered_once_as_multipart_with_the_headers(smtp_server: Start) -> None:
    handler = Recorder()
    controller = smtp_server(handler)
    smtp = transport(smtp_url(controller))
    for email_id, kind in enumerate(KINDS, start=1):
        smtp.send(message(kind, email_id))
    assert len(handler.envelopes) == len(KINDS)
    for email_id, (kind, envelope) in enumerate(zip(KINDS, handler.envelopes, strict=True), 1):
        assert envelope.rcpt_tos == [TO]
        assert envelope.mail_from == "billing@docflow.example"
        msg = received(envelope)
        assert msg.get_content_type() == "multipart/alternative"
        assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
        assert msg["X-Rinnovo-Kind"] == kind
        assert msg["Message-ID"] == make_message_id(email_id, "docflow.example")
        assert msg["Date"] is not None and msg["Subject"] and msg["From"] and msg["To"]
    ids = [received(e)["Message-ID"] for e in handler.envelopes]
    assert len(set(ids)) == len(ids)


@plain_auth
def test_authentication_with_a_percent_encoded_password_works(smtp_server: Start) -> None:
    handler = Recorder()
    controller = smtp_server(
        handler, authenticator=authenticator, auth_required=True, auth_require_tls=False
    )
    transport(smtp_url(controller, userinfo=f"{USER}:{QUOTED_PASSWORD}@")).send(message())
    assert len(handler.envelopes) == 1


@plain_auth
def test_a_wrong_password_is_permanent_and_never_shown(smtp_server: Start) -> None:
    handler = Recorder()
    controller = smtp_server(
        handler, authenticator=authenticator, auth_required=True, auth_require_tls=False
    )
    smtp = transport(smtp_url(controller, userinfo=f"{USER}:wrong-Secret-123@"))
    with pytest.raises(PermanentEmailError, match="535") as caught:
        smtp.send(message())
    assert "wrong-Secret-123" not in str(caught.value) and "wrong-Secret-123" not in repr(smtp)
    assert handler.envelopes == []


@plain_auth
def test_a_server_requiring_auth_refuses_an_anonymous_sender_permanently(
    smtp_server: Start,
) -> None:
    controller = smtp_server(
        Recorder(), authenticator=authenticator, auth_required=True, auth_require_tls=False
    )
    with pytest.raises(PermanentEmailError, match="530"):
        transport(smtp_url(controller)).send(message())


def test_a_recipient_refused_with_550_is_permanent(smtp_server: Start) -> None:
    handler = Answer(rcpt="550 5.1.1 No such user here")
    controller = smtp_server(handler)
    with pytest.raises(PermanentEmailError, match="550"):
        transport(smtp_url(controller)).send(message())
    assert handler.envelopes == []


def test_a_recipient_deferred_with_451_is_transient(smtp_server: Start) -> None:
    controller = smtp_server(Answer(rcpt="451 4.3.0 Try again later"))
    with pytest.raises(TransientEmailError, match="451"):
        transport(smtp_url(controller)).send(message())


def test_a_message_rejected_at_data_with_554_is_permanent(smtp_server: Start) -> None:
    controller = smtp_server(Answer(data="554 5.7.1 Message rejected as spam"))
    with pytest.raises(PermanentEmailError, match="554"):
        transport(smtp_url(controller)).send(message())


def test_a_message_deferred_at_data_with_452_is_transient(smtp_server: Start) -> None:
    controller = smtp_server(Answer(data="452 4.3.1 Insufficient system storage"))
    with pytest.raises(TransientEmailError, match="452"):
        transport(smtp_url(controller)).send(message())


def test_a_closed_port_is_transient() -> None:
    smtp = transport(f"smtp://{USER}:{QUOTED_PASSWORD}@{HOST}:{free_port()}")
    with pytest.raises(TransientEmailError) as caught:
        smtp.send(message())
    assert PASSWORD not in str(caught.value) and QUOTED_PASSWORD not in str(caught.value)


def test_a_server_that_never_answers_times_out_as_transient() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind((HOST, 0))
        silent.listen()
        smtp = SmtpTransport(
            f"smtp://{HOST}:{silent.getsockname()[1]}", timeout=0.3, local_hostname="rinnovo.test"
        )
        with pytest.raises(TransientEmailError, match="timed out"):
            smtp.send(message())


def test_a_connection_dropped_after_the_message_was_accepted_is_not_retried(
    smtp_server: Start,
) -> None:
    handler = HangUpOnQuit()
    controller = smtp_server(handler)
    transport(smtp_url(controller)).send(message())
    assert handler.hung_up
    assert len(handler.envelopes) == 1


def test_starttls_delivers_over_an_encrypted_connection(
    smtp_server: Start, certificate: Certificate
) -> None:
    for scheme, query in (("smtp+starttls", ""), ("smtp", "?starttls=1")):
        handler = Recorder()
        controller = smtp_server(
            handler,
            tls_context=certificate.server_context(),
            require_starttls=True,
            authenticator=authenticator,
            auth_required=True,
        )
        url = smtp_url(controller, scheme, f"{USER}:{QUOTED_PASSWORD}@") + query
        transport(url, ssl_context=certificate.client_context()).send(message())
        assert len(handler.envelopes) == 1


def test_smtps_delivers_over_implicit_tls(smtp_server: Start, certificate: Certificate) -> None:
    handler = Recorder()
    controller = smtp_server(handler, ssl_context=certificate.server_context())
    url = smtp_url(controller, "smtps")
    transport(url, ssl_context=certificate.client_context()).send(message())
    assert len(handler.envelopes) == 1


def test_an_untrusted_certificate_is_permanent(
    smtp_server: Start, certificate: Certificate
) -> None:
    handler = Recorder()
    controller = smtp_server(handler, ssl_context=certificate.server_context())
    with pytest.raises(PermanentEmailError, match="certificate"):
        transport(smtp_url(controller, "smtps")).send(message())
    assert handler.envelopes == []


def test_starttls_against_a_server_without_it_is_permanent(smtp_server: Start) -> None:
    controller = smtp_server(Recorder())
    with pytest.raises(PermanentEmailError, match="STARTTLS"):
        transport(smtp_url(controller, "smtp+starttls")).send(message())


@pytest.mark.parametrize(
    ("url", "security", "port", "username", "password"),
    [
        ("smtp://mail.example.com", "plain", 25, None, ""),
        ("smtp://mail.example.com:2525", "plain", 2525, None, ""),
        ("smtp://u:pw-42@mail.example.com?starttls=1", "starttls", 587, "u", "pw-42"),
        ("smtp+starttls://mail.example.com", "starttls", 587, None, ""),
        ("smtps://mail.example.com", "tls", 465, None, ""),
        (f"SMTPS://{USER}:{QUOTED_PASSWORD}@mail.example.com:4650", "tls", 4650, USER, PASSWORD),
        (
            "smtp://me%40example.com:pw-43@mail.example.com?starttls=0",
            "plain",
            25,
            "me@example.com",
            "pw-43",
        ),
    ],
)
def test_smtp_urls_are_parsed(
    url: str, security: str, port: int, username: str | None, password: str
) -> None:
    smtp = SmtpTransport(url)
    assert (smtp.host, smtp.port, smtp.security, smtp.username) == (
        "mail.example.com",
        port,
        security,
        username,
    )
    assert smtp._password == password
    assert password not in repr(smtp) or not password


@pytest.mark.parametrize(
    "url",
    [
        "http://mail.example.com",
        "smtp://",
        "smtp://mail.example.com:notaport",
        "smtps://mail.example.com?starttls=1",
        "smtp://mail.example.com?verify=0",
        "smtp://u:topsecret@mail.example.com?starttls=maybe",
    ],
)
def test_a_bad_smtp_url_is_a_value_error_without_the_password(url: str) -> None:
    with pytest.raises(ValueError) as caught:
        SmtpTransport(url)
    assert "topsecret" not in str(caught.value)


def test_without_smtp_url_emails_go_to_files(tmp_path: Path) -> None:
    assert isinstance(transport_from_url(None, tmp_path), FileTransport)
    assert isinstance(transport_from_url("  ", tmp_path), FileTransport)
    assert isinstance(transport_from_url("smtps://mail.example.com", tmp_path), SmtpTransport)


def test_the_file_transport_writes_one_eml_per_message_id(tmp_path: Path) -> None:
    mail_dir = tmp_path / "var" / "mail"
    files = FileTransport(mail_dir)
    first = message("order_confirmation", 42)
    files.send(first)
    # A retry after a crash rebuilds the same outbox row: same Message-ID, same file.
    files.send(message("order_confirmation", 42))
    files.send(message("renewal_reminder", 43))
    written = sorted(p.name for p in mail_dir.iterdir())
    assert len(written) == 2 and all(name.endswith(".eml") for name in written)
    path = files.path_for(first)
    parsed = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
    assert parsed["Message-ID"] == first["Message-ID"]
    assert parsed["X-Rinnovo-Kind"] == "order_confirmation"
    assert parsed.get_content_type() == "multipart/alternative"


def test_the_file_transport_keeps_hostile_message_ids_inside_its_directory(tmp_path: Path) -> None:
    files = FileTransport(tmp_path / "mail")
    for i, message_id in enumerate(["<../../etc/passwd@x>", "<..@x>", "<a/b@x>", "<a_b@x>"]):
        msg = message(email_id=i)
        msg.replace_header("Message-ID", message_id)
        files.send(msg)
        assert files.path_for(msg).parent == tmp_path / "mail"
    assert len(list((tmp_path / "mail").iterdir())) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mail"]


def test_the_file_transport_refuses_a_message_without_message_id(tmp_path: Path) -> None:
    msg = message()
    del msg["Message-ID"]
    with pytest.raises(PermanentEmailError):
        FileTransport(tmp_path).send(msg)


def test_an_unwritable_mail_directory_is_transient(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(TransientEmailError):
        FileTransport(blocker / "mail").send(message())
