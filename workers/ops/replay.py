"""Replaying stored events with today's code, and the read-only queries operators look at."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from types import ModuleType
from typing import Any

import psycopg
import redis
from dramatiq.brokers.redis import RedisBroker
from psycopg import sql
from psycopg.types.json import Jsonb

from workers.config import Settings
from workers.errors import (
    BadFilter,
    BrokerUnavailable,
    DatabaseUnavailable,
    EventNotFound,
    RinnovoError,
)
from workers.protocol import form, ins, ipn, lcn
from workers.protocol.errors import MalformedNotification
from workers.store import db, events
from workers.store.db import Conn
from workers.store.events import EventFilter
from workers.store.jsonable import iso, jsonable
from workers.store.statuses import EMAIL_STATUSES, EVENT_STATUSES, EventStatus

log = logging.getLogger(__name__)

PROTOCOLS: dict[str, ModuleType] = {module.KIND: module for module in (ipn, lcn, ins)}

# One transaction and one Redis pipeline per chunk: big enough to be fast, small enough that
# workers never wait long on the rows a replay holds.
CHUNK = 2000


@dataclass
class ReplayReport:
    """What a replay did, or (dry run) what it would do."""

    event_ids: list[int]
    enqueued: int
    dry_run: bool
    # Dry run only: per event {event_id, status, outcome, changes, emails, refreshed} or
    # {event_id, error}.
    previews: list[dict[str, Any]] = field(default_factory=list)
    # {event_id, error} for bodies today's parser cannot read: their stored reading is kept (the
    # worker records the same error when it applies them).
    errors: list[dict[str, Any]] = field(default_factory=list)
    # How many events' stored reading (fields, summary, licenses, test flag) today's parser changed.
    refreshed: int = 0


# --- filters -------------------------------------------------------------------------------


def parse_instant(text: str, *, end_of_day: bool = False) -> datetime:
    """Read a date (YYYY-MM-DD) or an ISO 8601 time; naive times are UTC.

    A bare date is the start of that day, or with `end_of_day` the start of the next one, so that
    `--until 2026-01-31` includes the 31st.
    """
    value = text.strip().upper()  # ISO 8601 allows a lowercase t and z
    try:
        day = date.fromisoformat(value)
    except ValueError:
        pass
    else:
        start = datetime.combine(day, clock_time(0), tzinfo=UTC)
        if not end_of_day:
            return start
        return start + timedelta(days=1) if day < date.max else datetime.max.replace(tzinfo=UTC)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadFilter(
            f"{text!r} is not a date: use YYYY-MM-DD or an ISO 8601 time such as "
            "2026-01-31T10:00:00Z"
        ) from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # within a day of the calendar's ends: as far as it goes
        return (datetime.min if moment.year == 1 else datetime.max).replace(tzinfo=UTC)


def _printable(name: str, value: str | None) -> None:
    """Refuse a NUL character, which no stored text can contain (PostgreSQL refuses it)."""
    if value is not None and "\x00" in value:
        raise BadFilter(f"{name} contains a NUL character")


def make_filter(
    *,
    status: str | None = None,
    kind: str | None = None,
    license_code: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> EventFilter:
    """Build an EventFilter from an operator's text, raising BadFilter with the reason."""
    if status is not None and status not in EVENT_STATUSES:
        raise BadFilter(f"unknown status {status!r}: use one of {', '.join(EVENT_STATUSES)}")
    if kind is not None and kind not in events.KINDS:
        raise BadFilter(f"unknown kind {kind!r}: use one of {', '.join(events.KINDS)}")
    if license_code is not None and not license_code.strip():
        raise BadFilter("license code is blank")
    _printable("license code", license_code)
    start = parse_instant(since) if since is not None else None
    end = parse_instant(until, end_of_day=True) if until is not None else None
    if start is not None and end is not None and start >= end:
        raise BadFilter("since must be before until")
    return EventFilter(
        status=status,
        kind=kind,
        license_code=license_code.strip() if license_code is not None else None,
        since=start,
        until=end,
    )


def is_empty(flt: EventFilter) -> bool:
    """Whether the filter selects every event."""
    return flt == EventFilter()


def select_ids(settings: Settings, flt: EventFilter, *, failed_only: bool) -> list[int]:
    """Ids of the events a bulk replay would take, oldest first."""
    if failed_only:
        if flt.status not in (None, EventStatus.FAILED):
            raise BadFilter(f"failed-only replay cannot also ask for status {flt.status!r}")
        flt = replace(flt, status=EventStatus.FAILED.value)
    with db.connection(settings.database_url) as conn, conn.transaction():
        return events.matching_ids(conn, flt)


# --- re-parsing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Parsed:
    """What today's protocol code reads from one stored raw body."""

    fields: dict[str, list[str]]
    summary: str
    license_codes: list[str]
    test: bool

    def differs(self, row: dict[str, Any]) -> list[str]:
        """The stored columns this reading would change."""
        return [
            name
            for name in ("fields", "summary", "license_codes", "test")
            if getattr(self, name) != row[name]
        ]


def reparse(kind: str, raw_body: bytes) -> Parsed:
    """Read a stored body as the receiver would today (the signature is not checked again)."""
    module = PROTOCOLS[kind]
    fields = form.group(form.parse_form(bytes(raw_body)))
    return Parsed(
        fields=fields,
        summary=module.summary(fields),
        license_codes=module.license_codes(fields),
        test=module.is_test(fields),
    )


# PostgreSQL compares the readings, so only rows whose reading changed are written and the
# stored fields never need to be loaded into Python. The readings travel as one JSON document:
# an array parameter of JSON values would be escaped element by element, which is slow.
_STORE_READINGS = """
    WITH v AS (
        SELECT r.id, r.fields, r.summary, r.test,
               ARRAY(SELECT jsonb_array_elements_text(r.codes)) AS license_codes
        FROM jsonb_to_recordset(%s::jsonb)
             AS r(id bigint, fields jsonb, summary text, codes jsonb, test boolean)
    )
    UPDATE events AS e
    SET fields = v.fields, summary = v.summary, license_codes = v.license_codes, test = v.test
    FROM v
    WHERE e.id = v.id
      AND (e.fields, e.summary, e.license_codes, e.test)
          IS DISTINCT FROM (v.fields, v.summary, v.license_codes, v.test)
    RETURNING e.id
"""


def _store_readings(conn: Conn, readings: dict[int, Parsed]) -> int:
    """Store each event's new reading where it differs from the stored one; how many differed."""
    if not readings:
        return 0
    document = [
        {
            "id": event_id,
            "fields": reading.fields,
            "summary": reading.summary,
            "codes": reading.license_codes,
            "test": reading.test,
        }
        for event_id, reading in readings.items()
    ]
    return len(conn.execute(_STORE_READINGS, (Jsonb(document),)).fetchall())


def refresh(settings: Settings, event_ids: Sequence[int]) -> tuple[int, list[dict[str, Any]]]:
    """Store today's reading of each event's raw body (fields, summary, licenses, test flag).

    Returns how many stored readings changed, and {event_id, error} for the bodies today's
    parser cannot read (their stored reading is left as it is).
    """
    changed = 0
    errors: list[dict[str, Any]] = []
    with db.connection(settings.database_url) as conn:
        for chunk in _chunks(sorted(event_ids)):
            with conn.transaction():
                rows = conn.execute(
                    "SELECT id, kind, raw_body FROM events WHERE id = ANY(%s) ORDER BY id",
                    (chunk,),
                ).fetchall()
                readings: dict[int, Parsed] = {}
                for row in rows:
                    if row["kind"] not in PROTOCOLS:
                        continue  # api: the provider's JSON, which lifecycle reads itself
                    try:
                        readings[row["id"]] = reparse(row["kind"], row["raw_body"])
                    except MalformedNotification as exc:
                        errors.append({"event_id": row["id"], "error": f"cannot re-parse: {exc}"})
                changed += _store_readings(conn, readings)
    return changed, errors


# --- replay --------------------------------------------------------------------------------


def _chunks(ids: Sequence[int], size: int = CHUNK) -> Iterator[list[int]]:
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


def _enqueue_many(event_ids: Sequence[int], *, emails: bool) -> None:
    """Send one process_event message per id in a single Redis round trip.

    The broker is copied with its dispatch script bound to a pipeline, so each message goes
    through dramatiq's own enqueue (ids, middleware, encoding) and only the sending is batched:
    one message at a time is many times slower (see benchmarks/replay.py).
    """
    # Deferred: the actors are declared on the broker installed when they are imported, which
    # the command group does at start-up (after ./.env is read).
    from workers.jobs.actors import process_event

    broker = process_event.broker
    assert isinstance(broker, RedisBroker)
    pipe = broker.client.pipeline(transaction=False)
    batched = copy.copy(broker)
    batched.scripts = {
        **broker.scripts,
        "dispatch": pipe.register_script(broker.scripts["dispatch"].script),
    }
    for event_id in event_ids:
        message = process_event.message_with_options(args=(event_id,), kwargs={"emails": emails})
        batched.enqueue(message)
    pipe.execute()


def _check_exist(conn: Conn, ids: Sequence[int]) -> None:
    found: set[int] = set()
    for chunk in _chunks(ids, 50_000):
        rows = conn.execute("SELECT id FROM events WHERE id = ANY(%s)", (chunk,)).fetchall()
        found.update(row["id"] for row in rows)
    missing = [i for i in ids if i not in found]
    if missing:
        shown = ", ".join(str(i) for i in missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise EventNotFound(f"no event with id {shown}")


def enqueue(
    settings: Settings, event_ids: Sequence[int], *, emails: bool = True, by: str = "replay-cli"
) -> int:
    """Move the events back to `enqueued` and hand them to the workers; how many were taken.

    A chunk at a time: one transaction and one Redis round trip each. Ids that name no event
    are skipped.
    """
    with db.connection(settings.database_url) as conn:
        return _enqueue(conn, sorted(event_ids), emails=emails, by=by)


def _enqueue(conn: Conn, ids: Sequence[int], *, emails: bool, by: str) -> int:
    if by not in events.REQUESTERS:
        raise ValueError(f"unknown requester {by!r}: one of {', '.join(events.REQUESTERS)}")
    enqueued = 0
    for chunk in _chunks(ids):
        try:
            with conn.transaction():
                # Locked in id order, so two replays at once take turns instead of deadlocking.
                rows = conn.execute(
                    "SELECT id FROM events WHERE id = ANY(%s) ORDER BY id FOR UPDATE", (chunk,)
                ).fetchall()
                taken = [row["id"] for row in rows]
                # The attempts' history stays in event_attempts; the row shows the latest.
                conn.execute(
                    """
                    UPDATE events
                    SET status = 'enqueued', enqueued_at = now(), processed_at = NULL,
                        enqueued_by = %s
                    WHERE id = ANY(%s)
                    """,
                    (by, taken),
                )
                # Sent before the commit on purpose: if Redis refuses, the rows roll back and
                # stay as they were. A worker that gets a message first waits on the row lock.
                _enqueue_many(taken, emails=emails)
        except redis.RedisError as exc:
            raise BrokerUnavailable(
                f"broker unavailable after {enqueued} of {len(ids)} event(s) were replayed "
                f"({type(exc).__name__}); the rest are unchanged, run the replay again"
            ) from exc
        enqueued += len(taken)
    return enqueued


def replay(
    settings: Settings,
    event_ids: list[int],
    *,
    dry_run: bool = False,
    emails: bool = True,
    progress: Callable[[str], None] | None = None,
    by: str = "replay-cli",
) -> ReplayReport:
    """Apply events again, as today's code reads their stored bodies.

    A real replay moves each event back to `enqueued` and hands it to the workers, then stores
    today's reading of each body (`refresh`). Workers apply the raw body as today's parser reads
    it, so the order of the two does not matter, and handing the work over comes first because
    it is what an operator waits for. The lifecycle is idempotent: replaying a processed event
    changes nothing and sends nothing. A dry run applies each event in a transaction that is
    rolled back and reports what it would do. `emails=False` applies state without writing
    outbox rows. Unknown ids raise EventNotFound before anything changes. `progress` is told,
    in a sentence, when the events are with the workers and the bodies are being re-read. `by`
    names who asked (`replay-cli`, `replay-api`, `replay-page`), for the attempts it starts.
    """
    ids = sorted(set(event_ids))
    with db.connection(settings.database_url) as conn:
        with conn.transaction():
            _check_exist(conn, ids)
        if dry_run:
            previews = [_preview(conn, settings, event_id, emails=emails) for event_id in ids]
            return ReplayReport(event_ids=ids, enqueued=0, dry_run=True, previews=previews)
        started = time.monotonic()
        enqueued = _enqueue(conn, ids, emails=emails, by=by)
    log.info("replay enqueued %d event(s)%s", enqueued, "" if emails else " without emails")
    if progress is not None:
        progress(
            f"handed {enqueued} event(s) to the workers in {time.monotonic() - started:.1f} s; "
            "now storing today's reading of their bodies"
        )
    refreshed, errors = refresh(settings, ids)
    for error in errors:  # the report carries them to the caller, who shows them
        log.info("event %s: %s", error["event_id"], error["error"])
    return ReplayReport(
        event_ids=ids, enqueued=enqueued, dry_run=False, errors=errors, refreshed=refreshed
    )


def _preview(conn: Conn, settings: Settings, event_id: int, *, emails: bool) -> dict[str, Any]:
    """Apply one event in a transaction that is rolled back; what it would change."""

    preview: dict[str, Any] = {"event_id": event_id}
    try:
        with conn.transaction():
            stored = events.lock(conn, event_id)
            if stored is None:
                raise EventNotFound(f"no event with id {event_id}")
            refreshed: list[str] = []
            if stored["kind"] in PROTOCOLS:  # not api: the provider's JSON has no reading
                reading = reparse(stored["kind"], stored["raw_body"])
                _store_readings(conn, {event_id: reading})
                refreshed = reading.differs(stored)
            event = events.get(conn, event_id)
            assert event is not None  # locked above
            # Deferred: the admin pages list from this module; the rules stay out of the
            # receiver's start-up until a preview needs them.
            from workers.billing.apply import apply

            applied = apply(conn, event, settings, emails=emails)
            outbox = conn.execute(
                """
                SELECT e.kind, e.fact, e.to_address, e.locale, s.license_code
                FROM emails e JOIN subscriptions s ON s.id = e.subscription_id
                WHERE e.id = ANY(%s) ORDER BY e.id
                """,
                (list(applied.email_ids),),
            ).fetchall()
            preview |= {
                "status": applied.status,
                "outcome": applied.outcome,
                "changes": jsonable(list(applied.changes)),
                "emails": outbox,
                "refreshed": refreshed,
            }
            raise psycopg.Rollback()
    except (EventNotFound, DatabaseUnavailable, psycopg.OperationalError):
        raise
    except (
        RinnovoError,
        MalformedNotification,
        psycopg.Error,
        ArithmeticError,
        LookupError,
        TypeError,
        ValueError,
    ) as exc:
        # What the worker would record as the event's error (worded as it words it): shown to
        # the operator, who asked what would happen.
        return {"event_id": event_id, "error": f"{type(exc).__name__}: {exc}"}
    return preview


# --- what operators look at ----------------------------------------------------------------


def event_summary(row: dict[str, Any]) -> dict[str, Any]:
    """One event as a list shows it, JSON-ready."""
    return {
        "id": row["id"],
        "kind": row["kind"],
        "status": row["status"],
        "summary": row["summary"],
        "license_codes": list(row["license_codes"]),
        "test": row["test"],
        "received_at": iso(row["received_at"]),
        "processed_at": iso(row["processed_at"]),
        "deliveries": row["deliveries"],
        "attempts": row["attempts"],
        "last_error": row["last_error"],
        "outcome": row["outcome"],
    }


def list_events(
    conn: Conn, flt: EventFilter, *, limit: int = 50, before: int | None = None
) -> tuple[list[dict[str, Any]], int | None]:
    """A page of events, newest first, and the cursor of the next page (None on the last)."""
    rows = events.search(conn, flt, limit=limit + 1, before_id=before)
    page = rows[:limit]
    cursor = page[-1]["id"] if len(rows) > limit else None
    return [event_summary(row) for row in page], cursor


def event_detail(conn: Conn, event_id: int) -> dict[str, Any] | None:
    """Everything about one event: the request, its reading, attempts, and what it caused."""
    row = events.get(conn, event_id)
    if row is None:
        return None
    changes = conn.execute(
        """
        SELECT h.at, s.license_code, h.change, h.before, h.after, h.note
        FROM subscription_history h JOIN subscriptions s ON s.id = h.subscription_id
        WHERE h.event_id = %s ORDER BY h.id
        """,
        (event_id,),
    ).fetchall()
    emails = conn.execute(
        sql.SQL("{} WHERE e.event_id = %s ORDER BY e.id").format(_EMAIL_SELECT), (event_id,)
    ).fetchall()
    return event_summary(row) | {
        "dedupe_key": row["dedupe_key"],
        "enqueued_at": iso(row["enqueued_at"]),
        "last_delivery_at": iso(row["last_delivery_at"]),
        "content_type": row["content_type"],
        "headers": row["headers"],
        "verification": {"signature_algo": row["signature_algo"], "key_index": row["key_index"]},
        "fields": row["fields"],
        "raw_body": bytes(row["raw_body"]).decode("utf-8", errors="replace"),
        "last_traceback": row["last_traceback"],
        "changes": jsonable(changes),
        "emails": [email_summary(email) for email in emails],
        "attempt_history": jsonable(events.attempts(conn, event_id)),
    }


_EMAIL_SELECT = sql.SQL(
    """
    SELECT e.id, e.event_id, s.license_code, e.kind, e.fact, e.to_address, e.locale, e.status,
           e.attempts, e.last_error, e.created_at, e.sent_at, e.failure, e.message_id
    FROM emails e JOIN subscriptions s ON s.id = e.subscription_id
    """
)


def email_summary(row: dict[str, Any]) -> dict[str, Any]:
    """One outbox row as operators see it, JSON-ready."""
    return {
        "id": row["id"],
        "event_id": row["event_id"],
        "license_code": row["license_code"],
        "kind": row["kind"],
        "fact": row["fact"],
        "to_address": row["to_address"],
        "locale": row["locale"],
        "status": row["status"],
        "attempts": row["attempts"],
        "last_error": row["last_error"],
        "created_at": iso(row["created_at"]),
        "sent_at": iso(row["sent_at"]),
        "failure": row["failure"],
        "message_id": row["message_id"],
    }


def list_emails(
    conn: Conn,
    *,
    to: str | None = None,
    kind: str | None = None,
    status: str | None = None,
    limit: int = 50,
    before: int | None = None,
    failure: str | None = None,
) -> tuple[list[dict[str, Any]], int | None]:
    """A page of outbox rows, newest first, and the cursor of the next page (None on the last)."""
    if status is not None and status not in EMAIL_STATUSES:
        raise BadFilter(f"unknown email status {status!r}: use one of {', '.join(EMAIL_STATUSES)}")
    _printable("to", to)
    _printable("kind", kind)
    clauses: list[sql.Composable] = [sql.SQL("true")]
    params: list[Any] = []
    if to:
        clauses.append(sql.SQL("lower(e.to_address) = lower(%s)"))
        params.append(to.strip())
    if kind:
        clauses.append(sql.SQL("e.kind = %s"))
        params.append(kind)
    if status:
        clauses.append(sql.SQL("e.status = %s"))
        params.append(status)
    if failure:
        clauses.append(sql.SQL("e.failure = %s"))
        params.append(failure)
    if before is not None:
        clauses.append(sql.SQL("e.id < %s"))
        params.append(before)
    query = sql.SQL("{} WHERE {} ORDER BY e.id DESC LIMIT %s").format(
        _EMAIL_SELECT, sql.SQL(" AND ").join(clauses)
    )
    rows = conn.execute(query, [*params, limit + 1]).fetchall()
    page = rows[:limit]
    cursor = page[-1]["id"] if len(rows) > limit else None
    return [email_summary(row) for row in page], cursor
