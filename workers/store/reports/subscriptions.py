"""Subscriptions as operators ask about them: one as it stands (the admin API and page describe
one with its history and emails through workers.store.subscriptions), the counts /metrics shows,
and the list the CLI's dunning view starts from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workers.store.db import Conn


def row(conn: Conn, license_code: str) -> dict[str, Any] | None:
    """The subscription's row as it stands, unlocked (what a quote starts from)."""
    return conn.execute(
        "SELECT * FROM subscriptions WHERE license_code = %s", (license_code,)
    ).fetchone()


@dataclass(frozen=True)
class Counts:
    """Subscriptions by status (a status with none is missing), and how many of all of them
    have a provider expiry that differs from the policy's."""

    by_status: dict[str, int]
    mismatched: int


def counts(conn: Conn) -> Counts:
    """How many subscriptions there are of each status, and how many disagree with the policy."""
    rows = conn.execute(
        """
        SELECT status, count(*) AS n, count(*) FILTER (WHERE policy_mismatch) AS mismatched
        FROM subscriptions GROUP BY status
        """
    ).fetchall()
    return Counts(
        by_status={r["status"]: r["n"] for r in rows},
        mismatched=sum(r["mismatched"] for r in rows),
    )


@dataclass(frozen=True)
class DunningCounts:
    """Subscriptions past due now, and past-due subscriptions whose payment was recovered."""

    past_due: int
    recovered: int


def dunning_counts(conn: Conn) -> DunningCounts:
    """How many subscriptions are in a past-due episode, and how many episodes ended paid."""
    found = conn.execute(
        """
        SELECT (SELECT count(*) FROM subscriptions
                WHERE status = 'past_due' AND past_due_since IS NOT NULL) AS past_due,
               (SELECT count(*) FROM subscription_history
                WHERE before ->> 'status' = 'past_due' AND after ->> 'status' = 'active')
               AS recovered
        """
    ).fetchone()
    if found is None:
        return DunningCounts(past_due=0, recovered=0)
    return DunningCounts(past_due=found["past_due"], recovered=found["recovered"])


def listing(conn: Conn, status: str | None, limit: int) -> list[dict[str, Any]]:
    """Subscriptions (of `status` when given), those longest past due first, then by expiry."""
    rows: list[dict[str, Any]] = conn.execute(
        """
        SELECT s.id, s.license_code, s.status, s.expires_at, s.past_due_since
        FROM subscriptions s
        WHERE %(status)s::text IS NULL OR s.status = %(status)s
        ORDER BY s.past_due_since NULLS LAST, s.expires_at NULLS LAST, s.id
        LIMIT %(limit)s
        """,
        {"status": status, "limit": limit},
    ).fetchall()
    return rows
