"""A reconciliation record applied: what the provider's API holds and Rinnovo never received."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from workers.billing.apply.order import Order
from workers.billing.apply.run import Run, SubscriptionNotYetKnown, day, status_email
from workers.billing.statuses import ENDED, Status
from workers.errors import PermanentEventError
from workers.protocol.notifications import Customer, LicenseKind, OrderItem
from workers.provider_api import MalformedAnswer, Subscription, parse_record
from workers.provider_api import Order as ProviderOrder
from workers.store import subscriptions as subs
from workers.store.jsonable import iso

API_NOTE = "reconciliation: as the provider's record states"
PAID_ORDER_STATUSES = frozenset({"COMPLETE", "AUTHRECEIVED"})
LIFETIME_EXPIRY = datetime(9999, 12, 31, tzinfo=UTC)
Row = dict[str, Any]


def apply_api(run: Run, body: bytes) -> str:
    """Apply a subscription or order the provider's API holds and Rinnovo did not."""
    try:
        record = parse_record(json.loads(body))
    except (ValueError, MalformedAnswer) as exc:
        raise PermanentEventError(f"unreadable reconciliation record: {exc}") from exc
    if isinstance(record, ProviderOrder):
        return _apply_api_order(run, record)
    return _apply_api_subscription(run, record)


def _apply_api_subscription(run: Run, remote: Subscription) -> str:
    """The provider's record of a subscription, applied like the notifications it stands for.

    A later expiry while enabled is a renewal (the one renewal rule); a disabled subscription is
    canceled; automatic renewal, an earlier expiry, the product and the quantity are set as an
    LCN sets them.
    """
    sub = run.lock(remote.reference)
    if sub is None:
        sub, new = _api_created(run, remote)
        if new:
            return f"{remote.reference}: created {sub['status']}"
    done: list[str] = []
    for step in (_api_status, _api_expiry, _api_recurring, _api_product):
        sub = step(run, remote, sub, done)
    if not done:
        return f"ignored: {remote.reference} already matches the provider"
    return f"{remote.reference}: " + ", ".join(done)


def _expiry(remote: Subscription) -> datetime | None:
    return LIFETIME_EXPIRY if remote.lifetime else remote.expires_at


def _api_status(run: Run, remote: Subscription, sub: Row, done: list[str]) -> Row:
    """A disabled subscription is canceled; an enabled one that had ended is active again."""
    if not remote.enabled:
        if sub["status"] not in ENDED:
            disabled = {"status": Status.CANCELED}
            sub = run.change(sub, "canceled", disabled, note=f"{API_NOTE}: disabled")
            status_email(run, sub, Status.CANCELED, f"api/{day(_expiry(remote))}")
            done.append("canceled")
    elif sub["status"] in ENDED:
        sub = run.change(sub, "license", {"status": Status.ACTIVE}, note=f"{API_NOTE}: enabled")
        done.append("enabled again")
    return sub


def _api_expiry(run: Run, remote: Subscription, sub: Row, done: list[str]) -> Row:
    """A later expiry while enabled is a renewal; any other new expiry is set as stated."""
    expiry, previous = _expiry(remote), sub["expires_at"]
    if remote.enabled and previous and expiry and day(expiry) > day(previous):
        # An automatic renewal is charged at the expiry; one found later happened then.
        run.fact_at = min(previous, datetime.now(UTC))
        new_expiry = run.renew(
            sub,
            at=run.fact_at,
            order_ref=sub["last_order_ref"],
            provider_expiry=expiry,
            price_paid=None,
            paid={},  # the record carries no amount: the email states none rather than guess
        )
        done.append(f"renewed until {iso(new_expiry)}")
        return run.lock(remote.reference) or sub
    if expiry and day(expiry) != day(previous):
        moved: dict[str, Any] = {"expires_at": expiry, "expected_expires_at": expiry}
        sub = run.change(sub, "license", moved, note=f"{API_NOTE}: expiry")
        done.append(f"expires {iso(expiry)}")
    return sub


def _api_recurring(run: Run, remote: Subscription, sub: Row, done: list[str]) -> Row:
    if sub["auto_renew"] != remote.recurring:
        sub = run.change(sub, "auto_renew", {"auto_renew": remote.recurring}, note=API_NOTE)
        done.append(f"auto-renew {'on' if remote.recurring else 'off'}")
    return sub


def _api_product(run: Run, remote: Subscription, sub: Row, done: list[str]) -> Row:
    if (sub["product_code"], sub["quantity"]) != (remote.product_code, remote.quantity):
        product = run.product(remote.product_code)
        updates = {
            "product_code": product.code,
            "product": product.product,
            "edition": product.edition,
            "cycle": product.cycle,
            "quantity": remote.quantity,
        }
        sub = run.change(sub, "license", updates, note=f"{API_NOTE}: product")
        done.append(f"{product.code} x {remote.quantity}")
    return sub


def _api_customer(run: Run, remote: Subscription | ProviderOrder) -> int:
    """The customer a provider's record names (by email, as an IPN without a reference does)."""
    who = Customer(email=remote.email, first_name=remote.first_name, last_name=remote.last_name)
    if isinstance(remote, ProviderOrder):
        who = replace(who, company=remote.company)
        return run.customer(who, remote.language)
    return run.customer(who, "")


def _api_created(run: Run, remote: Subscription) -> tuple[dict[str, Any], bool]:
    """A subscription Rinnovo never heard of, created as its order would have created it (False:
    its order's event, applied at the same time, created it first)."""
    if not remote.email:
        raise PermanentEventError(f"subscription {remote.reference} has no customer email")
    product = run.product(remote.product_code)
    order = Order(
        run=run,
        refno="",
        status="API",
        at=datetime.now(UTC),
        currency="",
        test=False,
        customer_id=_api_customer(run, remote),
    )
    line = OrderItem(
        code=product.code,
        pid=product.pid,
        name="",
        license_ref=remote.reference,
        kind=LicenseKind.NEW,
        quantity=remote.quantity,
        price=None,
        start=remote.starts_at,
        expires=LIFETIME_EXPIRY if remote.lifetime else remote.expires_at,
    )
    status = Status.ACTIVE if remote.enabled else Status.CANCELED
    sub, new = order.lock_or_create(line, product, status, f"{API_NOTE}: never received")
    if new:
        sub = run.change(sub, "auto_renew", {"auto_renew": remote.recurring}, note=API_NOTE)
    return sub, new


def _apply_api_order(run: Run, remote: ProviderOrder) -> str:
    """An order Rinnovo never received: a purchase creates its subscriptions as an IPN would; a
    refund or cancellation ends them; one for a subscription already bought is recorded only
    (its subscription's own record carries the renewal)."""
    run.fact_at = remote.ordered_at
    status = remote.status.upper()
    customer_id = _api_customer(run, remote) if remote.email else 0
    order = Order(
        run=run,
        refno=remote.refno,
        status=status,
        at=remote.ordered_at or datetime.now(UTC),
        currency=remote.currency,
        test=False,
        customer_id=customer_id,
        order_total=remote.gross_price if len(remote.items) == 1 else None,
    )
    results = []
    for line in remote.items:
        quantity = line.quantity or 1
        net = remote.net_price if len(remote.items) == 1 else None
        for reference in sorted(line.subscription_references):
            item = OrderItem(
                code=line.product_code,
                pid="",
                name="",
                license_ref=reference,
                kind=LicenseKind.NEW,
                quantity=quantity,
                price=None if net is None else net / quantity,
                start=None,
                expires=None,
            )
            results.append(_api_order_item(order, item, bool(customer_id)))
    return "; ".join(results) or f"ignored: order {remote.refno} names no subscription"


def _api_order_item(order: Order, item: OrderItem, customer: bool) -> str:
    if order.status in ("REFUND", "REVERSED"):
        return order.end(item, Status.REFUNDED, "refund_notice")
    if order.status == "CANCELED":
        return order.end(item, Status.CANCELED, "cancellation_notice")
    if order.status not in PAID_ORDER_STATUSES:
        return f"{item.license_ref}: ignored: order {order.refno} is {order.status} at the provider"
    sub = order.run.lock(item.license_ref)
    bought = sub is not None and subs.has_order(order.run.conn, sub["id"])
    if not bought:
        if sub is None and not customer:
            raise SubscriptionNotYetKnown(
                f"order {order.refno} names no customer and {item.license_ref} is not known yet"
            )
        return order.purchase(item)
    assert sub is not None
    product = order.run.product(item.code, sub["product_code"])
    kind = "renewal" if product.code == sub["product_code"] else "upgrade"
    if not order.record(sub, kind, order.paid(item, product)):
        return f"{item.license_ref}: order {order.refno} already applied"
    return f"{item.license_ref}: {kind} order {order.refno} recorded (its record carries the state)"
