"""An INS message applied item by item, by a table of what each message type does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from workers.billing.apply.order import Order
from workers.billing.apply.run import (
    Run,
    SubscriptionNotYetKnown,
    amount,
    charged,
    day,
    status_email,
)
from workers.billing.statuses import Status
from workers.config import Settings
from workers.errors import PermanentEventError
from workers.protocol.notifications import InsItem, InsMessage, LicenseKind, MessageType, OrderItem
from workers.provider_api import Client
from workers.provider_api import Order as ProviderOrder
from workers.store import subscriptions as subs
from workers.store.jsonable import iso

# INS hashes cover sale, vendor and invoice ids, not what the message says happened: with the API
# configured, a refund, a cancellation or a new expiry is checked with the provider first.
CONFIRM_SECONDS = 20.0  # a worker waits this long for the provider, then the event is retried
REFUNDED_ORDER_STATUSES = frozenset({"REFUND", "REVERSED"})
ENDED_ORDER_STATUSES = frozenset({"CANCELED", "REFUND", "REVERSED"})
PAID_INVOICE_STATUSES = ("approved", "deposited")


@dataclass(frozen=True)
class _Item:
    """One billed item of the message being applied, with what every rule reads of it."""

    run: Run
    ins: InsMessage
    item: InsItem
    code: str  # the license code of the item's subscription
    at: datetime
    amount: Decimal | None  # the item's own, to the currency's minor unit

    def change(
        self, sub: dict[str, Any], change: str, updates: dict[str, Any], note: str
    ) -> dict[str, Any]:
        """The run's change of the subscription."""
        return self.run.change(sub, change, updates, note=note)


def apply_ins(run: Run, ins: InsMessage) -> str:
    """Apply an INS message to the subscription of each of its billed items."""
    if not ins.items:
        return f"ignored: {ins.message} names no billed item"
    if ins.type is MessageType.SHIP_STATUS_CHANGED:
        return f"ignored: {ins.message} does not concern subscriptions"
    _confirm(run.settings, ins)
    # A message without a time happened now (in local time, as it always has been read).
    at = ins.at or datetime.now().astimezone()
    results = []
    for item in sorted(ins.items, key=lambda item: item.item_id):
        line = _Item(run, ins, item, ins.license_code(item), at, amount(item.amount, ins.currency))
        results.append(_apply_item(line))
    return "; ".join(results)


def _apply_item(line: _Item) -> str:
    if line.ins.type is MessageType.ORDER_CREATED:
        return _order_created(line)
    sub = line.run.lock(line.code)
    if sub is None:
        raise SubscriptionNotYetKnown(
            f"INS sale {line.ins.sale_id} is not known yet (ORDER_CREATED first)"
        )
    rule = RULES.get(line.ins.type) if line.ins.type else None
    if rule is None:
        return f"{line.code}: ignored: INS {line.ins.message}"
    return rule(line, sub)


def _order_created(line: _Item) -> str:
    """A new sale: its subscription, active once paid, canceled if the fraud check failed."""
    run, ins, item = line.run, line.ins, line.item
    product = run.product(item.item_id)
    status = _created_status(ins)
    order = Order(
        run=run,
        refno=ins.sale_id,
        status=ins.message,
        at=line.at,
        currency=ins.currency,
        test=ins.test,
        customer_id=run.customer(ins.customer, ins.customer.language.lower()[:2]),
    )
    order_item = OrderItem(
        code=product.code,
        pid=product.pid,
        name=item.name,
        license_ref=line.code,
        kind=LicenseKind.NEW,
        quantity=1,
        price=item.amount,
        start=line.at,
        expires=item.next_date,
    )
    sub, new = order.lock_or_create(order_item, product, status, f"INS sale {ins.sale_id} created")
    if new:
        order.record(sub, "new", order.paid(order_item, product))
        sub = run.change(sub, "auto_renew", {"auto_renew": item.recurring}, note="INS recurring")
        if status == Status.ACTIVE:
            run.email(sub, "order_confirmation", f"order/{ins.sale_id}")
    return f"{line.code}: {sub['status']}"


def _created_status(ins: InsMessage) -> Status:
    if ins.fraud == "fail":
        return Status.CANCELED
    return Status.ACTIVE if ins.invoice_status in PAID_INVOICE_STATUSES else Status.PENDING


def _fraud_or_invoice(line: _Item, sub: dict[str, Any]) -> str:
    """A failed fraud check cancels; a passed one, or a paid invoice, activates a pending sale."""
    ins, run = line.ins, line.run
    if ins.type is MessageType.FRAUD_STATUS_CHANGED and ins.fraud == "fail":
        run.change(sub, "canceled", {"status": Status.CANCELED}, note="INS fraud check failed")
        run.email(sub, "cancellation_notice", f"canceled/fraud/{ins.sale_id}")
    elif sub["status"] == Status.PENDING and (
        ins.fraud == "pass" or ins.invoice_status in PAID_INVOICE_STATUSES
    ):
        sub = line.change(sub, "activated", {"status": Status.ACTIVE}, f"INS {ins.message}")
        run.email(sub, "order_confirmation", f"order/{ins.sale_id}")
    return f"{line.code}: {sub['status']}"


def _installment_paid(line: _Item, sub: dict[str, Any]) -> str:
    """A recurring installment paid: the one renewal rule, once per invoice."""
    ins, run = line.ins, line.run
    if not subs.add_order(
        run.conn,
        subscription_id=sub["id"],
        event_id=run.event_id,
        refno=ins.invoice_id,
        kind="renewal",
        order_status=ins.message,
        amount=line.amount or Decimal(0),
        currency=ins.currency,
    ):
        return f"{line.code}: installment {ins.invoice_id} already applied"
    new_expiry = run.renew(
        sub,
        at=line.at,
        order_ref=ins.invoice_id,
        provider_expiry=line.item.next_date,
        price_paid=line.amount,
        paid=charged(line.amount, None, ins.currency),
    )
    return f"{line.code}: renewed until {iso(new_expiry)}"


def _installment_failed(line: _Item, sub: dict[str, Any]) -> str:
    """A recurring installment not paid: an active subscription is past due."""
    if sub["status"] == Status.ACTIVE:
        past_due = {"status": Status.PAST_DUE, "past_due_since": line.at}
        sub = line.change(sub, "past_due", past_due, f"invoice {line.ins.invoice_id}")
        status_email(line.run, sub, Status.PAST_DUE, line.ins.invoice_id, line.amount)
    return f"{line.code}: {sub['status']}"


def _recurring(line: _Item, sub: dict[str, Any]) -> str:
    """Automatic renewal stopped, completed or restarted."""
    on = line.ins.type is MessageType.RECURRING_RESTARTED
    line.change(sub, "auto_renew", {"auto_renew": on}, f"INS {line.ins.message}")
    return f"{line.code}: auto-renew {'on' if on else 'off'}"


def _refund(line: _Item, sub: dict[str, Any]) -> str:
    """A refund ends the subscription, once."""
    ins = line.ins
    if sub["status"] != Status.REFUNDED:
        # The item's own amount: the invoice's total would be wrong for a sale of several.
        updates = {"status": Status.REFUNDED}
        sub = line.change(sub, "refunded", updates, f"invoice {ins.invoice_id}")
        refunded = charged(line.amount, None, ins.currency)
        line.run.email(sub, "refund_notice", f"refunded/{ins.invoice_id}", refunded)
    return f"{line.code}: {sub['status']}"


# Automatic renewal switched by an INS message; with the API configured, confirmed first.
RECURRING_CHANGES = frozenset(
    {
        MessageType.RECURRING_STOPPED,
        MessageType.RECURRING_COMPLETE,
        MessageType.RECURRING_RESTARTED,
    }
)

RULES: dict[MessageType, Callable[[_Item, dict[str, Any]], str]] = {
    MessageType.FRAUD_STATUS_CHANGED: _fraud_or_invoice,
    MessageType.INVOICE_STATUS_CHANGED: _fraud_or_invoice,
    MessageType.RECURRING_INSTALLMENT_SUCCESS: _installment_paid,
    MessageType.RECURRING_INSTALLMENT_FAILED: _installment_failed,
    MessageType.RECURRING_STOPPED: _recurring,
    MessageType.RECURRING_COMPLETE: _recurring,
    MessageType.RECURRING_RESTARTED: _recurring,
    MessageType.REFUND_ISSUED: _refund,
}


def _confirm(settings: Settings, ins: InsMessage) -> None:
    """Check an INS refund, cancellation, renewal or automatic-renewal change against the
    provider's order (and its subscriptions); a PermanentEventError naming the provider's state
    when it contradicts it.

    The provider's API unreachable raises a ProviderApiError: transient, the event is retried.
    """
    refund = ins.type is MessageType.REFUND_ISSUED
    cancel = ins.type is MessageType.FRAUD_STATUS_CHANGED and ins.fraud == "fail"
    renewal = ins.type is MessageType.RECURRING_INSTALLMENT_SUCCESS
    recurring = ins.type in RECURRING_CHANGES
    if not settings.merchant_code or not (refund or cancel or renewal or recurring):
        return
    with Client.from_settings(settings, max_total=CONFIRM_SECONDS) as client:
        order = client.order(ins.sale_id)
        if order is None:
            raise PermanentEventError(
                f"INS {ins.message} not confirmed: the provider has no order {ins.sale_id}"
            )
        if refund:
            _confirm_status(ins, order, REFUNDED_ORDER_STATUSES, "refunded")
        if cancel:
            _confirm_status(ins, order, ENDED_ORDER_STATUSES, "canceled")
        if renewal:
            _confirm_expiry(client, ins, order)
        if recurring:
            _confirm_recurring(client, ins, order)


def _confirm_status(
    ins: InsMessage, order: ProviderOrder, allowed: frozenset[str], what: str
) -> None:
    if order.status.upper() not in allowed:
        raise PermanentEventError(
            f"INS {ins.message} not confirmed: the provider's order {ins.sale_id} is "
            f"{order.status}, not {what}"
        )


def _confirm_recurring(client: Client, ins: InsMessage, order: ProviderOrder) -> None:
    """A provider's subscription of the order must have automatic renewal as the INS says."""
    wanted = ins.type is MessageType.RECURRING_RESTARTED
    found = [client.subscription(ref) for ref in order.subscription_references]
    states = [sub.recurring for sub in found if sub is not None]
    if wanted not in states:
        shown = " and ".join(sorted({"on" if on else "off" for on in states})) or "no subscription"
        raise PermanentEventError(
            f"INS {ins.message} not confirmed: the provider's order {ins.sale_id} has automatic "
            f"renewal {shown}, not {'on' if wanted else 'off'}"
        )


def _confirm_expiry(client: Client, ins: InsMessage, order: ProviderOrder) -> None:
    """The provider's subscriptions of the order must expire no earlier than the INS says."""
    stated = [item.next_date for item in ins.items]
    wanted = max((day(when) for when in stated if when is not None), default=None)
    if wanted is None:
        return  # no new expiry stated: nothing moves
    found = [client.subscription(ref) for ref in order.subscription_references]
    expiries = sorted(day(sub.expires_at) for sub in found if sub and sub.expires_at)
    if not any(when >= wanted for when in expiries):
        shown = ", ".join(str(when) for when in expiries) or "no subscription"
        raise PermanentEventError(
            f"INS {ins.message} not confirmed: the provider's order {ins.sale_id} has {shown} "
            f"as expiry, not {wanted}"
        )
