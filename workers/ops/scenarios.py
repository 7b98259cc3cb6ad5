"""The simulator's scenarios: each builds one signed notification as the provider would send it
(an order, a renewal, an upgrade, a refund, a license change, an INS message)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from workers.billing import policies
from workers.billing.products import Product
from workers.config import Settings
from workers.ops import samples
from workers.ops import simulate as sim
from workers.protocol import form
from workers.protocol.signature import Algorithm

# --- IPN ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Order:
    """What an order notification says, before it is laid out in the provider's fields."""

    status: str = "COMPLETE"
    product: Product | None = None
    license_code: str = ""
    license_type: str = "REGULAR"
    email: str = sim.DEFAULT_EMAIL
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
    algorithms: Sequence[Algorithm] = sim.DEFAULT_ALGORITHMS,
    description: str = "",
    notes: Sequence[str] = (),
) -> sim.Notification:
    """A signed IPN for the order; the expiry defaults to one billing period from the start."""
    catalog = sim.load_catalog(settings)
    product = order.product or sim.product_of(catalog, None)
    if order.quantity < 1:
        raise sim.SimulationError(f"quantity must be at least 1, not {order.quantity}")
    currency = sim.currency_of(product, order.currency)
    now = sim.now()
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
        license_start=sim.stamp(start),
        license_exp=sim.stamp(expires),
    )
    unsigned = samples.ipn_pairs(
        status=order.status,
        email=order.email,
        language=order.locale,
        items=[item],
        refno=order.refno,
        currency=currency,
        test=order.test,
        sale_date=sim.stamp(now),
        extra={"AVANGATE_CUSTOMER_REFERENCE": sim.customer_reference(order.email)},
    )
    pairs = samples.sign_pairs(unsigned, sim.signing_key(settings), algorithms)
    fields = form.group(pairs)
    return sim.Notification(
        kind="ipn",
        description=description
        or f"IPN {order.status} {order.license_type} {product.code} x{order.quantity}",
        pairs=pairs,
        algorithm=sim.strongest(algorithms),
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
    algorithms: Sequence[Algorithm] = sim.DEFAULT_ALGORITHMS,
) -> sim.Notification:
    """An order notification with any ORDERSTATUS, for a new license unless one is given."""
    order = Order(
        status=status.upper(),
        product=sim.product_of(sim.load_catalog(settings), product),
        license_code=license_code or "",
        email=email or sim.DEFAULT_EMAIL,
        locale=locale,
        quantity=quantity,
        currency=currency,
        refno=refno or "",
        expires=sim.parse_when(expires, "--expires") if expires else None,
        test=test,
    )
    return build_ipn(settings, order, algorithms=algorithms)


def _existing(
    settings: Settings, license_code: str, product: str | None
) -> tuple[dict[str, Any] | None, Product, list[str]]:
    """The known subscription (if any), the product to bill, and notes on where they came from."""
    catalog = sim.load_catalog(settings)
    notes: list[str] = []
    known = sim.known_subscription(settings, license_code, notes)
    if known is None:
        return None, sim.product_of(catalog, product), notes
    code = product or known["product_code"]
    return known, sim.product_of(catalog, code), notes


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
    algorithms: Sequence[Algorithm] = sim.DEFAULT_ALGORITHMS,
) -> sim.Notification:
    """A renewal order (IPN_LICENSE_TYPE[]=RENEWAL) for an existing license."""
    known, billed, notes = _existing(settings, license_code, product)
    now = sim.now()
    start: datetime | None = None
    new_expiry = sim.parse_when(expires, "--expires") if expires else None
    quantity = known["quantity"] if known else 1
    currency = (known["currency"] or None) if known else None
    terms = sim.terms_of(known) if known else None
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
        email=email or (known["customer"]["email"] if known else sim.DEFAULT_EMAIL),
        locale=locale or (known["customer"]["locale"] if known else "") or "en",
        quantity=quantity,
        currency=currency,
        unit_price=billed.renewal_price(sim.currency_of(billed, currency)),
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
    algorithms: Sequence[Algorithm] = sim.DEFAULT_ALGORITHMS,
) -> sim.Notification:
    """An upgrade order (IPN_LICENSE_TYPE[]=UPGRADE) moving an existing license to `product`."""
    catalog = sim.load_catalog(settings)
    target = sim.product_of(catalog, product)
    known, _, notes = _existing(settings, license_code, product)
    now = sim.now()
    units = quantity or (known["quantity"] if known else 1)
    currency = (known["currency"] or None) if known else None
    start: datetime | None = None
    new_expiry = sim.parse_when(expires, "--expires") if expires else None
    price: Decimal | None = None
    terms = sim.terms_of(known) if known else None
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
        email=email or (known["customer"]["email"] if known else sim.DEFAULT_EMAIL),
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
    algorithms: Sequence[Algorithm] = sim.DEFAULT_ALGORITHMS,
) -> sim.Notification:
    """A refund (ORDERSTATUS REFUND, negative totals) of a license's order, by default its last."""
    known, billed, notes = _existing(settings, license_code, product)
    order = Order(
        status="REFUND",
        product=billed,
        license_code=license_code,
        email=email or (known["customer"]["email"] if known else sim.DEFAULT_EMAIL),
        locale=locale or (known["customer"]["locale"] if known else "") or "en",
        quantity=known["quantity"] if known else 1,
        currency=(known["currency"] or None) if known else None,
        refno=refno or (known["last_order_ref"] if known else "") or "",
        start=sim.instant(known["period_start"]) if known else None,
        expires=sim.instant(known["expires_at"]) if known else None,
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
    algorithms: Sequence[Algorithm] = sim.DEFAULT_ALGORITHMS,
) -> sim.Notification:
    """A license change: STATUS, expiry and automatic renewal of an existing license."""
    notes: list[str] = []
    known = sim.known_subscription(settings, license_code, notes)
    if expires:
        expiry = sim.parse_when(expires, "--expires")
    elif known is not None and known["expires_at"]:
        expiry = sim.instant(known["expires_at"]) or sim.now()
    else:
        expiry = policies.add_months(sim.now(), 1)
    updated = sim.parse_when(date_updated, "--date-updated") if date_updated else sim.now()
    if recurring is None:
        recurring = bool(known["auto_renew"]) if known else True
    address = email or (known["customer"]["email"] if known else sim.DEFAULT_EMAIL)
    unsigned = samples.lcn_pairs(
        license_code=license_code,
        status=status.upper(),
        expiration_date=sim.stamp(expiry),
        date_updated=sim.stamp(updated),
        recurring=recurring,
        email=address,
        changed_by=changed_by.upper(),
        test=known["test"] if known else test,
        extra={"AVANGATE_CUSTOMER_REFERENCE": sim.customer_reference(address)},
    )
    pairs = samples.sign_pairs(unsigned, sim.signing_key(settings), algorithms)
    fields = form.group(pairs)
    return sim.Notification(
        kind="lcn",
        description=f"LCN {status.upper()} for {license_code}",
        pairs=pairs,
        algorithm=sim.strongest(algorithms),
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
) -> sim.Notification:
    """A legacy INS message with a correct md5_hash; its subscription is `2CO-<sale>-<product>`."""
    if not settings.ins_secret_words:
        raise sim.SimulationError(
            "TWOCHECKOUT_INS_SECRET_WORD is not set: an INS message cannot be signed"
        )
    billed = sim.product_of(sim.load_catalog(settings), product)
    currency = sim.currency_of(billed, None)
    sale = sale_id or str(secrets.randbelow(9 * 10**9) + 10**9)
    invoice = invoice_id or str(secrets.randbelow(9 * 10**9) + 10**9)
    next_billing = (
        ""
        if billed.cycle == "lifetime"
        else policies.add_period(sim.now(), billed.cycle).date().isoformat()
    )
    pairs = samples.ins_pairs(
        message_type=message_type.upper(),
        sale_id=sale,
        invoice_id=invoice,
        secret_word=settings.ins_secret_words[0],
        customer_email=email or sim.DEFAULT_EMAIL,
        customer_language=locale,
        currency=currency,
        items=[(billed.name, billed.code, str(billed.price(currency)), next_billing)],
        demo=test,
    )
    return sim.Notification(
        kind="ins",
        description=f"INS {message_type.upper()} sale {sale} {billed.code}",
        pairs=pairs,
        algorithm=None,
        receipt_values=[],
        license_code=f"2CO-{sale}-{billed.code}",
        reference=sale,
    )
