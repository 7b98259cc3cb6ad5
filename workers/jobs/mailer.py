"""Sending one outbox email: render it, deliver it, and record the outcome so it goes out once.

The states of an outbox row: `pending` (to send), `sending` (an attempt committed that it is
about to hand the message to the transport), `sent`, `failed` (with the reason), and two that are
never sent: `suppressed` (the customer unsubscribed from the kind's family) and `off`
(EMAILS_OFF). An attempt:

1. takes a session advisory lock on the email id: a second attempt at the same email while
   one is live returns at once (the live one owns the outcome and its own retries). The lock
   dies with the connection, so a crashed attempt never blocks the next one;
2. locks the row: `sent` or `failed` means there is nothing to do; `pending` with a retry that
   another job holds (`retry_job`, not yet overdue) means this job is a stray copy: nothing to
   do; `sending` means an earlier attempt died between starting delivery and recording it (see
   `_interrupted`: failed as `interrupted`, for an operator to check and resend);
3. renders and builds the message (a template error marks the email `failed`), then commits
   `sending` with one more attempt counted;
4. delivers it; a transient failure puts the row back to `pending`, due again when the retry
   policy's longest delay has passed and held by the retry's job (or `failed` on the last
   attempt), and re-raises so the broker retries; a permanent one marks it `failed`;
5. commits `sent`.

What remains between the transport's success and step 5 is described in the README
("Email delivery guarantees").
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime
from email.message import EmailMessage
from functools import partial
from typing import Any

import psycopg

from emails import unsubscribe
from emails.message import build_message, parse_mailbox
from emails.render import TemplateError, render
from emails.transport import (
    FileTransport,
    PermanentEmailError,
    TransientEmailError,
    Transport,
    transport_from_url,
)
from workers.billing import dunning
from workers.billing.statuses import LIVE
from workers.config import Settings
from workers.errors import ConfigError, DatabaseUnavailable
from workers.jobs.retry import Job
from workers.logs import without_addresses
from workers.store import db, outbox, suppressions
from workers.store.db import Conn
from workers.store.jsonable import iso
from workers.store.statuses import EMAIL_DONE, EmailStatus

log = logging.getLogger(__name__)

# Waits between tries of recording an outcome: a lost outcome would leave the row `sending`.
OUTCOME_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)

INTERRUPTED = (
    "delivery interrupted: an earlier attempt started sending {message_id} and stopped before "
    "recording the result, so it may have been delivered; not sent again to avoid a second copy"
)

# Why an email failed (`emails.failure`), for /metrics, `rinnovo emails list --reason` and alerts.
INTERRUPTED_REASON = "interrupted"  # may have been delivered: an operator checks, then resends


def _try_lock(conn: Conn, email_id: int) -> bool:
    with conn.transaction():
        return outbox.try_lock_send(conn, email_id)


def _unlock(conn: Conn, email_id: int) -> None:
    # A broken connection already released the lock with its session.
    with contextlib.suppress(psycopg.Error), conn.transaction():
        outbox.unlock_send(conn, email_id)


def send(settings: Settings, email_id: int, *, final: bool, job: Job | None = None) -> None:
    """Send outbox email `email_id` unless it was sent, failed, or is being sent right now.

    `job` is the worker's job (None: called outside a worker). Raises TransientEmailError
    (retry later; on the `final` attempt the email is marked `failed` first),
    PermanentEmailError (marked `failed`), ConfigError (a setting is wrong: retried, so fixing
    it in time still delivers) or DatabaseUnavailable.
    """
    job = job or Job(token=None, next_token=None, retry_within_seconds=0.0, final=final)
    with db.connection(settings.database_url) as conn:
        if not _try_lock(conn, email_id):
            log.info("email %s: another attempt is under way", email_id)
            return
        try:
            _attempt(conn, settings, email_id, final=final, job=job)
        finally:
            _unlock(conn, email_id)


def _stray(row: dict[str, Any], job: Job) -> bool:
    """Whether another job holds the row's retry, not yet overdue: this one is a stray copy."""
    return (
        row["status"] == "pending"
        and row["retry_job"] is not None
        and row["retry_job"] != job.token
        and bool(row["retry_pending"])
    )


def _attempt(conn: Conn, settings: Settings, email_id: int, *, final: bool, job: Job) -> None:
    """One attempt, holding the email's advisory lock."""
    error: Exception | None = None
    retry = (job.retry_within_seconds, job.next_token)
    with conn.transaction():
        row = outbox.lock_for_sending(conn, email_id)
        if row is None:
            log.warning("email %s does not exist; nothing to send", email_id)
            return
        if row["status"] in EMAIL_DONE:  # already settled: nothing to do
            return  # a duplicate job: the outcome is already recorded
        if _stray(row, job):
            log.info("email %s: its retry is another job's; this copy does nothing", email_id)
            return
        try:
            transport = _transport(settings)
            if row["status"] == EmailStatus.SENDING and not _interrupted(conn, row, transport):
                return
            reason = superseded(row)
            if reason is not None:
                outbox.mark_failed(conn, email_id, reason, "superseded", tried=True)
                log.info("email %s not sent: %s", email_id, reason)
                return
            held = withheld(conn, settings, row)
            if held is not None:
                outbox.withhold(conn, email_id, *held)
                log.info("email %s not sent: %s", email_id, held[1])
                return
            message = _message(settings, row)
        except ConfigError as exc:
            if final:
                outbox.mark_failed(conn, email_id, str(exc), "config", tried=False)
            else:
                outbox.retry_config(conn, email_id, str(exc), *retry)
            error = exc
        except PermanentEmailError as exc:
            outbox.mark_failed(conn, email_id, str(exc), "permanent", tried=False)
            error = exc
        else:
            outbox.start_sending(conn, email_id)
    if error is not None:
        log.warning("email %s: %s", email_id, without_addresses(error))
        raise error

    _deliver(conn, settings, row, transport, message, final=final, retry=retry)


def _deliver(
    conn: Conn,
    settings: Settings,
    row: dict[str, Any],
    transport: Transport,
    message: EmailMessage,
    *,
    final: bool,
    retry: tuple[float, str | None],
) -> None:
    """Hand a message marked `sending` to the transport and record how it went."""
    email_id = row["id"]
    try:
        transport.send(message)
    except TransientEmailError as exc:
        if final:
            _record(settings, conn, _failed(email_id, exc, "exhausted"))
            log.warning("email %s failed for good: %s", email_id, without_addresses(exc))
        else:
            _record(settings, conn, partial(_retry_later, email_id, exc, retry))
            log.info("email %s: will retry: %s", email_id, without_addresses(exc))
        raise
    except PermanentEmailError as exc:
        _record(settings, conn, _failed(email_id, exc, "permanent"))
        log.warning("email %s failed: %s", email_id, without_addresses(exc))
        raise
    try:
        _record(settings, conn, partial(_sent, email_id))
    except DatabaseUnavailable:
        log.error(
            "email %s was delivered (%s) but could not be marked sent; the next attempt will "
            "find it `sending` and not send it again",
            email_id,
            row["message_id"],
        )
        raise
    # The id and kind say which email; the customer's address only at debug level.
    log.info("email %s sent: %s", email_id, row["kind"], extra={"kind": row["kind"]})
    log.debug("email %s went to %s", email_id, row["to_address"])


def _transport(settings: Settings) -> Transport:
    try:
        return transport_from_url(settings.smtp_url, settings.mail_dir)
    except ValueError as exc:
        raise ConfigError(f"SMTP_URL: {exc}") from None


def _interrupted(conn: Conn, row: dict[str, Any], transport: Transport) -> bool:
    """Settle a row an earlier, dead attempt left `sending`; True if it should be sent now.

    A file transport can tell: the file is there (sent) or not (send it). An SMTP server cannot
    be asked, so the email is marked failed with the reason rather than risk a second copy.
    """
    email_id = row["id"]
    if isinstance(transport, FileTransport):
        probe = EmailMessage()
        probe["Message-ID"] = row["message_id"]
        if transport.path_for(probe).exists():
            outbox.mark_sent(conn, email_id)
            log.info("email %s: the interrupted attempt had written it; marked sent", email_id)
            return False
        return True
    reason = INTERRUPTED.format(message_id=row["message_id"])
    outbox.mark_failed(conn, email_id, reason, INTERRUPTED_REASON, tried=True)
    log.warning("email %s: %s", email_id, reason)
    return False


def withheld(conn: Conn, settings: Settings, row: dict[str, Any]) -> tuple[str, str] | None:
    """(`off` or `suppressed`, why) when the row must not be sent though still true; else None."""
    if row["kind"] in settings.emails_off:
        return "off", f"not sent: {row['kind']} is in EMAILS_OFF"
    family = unsubscribe.family(row["kind"])
    if family is None:
        return None
    found = suppressions.find(conn, row["to_address"], family)
    if found is None:
        return None
    return "suppressed", (
        f"not sent: the customer unsubscribed from {family} on {iso(found['created_at'])} "
        f"({found['how']})"
    )


def superseded(row: dict[str, Any]) -> str | None:
    """Why a clock email no longer holds (the subscription changed since), or None."""
    kind, status = row["kind"], row["subscription_status"]
    if kind == dunning.KIND:
        return _dunning_superseded(row)
    if kind == "expiry_notice" and status in LIVE:
        return f"not sent: superseded, the subscription is {status} again"
    if kind not in ("renewal_reminder", "auto_renewal_notice"):
        return None
    if status not in LIVE:
        return f"not sent: superseded, the subscription is {status}"
    if row["subscription_auto_renew"] != (kind == "auto_renewal_notice"):
        state = "on" if row["subscription_auto_renew"] else "off"
        return f"not sent: superseded, automatic renewal was turned {state}"
    stored = row["context"].get("expires_at")
    current = row["subscription_expires_at"]
    try:
        moved = isinstance(stored, str) and datetime.fromisoformat(stored) != current
    except ValueError:
        return None  # rendering names the bad value
    if moved:
        return f"not sent: superseded, the subscription now expires {iso(current)}"
    return None


def _dunning_superseded(row: dict[str, Any]) -> str | None:
    """Why a payment-failed email no longer holds: paid, ended, or from an earlier episode."""
    status = row["subscription_status"]
    if status != "past_due":
        return f"not sent: superseded, the subscription is {status}"
    stored = row["context"].get("past_due_since")
    current = iso(row["subscription_past_due_since"])
    if stored is not None and current is not None and stored != current:
        return f"not sent: superseded, a new past-due episode began {current}"
    return None


def _headers(settings: Settings, row: dict[str, Any]) -> dict[str, str]:
    """The one-click unsubscribe headers of a kind one may unsubscribe from (RFC 8058)."""
    family = unsubscribe.family(row["kind"])
    if family is None or not settings.public_url or not settings.secret_keys:
        return {}
    token = unsubscribe.make(settings.secret_keys, row["subscription_customer_id"], family)
    return unsubscribe.headers(settings.public_url, settings.unsubscribe_mailto, token)


def _message(settings: Settings, row: dict[str, Any]) -> EmailMessage:
    """Render and build the row's message; PermanentEmailError when the row cannot make one."""
    # The merchant's voice is the settings' at sending time, not a fact stored with the row.
    context = row["context"] | settings.merchant_voice()
    try:
        rendered = render(
            row["kind"], row["locale"], context, default_locale=settings.default_locale
        )
    except TemplateError as exc:
        raise PermanentEmailError(f"cannot render: {exc}") from exc
    try:
        parse_mailbox(settings.mail_from, "MAIL_FROM")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        return build_message(
            rendered,
            to=row["to_address"],
            to_name=context.get("customer_name") or None,
            sender=settings.mail_from,
            message_id=row["message_id"],
            extra_headers=_headers(settings, row),
        )
    except ValueError as exc:
        raise PermanentEmailError(f"cannot build the message: {exc}") from exc


def _failed(email_id: int, exc: Exception, failure: str) -> Callable[[Conn], None]:
    """The write of a failed attempt's outcome, for `_record`."""
    return partial(_mark_failed, email_id, str(exc), failure)


def _mark_failed(email_id: int, error: str, failure: str, conn: Conn) -> None:
    outbox.mark_failed(conn, email_id, error, failure, tried=True)


def _retry_later(
    email_id: int, exc: Exception, retry: tuple[float, str | None], conn: Conn
) -> None:
    outbox.retry_later(conn, email_id, str(exc), *retry)


def _sent(email_id: int, conn: Conn) -> None:
    outbox.mark_sent(conn, email_id)


def _record(settings: Settings, conn: Conn, write: Callable[[Conn], None]) -> None:
    """Write an attempt's outcome, riding out a short database outage with fresh connections."""
    try:
        with conn.transaction():
            write(conn)
        return
    except psycopg.OperationalError as exc:
        failure: Exception = exc
    for delay in OUTCOME_RETRY_DELAYS:
        time.sleep(delay)
        try:
            with db.connection(settings.database_url) as fresh, fresh.transaction():
                write(fresh)
            return
        except DatabaseUnavailable as exc:
            failure = exc
    raise DatabaseUnavailable(f"could not record the outcome: {failure}") from failure
