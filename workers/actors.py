"""Dramatiq actors. Jobs carry ids, not objects (the row is the truth); each is safe to rerun."""

from __future__ import annotations

import logging
import traceback
from functools import lru_cache

import dramatiq
from dramatiq.middleware import CurrentMessage

import workers.broker  # noqa: F401  # sets the broker before any actor is declared
from workers import db, events
from workers.config import Settings
from workers.errors import DatabaseUnavailable, PermanentEventError

log = logging.getLogger(__name__)

EVENT_MAX_RETRIES = 10  # with the backoff below: about two hours of trying before `failed`


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The worker process's settings, read once."""
    return Settings.from_env()


def _attempt() -> tuple[int, int]:
    message = CurrentMessage.get_current_message()
    retries = message.options.get("retries", 0) if message is not None else 0
    max_retries = (message.options.get("max_retries") if message is not None else None) or (
        EVENT_MAX_RETRIES
    )
    return retries, max_retries


def _record_failure(event_id: int, exc: BaseException, *, final: bool) -> None:
    error = f"{type(exc).__name__}: {exc}"
    try:
        with db.connection(settings().database_url) as conn, conn.transaction():
            events.record_failure(
                conn, event_id, error=error, traceback=traceback.format_exc(), final=final
            )
    except DatabaseUnavailable:
        log.warning("event %s: could not record the failure, database unavailable", event_id)
    if final:
        log.warning("event %s failed for good: %s", event_id, error, extra={"event_id": event_id})


def apply_event(event_id: int) -> str | None:
    """Apply one stored event in one transaction; its outcome, or None if nothing was left to do."""
    with db.connection(settings().database_url) as conn, conn.transaction():
        event = events.lock(conn, event_id)
        if event is None:
            log.warning("event %s does not exist; nothing to do", event_id)
            return None
        if event["status"] in ("processed", "ignored"):
            return None  # a duplicate message: the first run already applied it
        outcome = "recorded"
        events.finish(conn, event_id, status="processed", outcome=outcome)
        return outcome


@dramatiq.actor(
    max_retries=EVENT_MAX_RETRIES,
    min_backoff=2_000,
    max_backoff=15 * 60_000,
    throws=(PermanentEventError,),
)
def process_event(event_id: int) -> None:
    """Apply one stored notification to the subscription it concerns."""
    try:
        apply_event(event_id)
    except PermanentEventError as exc:
        _record_failure(event_id, exc, final=True)
        raise
    except Exception as exc:
        retries, max_retries = _attempt()
        _record_failure(event_id, exc, final=retries >= max_retries)
        raise
