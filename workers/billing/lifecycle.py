"""Applying one notification to the subscriptions it concerns, by RULES.md.

Every function here runs inside the caller's transaction, with the event row locked. Applying an
event twice changes nothing the second time: orders are recorded once per (order, license,
status) and a repeated order changes no state; LCNs carry the license's whole state and are
ordered by DATE_UPDATED; emails are outbox rows unique per (subscription, kind, fact).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from workers.billing import dunning, policies
from workers.billing.catalog import Catalog, Product, default_path, load
from workers.config import Settings
from workers.errors import PermanentEventError, RinnovoError
from workers.protocol import form, ins
from workers.provider_api import Client, MalformedAnswer, Order, Subscription, parse_record
from workers.store import outbox
from workers.store import subscriptions as subs
from workers.store.db import Conn

MISMATCH_TOLERANCE = timedelta(days=1)

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
RENEWAL_TYPES = frozenset({"RENEWAL", "RENEW"})
UPGRADE_TYPES = frozenset({"UPGRADE"})
LCN_STATUSES = {
    "ACTIVE": "active",
    "PASTDUE": "past_due",
    "PAST DUE": "past_due",
    "PAST_DUE": "past_due",
    "EXPIRED": "expired",
    "DISABLED": "canceled",
    "CANCELED": "canceled",
    "CANCELLED": "canceled",
    "PENDING ACTIVATION": "pending",
    "PENDING_ACTIVATION": "pending",
}


class SubscriptionNotYetKnown(RinnovoError):
    """A change arrived for a license whose order has not been applied yet; retried later."""


@dataclass
class Applied:
    """What applying one event did."""

    status: str  # processed | ignored
    outcome: str
    changes: list[dict[str, Any]] = field(default_factory=list)
    email_ids: list[int] = field(default_factory=list)


# The catalog is read once per process and again only when its file changes, so an operator can
# add a product and replay the events that failed for want of it.
_catalogs: dict[Path, tuple[int, Catalog]] = {}


def catalog(settings: Settings) -> Catalog:
    """The catalog named by CATALOG (or the shipped one), reloaded when the file changes."""
    path = Path(settings.catalog_path) if settings.catalog_path else default_path()
    stamp = os.stat(path).st_mtime_ns
    cached = _catalogs.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    loaded = load(path)
    _catalogs[path] = (stamp, loaded)
    return loaded


def terms(sub: dict[str, Any]) -> policies.Terms:
    """The policy's view of a subscription row as it stands."""
    start = sub["period_start"] or sub["created_at"]
    return policies.Terms(
        product_code=sub["product_code"],
        quantity=sub["quantity"],
        cycle=sub["cycle"],
        currency=sub["currency"],
        price_paid=sub["price_paid"],
        period_start=start,
        expires_at=max(sub["expires_at"] or start, start),
        status=sub["status"],
        purchase_price=sub.get("purchase_price"),
    )


def _money(value: str) -> Decimal | None:
    try:
        return Decimal(value.strip()) if value.strip() else None
    except InvalidOperation:
        return None


def _time(value: str) -> datetime | None:
    return form.parse_time(value) if value else None


def _amount(value: Decimal | None, currency: str) -> Decimal | None:
    """An amount a notification carries, unsigned and to the currency's minor unit."""
    return None if value is None else policies.round_money(abs(value), currency)


def charged(amount: Decimal | None, tax: Decimal | None, currency: str) -> dict[str, Any]:
    """The email context of what the provider charged or refunded: tax included, and the tax."""
    tax = _amount(tax, currency)
    return {"amount": _amount(amount, currency), "tax": tax if tax else None}


class _Run:
    """One event being applied: the connection, the collected changes and emails."""

    def __init__(self, conn: Conn, event: dict[str, Any], settings: Settings, emails: bool):
        self.conn = conn
        self.event = event
        self.event_id: int = event["id"]
        self.settings = settings
        self.emails = emails
        self.catalog = catalog(settings)
        self.changes: list[dict[str, Any]] = []
        self.email_ids: list[int] = []
        self.notes: list[str] = []
        # When the fact being applied happened, for a reconciliation that finds it late.
        self.fact_at: datetime | None = None

    def product(self, *codes: str) -> Product:
        """The catalog product for the first code that names one, or a clear permanent error."""
        for code in codes:
            if code and (product := self.catalog.get(code)) is not None:
                return product
        shown = " / ".join(code for code in codes if code) or "(none)"
        raise PermanentEventError(f"unknown product {shown}: add it to the catalog, then replay")

    def change(
        self, sub: dict[str, Any], change: str, updates: dict[str, Any], note: str = ""
    ) -> dict[str, Any]:
        """Write the columns that really change, with a history row; the updated row."""
        # A caller may state the mismatch (a change the policy refused); else the dates decide.
        stated = updates.pop("policy_mismatch", None)
        updates = {key: value for key, value in updates.items() if sub.get(key) != value}
        _episode(sub, updates)
        mismatch = stated
        if mismatch is None and ("expires_at" in updates or "expected_expires_at" in updates):
            expires = updates.get("expires_at", sub["expires_at"])
            expected = updates.get("expected_expires_at", sub["expected_expires_at"])
            mismatch = bool(expires and expected and abs(expires - expected) > MISMATCH_TOLERANCE)
        if mismatch is not None and mismatch != sub["policy_mismatch"]:
            updates["policy_mismatch"] = mismatch
        quiet = {key: updates.pop(key) for key in ("last_change_at",) if key in updates}
        if not updates:
            if quiet:
                subs.update(self.conn, sub["id"], quiet)
            return {**sub, **quiet}
        before = {key: sub[key] for key in updates if key in subs.TRACKED}
        after = {key: updates[key] for key in before}
        subs.update(self.conn, sub["id"], {**updates, **quiet})
        subs.add_history(
            self.conn,
            subscription_id=sub["id"],
            event_id=self.event_id,
            change=change,
            before=before,
            after=after,
            note=note,
        )
        self.changes.append(
            {
                "license_code": sub["license_code"],
                "change": change,
                "before": before,
                "after": after,
                "note": note,
            }
        )
        return {**sub, **updates, **quiet}

    def created(self, sub: dict[str, Any], note: str) -> None:
        """Record the creation of a subscription in its history."""
        after = {key: sub[key] for key in subs.TRACKED}
        subs.add_history(
            self.conn,
            subscription_id=sub["id"],
            event_id=self.event_id,
            change="created",
            before={},
            after=after,
            note=note,
        )
        self.changes.append(
            {
                "license_code": sub["license_code"],
                "change": "created",
                "before": {},
                "after": after,
                "note": note,
            }
        )

    def email(
        self, sub: dict[str, Any], kind: str, fact: str, extra: dict[str, Any] | None = None
    ) -> None:
        """Ask for an email about this fact (once ever per subscription, kind and fact)."""
        if not self.emails or self.too_old_to_tell(sub, kind):
            return
        email_id = outbox.add(
            self.conn,
            self.settings,
            subscription_id=sub["id"],
            kind=kind,
            fact=fact,
            event_id=self.event_id,
            extra=extra,
        )
        if email_id is not None:
            self.email_ids.append(email_id)

    def too_old_to_tell(self, sub: dict[str, Any], kind: str) -> bool:
        """Whether a fact a reconciliation found is too old for an email; if so, history says why.

        A customer is not told today about a renewal of three weeks ago: the outbox gets no row.
        """
        limit = self.settings.reconcile_email_max_age
        if self.fact_at is None or datetime.now(UTC) - self.fact_at <= limit:
            return False
        note = (
            f"{kind} not sent: found by reconciliation, the fact of "
            f"{self.fact_at.astimezone(UTC):%Y-%m-%d} is older than RECONCILE_EMAIL_MAX_AGE "
            f"({limit.days} day(s))"
        )
        self.note(sub, "email_skipped", note)
        return True

    def note(self, sub: dict[str, Any], change: str, note: str) -> None:
        """Record in the subscription's history something that happened without changing it."""
        subs.add_history(
            self.conn,
            subscription_id=sub["id"],
            event_id=self.event_id,
            change=change,
            before={},
            after={},
            note=note,
        )
        self.notes.append(note)

    def dunning_start(self, sub: dict[str, Any], amount: Decimal | None) -> None:
        """Day 0 of the payment-failed sequence of the episode `sub` entered (if day 0 is on)."""
        since = sub["past_due_since"]
        if since is None or 0 not in self.settings.dunning_days:
            return
        # Without automatic renewal nothing was charged: the customer is asked to renew instead.
        extra = dunning.context(self.settings, sub, since, 0)
        self.email(sub, dunning.KIND, dunning.fact(since, 0),
                   {**extra, "amount": _amount(amount, sub["currency"])})  # fmt: skip

    def recovered(
        self, previous: dict[str, Any], sub: dict[str, Any], paid: dict[str, Any] | None = None
    ) -> bool:
        """The one recovery email if `previous` was past due and `sub` is active; whether so."""
        since = previous.get("past_due_since")
        if previous["status"] != "past_due" or sub["status"] != "active" or since is None:
            return False
        self.email(
            sub, dunning.RECOVERED, dunning.recovered_fact(since),
            {"past_due_since": since, "amount": None, **(paid or {})},
        )  # fmt: skip
        return True

    def terms(self, sub: dict[str, Any]) -> policies.Terms:
        """The policy's view of a subscription as it stands."""
        return terms(sub)

    def renewal_quote(self, sub: dict[str, Any], at: datetime) -> policies.Quote | str:
        """The policy's quote for a renewal paid at `at`, or why there is none."""
        product = self.catalog.get(sub["product_code"])
        if product is None:
            return f"product {sub['product_code']} is not in the catalog"
        quote = policies.quote_renewal(
            self.terms(sub), product, at, automatic=bool(sub["auto_renew"])
        )
        return quote if quote.allowed else quote.reason

    def renew(
        self,
        sub: dict[str, Any],
        *,
        at: datetime,
        order_ref: str,
        provider_expiry: datetime | None,
        price_paid: Decimal | None,
        paid: dict[str, Any],
    ) -> datetime:
        """Apply a paid renewal by RULES.md's one renewal rule (IPN and INS alike); the new expiry.

        The provider is the authority on the new expiry (recorded beside the policy's, flagged
        when they differ); a renewal never moves it backwards. The new period starts where the
        policy says: at the old expiry, or at the payment once the subscription had lapsed.
        """
        quote = self.renewal_quote(sub, at)
        expected = quote.new_expires_at if isinstance(quote, policies.Quote) else None
        why = quote.explanation if isinstance(quote, policies.Quote) else quote
        previous = sub["expires_at"]
        provider = provider_expiry or expected or previous or at
        new_expiry = max(provider, previous) if previous else provider
        start = quote.new_period_start if isinstance(quote, policies.Quote) else None
        if start is None:
            start = previous if previous and at < previous else at
        updates: dict[str, Any] = {
            "status": "active",
            "expires_at": new_expiry,
            "expected_expires_at": expected or new_expiry,
            "period_start": start,
            "last_order_ref": order_ref,
            "last_change_at": max(at, sub["last_change_at"] or at),
        }
        if price_paid is not None:
            updates["price_paid"] = price_paid
        before = sub
        sub = self.change(sub, "renewed", updates, note=why)
        if self.recovered(before, sub, paid):
            return new_expiry  # the recovery email says it all: not a second one for the payment
        self.email(
            sub,
            "renewal_confirmation",
            f"renewal/{subs.iso(new_expiry)}",
            {"new_expires_at": new_expiry, "expires_at": previous, **paid},
        )
        return new_expiry


def apply(conn: Conn, event: dict[str, Any], settings: Settings, *, emails: bool = True) -> Applied:
    """Apply one locked event row; raises PermanentEventError when it can never apply."""
    run = _Run(conn, event, settings, emails)
    kind = event["kind"]
    if kind == "api":
        outcome = _apply_api(run, bytes(event["raw_body"]))
        return _applied(run, outcome)
    # Today's parser reads the stored raw body, so a parsing fix reaches old events on replay.
    fields = form.group(form.parse_form(bytes(event["raw_body"])))
    try:
        if kind == "ipn":
            outcome = _apply_ipn(run, fields)
        elif kind == "lcn":
            outcome = _apply_lcn(run, fields)
        else:
            outcome = _apply_ins(run, fields)
    except ValueError as exc:
        # A field the receiver does not check could not be read: retrying will not change it.
        raise PermanentEventError(f"unreadable notification: {exc}") from exc
    return _applied(run, outcome)


def _applied(run: _Run, outcome: str) -> Applied:
    ignored = outcome.startswith("ignored") and not (run.changes or run.email_ids)
    status = "ignored" if ignored else "processed"
    return Applied(status=status, outcome=outcome, changes=run.changes, email_ids=run.email_ids)


# --- IPN ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    code: str
    pid: str
    name: str
    license_ref: str
    license_type: str
    quantity: int
    price: Decimal | None
    start: datetime | None
    expires: datetime | None
    total: Decimal | None = None  # the line's total, tax included (IPN_TOTAL[])
    vat: Decimal | None = None  # the line's tax (IPN_VAT[])


def _items(fields: dict[str, list[str]]) -> list[_Item]:
    def column(name: str) -> list[str]:
        return fields.get(name, [])

    def at(values: list[str], index: int) -> str:
        return values[index] if index < len(values) else ""

    pids = column("IPN_PID[]")
    items = []
    for index in range(len(pids)):
        quantity = at(column("IPN_QTY[]"), index)
        items.append(
            _Item(
                code=at(column("IPN_PCODE[]"), index),
                pid=pids[index],
                name=at(column("IPN_PNAME[]"), index),
                license_ref=at(column("IPN_LICENSE_REF[]"), index),
                license_type=at(column("IPN_LICENSE_TYPE[]"), index).upper(),
                quantity=int(quantity) if quantity.isdigit() and int(quantity) > 0 else 1,
                price=_money(at(column("IPN_PRICE[]"), index)),
                start=_time(at(column("IPN_LICENSE_START[]"), index)),
                expires=_time(at(column("IPN_LICENSE_EXP[]"), index)),
                total=_money(at(column("IPN_TOTAL[]"), index)),
                vat=_money(at(column("IPN_VAT[]"), index)),
            )
        )
    return items


def _order_time(fields: dict[str, list[str]]) -> datetime:
    for name in ("PAYMENTDATE", "COMPLETE_DATE", "SALEDATE"):
        value = form.first(fields, name)
        if value:
            return form.parse_time(value)
    return form.parse_time(form.first(fields, "IPN_DATE"))


def _apply_ipn(run: _Run, fields: dict[str, list[str]]) -> str:
    status = form.first(fields, "ORDERSTATUS").upper()
    fraud = form.first(fields, "FRAUD_STATUS").upper()
    refno = form.first(fields, "REFNO")
    lines = _items(fields)
    items = sorted((i for i in lines if i.license_ref), key=lambda i: i.license_ref)
    if not items:
        return "ignored: the order carries no license code"
    email = form.first(fields, "CUSTOMEREMAIL")
    customer_id = subs.upsert_customer(
        run.conn,
        customer_key=form.first(fields, "AVANGATE_CUSTOMER_REFERENCE") or email.lower(),
        email=email,
        first_name=form.first(fields, "FIRSTNAME"),
        last_name=form.first(fields, "LASTNAME"),
        company=form.first(fields, "COMPANY"),
        locale=form.first(fields, "LANGUAGE").lower(),
        event_id=run.event_id,
    )
    order = _Order(
        run=run,
        refno=refno,
        status=status,
        at=_order_time(fields),
        currency=form.first(fields, "CURRENCY"),
        test=form.first(fields, "TEST_ORDER") == "1",
        customer_id=customer_id,
        # The order's total stands for its only line when the line's own is missing.
        order_total=_money(form.first(fields, "IPN_TOTALGENERAL")) if len(lines) == 1 else None,
    )
    results = []
    for item in items:
        if fraud == "DENIED":
            results.append(order.end(item, "canceled", "cancellation_notice", "FRAUD_DENIED"))
        elif status in ("CANCELED", "INVALID"):
            results.append(order.end(item, "canceled", "cancellation_notice"))
        elif status in ("REFUND", "REVERSED"):
            results.append(order.end(item, "refunded", "refund_notice"))
        elif status == "COMPLETE" and item.license_type in RENEWAL_TYPES:
            results.append(order.renewal(item))
        elif status == "COMPLETE" and item.license_type in UPGRADE_TYPES:
            results.append(order.upgrade(item))
        elif status == "COMPLETE":
            results.append(order.purchase(item))
        elif status in PENDING_STATUSES:
            results.append(order.pending(item))
        else:
            results.append(f"{item.license_ref}: ignored: order status {status or '(none)'}")
    return "; ".join(results)


@dataclass
class _Order:
    run: _Run
    refno: str
    status: str
    at: datetime
    currency: str
    test: bool
    customer_id: int
    order_total: Decimal | None = None

    def charged(self, item: _Item) -> dict[str, Any]:
        """What the provider charged (or refunded) for this line, as an email states it."""
        total = item.total if item.total is not None else self.order_total
        if total is None and item.price is not None:
            total = item.price * item.quantity + (item.vat or Decimal(0))
        return charged(total, item.vat, self.currency)

    def paid(self, item: _Item, product: Product) -> Decimal:
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

    def new_row(self, item: _Item, product: Product, status: str) -> dict[str, Any]:
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
        self, item: _Item, product: Product, status: str, note: str
    ) -> tuple[dict[str, Any], bool]:
        sub = subs.lock(self.run.conn, item.license_ref)
        if sub is not None:
            return sub, False
        created = subs.create(self.run.conn, self.new_row(item, product, status))
        if created is None:  # created by a concurrent worker after our lock attempt
            sub = subs.lock(self.run.conn, item.license_ref)
            assert sub is not None
            return sub, False
        self.run.created(created, note)
        return created, True

    def purchase(self, item: _Item) -> str:
        product = self.run.product(item.code, item.pid)
        sub, new = self.lock_or_create(item, product, "active", f"order {self.refno} complete")
        if not self.record(sub, "new", self.paid(item, product)) and not new:
            return f"{item.license_ref}: order {self.refno} already applied"
        if not new:
            if sub["status"] in ("refunded", "canceled"):
                return f"{item.license_ref}: stays {sub['status']} (order ended before completing)"
            if sub["status"] == "pending":
                fresh = self.new_row(item, product, "active")
                sub = self.run.change(
                    sub, "activated", {k: fresh[k] for k in subs.TRACKED if k in fresh}
                )
        self.run.email(sub, "order_confirmation", f"order/{self.refno}")
        return f"{item.license_ref}: active until {subs.iso(sub['expires_at'])}"

    def pending(self, item: _Item) -> str:
        product = self.run.product(item.code, item.pid)
        sub, new = self.lock_or_create(item, product, "pending", f"order {self.refno} placed")
        self.record(sub, "new" if new else "pending", Decimal(0))
        return f"{item.license_ref}: " + ("pending payment" if new else f"stays {sub['status']}")

    def renewal(self, item: _Item) -> str:
        product = self.run.product(item.code, item.pid)
        sub, new = self.lock_or_create(
            item, product, "active", f"first seen on renewal order {self.refno}"
        )
        recorded = self.record(sub, "renewal", self.paid(item, product))
        if new:  # nothing to extend: the provider's expiry is all we know
            self.run.email(
                sub,
                "renewal_confirmation",
                f"renewal/{subs.iso(sub['expires_at'])}",
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
        return f"{item.license_ref}: renewed until {subs.iso(new_expiry)}"

    def upgrade(self, item: _Item) -> str:
        target = self.run.product(item.code, item.pid)
        sub = subs.lock(self.run.conn, item.license_ref)
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
        return f"{item.license_ref}: upgraded to {target.code} until {subs.iso(new_expiry)}"

    def lapsed(self, sub: dict[str, Any]) -> bool:
        """Whether the subscription had only expired (not ended otherwise) when this was paid."""
        if sub["status"] not in ("active", "past_due", "expired"):
            return False  # a canceled or refunded one is for an operator to look at
        return sub["status"] == "expired" or bool(
            sub["expires_at"] and self.at >= sub["expires_at"]
        )

    def upgrade_as_stated(
        self, item: _Item, sub: dict[str, Any], target: Product, reason: str
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
        return (
            f"{item.license_ref}: upgraded to {target.code} until {subs.iso(new_expiry)} ({note})"
        )

    def upgraded(
        self,
        sub: dict[str, Any],
        item: _Item,
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
            "status": "active",
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

    def end(self, item: _Item, status: str, email_kind: str, reason: str = "") -> str:
        reason = reason or self.status
        sub = subs.lock(self.run.conn, item.license_ref)
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


def _episode(sub: dict[str, Any], updates: dict[str, Any]) -> None:
    """Keep `past_due_since` with the status: set on entering past_due, cleared on leaving it."""
    status = updates.get("status")
    if status is None:
        return
    if status == "past_due":
        updates.setdefault("past_due_since", datetime.now(UTC))
    elif sub.get("past_due_since") is not None:
        updates["past_due_since"] = None


# --- LCN ------------------------------------------------------------------------------------


def _apply_lcn(run: _Run, fields: dict[str, list[str]]) -> str:
    code = form.first(fields, "LICENSE_CODE")
    sub = subs.lock(run.conn, code)
    if sub is None:
        raise SubscriptionNotYetKnown(f"license {code} is not known yet (its order comes first)")
    updated = form.parse_time(form.first(fields, "DATE_UPDATED"))
    if sub["last_change_at"] is not None and updated < sub["last_change_at"]:
        note = (
            f"LCN of {subs.iso(updated)} is older than the last change applied "
            f"({subs.iso(sub['last_change_at'])}): recorded, not applied"
        )
        run.note(sub, "stale", note)
        return f"ignored: {note}"
    raw_status = form.first(fields, "STATUS").upper()
    status = LCN_STATUSES.get(raw_status)
    if status is None:
        raise PermanentEventError(f"unknown LCN STATUS {raw_status!r}")
    if sub["status"] == "refunded" and status == "canceled":
        status = "refunded"  # a refund already ended access; disabling it adds nothing
    expiry = form.parse_time(form.first(fields, "EXPIRATION_DATE"))
    updates: dict[str, Any] = {"status": status, "expires_at": expiry, "last_change_at": updated}
    if status == "past_due":
        updates["past_due_since"] = sub["past_due_since"] or updated
    if "RECURRING" in fields:  # absent says nothing about automatic renewal
        updates["auto_renew"] = form.first(fields, "RECURRING") == "1"
    note = f"LCN {raw_status} by {form.first(fields, 'CHANGED_BY') or 'provider'}"
    renewed = sub["expires_at"] is not None and expiry > sub["expires_at"] and status == "active"
    if expiry != sub["expires_at"]:
        # An LCN states the license's whole state, so the newest one wins whatever order they
        # arrive in; the policy's prediction is checked on orders (IPN, INS), not restated here.
        updates["expected_expires_at"] = expiry
    previous = sub
    sub = run.change(sub, "license", updates, note=note)
    if run.recovered(previous, sub):
        renewed = False  # the recovery email tells of the renewal too
    if renewed:
        run.email(
            sub,
            "renewal_confirmation",
            f"renewal/{subs.iso(expiry)}",
            # An LCN carries no amount: the email states none rather than guess one.
            {"new_expires_at": expiry, "expires_at": previous["expires_at"]},
        )
    if status != previous["status"]:
        _status_email(run, sub, status, f"lcn/{subs.iso(updated)}")
    return f"{code}: {status}, expires {subs.iso(expiry)}, auto-renew {sub['auto_renew']}"


def _status_email(
    run: _Run, sub: dict[str, Any], status: str, fact: str, amount: Decimal | None = None
) -> None:
    """The email a change of status calls for, if any (`amount`: what the notification carries)."""
    if status == "past_due":
        run.dunning_start(sub, amount)
    elif status == "expired":
        # The same fact the clock uses, so an LCN and the clock never both send it.
        run.email(sub, "expiry_notice", subs.iso(sub["expires_at"]) or "")
    elif status == "canceled":
        run.email(sub, "cancellation_notice", f"canceled/{fact}")


# --- INS ------------------------------------------------------------------------------------


def _apply_ins(run: _Run, fields: dict[str, list[str]]) -> str:
    message = form.first(fields, "message_type").upper()
    sale_id = form.first(fields, "sale_id")
    items = ins.items(fields)
    if not items:
        return f"ignored: {message} names no billed item"
    if message in ("SHIP_STATUS_CHANGED",):
        return f"ignored: {message} does not concern subscriptions"
    _confirm_ins(run.settings, fields, message, items)
    results = []
    for item in sorted(items, key=lambda item: item["item_id"]):
        code = ins.license_code(sale_id, item["item_id"])
        results.append(_apply_ins_item(run, fields, message, code, item))
    return "; ".join(results)


def _apply_ins_item(
    run: _Run, fields: dict[str, list[str]], message: str, code: str, item: dict[str, str]
) -> str:
    sale_id = form.first(fields, "sale_id")
    invoice = form.first(fields, "invoice_id")
    currency = form.first(fields, "list_currency") or form.first(fields, "cust_currency")
    stamp = form.first(fields, "timestamp") or form.first(fields, "sale_date_placed")
    at = form.parse_time(stamp) if stamp else datetime.now().astimezone()
    next_date = _time(item["item_rec_date_next"])
    amount = _amount(_money(item["item_list_amount"]), currency)
    if message == "ORDER_CREATED":
        product = run.product(item["item_id"])
        email = form.first(fields, "customer_email")
        invoice_ok = form.first(fields, "invoice_status").lower() in ("approved", "deposited")
        fraud = form.first(fields, "fraud_status").lower()
        status = "canceled" if fraud == "fail" else ("active" if invoice_ok else "pending")
        order = _Order(
            run=run,
            refno=sale_id,
            status=message,
            at=at,
            currency=currency,
            test=form.first(fields, "demo").upper() == "Y",
            customer_id=subs.upsert_customer(
                run.conn,
                customer_key=email.lower(),
                email=email,
                first_name=form.first(fields, "customer_first_name"),
                last_name=form.first(fields, "customer_last_name"),
                company="",
                locale=form.first(fields, "customer_language").lower()[:2],
                event_id=run.event_id,
            ),
        )
        line = _Item(
            code=product.code,
            pid=product.pid,
            name=item["item_name"],
            license_ref=code,
            license_type="REGULAR",
            quantity=1,
            price=_money(item["item_list_amount"]),
            start=at,
            expires=next_date,
        )
        sub, new = order.lock_or_create(line, product, status, f"INS sale {sale_id} created")
        if new:
            order.record(sub, "new", order.paid(line, product))
            recurring = item["item_rec_status"].lower() == "live"
            sub = run.change(sub, "auto_renew", {"auto_renew": recurring}, note="INS recurring")
            if status == "active":
                run.email(sub, "order_confirmation", f"order/{sale_id}")
        return f"{code}: {sub['status']}"
    locked = subs.lock(run.conn, code)
    if locked is None:
        raise SubscriptionNotYetKnown(f"INS sale {sale_id} is not known yet (ORDER_CREATED first)")
    sub = locked
    if message in ("FRAUD_STATUS_CHANGED", "INVOICE_STATUS_CHANGED"):
        verdict = form.first(fields, "fraud_status").lower()
        invoice_status = form.first(fields, "invoice_status").lower()
        if message == "FRAUD_STATUS_CHANGED" and verdict == "fail":
            run.change(sub, "canceled", {"status": "canceled"}, note="INS fraud check failed")
            run.email(sub, "cancellation_notice", f"canceled/fraud/{sale_id}")
        elif sub["status"] == "pending" and (
            verdict == "pass" or invoice_status in ("approved", "deposited")
        ):
            sub = run.change(sub, "activated", {"status": "active"}, note=f"INS {message}")
            run.email(sub, "order_confirmation", f"order/{sale_id}")
        return f"{code}: {sub['status']}"
    if message == "RECURRING_INSTALLMENT_SUCCESS":
        if not subs.add_order(
            run.conn,
            subscription_id=sub["id"],
            event_id=run.event_id,
            refno=invoice,
            kind="renewal",
            order_status=message,
            amount=amount or Decimal(0),
            currency=currency,
        ):
            return f"{code}: installment {invoice} already applied"
        new_expiry = run.renew(
            sub,
            at=at,
            order_ref=invoice,
            provider_expiry=next_date,
            price_paid=amount,
            paid=charged(amount, None, currency),
        )
        return f"{code}: renewed until {subs.iso(new_expiry)}"
    if message == "RECURRING_INSTALLMENT_FAILED":
        if sub["status"] == "active":
            sub = run.change(
                sub, "past_due", {"status": "past_due", "past_due_since": at},
                note=f"invoice {invoice}",
            )  # fmt: skip
            _status_email(run, sub, "past_due", invoice, amount)
        return f"{code}: {sub['status']}"
    if message in ("RECURRING_STOPPED", "RECURRING_COMPLETE", "RECURRING_RESTARTED"):
        on = message == "RECURRING_RESTARTED"
        sub = run.change(sub, "auto_renew", {"auto_renew": on}, note=f"INS {message}")
        return f"{code}: auto-renew {'on' if on else 'off'}"
    if message == "REFUND_ISSUED":
        if sub["status"] != "refunded":
            # The item's own amount: the invoice's total would be wrong for a sale of several.
            sub = run.change(sub, "refunded", {"status": "refunded"}, note=f"invoice {invoice}")
            run.email(sub, "refund_notice", f"refunded/{invoice}", charged(amount, None, currency))
        return f"{code}: {sub['status']}"
    return f"{code}: ignored: INS {message}"


# INS hashes cover sale, vendor and invoice ids, not what the message says happened: with the API
# configured, a refund, a cancellation or a new expiry is checked with the provider first.
CONFIRM_SECONDS = 20.0  # a worker waits this long for the provider, then the event is retried
REFUNDED_ORDER_STATUSES = frozenset({"REFUND", "REVERSED"})
ENDED_ORDER_STATUSES = frozenset({"CANCELED", "REFUND", "REVERSED"})


def _confirm_ins(
    settings: Settings, fields: dict[str, list[str]], message: str, items: list[dict[str, str]]
) -> None:
    """Check an INS refund, cancellation or renewal against the provider's order (and its
    subscriptions); a PermanentEventError naming the provider's state when it contradicts it.

    The provider's API unreachable raises a ProviderApiError: transient, the event is retried.
    """
    refund = message == "REFUND_ISSUED"
    cancel = (
        message == "FRAUD_STATUS_CHANGED" and form.first(fields, "fraud_status").lower() == "fail"
    )
    renewal = message == "RECURRING_INSTALLMENT_SUCCESS"
    if not settings.merchant_code or not (refund or cancel or renewal):
        return
    sale_id = form.first(fields, "sale_id")
    with Client.from_settings(settings, max_total=CONFIRM_SECONDS) as client:
        order = client.order(sale_id)
        if order is None:
            raise PermanentEventError(
                f"INS {message} not confirmed: the provider has no order {sale_id}"
            )
        if refund and order.status.upper() not in REFUNDED_ORDER_STATUSES:
            raise PermanentEventError(
                f"INS {message} not confirmed: the provider's order {sale_id} is {order.status}, "
                "not refunded"
            )
        if cancel and order.status.upper() not in ENDED_ORDER_STATUSES:
            raise PermanentEventError(
                f"INS {message} not confirmed: the provider's order {sale_id} is {order.status}, "
                "not canceled"
            )
        if renewal:
            _confirm_expiry(client, message, sale_id, order, items)


def _confirm_expiry(
    client: Client, message: str, sale_id: str, order: Order, items: list[dict[str, str]]
) -> None:
    """The provider's subscriptions of the order must expire no earlier than the INS says."""
    stated = [_time(item["item_rec_date_next"]) for item in items]
    wanted = max((_day(when) for when in stated if when is not None), default=None)
    if wanted is None:
        return  # no new expiry stated: nothing moves
    found = [client.subscription(ref) for ref in order.subscription_references]
    expiries = sorted(_day(sub.expires_at) for sub in found if sub and sub.expires_at)
    if not any(day >= wanted for day in expiries):
        shown = ", ".join(str(day) for day in expiries) or "no subscription"
        raise PermanentEventError(
            f"INS {message} not confirmed: the provider's order {sale_id} has {shown} as expiry, "
            f"not {wanted}"
        )


# --- API (reconciliation) -------------------------------------------------------------------

API_NOTE = "reconciliation: as the provider's record states"
ENDED = ("canceled", "refunded")
PAID_ORDER_STATUSES = frozenset({"COMPLETE", "AUTHRECEIVED"})
LIFETIME_EXPIRY = datetime(9999, 12, 31, tzinfo=UTC)


def _apply_api(run: _Run, body: bytes) -> str:
    """Apply a subscription or order the provider's API holds and Rinnovo did not."""
    try:
        record = parse_record(json.loads(body))
    except (ValueError, MalformedAnswer) as exc:
        raise PermanentEventError(f"unreadable reconciliation record: {exc}") from exc
    if isinstance(record, Order):
        return _apply_api_order(run, record)
    return _apply_api_subscription(run, record)


def _day(value: datetime | None) -> Any:
    return None if value is None else value.astimezone(UTC).date()


def _apply_api_subscription(run: _Run, remote: Subscription) -> str:
    """The provider's record of a subscription, applied like the notifications it stands for.

    A later expiry while enabled is a renewal (the one renewal rule); a disabled subscription is
    canceled; automatic renewal, an earlier expiry, the product and the quantity are set as an
    LCN sets them.
    """
    sub = subs.lock(run.conn, remote.reference)
    if sub is None:
        sub, new = _api_created(run, remote)
        if new:
            return f"{remote.reference}: created {sub['status']}"
    expiry = LIFETIME_EXPIRY if remote.lifetime else remote.expires_at
    done: list[str] = []
    if not remote.enabled:
        if sub["status"] not in ENDED:
            sub = run.change(sub, "canceled", {"status": "canceled"}, note=f"{API_NOTE}: disabled")
            _status_email(run, sub, "canceled", f"api/{_day(expiry)}")
            done.append("canceled")
    elif sub["status"] in ENDED:
        sub = run.change(sub, "license", {"status": "active"}, note=f"{API_NOTE}: enabled")
        done.append("enabled again")
    previous = sub["expires_at"]
    if remote.enabled and previous and expiry and _day(expiry) > _day(previous):
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
        sub = subs.lock(run.conn, remote.reference) or sub
        done.append(f"renewed until {subs.iso(new_expiry)}")
    elif expiry and _day(expiry) != _day(previous):
        moved: dict[str, Any] = {"expires_at": expiry, "expected_expires_at": expiry}
        sub = run.change(sub, "license", moved, note=f"{API_NOTE}: expiry")
        done.append(f"expires {subs.iso(expiry)}")
    if sub["auto_renew"] != remote.recurring:
        sub = run.change(sub, "auto_renew", {"auto_renew": remote.recurring}, note=API_NOTE)
        done.append(f"auto-renew {'on' if remote.recurring else 'off'}")
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
    if not done:
        return f"ignored: {remote.reference} already matches the provider"
    return f"{remote.reference}: " + ", ".join(done)


def _api_customer(run: _Run, remote: Subscription | Order) -> int:
    """The customer a provider's record names (by email, as an IPN without a reference does)."""
    return subs.upsert_customer(
        run.conn,
        customer_key=remote.email.lower(),
        email=remote.email,
        first_name=remote.first_name,
        last_name=remote.last_name,
        company=remote.company if isinstance(remote, Order) else "",
        locale=remote.language if isinstance(remote, Order) else "",
        event_id=run.event_id,
    )


def _api_created(run: _Run, remote: Subscription) -> tuple[dict[str, Any], bool]:
    """A subscription Rinnovo never heard of, created as its order would have created it (False:
    its order's event, applied at the same time, created it first)."""
    if not remote.email:
        raise PermanentEventError(f"subscription {remote.reference} has no customer email")
    product = run.product(remote.product_code)
    order = _Order(
        run=run,
        refno="",
        status="API",
        at=datetime.now(UTC),
        currency="",
        test=False,
        customer_id=_api_customer(run, remote),
    )
    line = _Item(
        code=product.code,
        pid=product.pid,
        name="",
        license_ref=remote.reference,
        license_type="REGULAR",
        quantity=remote.quantity,
        price=None,
        start=remote.starts_at,
        expires=LIFETIME_EXPIRY if remote.lifetime else remote.expires_at,
    )
    status = "active" if remote.enabled else "canceled"
    sub, new = order.lock_or_create(line, product, status, f"{API_NOTE}: never received")
    if new:
        sub = run.change(sub, "auto_renew", {"auto_renew": remote.recurring}, note=API_NOTE)
    return sub, new


def _apply_api_order(run: _Run, remote: Order) -> str:
    """An order Rinnovo never received: a purchase creates its subscriptions as an IPN would; a
    refund or cancellation ends them; one for a subscription already bought is recorded only
    (its subscription's own record carries the renewal)."""
    run.fact_at = remote.ordered_at
    status = remote.status.upper()
    customer_id = _api_customer(run, remote) if remote.email else 0
    order = _Order(
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
            item = _Item(
                code=line.product_code,
                pid="",
                name="",
                license_ref=reference,
                license_type="REGULAR",
                quantity=quantity,
                price=None if net is None else net / quantity,
                start=None,
                expires=None,
            )
            results.append(_api_order_item(order, item, bool(customer_id)))
    return "; ".join(results) or f"ignored: order {remote.refno} names no subscription"


def _api_order_item(order: _Order, item: _Item, customer: bool) -> str:
    if order.status in ("REFUND", "REVERSED"):
        return order.end(item, "refunded", "refund_notice")
    if order.status == "CANCELED":
        return order.end(item, "canceled", "cancellation_notice")
    if order.status not in PAID_ORDER_STATUSES:
        return f"{item.license_ref}: ignored: order {order.refno} is {order.status} at the provider"
    sub = subs.lock(order.run.conn, item.license_ref)
    bought = (
        sub is not None
        and order.run.conn.execute(
            "SELECT 1 FROM orders WHERE subscription_id = %s LIMIT 1", (sub["id"],)
        ).fetchone()
    )
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
