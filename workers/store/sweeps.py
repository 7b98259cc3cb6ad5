"""SQL of reconciliation's sweeps: where the next one starts, what Rinnovo holds of the records
the provider returned, and each run with the differences it found. Functions take the
connection first; the caller owns the transaction. (What operators read of the runs is
workers.store.reports.runs.)"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

from workers.store.db import Conn


def last_full_sweep_end(conn: Conn) -> date | None:
    """The end of the window of the last sweep of every subscription that succeeded and applied
    what it found (the watchdog's lookups do not count)."""
    row = conn.execute(
        """
        SELECT window_end FROM reconcile_runs
        WHERE outcome = 'succeeded' AND NOT dry_run AND license_code IS NULL
          AND source <> 'watchdog'
        ORDER BY started_at DESC LIMIT 1
        """
    ).fetchone()
    return None if row is None else row["window_end"]


def first_received(conn: Conn) -> datetime | None:
    """When the first stored notification arrived (None before any)."""
    row = conn.execute("SELECT min(received_at) AS at FROM events").fetchone()
    return None if row is None else row["at"]


def local_subscriptions(conn: Conn, references: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Rinnovo's state of the subscriptions with these license codes, by license code."""
    rows = conn.execute(
        """
        SELECT license_code, product_code, quantity, status, auto_renew, expires_at, cycle
        FROM subscriptions WHERE license_code = ANY(%s)
        """,
        (list(references),),
    ).fetchall()
    return {row["license_code"]: row for row in rows}


def known_orders(conn: Conn, refnos: Iterable[str]) -> set[str]:
    """Which of these order references Rinnovo has recorded."""
    rows = conn.execute(
        "SELECT DISTINCT refno FROM orders WHERE refno = ANY(%s)", (list(refnos),)
    ).fetchall()
    return {row["refno"] for row in rows}


def start_run(
    conn: Conn,
    *,
    window_start: date,
    window_end: date,
    license_code: str | None,
    dry_run: bool,
    source: str,
) -> int:
    """Record that a sweep started; its run id."""
    row = conn.execute(
        """
        INSERT INTO reconcile_runs (window_start, window_end, license_code, dry_run, source)
        VALUES (%s, %s, %s, %s, %s) RETURNING id
        """,
        (window_start, window_end, license_code, dry_run, source),
    ).fetchone()
    assert row is not None
    return int(row["id"])


def finish_run(conn: Conn, run_id: int, *, error: str | None, counts: dict[str, int]) -> None:
    """Record how a sweep ended: failed with `error`, or succeeded; and what it counted
    (subscriptions_checked, orders_checked, differing, deferred, events_stored)."""
    conn.execute(
        """
        UPDATE reconcile_runs
        SET outcome = %s, error = %s, subscriptions_checked = %s, orders_checked = %s,
            differing = %s, deferred = %s, events_stored = %s, finished_at = now()
        WHERE id = %s
        """,
        (
            "failed" if error else "succeeded",
            error,
            counts["subscriptions_checked"],
            counts["orders_checked"],
            counts["differing"],
            counts["deferred"],
            counts["events_stored"],
            run_id,
        ),
    )


def add_difference(
    conn: Conn,
    run_id: int,
    *,
    subject: str,
    what: str,
    rinnovo: str,
    provider: str,
    event_id: int | None,
) -> None:
    """Record one difference a sweep found, and the event applying it (None in a dry run)."""
    conn.execute(
        """
        INSERT INTO reconcile_differences (run_id, subject, what, rinnovo, provider, event_id)
        VALUES (%s, %s, %s, %s, %s, %s)
        """,
        (run_id, subject, what, rinnovo, provider, event_id),
    )
