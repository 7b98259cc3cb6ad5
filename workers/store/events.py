"""SQL for the event inbox. Functions take the connection first; the caller owns the transaction."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from workers.protocol import form
from workers.protocol.errors import MalformedNotification
from workers.store import batch
from workers.store.batch import Part
from workers.store.db import Conn
from workers.store.statuses import APPLIED, EVENT_STATUSES, AttemptStatus, EventStatus

KINDS = ("ipn", "lcn", "ins", "api")  # api: reconciliation events

# An event's job should start within this long of being due (a worker takes a message in
# milliseconds); past it, the job is presumed lost (a killed worker, a web process that died
# before sending, a retry Redis refused) and is sent again. A copy that was only late is a no-op.
OVERDUE_AFTER_SECONDS = 20.0


@dataclass(frozen=True)
class NewEvent:
    """A verified notification, ready to be stored."""

    kind: str
    dedupe_key: str
    raw_body: bytes
    content_type: str
    headers: dict[str, str]
    # None (what the receiver passes): not stored, read again from the raw body whenever shown
    # (`get`), which saves turning 100 fields into JSON and PostgreSQL parsing and compressing
    # them on every delivery. Rows stored before keep the reading they were stored with until a
    # replay refreshes it (`replays.store_readings`). An api event has none: {}.
    fields: dict[str, list[str]] | None
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
    redispatch: bool = False  # a known event whose job is overdue: send it again


FORM_KINDS = ("ipn", "lcn", "ins")  # stored as received: form-encoded bodies
_NO_FIELDS = Jsonb({})

_COLUMNS = """
    INSERT INTO events (kind, dedupe_key, raw_body, content_type, headers, fields,
                        signature_algo, key_index, summary, license_codes, test,
                        status, enqueued_at, due_at)
    VALUES
"""
_ROW = "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'enqueued', now(), now())"
# A known event still waiting whose job is overdue by the grace becomes due now, to be sent again.
_ON_CONFLICT = """
    ON CONFLICT (dedupe_key) DO UPDATE
        SET deliveries = events.deliveries + 1, last_delivery_at = now(),
            (status, due_at) = (
                SELECT CASE WHEN overdue THEN 'enqueued' ELSE events.status END,
                       CASE WHEN overdue THEN now() ELSE events.due_at END
                FROM (SELECT events.status IN ('received', 'enqueued')
                             AND GREATEST(events.due_at, events.enqueued_at)
                                 < now() - make_interval(secs => %s) AS overdue) AS late)
    RETURNING id, dedupe_key, (xmax = 0) AS inserted, status,
              (xmax <> 0 AND status IN ('received', 'enqueued') AND due_at = now()) AS redispatch
"""


@functools.lru_cache(maxsize=64)
def _store_sql(rows: int) -> str:
    """The statement that stores `rows` events (one text per count: psycopg prepares each)."""
    return _COLUMNS + ",\n".join([_ROW] * rows) + _ON_CONFLICT


def store(conn: Conn, event: NewEvent) -> Stored:
    """Insert the event, or count another delivery of the one with the same dedupe key.

    A new event is stored already `enqueued`: the receiver sends it right after the commit and
    sets it back to `received` only if the broker refuses, which saves a second transaction per
    notification. One that was never sent (the process died in between) is resent by the relay,
    or sooner by the provider's retry: a delivery of an event still waiting past `due_at` (its
    job is overdue, most likely lost) makes it due now and reports `redispatch`, in this same
    statement, so the receiver sends it again.
    """
    return store_many(conn, [event])[0]


def store_many(conn: Conn, batch: Sequence[NewEvent]) -> list[Stored]:
    """`store` for several events in one statement (one round trip; in autocommit, one commit),
    what it did for each, in order. Their dedupe keys must differ: PostgreSQL cannot insert and
    update one row in the same statement."""
    params: list[Any] = []
    for event in batch:
        params += (
            event.kind,
            event.dedupe_key,
            event.raw_body,
            event.content_type,
            Jsonb(event.headers),
            _NO_FIELDS if event.fields is None else Jsonb(event.fields),
            event.signature_algo,
            event.key_index,
            event.summary,
            event.license_codes,
            event.test,
        )
    params.append(OVERDUE_AFTER_SECONDS)
    rows = conn.execute(_store_sql(len(batch)), params).fetchall()
    by_key = {
        row["dedupe_key"]: Stored(
            event_id=row["id"],
            inserted=row["inserted"],
            status=row["status"],
            redispatch=bool(row["redispatch"]),
        )
        for row in rows
    }
    return [by_key[event.dedupe_key] for event in batch]


# Who hands an event to the workers, as attempts record it, and how operators read it.
REQUESTERS: dict[str, str] = {
    "delivery": "provider delivery",
    "relay": "relay",
    "replay-cli": "replay (CLI)",
    "replay-api": "replay (API)",
    "replay-page": "replay (admin page)",
}


# What the time an event's processing ended means, by its status: a failed event was not
# "processed".
FINISHED_LABELS: dict[str, str] = {
    EventStatus.PROCESSED: "Processed",
    EventStatus.IGNORED: "Ignored",
    EventStatus.FAILED: "Failed",
}


def mark_enqueued(conn: Conn, event_ids: list[int]) -> int:
    """Record that the relay handed these events to the broker; a worker that finished one wins."""
    cur = conn.execute(
        """
        UPDATE events SET status = 'enqueued', enqueued_at = now(), enqueued_by = 'relay'
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
    """Lock a batch of events the relay must send: never sent, or whose job is overdue by
    `stale_after_seconds` (lost with a worker or a web process), skipping rows another relay holds.

    A job is due when the event is (re)sent, or when its retry must start at the latest
    (`due_at`); a replay's send (`enqueued_at`) counts too.
    """
    rows = conn.execute(
        """
        SELECT id FROM events
        WHERE status IN ('received', 'enqueued')
          AND CASE WHEN status = 'received'
                   THEN received_at < now() - make_interval(secs => %s)
                   ELSE GREATEST(due_at, enqueued_at) < now() - make_interval(secs => %s) END
        ORDER BY id
        LIMIT %s
        FOR UPDATE SKIP LOCKED
        """,
        (older_than_seconds, stale_after_seconds, limit),
    ).fetchall()
    return [row["id"] for row in rows]


def retry_due(conn: Conn, event_id: int, within_seconds: float) -> None:
    """Record that the event's retry must start within `within_seconds` (the relay's threshold)."""
    conn.execute(
        "UPDATE events SET due_at = now() + make_interval(secs => %s) WHERE id = %s",
        (within_seconds, event_id),
    )


def lock(conn: Conn, event_id: int) -> dict[str, Any] | None:
    """Load one event and lock its row, so two runs of the same event take turns."""
    return conn.execute("SELECT * FROM events WHERE id = %s FOR UPDATE", (event_id,)).fetchone()


# What applying an event reads of it (its raw body, not the parsed fields and headers), and the
# subscriptions it names (license codes stored at receipt) locked in the same statement, in license
# order, after the event: two runs of one event take turns on its row, and a duplicate message
# (the event already applied) locks no subscription. Each subscription's customer is read beside
# it by primary key: a join of the whole set would be planned once per connection, while the
# tables are still small, and a hash join's scan of every customer would then be kept for good.
_CLAIM = """
    WITH event AS (
        SELECT id, kind, status, raw_body, license_codes, enqueued_by
        FROM events WHERE id = %s FOR UPDATE
    ), locked AS (
        -- One unique-index lookup per code (a plain ANY may scan the table), in code order.
        SELECT s.*
        FROM (SELECT DISTINCT unnest(license_codes) AS code FROM event
              WHERE status NOT IN ('processed', 'ignored') ORDER BY 1) AS named,
             LATERAL (
                 SELECT sub.*, c.email AS owner_email, c.first_name AS owner_first_name,
                        c.last_name AS owner_last_name, c.locale AS owner_locale
                 FROM subscriptions sub JOIN customers c ON c.id = sub.customer_id
                 WHERE sub.license_code = named.code FOR UPDATE OF sub
             ) AS s
    )
    SELECT event.id AS event_id, event.kind AS event_kind, event.status AS event_status,
           event.raw_body AS event_raw_body, event.license_codes AS event_license_codes,
           event.enqueued_by AS event_enqueued_by, locked.*
    FROM event LEFT JOIN locked ON true
"""
# The customer columns of a claim's row, by their names in the customers table.
_CUSTOMER = {
    "owner_email": "email",
    "owner_first_name": "first_name",
    "owner_last_name": "last_name",
    "owner_locale": "locale",
}
_CLAIMED = (
    "event_id",
    "event_kind",
    "event_status",
    "event_raw_body",
    "event_license_codes",
    "event_enqueued_by",
)
_NOT_SUBSCRIPTION = frozenset(_CLAIMED) | frozenset(_CUSTOMER)


def claim(conn: Conn, event_id: int) -> dict[str, Any] | None:
    """Lock one event to apply it, with the subscriptions it names; None when there is no such
    event.

    The event's `subscriptions` maps each license code it names to that subscription's row,
    locked (None: no such subscription yet), unless the event was already applied; `customers`
    maps their customers' ids to the customer's email, names and locale.
    """
    rows = conn.execute(_CLAIM, (event_id,)).fetchall()
    if not rows:
        return None
    first = rows[0]
    event = {key.removeprefix("event_"): first[key] for key in _CLAIMED}
    claimed: dict[str, dict[str, Any] | None] = {}
    customers: dict[int, dict[str, Any]] = {}
    if event["status"] not in APPLIED:
        claimed = dict.fromkeys(event["license_codes"])
        for row in rows:
            if row["id"] is None:
                continue
            sub = {key: value for key, value in row.items() if key not in _NOT_SUBSCRIPTION}
            claimed[row["license_code"]] = sub
            customers[sub["customer_id"]] = {name: row[key] for key, name in _CUSTOMER.items()}
    event["subscriptions"], event["customers"] = claimed, customers
    return event


def get(conn: Conn, event_id: int) -> dict[str, Any] | None:
    """Load one event, with its fields read from its body when they were not stored."""
    row = conn.execute("SELECT * FROM events WHERE id = %s", (event_id,)).fetchone()
    if row is not None and not row["fields"] and row["kind"] in FORM_KINDS:
        row["fields"] = fields_of(row["raw_body"])
    return row


def fields_of(raw_body: bytes) -> dict[str, list[str]]:
    """A stored notification's fields as the receiver read them ({} for a body it cannot read,
    which it never stores)."""
    try:
        return form.group(form.parse_form(bytes(raw_body)))
    except MalformedNotification:
        return {}


# The event's row says how it stands; the attempt row added by the same statement keeps what
# this attempt did, so a later attempt (a replay) overwrites nothing of it.
_ATTEMPT = sql.SQL(
    """
    INSERT INTO event_attempts (event_id, requested_by, enqueued_at, retry, status, outcome)
    SELECT id, enqueued_by, enqueued_at, %s, %s, %s FROM updated
    """
)
# finish's statement after the held-back writes' CTEs: the outcome and the attempt, as above.
_FINISH = """
    updated AS (
        UPDATE events
        SET status = %s, outcome = %s, processed_at = now(), attempts = attempts + 1,
            last_error = NULL, last_traceback = NULL
        WHERE id = %s
        RETURNING id, enqueued_by, enqueued_at
    )
    INSERT INTO event_attempts (event_id, requested_by, enqueued_at, retry, status, outcome)
    SELECT id, enqueued_by, enqueued_at, %s, %s, %s FROM updated
"""


def finish(
    conn: Conn,
    event_id: int,
    *,
    status: str,
    outcome: str,
    retry: int = 0,
    writes: Sequence[Part] = (),
) -> None:
    """Record that applying the event is over (processed, or ignored with the reason), and the
    attempt; `retry` is the worker's retry number of this hand-over. `writes` (what applying it
    held back) go in the same statement."""
    head, params = batch.ctes(writes)
    conn.execute(
        f"WITH {head}{_FINISH}".encode(),
        [*params, status, outcome, event_id, retry, status, outcome],
    )


def record_failure(
    conn: Conn, event_id: int, *, error: str, traceback: str, final: bool, retry: int = 0
) -> None:
    """Keep the error of a failed attempt, and the attempt; the final one moves the event to
    `failed`, an earlier one is `retrying`."""
    attempt = AttemptStatus.FAILED if final else AttemptStatus.RETRYING
    conn.execute(
        sql.SQL(
            """
        WITH updated AS (
            UPDATE events
            SET attempts = attempts + 1, last_error = %s, last_traceback = %s,
                status = CASE WHEN %s THEN 'failed' ELSE status END,
                processed_at = CASE WHEN %s THEN now() ELSE processed_at END
            WHERE id = %s
            RETURNING id, enqueued_by, enqueued_at
        )
        """
        )
        + _ATTEMPT,
        (error, traceback, final, final, event_id, retry, attempt, error),
    )


def requested_by(attempt: Mapping[str, Any]) -> str:
    """Who asked for an attempt, as operators read it: "replay (CLI)", "relay, retry 2"."""
    who = REQUESTERS.get(attempt["requested_by"], attempt["requested_by"])
    return who + (f", retry {attempt['retry']}" if attempt["retry"] else "")


def attempts(conn: Conn, event_id: int) -> list[dict[str, Any]]:
    """Every attempt at applying the event, oldest first."""
    return conn.execute(
        """
        SELECT at, requested_by, enqueued_at, retry, status, outcome
        FROM event_attempts WHERE event_id = %s ORDER BY id
        """,
        (event_id,),
    ).fetchall()


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
    return {status: found.get(status, 0) for status in EVENT_STATUSES}
