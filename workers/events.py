"""SQL for the event inbox. Functions take the connection first; the caller owns the transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from workers.db import Conn

STATUSES = ("received", "enqueued", "processed", "failed", "ignored")
KINDS = ("ipn", "lcn", "ins", "api")  # api: reconciliation events


@dataclass(frozen=True)
class NewEvent:
    """A verified notification, ready to be stored."""

    kind: str
    dedupe_key: str
    raw_body: bytes
    content_type: str
    headers: dict[str, str]
    fields: dict[str, list[str]]
    signature_algo: str
    key_index: int
    summary: str
    license_codes: list[str]
    test: bool


@dataclass(frozen=True)
class Stored:
    """What storing a notification did: a new row, or another delivery of a known one."""

    event_id: int
    inserted: bool
    status: str


def store(conn: Conn, event: NewEvent) -> Stored:
    """Insert the event, or count another delivery of the one with the same dedupe key.

    A new event is stored already `enqueued`: the receiver sends it right after the commit and
    sets it back to `received` only if the broker refuses, which saves a second transaction per
    notification. One that was never sent (the process died in between) is resent by the relay.
    """
    row = conn.execute(
        """
        INSERT INTO events (kind, dedupe_key, raw_body, content_type, headers, fields,
                            signature_algo, key_index, summary, license_codes, test,
                            status, enqueued_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'enqueued', now())
        ON CONFLICT (dedupe_key) DO UPDATE
            SET deliveries = events.deliveries + 1, last_delivery_at = now()
        RETURNING id, (xmax = 0) AS inserted, status
        """,
        (
            event.kind,
            event.dedupe_key,
            event.raw_body,
            event.content_type,
            Jsonb(event.headers),
            Jsonb(event.fields),
            event.signature_algo,
            event.key_index,
            event.summary,
            event.license_codes,
            event.test,
        ),
    ).fetchone()
    assert row is not None
    return Stored(event_id=row["id"], inserted=row["inserted"], status=row["status"])


def mark_enqueued(conn: Conn, event_ids: list[int]) -> int:
    """Record that the broker took these events; a worker that already finished one wins."""
    cur = conn.execute(
        """
        UPDATE events SET status = 'enqueued', enqueued_at = now()
        WHERE id = ANY(%s) AND status IN ('received', 'enqueued')
        """,
        (event_ids,),
    )
    return cur.rowcount


def mark_unsent(conn: Conn, event_ids: list[int]) -> int:
    """Put events the broker refused back to `received`, for the relay."""
    cur = conn.execute(
        "UPDATE events SET status = 'received' WHERE id = ANY(%s) AND status = 'enqueued'",
        (event_ids,),
    )
    return cur.rowcount


def unenqueued(
    conn: Conn, *, older_than_seconds: float, stale_after_seconds: float, limit: int
) -> list[int]:
    """Lock a batch of events the relay must send: never sent, or sent so long ago that the
    process that stored them must have died before sending (skipping rows another relay holds)."""
    rows = conn.execute(
        """
        SELECT id FROM events
        WHERE status IN ('received', 'enqueued')
          AND CASE WHEN status = 'received'
                   THEN received_at < now() - make_interval(secs => %s)
                   ELSE enqueued_at < now() - make_interval(secs => %s) END
        ORDER BY id
        LIMIT %s
        FOR UPDATE SKIP LOCKED
        """,
        (older_than_seconds, stale_after_seconds, limit),
    ).fetchall()
    return [row["id"] for row in rows]


def lock(conn: Conn, event_id: int) -> dict[str, Any] | None:
    """Load one event and lock its row, so two runs of the same event take turns."""
    return conn.execute("SELECT * FROM events WHERE id = %s FOR UPDATE", (event_id,)).fetchone()


def get(conn: Conn, event_id: int) -> dict[str, Any] | None:
    """Load one event."""
    return conn.execute("SELECT * FROM events WHERE id = %s", (event_id,)).fetchone()


def finish(conn: Conn, event_id: int, *, status: str, outcome: str) -> None:
    """Record that applying the event is over: processed, or ignored with the reason."""
    conn.execute(
        """
        UPDATE events
        SET status = %s, outcome = %s, processed_at = now(), attempts = attempts + 1,
            last_error = NULL, last_traceback = NULL
        WHERE id = %s
        """,
        (status, outcome, event_id),
    )


def record_failure(conn: Conn, event_id: int, *, error: str, traceback: str, final: bool) -> None:
    """Keep the error of a failed attempt; the final one moves the event to `failed`."""
    conn.execute(
        """
        UPDATE events
        SET attempts = attempts + 1, last_error = %s, last_traceback = %s,
            status = CASE WHEN %s THEN 'failed' ELSE status END,
            processed_at = CASE WHEN %s THEN now() ELSE processed_at END
        WHERE id = %s
        """,
        (error, traceback, final, final, event_id),
    )


@dataclass(frozen=True)
class EventFilter:
    """Which events an operator asks for."""

    status: str | None = None
    kind: str | None = None
    license_code: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _where(flt: EventFilter) -> tuple[sql.Composable, list[Any]]:
    clauses: list[sql.Composable] = []
    params: list[Any] = []
    if flt.status:
        clauses.append(sql.SQL("status = %s"))
        params.append(flt.status)
    if flt.kind:
        clauses.append(sql.SQL("kind = %s"))
        params.append(flt.kind)
    if flt.license_code:
        clauses.append(sql.SQL("license_codes @> ARRAY[%s]::text[]"))
        params.append(flt.license_code)
    if flt.since:
        clauses.append(sql.SQL("received_at >= %s"))
        params.append(flt.since)
    if flt.until:
        clauses.append(sql.SQL("received_at < %s"))
        params.append(flt.until)
    if not clauses:
        clauses.append(sql.SQL("true"))
    return sql.SQL(" AND ").join(clauses), params


LIST_COLUMNS = sql.SQL(
    "id, kind, status, summary, license_codes, test, received_at, processed_at, deliveries, "
    "attempts, last_error, outcome"
)


def search(
    conn: Conn, flt: EventFilter, *, limit: int = 50, before_id: int | None = None
) -> list[dict[str, Any]]:
    """Events matching the filter, newest first; `before_id` pages backwards."""
    where, params = _where(flt)
    if before_id is not None:
        where = sql.SQL("{} AND id < %s").format(where)
        params.append(before_id)
    query = sql.SQL("SELECT {} FROM events WHERE {} ORDER BY id DESC LIMIT %s").format(
        LIST_COLUMNS, where
    )
    return conn.execute(query, [*params, limit]).fetchall()


def matching_ids(conn: Conn, flt: EventFilter) -> list[int]:
    """Ids of every event matching the filter, oldest first (for bulk replay)."""
    where, params = _where(flt)
    query = sql.SQL("SELECT id FROM events WHERE {} ORDER BY id").format(where)
    return [row["id"] for row in conn.execute(query, params).fetchall()]


def counts_by_status(conn: Conn) -> dict[str, int]:
    """How many events are in each status."""
    rows = conn.execute("SELECT status, count(*) AS n FROM events GROUP BY status").fetchall()
    found = {row["status"]: row["n"] for row in rows}
    return {status: found.get(status, 0) for status in STATUSES}
