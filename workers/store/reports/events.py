"""The event log as operators read it: pages of events, and everything about one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from workers.store import events
from workers.store.db import Conn
from workers.store.events import EventFilter
from workers.store.jsonable import iso, jsonable
from workers.store.reports import emails
from workers.store.reports.emails import EmailRow


@dataclass(frozen=True)
class EventRow:
    """One event as a list shows it (instants as ISO 8601 UTC)."""

    id: int
    kind: str
    status: str
    summary: str
    license_codes: list[str]
    test: bool
    received_at: str | None
    processed_at: str | None
    deliveries: int
    attempts: int
    last_error: str | None
    outcome: str | None

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> EventRow:
        """The record of an events row (its list columns at least)."""
        return cls(**_listed(row))


def _listed(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "kind": row["kind"],
        "status": row["status"],
        "summary": row["summary"],
        "license_codes": list(row["license_codes"]),
        "test": row["test"],
        "received_at": iso(row["received_at"]),
        "processed_at": iso(row["processed_at"]),
        "deliveries": row["deliveries"],
        "attempts": row["attempts"],
        "last_error": row["last_error"],
        "outcome": row["outcome"],
    }


@dataclass(frozen=True)
class EventDetail(EventRow):
    """Everything about one event: the request, its reading, its attempts, and what it caused.

    `changes` and `attempt_history` are JSON-ready dicts, as stored history and attempts read.
    """

    dedupe_key: str
    enqueued_at: str | None
    last_delivery_at: str | None
    content_type: str
    headers: dict[str, str]
    verification: dict[str, Any]  # {signature_algo, key_index}
    fields: dict[str, Any]
    raw_body: str  # as UTF-8, undecodable bytes replaced
    last_traceback: str | None
    changes: list[dict[str, Any]]
    emails: list[EmailRow]
    attempt_history: list[dict[str, Any]]


def list_events(
    conn: Conn, flt: EventFilter, *, limit: int = 50, before: int | None = None
) -> tuple[list[EventRow], int | None]:
    """A page of events, newest first, and the cursor of the next page (None on the last)."""
    rows = events.search(conn, flt, limit=limit + 1, before_id=before)
    page = rows[:limit]
    cursor = page[-1]["id"] if len(rows) > limit else None
    return [EventRow.of(row) for row in page], cursor


def _changes(conn: Conn, event_id: int) -> list[dict[str, Any]]:
    """What the event changed, in the order it changed it."""
    rows = conn.execute(
        """
        SELECT h.at, s.license_code, h.change, h.before, h.after, h.note
        FROM subscription_history h JOIN subscriptions s ON s.id = h.subscription_id
        WHERE h.event_id = %s ORDER BY h.id
        """,
        (event_id,),
    ).fetchall()
    return jsonable(rows)


def event_detail(conn: Conn, event_id: int) -> EventDetail | None:
    """Everything about one event, or None when there is no such event."""
    row = events.get(conn, event_id)
    if row is None:
        return None
    return EventDetail(
        **_listed(row),
        dedupe_key=row["dedupe_key"],
        enqueued_at=iso(row["enqueued_at"]),
        last_delivery_at=iso(row["last_delivery_at"]),
        content_type=row["content_type"],
        headers=row["headers"],
        verification={"signature_algo": row["signature_algo"], "key_index": row["key_index"]},
        fields=row["fields"],
        raw_body=bytes(row["raw_body"]).decode("utf-8", errors="replace"),
        last_traceback=row["last_traceback"],
        changes=_changes(conn, event_id),
        emails=emails.of_event(conn, event_id),
        attempt_history=jsonable(events.attempts(conn, event_id)),
    )


def queue_lag(conn: Conn) -> float:
    """The age in seconds of the oldest event stored but not yet applied (0 when none waits)."""
    row = conn.execute(
        """
        SELECT coalesce(extract(epoch FROM now() - min(received_at)), 0) AS lag
        FROM events WHERE status IN ('received', 'enqueued')
        """
    ).fetchone()
    return float(row["lag"]) if row else 0.0
