"""Reconciliation: compare what the provider's API holds with Rinnovo's records, sweep by sweep.

A sweep reads the subscriptions the provider changed since a day and the orders of that window,
and reports every difference; it changes no subscription (applying them is not built yet).
"""

from __future__ import annotations

import contextlib
import logging
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg

from workers.db import Conn
from workers.provider_api import Client, Order, ProviderApiError, Subscription

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
    run_id: int = 0
    subscriptions_checked: int = 0
    orders_checked: int = 0
    differing: int = 0
    deferred: int = 0

    def summary(self) -> str:
        """The counts, as the command's last line."""
        later = f", {self.deferred} young order(s) left for the next sweep" if self.deferred else ""
        return (
            f"checked {self.subscriptions_checked} subscription(s) and {self.orders_checked} "
            f"order(s): {self.differing} differ{later}"
        )


def _visible_char(char: str) -> str:
    if char == "\\" or unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
        return char.encode("unicode_escape").decode("ascii")  # \x1b, \u202e, \\
    return char


def visible(text: str) -> str:
    """`text` with control and format characters (and backslashes) escaped, safe for a terminal."""
    return "".join(map(_visible_char, text))


# --- the window -------------------------------------------------------------------------------


def default_start(conn: Conn) -> date | None:
    """A day before the last successful sweep of every subscription that applied what it found;
    without one, a day before the first notification stored; None when neither exists."""
    row = conn.execute(
        """
        SELECT window_end FROM reconcile_runs
        WHERE outcome = 'succeeded' AND NOT dry_run AND license_code IS NULL
        ORDER BY started_at DESC LIMIT 1
        """
    ).fetchone()
    if row is not None:
        return row["window_end"] - OVERLAP
    first = conn.execute("SELECT min(received_at) AS at FROM events").fetchone()
    if first is None or first["at"] is None:
        return None
    return first["at"].astimezone(UTC).date() - OVERLAP


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


def _local_subscriptions(conn: Conn, references: Iterable[str]) -> dict[str, dict[str, Any]]:
    rows = conn.execute(
        """
        SELECT license_code, product_code, quantity, status, auto_renew, expires_at, cycle
        FROM subscriptions WHERE license_code = ANY(%s)
        """,
        (list(references),),
    ).fetchall()
    return {row["license_code"]: row for row in rows}


def _known_orders(conn: Conn, refnos: Iterable[str]) -> set[str]:
    rows = conn.execute(
        "SELECT DISTINCT refno FROM orders WHERE refno = ANY(%s)", (list(refnos),)
    ).fetchall()
    return {row["refno"] for row in rows}


def _start(conn: Conn, sweep: Sweep) -> None:
    row = conn.execute(
        """
        INSERT INTO reconcile_runs (window_start, window_end, license_code, dry_run)
        VALUES (%s, %s, %s, %s) RETURNING id
        """,
        (sweep.window_start, sweep.window_end, sweep.license_code, sweep.dry_run),
    ).fetchone()
    assert row is not None
    sweep.run_id = row["id"]


def _finish(conn: Conn, sweep: Sweep, error: str | None) -> None:
    conn.execute(
        """
        UPDATE reconcile_runs
        SET outcome = %s, error = %s, subscriptions_checked = %s, orders_checked = %s,
            differing = %s, deferred = %s, finished_at = now()
        WHERE id = %s
        """,
        (
            "failed" if error else "succeeded",
            error,
            sweep.subscriptions_checked,
            sweep.orders_checked,
            sweep.differing,
            sweep.deferred,
            sweep.run_id,
        ),
    )


Report = Callable[[Difference], None]


def _found(sweep: Sweep, differences: list[Difference], report: Report) -> None:
    if differences:
        sweep.differing += 1
        for difference in differences:
            report(difference)


def _subscriptions(conn: Conn, client: Client, sweep: Sweep, report: Report) -> None:
    if sweep.license_code is not None:
        remote = client.subscription(sweep.license_code)
        local = _local_subscriptions(conn, [sweep.license_code]).get(sweep.license_code)
        sweep.subscriptions_checked += 1
        if remote is None:
            absent = Difference(
                f"subscription {sweep.license_code}",
                "unknown to the provider",
                local["status"] if local else "has no such subscription",
                "has no such subscription",
            )
            _found(sweep, [absent], report)
        else:
            _found(sweep, compare_subscription(local, remote), report)
        return
    for page in client.search_subscriptions(sweep.window_start):
        local = _local_subscriptions(conn, (sub.reference for sub in page))
        for remote in page:
            sweep.subscriptions_checked += 1
            _found(sweep, compare_subscription(local.get(remote.reference), remote), report)


def _concerns(sweep: Sweep, order: Order) -> bool:
    """Whether the sweep covers this order: every order, or those of its one subscription."""
    return sweep.license_code is None or sweep.license_code in order.subscription_references


def _orders(conn: Conn, client: Client, sweep: Sweep, report: Report, now: datetime) -> None:
    for page in client.search_orders(sweep.window_start, sweep.window_end):
        known = _known_orders(conn, (order.refno for order in page))
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
            _found(sweep, [order_difference(order)], report)


def run(
    conn: Conn,
    client: Client,
    sweep: Sweep,
    *,
    report: Report = lambda difference: None,
    now: datetime | None = None,
) -> Sweep:
    """Run one sweep on an autocommit connection, recorded in reconcile_runs whatever its end.

    Differences are reported as they are found; a ProviderApiError ends the sweep, recorded as
    failed with its reason, and is raised again.
    """
    now = now or datetime.now(UTC)
    _start(conn, sweep)
    try:
        _subscriptions(conn, client, sweep, report)
        _orders(conn, client, sweep, report, now)
    except Exception as exc:
        error = str(exc) if isinstance(exc, ProviderApiError) else f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(psycopg.Error):  # a database gone leaves the run 'running'
            _finish(conn, sweep, error)
        log.warning("reconcile sweep failed", extra={"run_id": sweep.run_id, "error": error})
        raise
    _finish(conn, sweep, None)
    log.info(
        "reconcile sweep done",
        extra={
            "run_id": sweep.run_id,
            "subscriptions_checked": sweep.subscriptions_checked,
            "orders_checked": sweep.orders_checked,
            "differing": sweep.differing,
            "deferred": sweep.deferred,
        },
    )
    return sweep
