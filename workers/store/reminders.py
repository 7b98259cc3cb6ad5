"""SQL of the clock's reminder scan: live subscriptions due a reminder or an expiry, and past-due
ones due a payment-failed email, read a batch at a time and locked (`FOR UPDATE SKIP LOCKED`:
one a worker is changing now is left for the next run), and the expiry of those past their
end. Each query reads through a partial index; the caller (workers.jobs.reminders) passes the
range, the position after the last batch and the batch size as named parameters, and owns the
transaction.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

from workers.store.db import Conn
from workers.store.outbox import SOURCE_COLUMNS


def _fact_time(column: str) -> sql.Composed:
    """The instant in `s.column` as outbox facts spell it (workers.store.jsonable.iso).

    ISO 8601 in UTC with a Z, microseconds only when there are some.
    """
    t = sql.SQL("(s.{} AT TIME ZONE 'UTC')").format(sql.Identifier(column))
    return sql.SQL(
        "to_char({t}, 'YYYY-MM-DD\"T\"HH24:MI:SS') "
        "|| CASE WHEN to_char({t}, 'US') = '000000' THEN '' ELSE '.' || to_char({t}, 'US') END "
        "|| 'Z'"
    ).format(t=t)


FACT_TIME = _fact_time("expires_at")

# The start of a past-due episode as dunning facts spell it (workers.billing.dunning.fact).
SINCE_FACT = sql.SQL("'past_due/' || {} || '/'").format(_fact_time("past_due_since"))

# Past-due subscriptions whose episode began on one day, through subscriptions_past_due_idx.
DUNNING = sql.SQL(
    """
    SELECT {columns}, s.past_due_since
    FROM subscriptions s JOIN customers c ON c.id = s.customer_id
    WHERE s.status = 'past_due'
      AND s.past_due_since >= %(lo)s AND s.past_due_since < %(hi)s
      AND (s.past_due_since, s.id) > (%(after_at)s, %(after_id)s)
      AND NOT EXISTS (
          SELECT 1 FROM emails e
          WHERE e.subscription_id = s.id AND e.kind = %(kind)s AND e.fact = {fact} || %(day)s
      )
    ORDER BY s.past_due_since, s.id
    LIMIT %(limit)s
    FOR UPDATE OF s SKIP LOCKED
    """
).format(columns=SOURCE_COLUMNS, fact=SINCE_FACT)

# The predicate matches the partial index's, so the planner can use it.
DUE = sql.SQL(
    """
    SELECT {columns}, {fact} AS fact_time
    FROM subscriptions s JOIN customers c ON c.id = s.customer_id
    WHERE s.status IN ('active', 'past_due')
      AND s.expires_at >= %(lo)s AND s.expires_at < %(hi)s
      AND (s.expires_at, s.id) > (%(after_at)s, %(after_id)s)
      AND s.auto_renew = %(auto_renew)s
      AND s.cycle <> 'lifetime' AND s.expires_at < %(lifetime)s
      -- The customer held the current period for the whole day the offset falls on: no
      -- "renews soon" on the day of purchase, nor for a period not started yet.
      AND COALESCE(s.period_start, s.created_at) < %(begun_by)s
      AND NOT EXISTS (
          SELECT 1 FROM emails e
          WHERE e.subscription_id = s.id AND e.kind = %(kind)s AND e.fact = {fact} || %(suffix)s
      )
    ORDER BY s.expires_at, s.id
    LIMIT %(limit)s
    FOR UPDATE OF s SKIP LOCKED
    """
).format(columns=SOURCE_COLUMNS, fact=FACT_TIME)

EXPIRED = sql.SQL(
    """
    SELECT {columns}, {fact} AS fact_time
    FROM subscriptions s JOIN customers c ON c.id = s.customer_id
    WHERE s.status IN ('active', 'past_due')
      AND s.expires_at < %(cutoff)s
      -- A past-due episode keeps access DUNNING_GRACE_DAYS (what its emails promise); else
      -- automatic renewals get EXPIRY_GRACE_DAYS for a late renewal.
      AND CASE WHEN s.status = 'past_due' AND s.past_due_since IS NOT NULL
               THEN s.past_due_since < %(dunning_cutoff)s
               ELSE (NOT s.auto_renew OR s.expires_at < %(grace_cutoff)s) END
      AND s.cycle <> 'lifetime' AND s.expires_at < %(lifetime)s
      AND (s.expires_at, s.id) > (%(after_at)s, %(after_id)s)
    ORDER BY s.expires_at, s.id
    LIMIT %(limit)s
    FOR UPDATE OF s SKIP LOCKED
    """
).format(columns=SOURCE_COLUMNS, fact=FACT_TIME)


def _read(conn: Conn, query: sql.Composed, params: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = conn.execute(query, params).fetchall()
    return rows


def due(conn: Conn, params: dict[str, Any]) -> list[dict[str, Any]]:
    """One batch of live subscriptions due a reminder of `kind` (DUE), locked, each with what
    an email's context is built from and its expiry as the fact spells it (`fact_time`)."""
    return _read(conn, DUE, params)


def expired(conn: Conn, params: dict[str, Any]) -> list[dict[str, Any]]:
    """One batch of live subscriptions past their end and their grace (EXPIRED), locked."""
    return _read(conn, EXPIRED, params)


def dunning(conn: Conn, params: dict[str, Any]) -> list[dict[str, Any]]:
    """One batch of past-due subscriptions whose episode began on one day and that lack the
    sequence's email of `day` (DUNNING), locked, each with its `past_due_since`."""
    return _read(conn, DUNNING, params)


def mark_expired(conn: Conn, rows: list[dict[str, Any]], note: str) -> None:
    """Set the (locked) subscriptions of `rows` `expired` and record the change in their history,
    with `note`, from the status each row had."""
    ids = [row["subscription_id"] for row in rows]
    conn.execute(
        "UPDATE subscriptions SET status = 'expired', past_due_since = NULL, updated_at = now() "
        "WHERE id = ANY(%s)",
        (ids,),
    )
    conn.execute(
        """
        INSERT INTO subscription_history (subscription_id, event_id, change, before, after, note)
        SELECT h.id, NULL, 'expired', jsonb_build_object('status', h.status),
               jsonb_build_object('status', 'expired'), %s
        FROM unnest(%s::bigint[], %s::text[]) AS h(id, status)
        """,
        (note, ids, [row["status"] for row in rows]),
    )
