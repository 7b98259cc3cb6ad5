"""The email relay: outbox rows the broker never took, or whose job was lost, enqueued again."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from workers.errors import BrokerUnavailable
from workers.jobs.actors import dispatch_emails, send_email, send_emails
from workers.jobs.broker import backlog
from workers.jobs.dispatch import relay_batches, unless_backlog
from workers.store import db, events, outbox
from workers.store.statuses import EmailStatus

log = logging.getLogger(__name__)

# Re-enqueue a row whose job is overdue by this long (the same grace as events'): due when
# handed to the broker, or, for a retry, at the latest instant the retry policy can start it
# (`due_at`). Its job was lost (a killed worker, a worker that lost Redis, a retry Redis
# refused); a copy that was only late does nothing (the mailer sends a row once).
STALE_AFTER_SECONDS = events.OVERDUE_AFTER_SECONDS


def relay(
    database_url: str,
    *,
    older_than_seconds: float = 10.0,
    stale_after_seconds: float = STALE_AFTER_SECONDS,
    batch: int = 500,
) -> int:
    """Enqueue emails the broker never took, or whose job is overdue without an outcome; how many.

    `enqueued_at` is the last time a job for the row was handed to the broker (after commit,
    by this relay, or as a retry after a transient failure); `due_at`, when its retry must start
    at the latest. A `pending` row never enqueued is relayed after `older_than_seconds`; one whose
    job is overdue by `stale_after_seconds` lost it (Redis lost it, a worker died) and is enqueued
    again. A duplicate job is harmless: the mailer sends a row once.
    """
    stale_after_seconds = unless_backlog(backlog(send_email), stale_after_seconds)
    return relay_batches(
        database_url,
        claim=lambda conn: outbox.due(
            conn,
            older_than_seconds=older_than_seconds,
            stale_after_seconds=stale_after_seconds,
            limit=batch,
        ),
        send=send_emails,
        mark=outbox.mark_enqueued,
        what="email(s)",
        name="email relay",
    )


@dataclass(frozen=True)
class Resent:
    """What a resend did: the emails sent again, those left for the relay, and those refused."""

    enqueued: list[int]
    for_relay: list[int]
    refused: dict[int, str]  # id -> why (not failed, or no such email)


def resend(database_url: str, email_ids: Sequence[int]) -> Resent:
    """Send failed emails again, with their Message-ID unchanged, on an operator's word.

    For an interrupted email the operator first checks the mail server's log: it may have been
    delivered. Each row goes back to `pending`, due now; Redis refusing leaves it to the relay.
    """
    wanted = sorted(set(email_ids))
    with db.connection(database_url) as conn, conn.transaction():
        found = outbox.resendable(conn, wanted)
        taken = [email_id for email_id in wanted if found.get(email_id) == EmailStatus.FAILED]
        outbox.resend(conn, taken)
    refused = {
        email_id: f"it is {found[email_id]}, not failed" if email_id in found else "no such email"
        for email_id in wanted
        if email_id not in taken
    }
    try:
        enqueued = dispatch_emails(database_url, taken)
    except BrokerUnavailable:
        enqueued = []
    log.info("resent %d email(s) on an operator's command", len(taken))
    return Resent(
        enqueued=enqueued,
        for_relay=[email_id for email_id in taken if email_id not in enqueued],
        refused=refused,
    )
