"""The outbox as operators read it: pages of emails, and the emails one event caused."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from psycopg import sql

from workers.errors import BadFilter
from workers.store.db import Conn
from workers.store.jsonable import iso
from workers.store.reports.filters import refuse_nul
from workers.store.statuses import EMAIL_STATUSES

_SELECT = sql.SQL(
    """
    SELECT e.id, e.event_id, s.license_code, e.kind, e.fact, e.to_address, e.locale, e.status,
           e.attempts, e.last_error, e.created_at, e.sent_at, e.failure, e.message_id
    FROM emails e JOIN subscriptions s ON s.id = e.subscription_id
    """
)


@dataclass(frozen=True)
class EmailRow:
    """One outbox row as operators see it (instants as ISO 8601 UTC)."""

    id: int
    event_id: int | None
    license_code: str
    kind: str
    fact: str
    to_address: str
    locale: str
    status: str
    attempts: int
    last_error: str | None
    created_at: str | None
    sent_at: str | None
    failure: str | None
    message_id: str

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> EmailRow:
        """The record of a row selected as `_SELECT` selects it."""
        return cls(**{**row, "created_at": iso(row["created_at"]), "sent_at": iso(row["sent_at"])})


class Concerning(NamedTuple):
    """What an email is about: the event that caused it (None for the clock's), its license."""

    event_id: int | None
    license_code: str


def concerning(conn: Conn, email_id: int) -> Concerning | None:
    """The event and the license an email is about, or None when there is no such email."""
    row = conn.execute(
        "SELECT e.event_id, s.license_code FROM emails e"
        " JOIN subscriptions s ON s.id = e.subscription_id WHERE e.id = %s",
        (email_id,),
    ).fetchone()
    return None if row is None else Concerning(row["event_id"], row["license_code"])


class Drafted(NamedTuple):
    """An email a replay's preview would write."""

    kind: str
    fact: str
    to_address: str
    locale: str
    license_code: str


def drafted(conn: Conn, email_ids: Sequence[int]) -> list[Drafted]:
    """The emails with these ids, as a preview lists them, oldest first."""
    rows = conn.execute(
        """
        SELECT e.kind, e.fact, e.to_address, e.locale, s.license_code
        FROM emails e JOIN subscriptions s ON s.id = e.subscription_id
        WHERE e.id = ANY(%s) ORDER BY e.id
        """,
        (list(email_ids),),
    ).fetchall()
    return [Drafted(**row) for row in rows]


def of_event(conn: Conn, event_id: int) -> list[EmailRow]:
    """The emails one event caused, oldest first."""
    query = sql.SQL("{} WHERE e.event_id = %s ORDER BY e.id").format(_SELECT)
    return [EmailRow.of(row) for row in conn.execute(query, (event_id,)).fetchall()]


def _where(
    to: str | None, kind: str | None, status: str | None, failure: str | None, before: int | None
) -> tuple[sql.Composable, list[Any]]:
    clauses: list[sql.Composable] = [sql.SQL("true")]
    params: list[Any] = []
    if to:
        clauses.append(sql.SQL("lower(e.to_address) = lower(%s)"))
        params.append(to.strip())
    for column, value in (("kind", kind), ("status", status), ("failure", failure)):
        if value:
            clauses.append(sql.SQL("e.{} = %s").format(sql.Identifier(column)))
            params.append(value)
    if before is not None:
        clauses.append(sql.SQL("e.id < %s"))
        params.append(before)
    return sql.SQL(" AND ").join(clauses), params


def list_emails(
    conn: Conn,
    *,
    to: str | None = None,
    kind: str | None = None,
    status: str | None = None,
    limit: int = 50,
    before: int | None = None,
    failure: str | None = None,
) -> tuple[list[EmailRow], int | None]:
    """A page of outbox rows, newest first, and the cursor of the next page (None on the last)."""
    if status is not None and status not in EMAIL_STATUSES:
        raise BadFilter(f"unknown email status {status!r}: use one of {', '.join(EMAIL_STATUSES)}")
    refuse_nul("to", to)
    refuse_nul("kind", kind)
    where, params = _where(to, kind, status, failure, before)
    query = sql.SQL("{} WHERE {} ORDER BY e.id DESC LIMIT %s").format(_SELECT, where)
    rows = conn.execute(query, [*params, limit + 1]).fetchall()
    page = rows[:limit]
    cursor = page[-1]["id"] if len(rows) > limit else None
    return [EmailRow.of(row) for row in page], cursor


def counts_by_status(conn: Conn) -> dict[str, int]:
    """How many outbox rows there are of each status (a status with none is missing)."""
    rows = conn.execute("SELECT status, count(*) AS n FROM emails GROUP BY status").fetchall()
    return {row["status"]: row["n"] for row in rows}


def failed_by_reason(conn: Conn) -> dict[str | None, int]:
    """How many emails failed for each reason (`failure`; None: no reason recorded)."""
    rows = conn.execute(
        "SELECT failure, count(*) AS n FROM emails WHERE status = 'failed' GROUP BY failure"
    ).fetchall()
    return {row["failure"]: row["n"] for row in rows}


def queue_lag(conn: Conn) -> float:
    """The age in seconds of the oldest email not yet sent (0 when none waits)."""
    row = conn.execute(
        """
        SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0) AS lag
        FROM emails WHERE status IN ('pending', 'sending')
        """
    ).fetchone()
    return float(row["lag"]) if row else 0.0


def facts_of_kind(conn: Conn, kind: str, subscription_ids: Sequence[int]) -> list[dict[str, Any]]:
    """The emails of `kind` about these subscriptions (subscription_id, fact, status), oldest
    first."""
    rows: list[dict[str, Any]] = conn.execute(
        """
        SELECT subscription_id, fact, status FROM emails
        WHERE kind = %s AND subscription_id = ANY(%s) ORDER BY id
        """,
        (kind, list(subscription_ids)),
    ).fetchall()
    return rows
