"""Dramatiq actors. Jobs carry ids, not objects (the row is the truth); each is safe to rerun."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterable

import dramatiq
from dramatiq.middleware import CurrentMessage

from emails.transport import PermanentEmailError
from workers.billing.apply import apply
from workers.billing.apply.run import catalog
from workers.config import Settings
from workers.errors import (
    BrokerUnavailable,
    ConfigError,
    DatabaseUnavailable,
    PermanentEventError,
)
from workers.jobs import mailer, retry, runtime
from workers.jobs.broker import send_each
from workers.store import db, events, outbox
from workers.store.statuses import APPLIED

log = logging.getLogger(__name__)


def settings() -> Settings:
    """The settings of the runtime the process's entry point installed."""
    return runtime.current().settings


def check_settings(checked: Settings) -> None:
    """Stop on a malformed catalog, naming the line, instead of failing events; say loudly that
    emails wait when the merchant's voice is missing."""
    catalog(checked)
    try:
        checked.merchant_voice()
    except ConfigError as exc:  # events are still applied; their emails wait for the setting
        log.error("emails will wait until this is fixed: %s", exc)


def _retry_number() -> int:
    """Which retry of its message the running attempt is (0: the first try)."""
    message = CurrentMessage.get_current_message()
    return 0 if message is None else int(message.options.get("retries", 0))


def _record_failure(
    event_id: int, exc: BaseException, *, final: bool, retry_within_seconds: float = 0.0
) -> None:
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
            if not final:
                events.retry_due(conn, event_id, retry_within_seconds)
    except DatabaseUnavailable:
        log.warning("event %s: could not record the failure, database unavailable", event_id)
    if final:
        log.warning("event %s failed for good: %s", event_id, error, extra={"event_id": event_id})


def apply_event(event_id: int, *, emails: bool = True) -> str | None:
    """Apply one stored event in one transaction; its outcome, or None if nothing was left to do."""
    with db.connection(settings().database_url) as conn, conn.transaction():
        event = events.claim(conn, event_id)
        if event is None:
            log.warning("event %s does not exist; nothing to do", event_id)
            return None
        if event["status"] in APPLIED:
            return None  # a duplicate message: the first run already applied it
        applied = apply(conn, event, settings(), emails=emails, by_worker=True)
        # The writes applying held back go with the outcome: one statement, then the commit.
        events.finish(
            conn,
            event_id,
            status=applied.status,
            outcome=applied.outcome,
            retry=_retry_number(),
            writes=applied.writes,
        )
    if applied.email_ids:
        send_written(settings().database_url, applied.email_ids)
    return applied.outcome


@dramatiq.actor(**retry.EVENTS.actor_options(), throws=(PermanentEventError,))
def process_event(event_id: int, emails: bool = True) -> None:
    """Apply one stored notification to the subscription it concerns (`emails=False`: no outbox)."""
    try:
        apply_event(event_id, emails=emails)
    except PermanentEventError as exc:
        _record_failure(event_id, exc, final=True)
        raise
    except Exception as exc:
        job = retry.job_of(CurrentMessage.get_current_message(), retry.EVENTS)
        _record_failure(
            event_id, exc, final=job.final, retry_within_seconds=job.retry_within_seconds
        )
        raise


@dramatiq.actor(**retry.EMAILS.actor_options(), throws=(PermanentEmailError,))
def send_email(email_id: int) -> None:
    """Render one outbox row and send it; marked `sent` once, `failed` when it never can be."""

    job = retry.job_of(CurrentMessage.get_current_message(), retry.EMAILS)
    mailer.send(settings(), email_id, final=job.final, job=job)


def send_emails(email_ids: Iterable[int]) -> list[int]:
    """Hand ids to the broker until it fails; the ones it took."""
    return send_each(runtime.current().broker, send_email, email_ids)


def send_written(database_url: str, email_ids: list[int]) -> list[int]:
    """Hand the broker emails just committed as enqueued (no second transaction); returns those
    it took. Those it refused are unmarked for the email relay, which sends them when Redis is
    back (if even that fails, it sends them once overdue)."""
    try:
        sent = send_emails(email_ids)
    except BrokerUnavailable:
        sent = []
    refused = email_ids[len(sent) :]
    if refused:
        log.warning("broker failed: %d email(s) left for the relay", len(refused))
        try:
            with db.connection(database_url) as conn, conn.transaction():
                outbox.unmark(conn, refused)
        except DatabaseUnavailable as exc:
            log.warning("%d email(s) left marked enqueued (%s); the relay sends them once "
                        "overdue", len(refused), exc)  # fmt: skip
    return sent


def dispatch_emails(database_url: str, email_ids: list[int]) -> list[int]:
    """Enqueue committed emails and record when; returns those the broker took.

    Raises BrokerUnavailable when Redis takes none of them: they stay unenqueued for the relay.
    """
    if not email_ids:
        return []
    sent = send_emails(email_ids)
    if len(sent) < len(email_ids):
        log.warning("broker failed: %d email(s) left for the relay", len(email_ids) - len(sent))
    with db.connection(database_url) as conn, conn.transaction():
        # Losing this mark only means the relay enqueues the email again, which the mailer
        # shrugs off, so it need not wait for the disk.
        db.commit_unwaited(conn)
        outbox.mark_enqueued(conn, sent)
    return sent
