"""An IPN's order applied line by line, by the order's status and each line's license kind."""

from __future__ import annotations

from workers.billing.apply.order import Order
from workers.billing.apply.run import Run
from workers.billing.statuses import Status
from workers.protocol.notifications import LicenseKind, OrderItem, OrderNotification

PENDING_STATUSES = frozenset(
    {
        "PENDING",
        "PURCHASE_PENDING",
        "PENDING_APPROVAL",
        "PAYMENT_AUTHORIZED",
        "PAYMENT_RECEIVED",
        "PENDING_ORDER_APPROVAL",
        "SUSPECT",
    }
)


def apply_ipn(run: Run, ipn: OrderNotification) -> str:
    """Apply each licensed line of an order; what happened, line by line."""
    items = sorted((i for i in ipn.lines if i.license_ref), key=lambda i: i.license_ref)
    if not items:
        return "ignored: the order carries no license code"
    customer_id = run.customer(ipn.customer, ipn.customer.language.lower())
    order = Order(
        run=run,
        refno=ipn.refno,
        status=ipn.status,
        at=ipn.at,
        currency=ipn.currency,
        test=ipn.test,
        customer_id=customer_id,
        # The order's total stands for its only line when the line's own is missing.
        order_total=ipn.total if len(ipn.lines) == 1 else None,
    )
    return "; ".join(_apply_line(order, ipn.fraud, item) for item in items)


def _apply_line(order: Order, fraud: str, item: OrderItem) -> str:
    status = order.status
    if fraud == "DENIED":
        return order.end(item, Status.CANCELED, "cancellation_notice", "FRAUD_DENIED")
    if status in ("CANCELED", "INVALID"):
        return order.end(item, Status.CANCELED, "cancellation_notice")
    if status in ("REFUND", "REVERSED"):
        return order.end(item, Status.REFUNDED, "refund_notice")
    if status == "COMPLETE":
        complete = {LicenseKind.RENEWAL: order.renewal, LicenseKind.UPGRADE: order.upgrade}
        return complete.get(item.kind, order.purchase)(item)
    if status in PENDING_STATUSES:
        return order.pending(item)
    return f"{item.license_ref}: ignored: order status {status or '(none)'}"
