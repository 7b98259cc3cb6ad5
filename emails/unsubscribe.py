"""One-click unsubscribe (RFC 8058): the signed token of a link and the headers that carry it.

A token names a customer and a family of emails and is signed with a key derived from the
notification secret keys, so no login is needed and nobody can make one for someone else. The
newest key signs; every configured key verifies, so a key rotation keeps old links working.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

# Which kinds a customer may unsubscribe from, by family. Everything else is transactional
# (orders, receipts, payment and expiry notices) and carries no unsubscribe link.
FAMILIES: dict[str, str] = {
    "renewal_reminder": "reminders",
    "auto_renewal_notice": "reminders",
}
ONE_CLICK = "List-Unsubscribe=One-Click"  # the List-Unsubscribe-Post value and the POST body
_LABEL = b"rinnovo unsubscribe link v1"
_TOKEN = re.compile(r"^([1-9][0-9]{0,18})\.([a-z]{1,32})\.([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class Token:
    """What a valid token says: whose, and which family of emails."""

    customer_id: int
    family: str


def family(kind: str) -> str | None:
    """The family a kind can be unsubscribed from, or None for a transactional kind."""
    return FAMILIES.get(kind)


def _key(secret: str) -> bytes:
    # A key of its own, so an unsubscribe MAC can never stand for a notification signature.
    return hmac.new(secret.encode(), _LABEL, hashlib.sha256).digest()


def _mac(secret: str, customer_id: int, family_name: str) -> str:
    digest = hmac.new(_key(secret), f"{customer_id}.{family_name}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")


def make(secrets: Sequence[str], customer_id: int, family_name: str) -> str:
    """The token for `customer_id` and `family_name`, signed with the first secret."""
    if not secrets:
        raise ValueError("no secret key to sign unsubscribe links with")
    if family_name not in FAMILIES.values():
        raise ValueError(f"unknown email family {family_name!r}")
    return f"{customer_id}.{family_name}.{_mac(secrets[0], customer_id, family_name)}"


def read(secrets: Sequence[str], token: str) -> Token | None:
    """What `token` says if one of `secrets` signed it, else None (forged, truncated, foreign)."""
    match = _TOKEN.match(token)
    if match is None or match.group(2) not in FAMILIES.values():
        return None
    customer_id, family_name, mac = int(match.group(1)), match.group(2), match.group(3)
    valid = False
    for secret in secrets:  # every key is tried, so the time does not say which one matched
        valid |= hmac.compare_digest(_mac(secret, customer_id, family_name), mac)
    return Token(customer_id, family_name) if valid else None


def link(public_url: str, token: str) -> str:
    """The HTTPS link of a token under `public_url`."""
    return f"{public_url.rstrip('/')}/unsubscribe/{token}"


def headers(public_url: str, mailto: str, token: str) -> dict[str, str]:
    """The RFC 8058 headers: the HTTPS link (and a mailto: when set) and the one-click marker."""
    targets = [f"<{link(public_url, token)}>"]
    if mailto:
        targets.append(f"<mailto:{quote(mailto, safe='@')}?subject=unsubscribe%20{token}>")
    return {"List-Unsubscribe": ", ".join(targets), "List-Unsubscribe-Post": ONE_CLICK}
