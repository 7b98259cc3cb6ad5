"""What every notification kind shares: one run (changes, history, emails), the one renewal rule.

Every function here runs inside the caller's transaction, with the event row locked.
"""

from __future__ import annotations

import functools
import os
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from workers.billing import dunning, policies
from workers.billing.catalog import default_path, load
from workers.billing.products import Catalog, Product
from workers.billing.statuses import Status
from workers.config import Settings
from workers.errors import PermanentEventError, RinnovoError
from workers.protocol.notifications import Customer
from workers.store import batch, outbox
from workers.store import subscriptions as subs
from workers.store.db import Conn
from workers.store.jsonable import iso

MISMATCH_TOLERANCE = timedelta(days=1)


class SubscriptionNotYetKnown(RinnovoError):
    """A change arrived for a license whose order has not been applied yet; retried later."""


# The catalog is read once per process and again when its file changes, so an operator can add a
# product and replay the events that failed for want of it. The file is looked at once a second
# at most, and on every replayed event (`fresh`): a replay sees an edit made just before it.
CATALOG_RECHECK_SECONDS = 1.0
_catalogs: dict[Path, tuple[int, float, Catalog]] = {}


def catalog(settings: Settings, *, fresh: bool = True) -> Catalog:
    """The catalog named by CATALOG (or the shipped one), reloaded when the file changes
    (`fresh=False`: as it stood within the last CATALOG_RECHECK_SECONDS)."""
    now = time.monotonic()
    path = _catalog_path(settings.catalog_path)
    cached = _catalogs.get(path)
    if cached is not None and not fresh and now - cached[1] < CATALOG_RECHECK_SECONDS:
        return cached[2]
    stamp = os.stat(path).st_mtime_ns
    if cached is not None and cached[0] == stamp:
        _catalogs[path] = (stamp, now, cached[2])
        return cached[2]
    loaded = load(path)
    _catalogs[path] = (stamp, now, loaded)
    return loaded


@functools.cache
def _catalog_path(setting: str | None) -> Path:
    return Path(setting) if setting else default_path()


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


def day(value: datetime | None) -> Any:
    """The UTC calendar day of an instant (None stays None)."""
    return None if value is None else value.astimezone(UTC).date()


def amount(value: Decimal | None, currency: str) -> Decimal | None:
    """An amount a notification carries, unsigned and to the currency's minor unit."""
    return None if value is None else policies.round_money(abs(value), currency)


def charged(paid: Decimal | None, tax: Decimal | None, currency: str) -> dict[str, Any]:
    """The email context of what the provider charged or refunded: tax included, and the tax."""
    tax = amount(tax, currency)
    return {"amount": amount(paid, currency), "tax": tax if tax else None}


class Run:
    """One event being applied: the connection, the collected changes and emails.

    Subscription updates and history rows are held back (`pending`) and sent together: by the
    statement that ends the event (`take`), or before the run sends any other statement, since
    every statement goes through `conn`, which writes what is pending first. So each statement
    of the run sees every write before it, as if each had been sent at once.
    """

    def __init__(
        self,
        conn: Conn,
        event: dict[str, Any],
        settings: Settings,
        emails: bool,
        *,
        enqueue: bool = False,
    ):
        self._conn = conn
        self.pending = subs.Pending()
        # The subscriptions the event's claim locked (events.claim), each handed out once.
        self.claimed: dict[str, dict[str, Any] | None] = dict(event.get("subscriptions") or {})
        # The subscription rows this run locked, as they stand with its writes, and customers as
        # this transaction read them: an email's context is built from them, not read again.
        self.rows: dict[int, dict[str, Any]] = {}
        self.customers: dict[int, dict[str, Any]] = dict(event.get("customers") or {})
        self.enqueue = enqueue  # emails are written as enqueued: the caller sends them
        self.event = event
        self.event_id: int = event["id"]
        self.settings = settings
        self.emails = emails
        # A worker's run of a delivered or relayed event may take the catalog read within the
        # last second; a replay, a preview (not claimed) reads the file as it stands.
        claimed = "subscriptions" in event and not event["enqueued_by"].startswith("replay")
        self.catalog = catalog(settings, fresh=not claimed)
        self.changes: list[dict[str, Any]] = []
        self.email_ids: list[int] = []
        self.notes: list[str] = []
        # When the fact being applied happened, for a reconciliation that finds it late.
        self.fact_at: datetime | None = None

    @property
    def conn(self) -> Conn:
        """The run's connection, with every held-back write sent: what comes next sees it."""
        if self.pending:
            batch.execute(self._conn, self.pending.take())
        return self._conn

    def take(self) -> list[batch.Part]:
        """The writes still held back, for the caller's statement that ends the event."""
        return self.pending.take()

    def lock(self, license_code: str) -> dict[str, Any] | None:
        """The subscription with this license code, locked (None: there is none)."""
        if license_code in self.claimed:  # locked already with the event, and not changed since
            sub = self.claimed.pop(license_code)
        else:
            sub = subs.lock(self.conn, license_code)
        if sub is not None:
            self.rows[sub["id"]] = sub
        return sub

    def product(self, *codes: str) -> Product:
        """The catalog product for the first code that names one, or a clear permanent error."""
        for code in codes:
            if code and (product := self.catalog.get(code)) is not None:
                return product
        shown = " / ".join(code for code in codes if code) or "(none)"
        raise PermanentEventError(f"unknown product {shown}: add it to the catalog, then replay")

    def customer(self, who: Customer, locale: str) -> int:
        """The id of the customer a notification names, by the provider's reference or email."""
        row = subs.upsert_customer(
            self.conn,
            customer_key=who.reference or who.email.lower(),
            email=who.email,
            first_name=who.first_name,
            last_name=who.last_name,
            company=who.company,
            locale=locale,
            event_id=self.event_id,
        )
        self.customers[row["id"]] = row
        return int(row["id"])

    def stands(self, sub_id: int, changes: dict[str, Any]) -> None:
        """Keep the row in hand as the run's writes leave it."""
        if sub_id in self.rows:
            self.rows[sub_id] = {**self.rows[sub_id], **changes}

    def source(self, sub_id: int) -> dict[str, Any] | None:
        """An email's subscription and customer as they stand, if the run has both in hand."""
        sub = self.rows.get(sub_id)
        customer = sub and self.customers.get(sub["customer_id"])
        return outbox.source_of(sub, customer) if sub and customer else None

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
                self.pending.update(sub["id"], quiet)
                self.stands(sub["id"], quiet)
            return {**sub, **quiet}
        before = {key: sub[key] for key in updates if key in subs.TRACKED}
        after = {key: updates[key] for key in before}
        self.pending.update(sub["id"], {**updates, **quiet})
        self.stands(sub["id"], {**updates, **quiet})
        self.pending.add_history(
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
        self.rows[sub["id"]] = sub
        after = {key: sub[key] for key in subs.TRACKED}
        self.pending.add_history(
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
            source=self.source(sub["id"]),
            enqueued=self.enqueue,
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
        self.pending.add_history(
            subscription_id=sub["id"],
            event_id=self.event_id,
            change=change,
            before={},
            after={},
            note=note,
        )
        self.notes.append(note)

    def dunning_start(self, sub: dict[str, Any], paid: Decimal | None) -> None:
        """Day 0 of the payment-failed sequence of the episode `sub` entered (if day 0 is on)."""
        since = sub["past_due_since"]
        if since is None or 0 not in self.settings.dunning_days:
            return
        # Without automatic renewal nothing was charged: the customer is asked to renew instead.
        extra = dunning.context(self.settings, sub, since, 0)
        self.email(sub, dunning.KIND, dunning.fact(since, 0),
                   {**extra, "amount": amount(paid, sub["currency"])})  # fmt: skip

    def recovered(
        self, previous: dict[str, Any], sub: dict[str, Any], paid: dict[str, Any] | None = None
    ) -> bool:
        """The one recovery email if `previous` was past due and `sub` is active; whether so."""
        since = previous.get("past_due_since")
        if previous["status"] != Status.PAST_DUE or sub["status"] != Status.ACTIVE or since is None:
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
            "status": Status.ACTIVE,
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
            f"renewal/{iso(new_expiry)}",
            {"new_expires_at": new_expiry, "expires_at": previous, **paid},
        )
        return new_expiry


def _episode(sub: dict[str, Any], updates: dict[str, Any]) -> None:
    """Keep `past_due_since` with the status: set on entering past_due, cleared on leaving it."""
    status = updates.get("status")
    if status is None:
        return
    if status == Status.PAST_DUE:
        updates.setdefault("past_due_since", datetime.now(UTC))
    elif sub.get("past_due_since") is not None:
        updates["past_due_since"] = None


def status_email(
    run: Run, sub: dict[str, Any], status: str, fact: str, paid: Decimal | None = None
) -> None:
    """The email a change of status calls for, if any (`paid`: what the notification carries)."""
    if status == Status.PAST_DUE:
        run.dunning_start(sub, paid)
    elif status == Status.EXPIRED:
        # The same fact the clock uses, so an LCN and the clock never both send it.
        run.email(sub, "expiry_notice", iso(sub["expires_at"]) or "")
    elif status == Status.CANCELED:
        run.email(sub, "cancellation_notice", f"canceled/{fact}")
