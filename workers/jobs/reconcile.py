"""Reconciliation: compare what the provider's API holds with Rinnovo's records, sweep by sweep.

A sweep reads the subscriptions the provider changed since a day and the orders of that window,
and reports every difference. Unless it is a dry run, each differing record is stored as a
reconciliation event (kind `api`, the provider's JSON as its body) and enqueued: the workers apply
it through the same rules, history and outbox as a notification.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg

from workers.config import Settings
from workers.errors import BrokerUnavailable, DatabaseUnavailable
from workers.provider_api import Client, Order, ProviderApiError, Subscription
from workers.store import db, events, sweeps
from workers.store.db import Conn
from workers.store.reports.runs import overdue
from workers.store.statuses import APPLIED
from workers.terminal import visible

log = logging.getLogger(__name__)

OVERLAP = timedelta(days=1)  # the provider's date filters are per day: sweeps overlap by one
ORDER_SETTLING = timedelta(minutes=5)  # subscriptions are attached to orders within 5 minutes
ENDED = frozenset({"canceled", "refunded"})  # Rinnovo's statuses of a subscription disabled
LIFETIME_YEAR = 9999  # lifetime licenses expire 9999-12-31


@dataclass(frozen=True)
class Difference:
    """One way Rinnovo's record differs from the provider's."""

    subject: str  # "subscription LICENSE" or "order REFNO"
    what: str
    rinnovo: str
    provider: str

    def line(self) -> str:
        """The difference on one line, with control characters in any value made visible."""
        return visible(
            f"{self.subject}: {self.what}: Rinnovo {self.rinnovo}, provider {self.provider}"
        )


@dataclass
class Sweep:
    """What one sweep covered and found."""

    window_start: date
    window_end: date
    license_code: str | None = None
    dry_run: bool = True
    source: str = "command"  # command | clock | watchdog
    run_id: int = 0
    subscriptions_checked: int = 0
    orders_checked: int = 0
    differing: int = 0
    deferred: int = 0
    event_ids: list[int] = field(default_factory=list)  # reconciliation events stored anew

    def summary(self) -> str:
        """The counts, as the command's last line."""
        later = f", {self.deferred} young order(s) left for the next sweep" if self.deferred else ""
        return (
            f"checked {self.subscriptions_checked} subscription(s) and {self.orders_checked} "
            f"order(s): {self.differing} differ{later}"
        )


# --- the window -------------------------------------------------------------------------------


def default_start(conn: Conn) -> date | None:
    """A day before the last successful sweep of every subscription that applied what it found;
    without one, a day before the first notification stored; None when neither exists."""
    last = sweeps.last_full_sweep_end(conn)
    if last is not None:
        return last - OVERLAP
    first = sweeps.first_received(conn)
    return None if first is None else first.astimezone(UTC).date() - OVERLAP


# --- comparing ----------------------------------------------------------------------------------


def _day(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).date().isoformat()


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def _describe(sub: Subscription) -> str:
    expiry = "lifetime" if sub.lifetime else f"expires {_day(sub.expires_at)}"
    state = "enabled" if sub.enabled else "disabled"
    return (
        f"{sub.product_code} x {sub.quantity}, {expiry}, {state}, auto-renew "
        f"{_on(sub.recurring)}, customer {sub.name} <{sub.email}>"
    )


def compare_subscription(local: Mapping[str, Any] | None, remote: Subscription) -> list[Difference]:
    """How Rinnovo's row for a subscription (None: no row) differs from the provider's."""
    subject = f"subscription {remote.reference}"
    if local is None:
        missing = Difference(
            subject, "never received", "has no such subscription", _describe(remote)
        )
        return [missing]
    found: list[Difference] = []

    def differs(what: str, rinnovo: str, provider: str) -> None:
        if rinnovo != provider:
            found.append(Difference(subject, what, rinnovo, provider))

    local_lifetime = local["cycle"] == "lifetime" or (
        local["expires_at"] is not None and local["expires_at"].year == LIFETIME_YEAR
    )
    if remote.lifetime or local_lifetime:
        differs(
            "lifetime",
            "lifetime" if local_lifetime else f"expires {_day(local['expires_at'])}",
            "lifetime" if remote.lifetime else f"expires {_day(remote.expires_at)}",
        )
    else:
        differs("expiry", _day(local["expires_at"]), _day(remote.expires_at))
    differs("automatic renewal", _on(local["auto_renew"]), _on(remote.recurring))
    enabled = local["status"] not in ENDED
    if enabled != remote.enabled:
        state = ("enabled" if remote.enabled else "disabled") + (
            f" ({remote.status})" if remote.status else ""
        )
        differs("enabled", local["status"], state)
    differs("product", local["product_code"], remote.product_code)
    differs("quantity", str(local["quantity"]), str(remote.quantity))
    return found


def order_difference(order: Order) -> Difference:
    """An order Rinnovo never stored, described."""
    amount = f" {order.gross_price} {order.currency}" if order.gross_price is not None else ""
    when = f" of {order.ordered_at:%Y-%m-%d %H:%M:%S}" if order.ordered_at else ""
    refs = ", ".join(order.subscription_references) or "none yet"
    return Difference(
        f"order {order.refno}",
        "never received",
        "has no such order",
        f"{order.status}{amount}{when}, subscriptions {refs}",
    )


# --- the sweep ----------------------------------------------------------------------------------


def _start(conn: Conn, sweep: Sweep) -> None:
    sweep.run_id = sweeps.start_run(
        conn,
        window_start=sweep.window_start,
        window_end=sweep.window_end,
        license_code=sweep.license_code,
        dry_run=sweep.dry_run,
        source=sweep.source,
    )


def _finish(conn: Conn, sweep: Sweep, error: str | None) -> None:
    counts = {
        "subscriptions_checked": sweep.subscriptions_checked,
        "orders_checked": sweep.orders_checked,
        "differing": sweep.differing,
        "deferred": sweep.deferred,
        "events_stored": len(sweep.event_ids),
    }
    sweeps.finish_run(conn, sweep.run_id, error=error, counts=counts)


Report = Callable[[Difference], None]


def dedupe_key(record: Subscription | Order) -> str:
    """The same provider record in the same state always gives the same key, so a sweep run
    twice (or overlapping the one before) stores nothing new."""
    if isinstance(record, Order):
        return f"api:order:{record.refno}:{record.status.upper()}"
    expiry = "lifetime" if record.lifetime else _day(record.expires_at)
    state = (
        f"{expiry}:{_on(record.recurring)}:{'enabled' if record.enabled else 'disabled'}:"
        f"{record.product_code}:{record.quantity}"
    )
    return f"api:subscription:{record.reference}:{state}"


def _event(record: Subscription | Order) -> events.NewEvent:
    """A reconciliation event: the provider's JSON object as its body."""
    if isinstance(record, Order):
        summary, codes = f"order {record.status.upper()}", list(record.subscription_references)
    else:
        summary, codes = "subscription", [record.reference]
    return events.NewEvent(
        kind="api",
        dedupe_key=dedupe_key(record),
        raw_body=json.dumps(record.raw, sort_keys=True).encode(),
        content_type="application/json",
        headers={},
        fields={},
        signature_algo="api",
        key_index=0,
        summary=summary,
        license_codes=codes,
        test=False,
    )


def _store(conn: Conn, sweep: Sweep, record: Subscription | Order) -> int:
    """Store the record's reconciliation event; its id.

    A state already stored and still waiting for the workers is one event, however many sweeps
    find it. A state an earlier event already applied that differs again (the provider went back
    to it: disabled, enabled, disabled again) gets an event of its own, keyed by the one it
    follows, so sweeps that overlap still store it once.
    """
    event = _event(record)
    stored = events.store(conn, event)
    while not stored.inserted and stored.status in APPLIED:
        again = f"{event.dedupe_key}:after:{stored.event_id}"
        stored = events.store(conn, dataclasses.replace(event, dedupe_key=again))
    if stored.inserted:
        sweep.event_ids.append(stored.event_id)
    return stored.event_id


def _found(
    conn: Conn,
    sweep: Sweep,
    differences: list[Difference],
    report: Report,
    record: Subscription | Order | None,
) -> None:
    """Count, report and record the differences; unless a dry run, store the event applying them."""
    if not differences:
        return
    sweep.differing += 1
    event_id = None if sweep.dry_run or record is None else _store(conn, sweep, record)
    for difference in differences:
        sweeps.add_difference(
            conn,
            sweep.run_id,
            subject=difference.subject,
            what=difference.what,
            rinnovo=difference.rinnovo,
            provider=difference.provider,
            event_id=event_id,
        )
        report(difference)


def check_one(conn: Conn, client: Client, sweep: Sweep, reference: str, report: Report) -> None:
    """Look one subscription up by its reference and compare it."""
    remote = client.subscription(reference)
    local = sweeps.local_subscriptions(conn, [reference]).get(reference)
    sweep.subscriptions_checked += 1
    if remote is None:
        absent = Difference(
            f"subscription {reference}",
            "unknown to the provider",
            local["status"] if local else "has no such subscription",
            "has no such subscription",
        )
        _found(conn, sweep, [absent], report, None)  # nothing to apply: an operator looks
    else:
        _found(conn, sweep, compare_subscription(local, remote), report, remote)


def _subscriptions(conn: Conn, client: Client, sweep: Sweep, report: Report) -> None:
    if sweep.license_code is not None:
        check_one(conn, client, sweep, sweep.license_code, report)
        return
    for page in client.search_subscriptions(sweep.window_start):
        local = sweeps.local_subscriptions(conn, (sub.reference for sub in page))
        for remote in page:
            sweep.subscriptions_checked += 1
            differences = compare_subscription(local.get(remote.reference), remote)
            _found(conn, sweep, differences, report, remote)


def _concerns(sweep: Sweep, order: Order) -> bool:
    """Whether the sweep covers this order: every order, or those of its one subscription."""
    return sweep.license_code is None or sweep.license_code in order.subscription_references


def _orders(conn: Conn, client: Client, sweep: Sweep, report: Report, now: datetime) -> None:
    for page in client.search_orders(sweep.window_start, sweep.window_end):
        known = sweeps.known_orders(conn, (order.refno for order in page))
        for order in page:
            if order.refno in known:
                sweep.orders_checked += _concerns(sweep, order)
                continue
            if not order.subscription_references:
                # A search may list an order without its items; the order itself has them.
                order = client.order(order.refno) or order
            refs = order.subscription_references
            young = order.ordered_at is not None and now - order.ordered_at < ORDER_SETTLING
            if young and not refs:
                sweep.deferred += 1  # its subscriptions are not attached yet
                continue
            if not _concerns(sweep, order):
                continue
            sweep.orders_checked += 1
            _found(conn, sweep, [order_difference(order)], report, order)


Enqueue = Callable[[list[int]], object]


def run(
    conn: Conn,
    client: Client,
    sweep: Sweep,
    *,
    report: Report = lambda difference: None,
    now: datetime | None = None,
    enqueue: Enqueue = lambda event_ids: None,
    body: Callable[[], None] | None = None,
) -> Sweep:
    """Run one sweep on an autocommit connection, recorded in reconcile_runs whatever its end.

    Differences are reported as they are found, and the events stored for them are enqueued when
    the sweep ends, whatever its end (each one stands on its own); a ProviderApiError ends the
    sweep, recorded as failed with its reason, and is raised again. `body` replaces the search
    of the window (the watchdog looks subscriptions up one by one).
    """
    now = now or datetime.now(UTC)
    _start(conn, sweep)
    try:
        if body is not None:
            body()
        else:
            _subscriptions(conn, client, sweep, report)
            _orders(conn, client, sweep, report, now)
    except Exception as exc:
        error = str(exc) if isinstance(exc, ProviderApiError) else f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(psycopg.Error):  # a database gone leaves the run 'running'
            _finish(conn, sweep, error)
        log.warning("reconcile sweep failed", extra={"run_id": sweep.run_id, "error": error})
        raise
    finally:
        if sweep.event_ids:
            _enqueue(enqueue, sweep)
    _finish(conn, sweep, None)
    log.info(
        "reconcile sweep done",
        extra={
            "run_id": sweep.run_id,
            "subscriptions_checked": sweep.subscriptions_checked,
            "orders_checked": sweep.orders_checked,
            "differing": sweep.differing,
            "deferred": sweep.deferred,
            "events_stored": len(sweep.event_ids),
        },
    )
    return sweep


def _enqueue(enqueue: Enqueue, sweep: Sweep) -> None:
    """Hand the new events to the broker; when it refuses, the clock's relay sends them later."""

    try:
        enqueue(sweep.event_ids)
    except (BrokerUnavailable, DatabaseUnavailable) as exc:
        log.warning("reconcile events left for the relay: %s", exc, extra={"run_id": sweep.run_id})


def dispatcher(database_url: str) -> Enqueue:
    """Enqueue events as the receiver does (any the broker refuses go back to the relay)."""

    def enqueue(event_ids: list[int]) -> object:
        # Deferred: the CLI and the web app list runs without the actors (the broker) at start-up.
        from workers.jobs import dispatch

        return dispatch.dispatch(database_url, event_ids)

    return enqueue


# --- on the clock: the daily sweep and the expected-notification watchdog ------------------------

WATCHDOG_BATCH = 100  # lookups per watchdog run, the most recently due first


def daily(settings: Settings, now: datetime | None = None) -> Sweep:
    """The clock's sweep: every subscription changed since a day before the last sweep."""
    now = now or datetime.now(UTC)
    with Client.from_settings(settings) as client, db.statement(settings.database_url) as conn:
        start = default_start(conn) or now.date() - OVERLAP
        sweep = Sweep(start, now.date(), dry_run=False, source="clock")
        return run(conn, client, sweep, now=now, enqueue=dispatcher(settings.database_url))


def watchdog(settings: Settings) -> Sweep | None:
    """Look up at the provider each subscription whose expected notification never came, and
    reconcile it; None when none is overdue."""
    with Client.from_settings(settings) as client, db.statement(settings.database_url) as conn:
        silent = overdue(conn, settings.expected_notification_grace, limit=WATCHDOG_BATCH)
        if not silent:
            return None
        today = datetime.now(UTC).date()
        sweep = Sweep(today, today, dry_run=False, source="watchdog")

        def look_up() -> None:
            for row in silent:
                check_one(conn, client, sweep, row.license_code, lambda found: None)

        return run(conn, client, sweep, enqueue=dispatcher(settings.database_url), body=look_up)
