"""Replaying stored events with today's code: selecting them, re-reading their bodies, handing
them to the workers, or (dry run) saying what applying them would do."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any

import dramatiq
import psycopg
import redis

from workers.config import Settings
from workers.errors import (
    BadFilter,
    BrokerUnavailable,
    DatabaseUnavailable,
    EventNotFound,
    RinnovoError,
)
from workers.jobs import runtime
from workers.jobs.broker import EVENTS_QUEUE, PROCESS_EVENT
from workers.protocol import form, ins, ipn, lcn
from workers.protocol.errors import MalformedNotification
from workers.store import db, events, replays
from workers.store.db import Conn
from workers.store.events import EventFilter
from workers.store.jsonable import jsonable
from workers.store.reports.emails import drafted
from workers.store.statuses import EventStatus

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
        """The stored columns this reading would change. A row's fields are read from its body
        unless it holds a reading of its own (stored before they were not): only such a reading
        can differ."""
        shown = {**row, "fields": row["fields"] or self.fields}
        return [
            name
            for name in ("fields", "summary", "license_codes", "test")
            if getattr(self, name) != shown[name]
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


def _store_readings(conn: Conn, readings: dict[int, Parsed]) -> int:
    """Store each event's new reading where it differs from the stored one; how many differed."""
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
    return replays.store_readings(conn, document)


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
                readings: dict[int, Parsed] = {}
                for row in replays.bodies(conn, chunk):
                    if row["kind"] not in PROTOCOLS:
                        continue  # api: the provider's JSON, which the rules read themselves
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
    """Send one process_event message per id, on the runtime's broker, in one Redis round trip.

    The broker is copied with its dispatch script bound to a pipeline, so each message goes
    through dramatiq's own enqueue (ids, middleware, encoding) and only the sending is batched:
    one message at a time is many times slower (see benchmarks/replay.py). The actor is named,
    as the receiver names it, so a replay needs the actors (and the rules) only to preview.
    """
    on = runtime.current().broker
    pipe = on.client.pipeline(transaction=False)
    batched = copy.copy(on)
    batched.scripts = {
        **on.scripts,
        "dispatch": pipe.register_script(on.scripts["dispatch"].script),
    }
    for event_id in event_ids:
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=EVENTS_QUEUE,
            actor_name=PROCESS_EVENT,
            args=(event_id,),
            kwargs={"emails": emails},
            options={},
        )
        batched.enqueue(message)
    pipe.execute()


def _check_exist(conn: Conn, ids: Sequence[int]) -> None:
    found: set[int] = set()
    for chunk in _chunks(ids, 50_000):
        found |= replays.existing(conn, chunk)
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
                taken = replays.take(conn, chunk, by=by)
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
    try:
        with conn.transaction():
            preview = _apply_once(conn, settings, event_id, emails=emails)
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


def _apply_once(conn: Conn, settings: Settings, event_id: int, *, emails: bool) -> dict[str, Any]:
    """Re-read and apply one event in the caller's transaction; what that did."""
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
    # Deferred: the admin page and API import this module to replay; the rules stay out of the
    # receiver's start-up until a preview needs them.
    from workers.billing.apply import apply

    applied = apply(conn, event, settings, emails=emails)
    return {
        "event_id": event_id,
        "status": applied.status,
        "outcome": applied.outcome,
        "changes": jsonable(list(applied.changes)),
        "emails": [draft._asdict() for draft in drafted(conn, applied.email_ids)],
        "refreshed": refreshed,
    }
