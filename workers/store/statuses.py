"""Where an event, an attempt at applying one, and an email stand: the strings schema.sql's CHECKs
allow, in one place (StrEnum: SQL and JSON keep the same strings). A subscription's statuses are
the rules' (workers.billing.statuses)."""

from __future__ import annotations

from enum import StrEnum


class EventStatus(StrEnum):
    """Where a stored notification stands (events.status)."""

    RECEIVED = "received"  # stored; the broker refused it, the relay sends it
    ENQUEUED = "enqueued"  # handed to the workers
    PROCESSED = "processed"
    FAILED = "failed"
    IGNORED = "ignored"  # applied, and it changed nothing (the outcome says why)


class AttemptStatus(StrEnum):
    """How one attempt at applying an event ended (event_attempts.status)."""

    PROCESSED = "processed"
    IGNORED = "ignored"
    FAILED = "failed"
    RETRYING = "retrying"  # failed, and the worker tries again


class EmailStatus(StrEnum):
    """Where an outbox row stands (emails.status)."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    SUPPRESSED = "suppressed"  # the customer unsubscribed from the kind's family
    OFF = "off"  # EMAILS_OFF: written to show what would be sent, never sent


EVENT_STATUSES = tuple(status.value for status in EventStatus)
EMAIL_STATUSES = tuple(status.value for status in EmailStatus)
# An event in these has done all it will do; one in WAITING is still to be applied.
APPLIED = (EventStatus.PROCESSED.value, EventStatus.IGNORED.value)
WAITING = (EventStatus.RECEIVED.value, EventStatus.ENQUEUED.value)
# An email in these has its outcome: nothing is left to send.
EMAIL_DONE = (
    EmailStatus.SENT.value,
    EmailStatus.FAILED.value,
    EmailStatus.SUPPRESSED.value,
    EmailStatus.OFF.value,
)
