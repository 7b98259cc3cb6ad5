"""An order's lines applied to their subscriptions: purchase, pending, renewal, upgrade, end."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from workers.billing import policies
from workers.billing.apply.run import MISMATCH_TOLERANCE, Run, charged
from workers.billing.products import Product
from workers.billing.statuses import ENDED, LIVE, Status
from workers.errors import PermanentEventError
from workers.protocol.notifications import OrderItem
from workers.store import subscriptions as subs
from workers.store.jsonable import iso


@dataclass
class Order:
    """One order being applied to its lines' subscriptions: the IPN's, an INS sale's, an API's."""

    run: Run
    refno: str
    status: str
    at: datetime
    currency: str
    test: bool
    customer_id: int
    order_total: Decimal | None = None

    def charged(self, item: OrderItem) -> dict[str, Any]:
        """What the provider charged (or refunded) for this line, as an email states it."""
        total = item.total if item.total is not None else self.order_total
        if total is None and item.price is not None:
            total = item.price * item.quantity + (item.vat or Decimal(0))
        return charged(total, item.vat, self.currency)

    def paid(self, item: OrderItem, product: Product) -> Decimal:
        if item.price is not None:
            return policies.round_money(abs(item.price) * item.quantity, self.currency)
        if product.is_priced(self.currency):
            return policies.round_money(product.price(self.currency) * item.quantity, self.currency)
        return Decimal(0)

    def record(self, sub: dict[str, Any], kind: str, amount: Decimal) -> bool:
        return subs.add_order(
            self.run.conn,
            subscription_id=sub["id"],
            event_id=self.run.event_id,
            refno=self.refno,
            kind=kind,
            order_status=self.status,
            amount=amount,
            currency=self.currency,
        )

    def new_row(self, item: OrderItem, product: Product, status: str) -> dict[str, Any]:
        start = item.start or self.at
        expected = policies.add_period(start, product.cycle)
        expires = item.expires or expected
        paid = self.paid(item, product)
        return {
            "license_code": item.license_ref,
            "customer_id": self.customer_id,
            "product_code": product.code,
            "product": product.product,
            "edition": product.edition,
            "cycle": product.cycle,
            "quantity": item.quantity,
            "status": status,
            "test": self.test,
            "currency": self.currency,
            "price_paid": paid,
            "purchase_price": paid,
            "period_start": start,
            "expires_at": expires,
            "expected_expires_at": expected,
            "policy_mismatch": abs(expires - expected) > MISMATCH_TOLERANCE,
            "last_order_ref": self.refno,
            "last_change_at": self.at,
        }

    def lock_or_create(
        self, item: OrderItem, product: Product, status: str, note: str
    ) -> tuple[dict[str, Any], bool]:
        sub = self.run.lock(item.license_ref)
        if sub is not None:
            return sub, False
        created = subs.create(self.run.conn, self.new_row(item, product, status))
        if created is None:  # created by a concurrent worker after our lock attempt
            sub = self.run.lock(item.license_ref)
            assert sub is not None
            return sub, False
        self.run.created(created, note)
        return created, True

    def purchase(self, item: OrderItem) -> str:
        product = self.run.product(item.code, item.pid)
        sub, new = self.lock_or_create(item, product, Status.ACTIVE, f"order {self.refno} complete")
        if not self.record(sub, "new", self.paid(item, product)) and not new:
            return f"{item.license_ref}: order {self.refno} already applied"
        if not new:
            if sub["status"] in ENDED:
                return f"{item.license_ref}: stays {sub['status']} (order ended before completing)"
            if sub["status"] == Status.PENDING:
                fresh = self.new_row(item, product, Status.ACTIVE)
                sub = self.run.change(
                    sub, "activated", {k: fresh[k] for k in subs.TRACKED if k in fresh}
                )
        self.run.email(sub, "order_confirmation", f"order/{self.refno}")
        return f"{item.license_ref}: active until {iso(sub['expires_at'])}"

    def pending(self, item: OrderItem) -> str:
        product = self.run.product(item.code, item.pid)
        sub, new = self.lock_or_create(item, product, Status.PENDING, f"order {self.refno} placed")
        self.record(sub, "new" if new else "pending", Decimal(0))
        return f"{item.license_ref}: " + ("pending payment" if new else f"stays {sub['status']}")

    def renewal(self, item: OrderItem) -> str:
        product = self.run.product(item.code, item.pid)
        sub, new = self.lock_or_create(
            item, product, Status.ACTIVE, f"first seen on renewal order {self.refno}"
        )
        recorded = self.record(sub, "renewal", self.paid(item, product))
        if new:  # nothing to extend: the provider's expiry is all we know
            self.run.email(
                sub,
                "renewal_confirmation",
                f"renewal/{iso(sub['expires_at'])}",
                {
                    "new_expires_at": sub["expires_at"],
                    "expires_at": sub["period_start"],
                    **self.charged(item),
                },
            )
            return f"{item.license_ref}: created from renewal {self.refno}"
        if not recorded:
            return f"{item.license_ref}: renewal {self.refno} already applied"
        new_expiry = self.run.renew(
            sub,
            at=self.at,
            order_ref=self.refno,
            provider_expiry=item.expires,
            price_paid=self.paid(item, product),
            paid=self.charged(item),
        )
        return f"{item.license_ref}: renewed until {iso(new_expiry)}"

    def upgrade(self, item: OrderItem) -> str:
        target = self.run.product(item.code, item.pid)
        sub = self.run.lock(item.license_ref)
        if sub is None:
            raise PermanentEventError(
                f"upgrade order {self.refno} for unknown license {item.license_ref}"
            )
        if not self.record(sub, "upgrade", self.paid(item, target)):
            return f"{item.license_ref}: upgrade {self.refno} already applied"
        current = self.run.product(sub["product_code"])
        quote = policies.quote_upgrade(
            self.run.terms(sub), current, target, self.at, quantity=item.quantity
        )
        if not quote.allowed and self.lapsed(sub):
            return self.upgrade_as_stated(item, sub, target, quote.reason)
        if not quote.allowed:
            raise PermanentEventError(f"upgrade refused: {quote.reason}")
        assert quote.new_expires_at is not None and quote.new_period_start is not None
        new_expiry = item.expires or quote.new_expires_at
        self.upgraded(
            sub,
            item,
            target,
            price=quote.new_price,
            start=quote.new_period_start,
            expires=new_expiry,
            expected=quote.new_expires_at,
            credit=quote.credit,
            note=f"{quote.explanation}; credit {quote.credit}, due {quote.amount_due}",
        )
        return f"{item.license_ref}: upgraded to {target.code} until {iso(new_expiry)}"

    def lapsed(self, sub: dict[str, Any]) -> bool:
        """Whether the subscription had only expired (not ended otherwise) when this was paid."""
        if sub["status"] not in (*LIVE, Status.EXPIRED):
            return False  # a canceled or refunded one is for an operator to look at
        return sub["status"] == Status.EXPIRED or bool(
            sub["expires_at"] and self.at >= sub["expires_at"]
        )

    def upgrade_as_stated(
        self, item: OrderItem, sub: dict[str, Any], target: Product, reason: str
    ) -> str:
        """Record an upgrade the policy refuses as the provider states it, flagged for operators.

        The provider is the authority on what the customer has: it charged for the new plan, so
        the subscription follows it; the policy has no expiry to predict, so none is recorded.
        """
        start = item.start or self.at
        new_expiry = item.expires or policies.add_period(start, target.cycle)
        price = (
            policies.round_money(target.price(self.currency) * item.quantity, self.currency)
            if target.is_priced(self.currency)
            else self.paid(item, target)
        )
        note = f"policy mismatch: recorded as the provider states; {reason}"
        self.upgraded(
            sub,
            item,
            target,
            price=price,
            start=start,
            expires=new_expiry,
            expected=None,
            credit=policies.round_money(Decimal(0), self.currency),
            note=note,
            mismatch=True,
        )
        return f"{item.license_ref}: upgraded to {target.code} until {iso(new_expiry)} ({note})"

    def upgraded(
        self,
        sub: dict[str, Any],
        item: OrderItem,
        target: Product,
        *,
        price: Decimal,
        start: datetime,
        expires: datetime,
        expected: datetime | None,
        credit: Decimal,
        note: str,
        mismatch: bool | None = None,
    ) -> None:
        """Move the subscription to the new plan and confirm it: the credit and what was charged."""
        previous = {
            "previous_product": sub["product"],
            "previous_edition": sub["edition"],
            "previous_cycle": sub["cycle"],
            "previous_quantity": sub["quantity"],
            "expires_at": sub["expires_at"],
        }
        updates: dict[str, Any] = {
            "status": Status.ACTIVE,
            "product_code": target.code,
            "product": target.product,
            "edition": target.edition,
            "cycle": target.cycle,
            "quantity": item.quantity,
            "price_paid": price,
            "purchase_price": price,  # what the new plan cost, credit and money together
            "period_start": start,
            "expires_at": expires,
            "expected_expires_at": expected,
            "last_order_ref": self.refno,
            "last_change_at": max(self.at, sub["last_change_at"] or self.at),
        }
        if mismatch is not None:
            updates["policy_mismatch"] = mismatch
        sub = self.run.change(sub, "upgraded", updates, note=note)
        self.run.email(
            sub,
            "upgrade_confirmation",
            f"upgrade/{self.refno}",
            {**previous, "credit": credit, "new_expires_at": expires, **self.charged(item)},
        )

    def end(self, item: OrderItem, status: str, email_kind: str, reason: str = "") -> str:
        reason = reason or self.status
        sub = self.run.lock(item.license_ref)
        if sub is None:
            return f"{item.license_ref}: ignored: {reason} for an unknown license"
        amount = policies.round_money(abs(item.price or Decimal(0)) * item.quantity, self.currency)
        # Recorded under the reason, not the order's status: a fraud denial of an order that
        # already completed is a new fact about it, not a repeat of COMPLETE.
        if not subs.add_order(
            self.run.conn,
            subscription_id=sub["id"],
            event_id=self.run.event_id,
            refno=self.refno,
            kind=status,
            order_status=reason,
            amount=amount,
            currency=self.currency,
        ):
            return f"{item.license_ref}: {reason} {self.refno} already applied"
        sub = self.run.change(sub, status, {"status": status}, note=f"order {self.refno}")
        self.run.email(sub, email_kind, f"{status}/{self.refno}", self.charged(item))
        return f"{item.license_ref}: {status}"
