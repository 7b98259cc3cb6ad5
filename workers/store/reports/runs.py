"""Reconciliation as operators read it: the sweeps, what each found, how its events fared, the
subscriptions whose expected notification never came, and the figures /metrics shows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from workers.store.db import Conn


@dataclass(frozen=True)
class Outcomes:
    """Where a sweep's events stand: applied by a worker, failed (or failing), still waiting."""

    applied: int
    failed: int
    waiting: int


def outcomes(conn: Conn, run_id: int) -> Outcomes:
    """How the reconciliation events of one sweep fared so far."""
    row = conn.execute(
        """
        SELECT count(*) FILTER (WHERE e.status IN ('processed', 'ignored')) AS applied,
               count(*) FILTER (WHERE e.status = 'failed'
                                OR (e.status IN ('received', 'enqueued')
                                    AND e.last_error IS NOT NULL)) AS failed,
               count(*) FILTER (WHERE e.status IN ('received', 'enqueued')
                                AND e.last_error IS NULL) AS waiting
        FROM events e
        WHERE e.id IN (SELECT event_id FROM reconcile_differences WHERE run_id = %s)
        """,
        (run_id,),
    ).fetchone()
    assert row is not None
    return Outcomes(row["applied"], row["failed"], row["waiting"])


# Auto-renewing subscriptions past their expiry by more than the grace that no notification
# (renewal, LCN, failure: any IPN, LCN or INS naming them) has concerned since.
_OVERDUE = """
    FROM subscriptions s
    WHERE s.auto_renew AND s.status IN ('active', 'expired')
      AND s.expires_at < now() - make_interval(secs => %(grace)s)
      AND NOT EXISTS (
          SELECT 1 FROM events e
          WHERE e.license_codes @> ARRAY[s.license_code] AND e.kind <> 'api'
            AND e.received_at >= s.expires_at)
"""


@dataclass(frozen=True)
class Overdue:
    """A subscription whose expected notification never came."""

    license_code: str
    status: str
    product_code: str
    expires_at: datetime


def overdue(conn: Conn, grace: timedelta, *, limit: int | None = None) -> list[Overdue]:
    """The subscriptions whose expected notification never came, most recently due first."""
    rows = conn.execute(
        "SELECT s.license_code, s.status, s.product_code, s.expires_at"
        + _OVERDUE
        + "ORDER BY s.expires_at DESC, s.license_code LIMIT %(limit)s",
        {"grace": grace.total_seconds(), "limit": limit},
    ).fetchall()
    return [Overdue(**row) for row in rows]


def count_overdue(conn: Conn, grace: timedelta) -> int:
    """How many subscriptions' expected notification never came."""
    row = conn.execute(
        "SELECT count(*) AS n" + _OVERDUE, {"grace": grace.total_seconds()}
    ).fetchone()
    return int(row["n"]) if row else 0


def figures(conn: Conn, grace: timedelta) -> dict[str, float]:
    """The reconciliation figures /metrics shows."""
    row = conn.execute(
        """
        SELECT coalesce(extract(epoch FROM max(finished_at) FILTER (
                   WHERE outcome = 'succeeded' AND license_code IS NULL
                     AND source <> 'watchdog')), 0) AS last_success,
               coalesce(sum(differing), 0) AS differences
        FROM reconcile_runs WHERE NOT dry_run
        """
    ).fetchone()
    assert row is not None
    return {
        "last_success": float(row["last_success"]),
        "differences": float(row["differences"]),
        "missing": float(count_overdue(conn, grace)),
    }


def recent_runs(conn: Conn, limit: int = 50) -> list[dict[str, Any]]:
    """The latest sweeps, newest first (the reconcile_runs rows, as the page lists them)."""
    return conn.execute(
        "SELECT * FROM reconcile_runs ORDER BY id DESC LIMIT %s", (limit,)
    ).fetchall()


@dataclass(frozen=True)
class RunDetail:
    """One sweep, each difference it found with the event applying it, and what that changed."""

    run: dict[str, Any]
    differences: list[dict[str, Any]]
    changes: list[dict[str, Any]]


def run_detail(conn: Conn, run_id: int) -> RunDetail | None:
    """One sweep as the page shows it, or None when there is no such sweep."""
    found = conn.execute("SELECT * FROM reconcile_runs WHERE id = %s", (run_id,)).fetchone()
    if found is None:
        return None
    differences = conn.execute(
        """
        SELECT d.subject, d.what, d.rinnovo, d.provider, d.event_id,
               e.status AS event_status, e.outcome, e.last_error
        FROM reconcile_differences d LEFT JOIN events e ON e.id = d.event_id
        WHERE d.run_id = %s ORDER BY d.id
        """,
        (run_id,),
    ).fetchall()
    changes = conn.execute(
        """
        SELECT h.event_id, s.license_code, h.change, h.note, h.at
        FROM subscription_history h JOIN subscriptions s ON s.id = h.subscription_id
        WHERE h.event_id IN (SELECT event_id FROM reconcile_differences WHERE run_id = %s)
        ORDER BY h.id
        """,
        (run_id,),
    ).fetchall()
    return RunDetail(run=found, differences=differences, changes=changes)
