"""A subscription's statuses, in one place (StrEnum: SQL and JSON keep the same strings)."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """Where a subscription stands; schema.sql's CHECK on subscriptions.status lists the same."""

    PENDING = "pending"
    ACTIVE = "active"
    PAST_DUE = "past_due"
    EXPIRED = "expired"
    CANCELED = "canceled"
    REFUNDED = "refunded"


STATUSES = tuple(status.value for status in Status)
# A customer still has access: reminders and dunning emails are for these.
LIVE = (Status.ACTIVE.value, Status.PAST_DUE.value)
# Ended by the provider or an operator, not by time.
ENDED = (Status.CANCELED.value, Status.REFUNDED.value)
