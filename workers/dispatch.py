"""Handing stored events to the broker, and the relay that catches the ones that never made it."""

from __future__ import annotations

import logging

from workers import db, events
from workers.actors import process_event
from workers.broker import send_each
from workers.errors import BrokerUnavailable, DatabaseUnavailable

log = logging.getLogger(__name__)

# An event stored `enqueued` and still not applied this long after is sent again: the process
# that stored it most likely died before sending (a provider retry cannot help: it is a
# duplicate). During a backlog longer than this the worker receives, and skips, a second copy.
STALE_AFTER_SECONDS = 15 * 60


def _send(event_ids: list[int]) -> list[int]:
    return send_each(process_event, event_ids)


def _unsend(database_url: str, event_ids: list[int]) -> None:
    try:
        with db.connection(database_url) as conn, conn.transaction():
            events.mark_unsent(conn, event_ids)
    except DatabaseUnavailable as exc:
        log.warning("%d event(s) left enqueued but unsent (%s); the relay sends them later",
                    len(event_ids), exc)  # fmt: skip


def dispatch(database_url: str, event_ids: list[int]) -> list[int]:
    """Send events just stored as `enqueued`; any the broker refuses go back to `received`."""
    try:
        sent = _send(event_ids)
    except BrokerUnavailable:
        _unsend(database_url, event_ids)
        raise
    if len(sent) < len(event_ids):
        _unsend(database_url, event_ids[len(sent) :])
    return sent


def relay(
    database_url: str,
    *,
    older_than_seconds: float = 30.0,
    stale_after_seconds: float = STALE_AFTER_SECONDS,
    batch: int = 500,
) -> int:
    """Send every event stored but never sent (Redis was down, a process died); how many."""
    total = 0
    while True:
        with db.connection(database_url) as conn, conn.transaction():
            ids = events.unenqueued(
                conn,
                older_than_seconds=older_than_seconds,
                stale_after_seconds=stale_after_seconds,
                limit=batch,
            )
            if not ids:
                return total
            sent = _send(ids)
            events.mark_enqueued(conn, sent)
        total += len(sent)
        log.info("relay enqueued %d stored event(s)", len(sent))
        if len(sent) < len(ids):
            return total
