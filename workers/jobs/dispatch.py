"""Handing stored events to the broker, and the relay that catches the ones that never made it."""

from __future__ import annotations

import logging
from collections.abc import Callable

from workers.errors import BrokerUnavailable, DatabaseUnavailable
from workers.jobs import broker, runtime
from workers.store import db, events
from workers.store.db import Conn

log = logging.getLogger(__name__)

# An event whose job is overdue by this long is sent again (see events.OVERDUE_AFTER_SECONDS):
# lost with a killed worker, a web process that died before sending, or a retry Redis refused.
STALE_AFTER_SECONDS = events.OVERDUE_AFTER_SECONDS
# While messages wait in the queue (a backlog) an overdue event may be among them: only one
# overdue this long is sent again then, so a long backlog is not doubled.
BACKLOG_STALE_AFTER_SECONDS = 15 * 60


def _send(event_ids: list[int]) -> list[int]:
    on = runtime.current().broker
    return broker.send_by_name(on, broker.PROCESS_EVENT, broker.EVENTS_QUEUE, event_ids)


def _send_batch(event_ids: list[int]) -> list[int]:
    on = runtime.current().broker
    return broker.send_batch_by_name(on, broker.PROCESS_EVENT, broker.EVENTS_QUEUE, event_ids)


def _unsend(database_url: str, event_ids: list[int]) -> None:
    try:
        with db.connection(database_url) as conn, conn.transaction():
            events.mark_unsent(conn, event_ids)
    except DatabaseUnavailable as exc:
        log.warning("%d event(s) left enqueued but unsent (%s); the relay sends them later",
                    len(event_ids), exc)  # fmt: skip


def dispatch(database_url: str, event_ids: list[int]) -> list[int]:
    """Send events just stored as `enqueued`, in one Redis round trip; if the broker refuses,
    they go back to `received` (for the relay) and BrokerUnavailable is raised."""
    try:
        return _send_batch(event_ids)
    except BrokerUnavailable:
        _unsend(database_url, event_ids)
        raise


def relay(
    database_url: str,
    *,
    older_than_seconds: float = 10.0,
    stale_after_seconds: float = STALE_AFTER_SECONDS,
    batch: int = 500,
) -> int:
    """Send every event stored but never sent (Redis was down), or whose job is overdue (lost
    with a worker or a web process); how many."""
    waiting = broker.queue_length(runtime.current().broker, broker.EVENTS_QUEUE)
    stale_after_seconds = unless_backlog(waiting, stale_after_seconds)
    return relay_batches(
        database_url,
        claim=lambda conn: events.unenqueued(
            conn,
            older_than_seconds=older_than_seconds,
            stale_after_seconds=stale_after_seconds,
            limit=batch,
        ),
        send=_send,
        mark=events.mark_enqueued,
        what="stored event(s)",
    )


def unless_backlog(waiting: int, stale_after_seconds: float) -> float:
    """The overdue threshold, or the long one while `waiting` messages make a backlog."""
    if waiting:
        return max(stale_after_seconds, BACKLOG_STALE_AFTER_SECONDS)
    return stale_after_seconds


def relay_batches(
    database_url: str,
    *,
    claim: Callable[[Conn], list[int]],
    send: Callable[[list[int]], list[int]],
    mark: Callable[[Conn, list[int]], object],
    what: str,
    name: str = "relay",
) -> int:
    """Claim a batch of row ids (locked), send them, mark those sent, until none is left; how many.

    Stops early when the broker takes only part of a batch: the rest waits for the next run.
    """
    total = 0
    seen: set[int] = set()
    while True:
        with db.connection(database_url) as conn, conn.transaction():
            ids = claim(conn)
            if not ids or seen.issuperset(ids):  # nothing left, or only what this run just sent
                return total
            seen.update(ids)
            sent = send(ids)
            mark(conn, sent)
        total += len(sent)
        log.info("%s enqueued %d %s", name, len(sent), what)
        if len(sent) < len(ids):
            return total
