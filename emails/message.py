"""Turn a rendered email into a MIME message: multipart/alternative with the contract headers."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.policy import Policy
from email.utils import format_datetime
from types import MappingProxyType

from emails.render import KINDS, Rendered

KIND_HEADER = "X-Rinnovo-Kind"

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
_FORBIDDEN = ("\r", "\n", "\0")
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 ftext: printable ASCII except ":"
_MESSAGE_ID = re.compile(r"^<[!-;=?-~]+@[!-;=?-~]+>$")  # printable ASCII without <, >, space
_DOMAIN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
# Headers the builder owns; extra_headers may not replace them or add recipients.
_RESERVED = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "sender",
        "subject",
        "date",
        "message-id",
        KIND_HEADER.lower(),
        "auto-submitted",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
    }
)
_REGISTRY = HeaderRegistry()
_URL_ITEM = re.compile(r"<[^<>\s]+>")


class _UrlListHeader(UnstructuredHeader):
    """A list of <URL>s (RFC 2369): folded between items, never encoded (clients read it raw)."""

    def fold(self, *, policy: Policy) -> str:
        value = str(self)
        items = _URL_ITEM.findall(value)
        if ", ".join(items) != value:
            return super().fold(policy=policy)  # type: ignore[misc]
        separator = "," + (policy.linesep or "\n") + " "
        return f"{self.name}: {separator.join(items)}{policy.linesep}"  # type: ignore[attr-defined]


_MESSAGE_REGISTRY = HeaderRegistry()
_MESSAGE_REGISTRY.map_to_type("list-unsubscribe", _UrlListHeader)  # type: ignore[arg-type]
_POLICY = policy.SMTP.clone(header_factory=_MESSAGE_REGISTRY)


def _check_value(value: str, what: str) -> str:
    """Return ``value`` if it is a string free of CR, LF and NUL, else raise ``ValueError``."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {type(value).__name__}")
    if any(ch in value for ch in _FORBIDDEN):
        raise ValueError(f"{what} contains CR, LF or NUL")
    return value


def _one_line(text: str) -> str:
    """Collapse ``text`` to one line of printable characters (used for display names)."""
    return " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())


def parse_mailbox(value: str, what: str = "address") -> Address:
    """Parse ``addr@domain`` or ``Name <addr@domain>`` into exactly one Address."""
    _check_value(value, what)
    header = _REGISTRY("To", value)
    addresses = header.addresses  # type: ignore[attr-defined]
    if header.defects or len(addresses) != 1:
        raise ValueError(f"{what} is not a single valid email address: {value!r}")
    address: Address = addresses[0]
    if not address.username or not address.domain:
        raise ValueError(f"{what} is not a valid email address: {value!r}")
    return address


def make_message_id(email_id: int, domain: str, *, salt: str = "") -> str:
    """Return the Message-ID of outbox email ``email_id``: the same on every retry.

    The id carries a hash of (email id, domain, salt) so ids from another installation or a
    recreated database do not collide; pass a per-row ``salt`` (e.g. its creation time) for that.
    """
    if isinstance(email_id, bool) or not isinstance(email_id, int) or email_id < 0:
        raise ValueError(f"email id must be a non-negative integer, not {email_id!r}")
    if not isinstance(domain, str) or not _DOMAIN.match(domain):
        raise ValueError(f"not a valid Message-ID domain: {domain!r}")
    _check_value(salt, "salt")
    digest = hashlib.sha256(f"rinnovo-email\0{email_id}\0{domain}\0{salt}".encode()).hexdigest()
    return f"<email-{email_id}.{digest[:16]}@{domain}>"


def build_message(
    rendered: Rendered,
    *,
    to: str,
    sender: str,
    message_id: str,
    date: datetime | None = None,
    extra_headers: Mapping[str, str] = _NO_HEADERS,
    to_name: str | None = None,
) -> EmailMessage:
    """Build the multipart/alternative message (text, then HTML) for ``rendered``.

    ``to`` and ``sender`` are ``addr@domain`` or ``Name <addr@domain>``; ``to_name`` (e.g. the
    customer's name) replaces the recipient's display name and is collapsed to one line.
    CR, LF or NUL in any address, id or header value raises ``ValueError``.
    """
    if rendered.kind not in KINDS:
        raise ValueError(f"unknown email kind {rendered.kind!r}")
    recipient = parse_mailbox(to, "recipient")
    if to_name is not None:
        recipient = Address(display_name=_one_line(to_name), addr_spec=recipient.addr_spec)
    from_address = parse_mailbox(sender, "sender")
    _check_value(message_id, "Message-ID")
    if not _MESSAGE_ID.match(message_id):
        raise ValueError(f"not a valid Message-ID: {message_id!r}")
    subject = _check_value(rendered.subject, "subject")
    when = date if date is not None else datetime.now(UTC)
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("the Date must be an aware datetime")
    extras = []
    for name, value in extra_headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise ValueError(f"not a valid header name: {name!r}")
        if name.lower() in _RESERVED:
            raise ValueError(f"header {name} is set by the message builder")
        extras.append((name, _check_value(value, f"header {name}")))

    msg = EmailMessage(policy=_POLICY)
    msg["From"] = from_address
    msg["To"] = recipient
    msg["Subject"] = subject
    msg["Date"] = format_datetime(when)
    msg["Message-ID"] = message_id
    msg[KIND_HEADER] = rendered.kind
    # RFC 3834: tells autoresponders (out-of-office replies) not to answer.
    msg["Auto-Submitted"] = "auto-generated"
    for name, value in extras:
        msg[name] = value
    msg.set_content(rendered.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(rendered.html, subtype="html", charset="utf-8", cte="quoted-printable")
    return msg
