"""Realistic, correctly signed notifications posted to a receiver, whose receipts are checked.

`rinnovo simulate` plays the provider: it builds a notification in the provider's field order
from the catalog's products (workers.ops.scenarios), signs it with the configured key, posts it,
and verifies the receipt that comes back, so a merchant can try the whole flow locally or check
a deployed endpoint. This module holds what every scenario shares: what a notification and a
result are, what the simulator knows (catalog, local database, clock), and the posting.

For a license the local database (DATABASE_URL) knows, a renewal, upgrade, refund or LCN starts
from what it holds (product, customer, expiry) and dates a renewal or upgrade as the catalog's
policy does, as the provider would; otherwise, or with explicit options, it uses what it is told.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
import requests

from workers.billing import catalog as catalogs
from workers.billing import policies
from workers.billing.products import Catalog, Product
from workers.config import Settings
from workers.errors import ConfigError, DatabaseUnavailable, RinnovoError
from workers.ops import samples
from workers.protocol import form
from workers.protocol.signature import Algorithm
from workers.store import db, subscriptions

DEFAULT_PORT = "8000"  # the Procfile's when PORT is unset
DEFAULT_EMAIL = "customer@example.com"
# The provider now signs with both; the receipt then answers with the stronger.
DEFAULT_ALGORITHMS = (Algorithm.SHA256, Algorithm.SHA3_256)
_DATETIME = "%Y-%m-%d %H:%M:%S"
_STRENGTH = (Algorithm.SHA3_256, Algorithm.SHA256, Algorithm.MD5)


def default_url(env: Mapping[str, str] | None = None) -> str:
    """The local receiver's URL: on the port the Procfile serves it on (PORT, else 8000)."""
    port = ((os.environ if env is None else env).get("PORT") or DEFAULT_PORT).strip()
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"PORT must be a TCP port number, e.g. 8000; got {port!r}")
    return f"http://localhost:{int(port)}"


class SimulationError(RinnovoError):
    """The simulation cannot be built as asked; the message says what to change."""


@dataclass(frozen=True)
class Notification:
    """One signed notification, ready to post, and what its receipt must sign."""

    kind: str
    description: str
    pairs: list[tuple[str, str]]
    algorithm: Algorithm | None  # the strongest signature in it (None for INS: plain 200)
    receipt_values: list[str]
    license_code: str
    reference: str  # the order's REFNO, or the INS sale id
    notes: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        """Where the receiver takes this kind."""
        return f"/{self.kind}"

    @property
    def body(self) -> bytes:
        """The form-encoded body, fields in the provider's order."""
        return form.encode(self.pairs)


@dataclass(frozen=True)
class Result:
    """What the receiver answered, and whether it is the acknowledgement the provider expects."""

    url: str
    status: int
    body: str
    receipt_verified: bool | None  # None for INS, which is acknowledged by a plain 200
    problem: str  # empty when acknowledged (and, for IPN and LCN, the receipt verified)

    @property
    def ok(self) -> bool:
        """Acknowledged, with a receipt that verifies where one is due."""
        return not self.problem


# --- what the simulator knows ----------------------------------------------------------------


def load_catalog(settings: Settings) -> Catalog:
    """The catalog the receiver's workers use: CATALOG, or the one that ships."""
    if settings.catalog_path:
        return catalogs.load(settings.catalog_path)
    return catalogs.load_default()


def product_of(catalog: Catalog, code: str | None) -> Product:
    """The catalog product with this code (the first product when none is given)."""
    if code is None:
        return catalog.products[0]
    found = catalog.get(code)
    if found is None:
        known = ", ".join(product.code for product in catalog)
        raise SimulationError(f"unknown product {code!r}; the catalog has: {known}")
    return found


def currency_of(product: Product, wanted: str | None) -> str:
    """The currency to bill in: the one wanted (if the product is priced in it), else EUR or the
    first it is priced in."""
    if wanted:
        currency = wanted.upper()
        if not product.is_priced(currency):
            sold = ", ".join(sorted(product.prices))
            raise SimulationError(f"{product.code} is not priced in {currency}; it is in {sold}")
        return currency
    return "EUR" if product.is_priced("EUR") else sorted(product.prices)[0]


def known_subscription(
    settings: Settings, license_code: str, notes: list[str]
) -> dict[str, Any] | None:
    """The local database's view of a license, or None with a note saying why there is none."""

    try:
        with db.connection(settings.database_url) as conn, conn.transaction():
            found = subscriptions.describe(conn, license_code)
    except (DatabaseUnavailable, psycopg.Error) as exc:
        # Checking a remote endpoint needs no local database: go on with the options given.
        notes.append(
            f"license {license_code} not looked up in the local database "
            f"({type(exc).__name__}); using the options given"
        )
        return None
    if found is None:
        notes.append(
            f"license {license_code} is not in the local database; using the options given"
        )
    return found


def instant(text: str | None) -> datetime | None:
    """An ISO 8601 instant the database described, in UTC (None for none)."""
    return datetime.fromisoformat(text).astimezone(UTC) if text else None


def terms_of(known: dict[str, Any]) -> policies.Terms | None:
    """The policy's view of a subscription the database described, if it has one."""
    expires = instant(known["expires_at"])
    start = instant(known["period_start"]) or expires
    if expires is None or start is None:
        return None
    return policies.Terms(
        product_code=known["product_code"],
        quantity=known["quantity"],
        cycle=known["cycle"],
        currency=known["currency"] or "EUR",
        price_paid=Decimal(known["price_paid"]),
        period_start=start,
        expires_at=max(expires, start),
        status=known["status"],
    )


def parse_when(text: str, name: str) -> datetime:
    """Read a date (YYYY-MM-DD) or date and time (YYYY-MM-DD HH:MM:SS, or ISO 8601) as UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise SimulationError(
            f"{name} must be YYYY-MM-DD or YYYY-MM-DD HH:MM:SS, not {text!r}"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def stamp(moment: datetime) -> str:
    """An instant as the provider writes dates: `YYYY-MM-DD HH:MM:SS` in UTC."""
    return moment.astimezone(UTC).strftime(_DATETIME)


def customer_reference(email: str) -> str:
    """A stable provider customer reference for an email, as the provider keeps one per shopper."""
    digest = hashlib.sha256(email.strip().lower().encode("utf-8")).hexdigest()
    return str(100_000_000 + int(digest[:12], 16) % 900_000_000)


def now() -> datetime:
    """Now, to the second, in UTC."""
    return datetime.now(UTC).replace(microsecond=0)


def strongest(algorithms: Sequence[Algorithm]) -> Algorithm:
    """The strongest of the algorithms a notification is signed with: its receipt's."""
    if not algorithms:
        raise SimulationError("sign with at least one algorithm")
    return next(algorithm for algorithm in _STRENGTH if algorithm in algorithms)


def signing_key(settings: Settings) -> str:
    """The key notifications are signed with: the first TWOCHECKOUT_SECRET_KEY."""
    if not settings.secret_keys:
        raise SimulationError(
            "TWOCHECKOUT_SECRET_KEY is not set: set it to the receiver's key so that the "
            "simulator can sign notifications and check receipts"
        )
    return settings.secret_keys[0]


# --- posting ----------------------------------------------------------------------------------


def post(
    notification: Notification, url: str, settings: Settings, *, timeout: float = 15.0
) -> Result:
    """Post the notification to the receiver at `url` and check the acknowledgement."""
    target = url.rstrip("/") + notification.path
    try:
        response = requests.post(
            target,
            data=notification.body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            timeout=timeout,
        )
    except requests.RequestException as exc:
        raise SimulationError(f"cannot reach {target}: {type(exc).__name__}: {exc}") from None
    text = response.text
    if response.status_code != 200:
        return Result(
            target,
            response.status_code,
            text,
            None,
            f"not acknowledged: HTTP {response.status_code}",
        )
    if notification.algorithm is None:
        return Result(target, 200, text, None, "")
    verified = samples.verify_receipt(
        text.strip(), notification.algorithm, signing_key(settings), notification.receipt_values
    )
    problem = (
        ""
        if verified
        else (
            f"the receipt does not verify as {notification.algorithm} under the first "
            "TWOCHECKOUT_SECRET_KEY: the provider would not count this delivery and would retry it"
        )
    )
    return Result(target, 200, text, verified, problem)
