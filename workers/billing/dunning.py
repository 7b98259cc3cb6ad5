"""Dunning: the payment-failed sequence of one past-due episode, and where a subscription is in it.

An episode begins when a subscription becomes `past_due` (`subscriptions.past_due_since`, set by
the lifecycle, cleared when the subscription leaves `past_due`). The sequence sends
`payment_failed` on each day of `DUNNING_DAYS` after that day (day 0 by the lifecycle at once,
the others by the clock's reminder scan). Each email's fact names the episode and the day, so the
outbox's uniqueness sends each of them once, whoever writes it and however often.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from workers.config import Settings
from workers.store.db import Conn
from workers.store.jsonable import iso
from workers.store.reports import emails as email_reports
from workers.store.reports import subscriptions as subscription_reports

KIND = "payment_failed"
RECOVERED = "payment_recovered"


def fact(since: datetime, day: int) -> str:
    """The outbox fact of the sequence's email `day` days into the episode begun at `since`."""
    return f"past_due/{iso(since)}/{day}"


def recovered_fact(since: datetime) -> str:
    """The outbox fact of the one recovery email of the episode begun at `since`."""
    return f"recovered/{iso(since)}"


def access_ends(settings: Settings, since: datetime, expires_at: datetime | None) -> datetime:
    """When access ends if nothing happens: when the clock expires a past-due subscription.

    The later of the provider's expiry and `DUNNING_GRACE_DAYS` after the episode began (the
    reminder scan's expiry query says the same in SQL).
    """
    grace_end = since + timedelta(days=settings.dunning_grace_days)
    return grace_end if expires_at is None else max(expires_at, grace_end)


def context(settings: Settings, row: dict[str, Any], since: datetime, day: int) -> dict[str, Any]:
    """What a sequence email adds to its context: the day, and when access ends."""
    return {
        "automatic": bool(row["auto_renew"]),
        "dunning_day": day,
        "access_ends_at": access_ends(settings, since, row["expires_at"]),
        "past_due_since": since,
    }


def listing(conn: Conn, status: str | None, limit: int) -> list[dict[str, Any]]:
    """Subscriptions (of `status` when given), each past-due one with its sequence emails."""
    rows = subscription_reports.listing(conn, status, limit)
    written = email_reports.facts_of_kind(conn, KIND, [row["id"] for row in rows])
    for row in rows:
        prefix = f"past_due/{iso(row['past_due_since'])}/"
        row["sequence"] = {
            int(email["fact"].removeprefix(prefix)): email["status"]
            for email in written
            if email["subscription_id"] == row["id"] and email["fact"].startswith(prefix)
        }
    return rows


def position(settings: Settings, row: dict[str, Any], today: date | None = None) -> str:
    """Where a past-due subscription is in the sequence: its day, what went out, what is next."""
    since = row["past_due_since"]
    if since is None:
        return ""
    today = today or datetime.now(UTC).date()
    began = since.astimezone(UTC).date()
    elapsed = (today - began).days
    emails = ", ".join(f"day {day} {status}" for day, status in sorted(row["sequence"].items()))
    text = f"past due since {began.isoformat()}, day {elapsed}, emails: {emails or 'none'}"
    ahead = [day for day in settings.dunning_days if day > elapsed]
    if ahead:
        due = began + timedelta(days=ahead[0])
        text += f"; next day {ahead[0]} on {due.isoformat()}"
    ends = access_ends(settings, since, row["expires_at"])
    return f"{text}; access ends {ends.date().isoformat()}"
