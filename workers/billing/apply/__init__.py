"""Applying one notification to the subscriptions it concerns, by RULES.md: one module per kind.

Every function here runs inside the caller's transaction, with the event row locked. Applying an
event twice changes nothing the second time: orders are recorded once per (order, license,
status) and a repeated order changes no state; LCNs carry the license's whole state and are
ordered by DATE_UPDATED; emails are outbox rows unique per (subscription, kind, fact).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workers.billing.apply.api import apply_api
from workers.billing.apply.ins import apply_ins
from workers.billing.apply.ipn import apply_ipn
from workers.billing.apply.lcn import apply_lcn
from workers.billing.apply.run import Run, SubscriptionNotYetKnown
from workers.config import Settings
from workers.errors import PermanentEventError
from workers.protocol.errors import MalformedNotification
from workers.protocol.notifications import (
    InsMessage,
    LicenseChange,
    Notification,
    OrderNotification,
    parse,
)
from workers.store import batch
from workers.store.batch import Part
from workers.store.db import Conn
from workers.store.statuses import EventStatus

__all__ = ["Applied", "SubscriptionNotYetKnown", "apply"]


@dataclass
class Applied:
    """What applying one event did."""

    status: str  # processed | ignored
    outcome: str
    changes: list[dict[str, Any]] = field(default_factory=list)
    email_ids: list[int] = field(default_factory=list)
    # Writes held back for the caller's statement that ends the event (`by_worker`).
    writes: list[Part] = field(default_factory=list)


def apply(
    conn: Conn,
    event: dict[str, Any],
    settings: Settings,
    *,
    emails: bool = True,
    by_worker: bool = False,
) -> Applied:
    """Apply one locked event row; raises PermanentEventError when it can never apply.

    Every write is made before it returns, unless `by_worker`: then the last ones are in
    `writes`, for the caller to send in the same transaction (with the event's outcome), and
    the emails are written as enqueued, for the caller to hand to the broker after its commit.
    """
    run = Run(conn, event, settings, emails, enqueue=by_worker)
    if event["kind"] == "api":
        outcome = apply_api(run, bytes(event["raw_body"]))
    else:
        # Today's parser reads the stored raw body, so a parsing fix reaches old events on replay.
        notification = read(event["kind"], bytes(event["raw_body"]))
        outcome = _apply_notification(run, notification)
    applied = _applied(run, outcome)
    if by_worker:
        applied.writes = run.take()
    else:
        batch.execute(conn, run.take())
    return applied


def read(kind: str, body: bytes) -> Notification:
    """The typed notification of a stored body; a PermanentEventError naming what is unreadable."""
    try:
        return parse(kind, body)
    except MalformedNotification as exc:
        # Retrying will not change the stored body: the event fails at once, saying why.
        raise PermanentEventError(f"unreadable notification: {exc}") from exc


def _apply_notification(run: Run, notification: Notification) -> str:
    if isinstance(notification, OrderNotification):
        return apply_ipn(run, notification)
    if isinstance(notification, LicenseChange):
        return apply_lcn(run, notification)
    assert isinstance(notification, InsMessage)
    return apply_ins(run, notification)


def _applied(run: Run, outcome: str) -> Applied:
    ignored = outcome.startswith("ignored") and not (run.changes or run.email_ids)
    status = EventStatus.IGNORED if ignored else EventStatus.PROCESSED
    return Applied(status=status, outcome=outcome, changes=run.changes, email_ids=run.email_ids)
