"""Handing stored events to the broker, and the relay that catches the ones that never made it."""

from __future__ import annotations

import logging

import redis

from workers import db, events
from workers.actors import process_event
from workers.errors import BrokerUnavailable

log = logging.getLogger(__name__)


def _send(event_ids: list[int]) -> list[int]:
    sent: list[int] = []
    for event_id in event_ids:
        try:
            process_event.send(event_id)
        except redis.RedisError as exc:
            if not sent:
                raise BrokerUnavailable(f"broker unavailable: {type(exc).__name__}") from exc
            break  # keep what went through; the rest stays `received` for the relay
        sent.append(event_id)
    return sent


def dispatch(database_url: str, event_ids: list[int]) -> list[int]:
    """Enqueue events that are already committed and mark them `enqueued`; returns those sent."""
    sent = _send(event_ids)
    with db.connection(database_url) as conn, conn.transaction():
        # Losing this mark in a crash only means the relay enqueues the event again, which the
        # worker shrugs off, so it need not wait for the disk.
        conn.execute("SET LOCAL synchronous_commit = off")
        events.mark_enqueued(conn, sent)
    return sent


def relay(database_url: str, *, older_than_seconds: float = 30.0, batch: int = 500) -> int:
    """Enqueue every event stored but never enqueued (Redis was down, a process died); how many."""
    total = 0
    while True:
        with db.connection(database_url) as conn, conn.transaction():
            ids = events.unenqueued(conn, older_than_seconds=older_than_seconds, limit=batch)
            if not ids:
                return total
            sent = _send(ids)
            events.mark_enqueued(conn, sent)
        total += len(sent)
        log.info("relay enqueued %d stored event(s)", len(sent))
        if len(sent) < len(ids):
            return total
