"""Realistic, correctly signed notifications posted to a receiver, whose receipts are checked.

`rinnovo simulate` plays the provider: it builds a notification in the provider's field order
from the catalog's products, signs it with the configured key, posts it, and verifies the receipt
that comes back, so a merchant can try the whole flow locally or check a deployed endpoint.

For a license the local database (DATABASE_URL) knows, a renewal, upgrade, refund or LCN starts
from what it holds (product, customer, expiry) and dates a renewal or upgrade as the catalog's
policy does, as the provider would; otherwise, or with explicit options, it uses what it is told.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
import requests

from workers.billing import catalog as catalogs
from workers.billing import policies
from workers.billing.catalog import Catalog, Product
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


def _product(catalog: Catalog, code: str | None) -> Product:
    if code is None:
        return catalog.products[0]
    found = catalog.get(code)
    if found is None:
        known = ", ".join(product.code for product in catalog)
        raise SimulationError(f"unknown product {code!r}; the catalog has: {known}")
    return found


def _currency(product: Product, wanted: str | None) -> str:
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


def _instant(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text).astimezone(UTC) if text else None


def _terms(known: dict[str, Any]) -> policies.Terms | None:
    """The policy's view of a subscription the database described, if it has one."""
    expires = _instant(known["expires_at"])
    start = _instant(known["period_start"]) or expires
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


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(_DATETIME)


def customer_reference(email: str) -> str:
    """A stable provider customer reference for an email, as the provider keeps one per shopper."""
    digest = hashlib.sha256(email.strip().lower().encode("utf-8")).hexdigest()
    return str(100_000_000 + int(digest[:12], 16) % 900_000_000)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _strongest(algorithms: Sequence[Algorithm]) -> Algorithm:
    if not algorithms:
        raise SimulationError("sign with at least one algorithm")
    return next(algorithm for algorithm in _STRENGTH if algorithm in algorithms)


def _key(settings: Settings) -> str:
    if not settings.secret_keys:
        raise SimulationError(
            "TWOCHECKOUT_SECRET_KEY is not set: set it to the receiver's key so that the "
            "simulator can sign notifications and check receipts"
        )
    return settings.secret_keys[0]


# --- IPN and its scenarios -------------------------------------------------------------------


@dataclass(frozen=True)
class Order:
    """What an order notification says, before it is laid out in the provider's fields."""

    status: str = "COMPLETE"
    product: Product | None = None
    license_code: str = ""
    license_type: str = "REGULAR"
    email: str = DEFAULT_EMAIL
    locale: str = "en"
    quantity: int = 1
    currency: str | None = None
    unit_price: Decimal | None = None
    refno: str = ""
    start: datetime | None = None
    expires: datetime | None = None
    test: bool = True


def build_ipn(
    settings: Settings,
    order: Order,
    *,
    algorithms: Sequence[Algorithm] = DEFAULT_ALGORITHMS,
    description: str = "",
    notes: Sequence[str] = (),
) -> Notification:
    """A signed IPN for the order; the expiry defaults to one billing period from the start."""
    catalog = load_catalog(settings)
    product = order.product or _product(catalog, None)
    if order.quantity < 1:
        raise SimulationError(f"quantity must be at least 1, not {order.quantity}")
    currency = _currency(product, order.currency)
    now = _now()
    start = order.start or now
    expires = order.expires or policies.add_period(start, product.cycle)
    price = order.unit_price if order.unit_price is not None else product.price(currency)
    item = samples.SampleItem(
        code=product.code,
        pid=product.pid,
        name=product.name,
        license_ref=order.license_code,
        quantity=order.quantity,
        price=str(policies.round_money(price, currency)),
        license_type=order.license_type,
        license_start=_stamp(start),
        license_exp=_stamp(expires),
    )
    unsigned = samples.ipn_pairs(
        status=order.status,
        email=order.email,
        language=order.locale,
        items=[item],
        refno=order.refno,
        currency=currency,
        test=order.test,
        sale_date=_stamp(now),
        extra={"AVANGATE_CUSTOMER_REFERENCE": customer_reference(order.email)},
    )
    pairs = samples.sign_pairs(unsigned, _key(settings), algorithms)
    fields = form.group(pairs)
    return Notification(
        kind="ipn",
        description=description
        or f"IPN {order.status} {order.license_type} {product.code} x{order.quantity}",
        pairs=pairs,
        algorithm=_strongest(algorithms),
        receipt_values=[
            form.first(fields, "IPN_PID[]"),
            form.first(fields, "IPN_PNAME[]"),
            form.first(fields, "IPN_DATE"),
        ],
        license_code=item.license_ref,
        reference=form.first(fields, "REFNO"),
        notes=list(notes),
    )


def ipn(
    settings: Settings,
    *,
    status: str = "COMPLETE",
    email: str | None = None,
    product: str | None = None,
    license_code: str | None = None,
    locale: str = "en",
    quantity: int = 1,
    currency: str | None = None,
    refno: str | None = None,
    expires: str | None = None,
    test: bool = True,
    algorithms: Sequence[Algorithm] = DEFAULT_ALGORITHMS,
) -> Notification:
    """An order notification with any ORDERSTATUS, for a new license unless one is given."""
    order = Order(
        status=status.upper(),
        product=_product(load_catalog(settings), product),
        license_code=license_code or "",
        email=email or DEFAULT_EMAIL,
        locale=locale,
        quantity=quantity,
        currency=currency,
        refno=refno or "",
        expires=parse_when(expires, "--expires") if expires else None,
        test=test,
    )
    return build_ipn(settings, order, algorithms=algorithms)


def _existing(
    settings: Settings, license_code: str, product: str | None
) -> tuple[dict[str, Any] | None, Product, list[str]]:
    """The known subscription (if any), the product to bill, and notes on where they came from."""
    catalog = load_catalog(settings)
    notes: list[str] = []
    known = known_subscription(settings, license_code, notes)
    if known is None:
        return None, _product(catalog, product), notes
    code = product or known["product_code"]
    return known, _product(catalog, code), notes


def renewal(
    settings: Settings,
    *,
    license_code: str,
    email: str | None = None,
    product: str | None = None,
    locale: str | None = None,
    refno: str | None = None,
    expires: str | None = None,
    test: bool = True,
    algorithms: Sequence[Algorithm] = DEFAULT_ALGORITHMS,
) -> Notification:
    """A renewal order (IPN_LICENSE_TYPE[]=RENEWAL) for an existing license."""
    known, billed, notes = _existing(settings, license_code, product)
    now = _now()
    start: datetime | None = None
    new_expiry = parse_when(expires, "--expires") if expires else None
    quantity = known["quantity"] if known else 1
    currency = (known["currency"] or None) if known else None
    terms = _terms(known) if known else None
    if new_expiry is None and terms is not None:
        quote = policies.quote_renewal(
            terms, billed, now, automatic=bool(known and known["auto_renew"])
        )
        if quote.allowed:
            start, new_expiry = quote.new_period_start, quote.new_expires_at
            notes.append(f"expiry by the policy: {quote.explanation}")
        else:
            notes.append(
                f"the policy would refuse this renewal ({quote.reason}); posting it anyway"
            )
    order = Order(
        product=billed,
        license_code=license_code,
        license_type="RENEWAL",
        email=email or (known["customer"]["email"] if known else DEFAULT_EMAIL),
        locale=locale or (known["customer"]["locale"] if known else "") or "en",
        quantity=quantity,
        currency=currency,
        unit_price=billed.renewal_price(_currency(billed, currency)),
        refno=refno or "",
        start=start or now,
        expires=new_expiry,
        test=known["test"] if known else test,
    )
    return build_ipn(
        settings,
        order,
        algorithms=algorithms,
        description=f"IPN COMPLETE RENEWAL {billed.code} for {license_code}",
        notes=notes,
    )


def upgrade(
    settings: Settings,
    *,
    license_code: str,
    product: str,
    email: str | None = None,
    locale: str | None = None,
    quantity: int | None = None,
    refno: str | None = None,
    expires: str | None = None,
    test: bool = True,
    algorithms: Sequence[Algorithm] = DEFAULT_ALGORITHMS,
) -> Notification:
    """An upgrade order (IPN_LICENSE_TYPE[]=UPGRADE) moving an existing license to `product`."""
    catalog = load_catalog(settings)
    target = _product(catalog, product)
    known, _, notes = _existing(settings, license_code, product)
    now = _now()
    units = quantity or (known["quantity"] if known else 1)
    currency = (known["currency"] or None) if known else None
    start: datetime | None = None
    new_expiry = parse_when(expires, "--expires") if expires else None
    price: Decimal | None = None
    terms = _terms(known) if known else None
    current = catalog.get(known["product_code"]) if known else None
    if terms is not None and current is not None:
        quote = policies.quote_upgrade(terms, current, target, now, quantity=units)
        if quote.allowed:
            start = quote.new_period_start
            new_expiry = new_expiry or quote.new_expires_at
            price = quote.amount_due / units
            notes.append(
                f"by the {quote.policy} policy: credit {quote.credit}, due {quote.amount_due}"
            )
        else:
            notes.append(f"the policy refuses this upgrade ({quote.reason}); posting it anyway")
    order = Order(
        product=target,
        license_code=license_code,
        license_type="UPGRADE",
        email=email or (known["customer"]["email"] if known else DEFAULT_EMAIL),
        locale=locale or (known["customer"]["locale"] if known else "") or "en",
        quantity=units,
        currency=currency,
        unit_price=price,
        refno=refno or "",
        start=start or now,
        expires=new_expiry,
        test=known["test"] if known else test,
    )
    return build_ipn(
        settings,
        order,
        algorithms=algorithms,
        description=f"IPN COMPLETE UPGRADE {license_code} to {target.code} x{units}",
        notes=notes,
    )


def refund(
    settings: Settings,
    *,
    license_code: str,
    refno: str | None = None,
    product: str | None = None,
    email: str | None = None,
    locale: str | None = None,
    test: bool = True,
    algorithms: Sequence[Algorithm] = DEFAULT_ALGORITHMS,
) -> Notification:
    """A refund (ORDERSTATUS REFUND, negative totals) of a license's order, by default its last."""
    known, billed, notes = _existing(settings, license_code, product)
    order = Order(
        status="REFUND",
        product=billed,
        license_code=license_code,
        email=email or (known["customer"]["email"] if known else DEFAULT_EMAIL),
        locale=locale or (known["customer"]["locale"] if known else "") or "en",
        quantity=known["quantity"] if known else 1,
        currency=(known["currency"] or None) if known else None,
        refno=refno or (known["last_order_ref"] if known else "") or "",
        start=_instant(known["period_start"]) if known else None,
        expires=_instant(known["expires_at"]) if known else None,
        test=known["test"] if known else test,
    )
    return build_ipn(
        settings,
        order,
        algorithms=algorithms,
        description=f"IPN REFUND of {license_code}",
        notes=notes,
    )


# --- LCN and INS -----------------------------------------------------------------------------


def lcn(
    settings: Settings,
    *,
    license_code: str,
    status: str = "ACTIVE",
    expires: str | None = None,
    date_updated: str | None = None,
    recurring: bool | None = None,
    changed_by: str = "SYSTEM",
    email: str | None = None,
    test: bool = True,
    algorithms: Sequence[Algorithm] = DEFAULT_ALGORITHMS,
) -> Notification:
    """A license change: STATUS, expiry and automatic renewal of an existing license."""
    notes: list[str] = []
    known = known_subscription(settings, license_code, notes)
    if expires:
        expiry = parse_when(expires, "--expires")
    elif known is not None and known["expires_at"]:
        expiry = _instant(known["expires_at"]) or _now()
    else:
        expiry = policies.add_months(_now(), 1)
    updated = parse_when(date_updated, "--date-updated") if date_updated else _now()
    if recurring is None:
        recurring = bool(known["auto_renew"]) if known else True
    address = email or (known["customer"]["email"] if known else DEFAULT_EMAIL)
    unsigned = samples.lcn_pairs(
        license_code=license_code,
        status=status.upper(),
        expiration_date=_stamp(expiry),
        date_updated=_stamp(updated),
        recurring=recurring,
        email=address,
        changed_by=changed_by.upper(),
        test=known["test"] if known else test,
        extra={"AVANGATE_CUSTOMER_REFERENCE": customer_reference(address)},
    )
    pairs = samples.sign_pairs(unsigned, _key(settings), algorithms)
    fields = form.group(pairs)
    return Notification(
        kind="lcn",
        description=f"LCN {status.upper()} for {license_code}",
        pairs=pairs,
        algorithm=_strongest(algorithms),
        receipt_values=[form.first(fields, "LICENSE_CODE"), form.first(fields, "EXPIRATION_DATE")],
        license_code=license_code,
        reference="",
        notes=notes,
    )


def ins(
    settings: Settings,
    *,
    message_type: str = "ORDER_CREATED",
    sale_id: str | None = None,
    invoice_id: str | None = None,
    product: str | None = None,
    email: str | None = None,
    locale: str = "en",
    test: bool = True,
) -> Notification:
    """A legacy INS message with a correct md5_hash; its subscription is `2CO-<sale>-<product>`."""
    if not settings.ins_secret_words:
        raise SimulationError(
            "TWOCHECKOUT_INS_SECRET_WORD is not set: an INS message cannot be signed"
        )
    billed = _product(load_catalog(settings), product)
    currency = _currency(billed, None)
    sale = sale_id or str(secrets.randbelow(9 * 10**9) + 10**9)
    invoice = invoice_id or str(secrets.randbelow(9 * 10**9) + 10**9)
    next_billing = (
        ""
        if billed.cycle == "lifetime"
        else policies.add_period(_now(), billed.cycle).date().isoformat()
    )
    pairs = samples.ins_pairs(
        message_type=message_type.upper(),
        sale_id=sale,
        invoice_id=invoice,
        secret_word=settings.ins_secret_words[0],
        customer_email=email or DEFAULT_EMAIL,
        customer_language=locale,
        currency=currency,
        items=[(billed.name, billed.code, str(billed.price(currency)), next_billing)],
        demo=test,
    )
    return Notification(
        kind="ins",
        description=f"INS {message_type.upper()} sale {sale} {billed.code}",
        pairs=pairs,
        algorithm=None,
        receipt_values=[],
        license_code=f"2CO-{sale}-{billed.code}",
        reference=sale,
    )


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
        text.strip(), notification.algorithm, _key(settings), notification.receipt_values
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
