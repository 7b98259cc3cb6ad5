"""Deliver built messages: over SMTP (``SMTP_URL``) or as ``.eml`` files in a directory.

Every failure is either a ``TransientEmailError`` (retry later with backoff: connection
refused, timeouts, dropped connections, SMTP 4xx) or a ``PermanentEmailError`` (mark the
email failed: SMTP 5xx such as a refused recipient or rejected credentials, TLS certificate
errors, a server lacking STARTTLS or AUTH). Error messages never contain the password.

SMTP URLs:

- ``smtp://[user:password@]host[:port]``: plain SMTP, port 25;
- ``smtp+starttls://...`` or ``smtp://...?starttls=1``: STARTTLS, port 587;
- ``smtps://...``: implicit TLS, port 465.

The user name and password are percent-decoded (write ``@`` as ``%40``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import smtplib
import ssl
import tempfile
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

DEFAULT_TIMEOUT = 30.0

_SCHEMES = {"smtp": "plain", "smtp+starttls": "starttls", "smtps": "tls"}
_DEFAULT_PORTS = {"plain": 25, "starttls": 587, "tls": 465}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._@+=-]")
_MAX_STEM = 150


class TransientEmailError(Exception):
    """Delivery failed for a reason that may go away: retry later."""


class PermanentEmailError(Exception):
    """Delivery failed for a reason a retry will not fix: mark the email failed."""


class Transport(Protocol):
    """Something that delivers a built message or raises one of the two errors above."""

    def send(self, message: EmailMessage) -> None:
        """Deliver ``message`` once."""


class _SMTP(smtplib.SMTP):
    """An SMTP client that remembers the host given to ``connect()`` so TLS checks that name.

    smtplib only records the host when it connects from the constructor, and a constructor
    that fails half-way leaves an open socket nobody can close; connecting afterwards keeps
    the object in our hands.
    """

    def connect(
        self, host: str = "localhost", port: int = 0, source_address: Any = None
    ) -> tuple[int, bytes]:
        """Connect to ``host``:``port``, recording the host for certificate checks."""
        self._host = host
        return super().connect(host, port, source_address)


class _SMTPSSL(_SMTP, smtplib.SMTP_SSL):
    """SMTP client over implicit TLS."""


class SmtpTransport:
    """Send messages through an SMTP server described by an ``smtp(s)://`` URL."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        local_hostname: str | None = None,
    ) -> None:
        """Parse ``url``; raise ``ValueError`` (without echoing credentials) if it is invalid."""
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            raise ValueError(
                f"unsupported SMTP URL scheme {scheme!r}; use smtp://, smtp+starttls:// or smtps://"
            )
        security = _SCHEMES[scheme]
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key != "starttls" or value.lower() not in _TRUE | _FALSE:
                raise ValueError(f"unsupported SMTP URL option {key!r}; only starttls=1 is known")
            if value.lower() in _TRUE:
                if security == "tls":
                    raise ValueError("smtps:// already uses TLS; starttls=1 does not apply")
                security = "starttls"
        if not parts.hostname:
            raise ValueError("SMTP URL has no host")
        try:
            port = parts.port
        except ValueError:
            raise ValueError("SMTP URL has an invalid port") from None
        self.host: str = parts.hostname
        self.port: int = port or _DEFAULT_PORTS[security]
        self.security: str = security
        self.username: str | None = unquote(parts.username) if parts.username else None
        self._password: str = unquote(parts.password or "")
        self.timeout = timeout
        self.local_hostname = local_hostname
        self._ssl_context = ssl_context

    def __repr__(self) -> str:
        """Describe the server without the password."""
        user = f"{self.username}@" if self.username else ""
        return f"SmtpTransport({self.security}://{user}{self.host}:{self.port})"

    def _context(self) -> ssl.SSLContext:
        """Return the TLS context: the one given, or the system's verifying default."""
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    def send(self, message: EmailMessage) -> None:
        """Deliver ``message``; raise Transient/PermanentEmailError on failure."""
        client: smtplib.SMTP
        if self.security == "tls":
            client = _SMTPSSL(
                local_hostname=self.local_hostname, timeout=self.timeout, context=self._context()
            )
        else:
            client = _SMTP(local_hostname=self.local_hostname, timeout=self.timeout)
        delivered = False
        try:
            client.connect(self.host, self.port)
            if self.security == "starttls":
                client.starttls(context=self._context())
            if self.username is not None:
                client.login(self.username, self._password)
            refused = client.send_message(message)
            delivered = True
        except (smtplib.SMTPException, OSError) as exc:
            raise _classify(exc, f"{self.host}:{self.port}") from exc
        finally:
            if delivered:
                # The server has the message: a failed QUIT must not turn into a retry
                # that would deliver a second copy.
                with contextlib.suppress(smtplib.SMTPException, OSError):
                    client.quit()
            client.close()
        if refused:
            raise PermanentEmailError(
                f"{self.host}:{self.port}: some recipients refused: {_describe(refused)}"
            )


def _text(reply: bytes | str) -> str:
    """Return a server reply as text."""
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


def _describe(recipients: dict[str, tuple[int, bytes]]) -> str:
    """Describe refused recipients as ``addr: code reply`` items."""
    return "; ".join(f"{addr}: {code} {_text(reply)}" for addr, (code, reply) in recipients.items())


def _classify(exc: BaseException, where: str) -> Exception:
    """Map an smtplib/socket error to a Transient or Permanent email error."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        detail = f"{where}: recipient refused: {_describe(exc.recipients)}"
        if exc.recipients and all(500 <= code < 600 for code, _ in exc.recipients.values()):
            return PermanentEmailError(detail)
        return TransientEmailError(detail)
    if isinstance(exc, smtplib.SMTPResponseException):
        detail = f"{where}: SMTP {exc.smtp_code} {_text(exc.smtp_error)}"
        if 500 <= exc.smtp_code < 600:
            return PermanentEmailError(detail)
        return TransientEmailError(detail)
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        if isinstance(exc.__context__, TimeoutError):
            return TransientEmailError(f"{where}: timed out waiting for the server")
        return TransientEmailError(f"{where}: connection closed by the server")
    if isinstance(exc, smtplib.SMTPException):
        # STARTTLS or AUTH not offered, no usable AUTH mechanism: configuration, not luck.
        return PermanentEmailError(f"{where}: {exc}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return PermanentEmailError(f"{where}: TLS certificate rejected: {exc.verify_message}")
    if isinstance(exc, TimeoutError):
        return TransientEmailError(f"{where}: timed out")
    if isinstance(exc, OSError):
        return TransientEmailError(f"{where}: {exc.strerror or exc}")
    return PermanentEmailError(f"{where}: {exc}")


def _file_stem(message_id: str) -> str:
    """Return a safe file name stem for a Message-ID; different ids give different stems."""
    raw = message_id.strip().strip("<>")
    stem = _UNSAFE_FILENAME.sub("_", raw)
    if stem.startswith("."):
        stem = "_" + stem
    if stem != raw or len(stem) > _MAX_STEM:
        digest = hashlib.sha256(message_id.encode()).hexdigest()[:12]
        stem = f"{stem[:_MAX_STEM]}-{digest}"
    return stem


class FileTransport:
    """Write each message to ``<directory>/<Message-ID>.eml``; the same id is written once."""

    def __init__(self, directory: Path) -> None:
        """Deliver into ``directory`` (created on first send)."""
        self.directory = Path(directory)

    def __repr__(self) -> str:
        """Name the directory."""
        return f"FileTransport({str(self.directory)!r})"

    def path_for(self, message: EmailMessage) -> Path:
        """Return the file ``message`` is (or would be) written to."""
        message_id = message.get("Message-ID")
        if not message_id:
            raise PermanentEmailError("the message has no Message-ID")
        return self.directory / f"{_file_stem(str(message_id))}.eml"

    def send(self, message: EmailMessage) -> None:
        """Write ``message`` atomically: a temporary file renamed over the final name."""
        target = self.path_for(message)
        data = message.as_bytes()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            _fsync_directory(self.directory)
        except OSError as exc:
            raise TransientEmailError(f"cannot write {target}: {exc.strerror or exc}") from exc


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable where the platform allows syncing a directory."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def transport_from_url(url: str | None, mail_dir: Path) -> Transport:
    """Return an SMTP transport for ``url``, or a file transport into ``mail_dir`` if unset."""
    if url is None or not url.strip():
        return FileTransport(mail_dir)
    return SmtpTransport(url)
