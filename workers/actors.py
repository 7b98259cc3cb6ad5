"""Dramatiq actors. Jobs carry ids, not objects (the row is the truth); each is safe to rerun."""

from __future__ import annotations

import logging
import traceback
from functools import lru_cache

import dramatiq
from dramatiq.middleware import CurrentMessage

import workers.broker  # noqa: F401  # sets the broker before any actor is declared
from emails.transport import PermanentEmailError
from workers import db, events, lifecycle
from workers.config import Settings
from workers.errors import (
    BrokerUnavailable,
    ConfigError,
    DatabaseUnavailable,
    PermanentEventError,
)

log = logging.getLogger(__name__)

EVENT_MAX_RETRIES = 10  # with the backoff below: about two hours of trying before `failed`


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The worker process's settings, read once."""
    return Settings.from_env()


# A malformed catalog stops the worker at start-up, naming the line, instead of failing events.
lifecycle.catalog(settings())
try:
    settings().merchant_voice()
except ConfigError as exc:  # events are still applied; their emails wait for the setting
    log.error("emails will wait until this is fixed: %s", exc)


def _retry_number() -> int:
    """Which retry of its message the running attempt is (0: the first try)."""
    message = CurrentMessage.get_current_message()
    return 0 if message is None else int(message.options.get("retries", 0))


def _is_final_attempt(actor_max_retries: int) -> bool:
    """Whether the running message has no retry left (per-message options override the actor's)."""
    message = CurrentMessage.get_current_message()
    if message is None:
        return True
    retries: int = message.options.get("retries", 0)
    max_retries: int = message.options.get("max_retries", actor_max_retries)
    return retries >= max_retries


def _record_failure(event_id: int, exc: BaseException, *, final: bool) -> None:
    error = f"{type(exc).__name__}: {exc}"
    try:
        with db.connection(settings().database_url) as conn, conn.transaction():
            events.record_failure(
                conn,
                event_id,
                error=error,
                traceback=traceback.format_exc(),
                final=final,
                retry=_retry_number(),
            )
    except DatabaseUnavailable:
        log.warning("event %s: could not record the failure, database unavailable", event_id)
    if final:
        log.warning("event %s failed for good: %s", event_id, error, extra={"event_id": event_id})


def apply_event(event_id: int, *, emails: bool = True) -> str | None:
    """Apply one stored event in one transaction; its outcome, or None if nothing was left to do."""
    with db.connection(settings().database_url) as conn, conn.transaction():
        event = events.lock(conn, event_id)
        if event is None:
            log.warning("event %s does not exist; nothing to do", event_id)
            return None
        if event["status"] in ("processed", "ignored"):
            return None  # a duplicate message: the first run already applied it
        applied = lifecycle.apply(conn, event, settings(), emails=emails)
        events.finish(
            conn, event_id, status=applied.status, outcome=applied.outcome, retry=_retry_number()
        )
    if applied.email_ids:
        from workers import outbox

        try:
            outbox.dispatch(settings().database_url, applied.email_ids)
        except (BrokerUnavailable, DatabaseUnavailable) as exc:
            # Committed as pending: the clock's email relay sends them when Redis is back.
            log.warning("event %s: emails left for the relay (%s)", event_id, exc)
    return applied.outcome


@dramatiq.actor(
    max_retries=EVENT_MAX_RETRIES,
    min_backoff=2_000,
    max_backoff=15 * 60_000,
    throws=(PermanentEventError,),
)
def process_event(event_id: int, emails: bool = True) -> None:
    """Apply one stored notification to the subscription it concerns (`emails=False`: no outbox)."""
    try:
        apply_event(event_id, emails=emails)
    except PermanentEventError as exc:
        _record_failure(event_id, exc, final=True)
        raise
    except Exception as exc:
        _record_failure(event_id, exc, final=_is_final_attempt(EVENT_MAX_RETRIES))
        raise


EMAIL_MAX_RETRIES = 12  # with the backoff below: about a day of SMTP outage before `failed`


@dramatiq.actor(
    max_retries=EMAIL_MAX_RETRIES,
    min_backoff=5_000,
    max_backoff=2 * 60 * 60_000,
    throws=(PermanentEmailError,),
)
def send_email(email_id: int) -> None:
    """Render one outbox row and send it; marked `sent` once, `failed` when it never can be."""
    from workers import mailer

    mailer.send(settings(), email_id, final=_is_final_attempt(EMAIL_MAX_RETRIES))
