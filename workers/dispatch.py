"""Handing stored events to the broker, and the relay that catches the ones that never made it."""

from __future__ import annotations

import logging
from collections.abc import Callable

from workers import db, events
from workers.actors import process_event
from workers.broker import send_each
from workers.db import Conn
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
    while True:
        with db.connection(database_url) as conn, conn.transaction():
            ids = claim(conn)
            if not ids:
                return total
            sent = send(ids)
            mark(conn, sent)
        total += len(sent)
        log.info("%s enqueued %d %s", name, len(sent), what)
        if len(sent) < len(ids):
            return total
