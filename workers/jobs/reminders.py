"""The reminder scan for one day: expiries, renewal reminders and automatic-renewal notices.

Everything is read through the partial index on live subscriptions' expiry
(`subscriptions_live_expiry_idx`), one expiry range at a time, so a run touches only the
subscriptions due that day, however many there are in all. Rows are locked in batches with
`FOR UPDATE SKIP LOCKED` (a subscription a worker is changing right now is left for the next
run), and outbox rows are unique per (subscription, kind, fact), so running the scan again, or
on several clocks at once, writes nothing twice. Days are UTC calendar days.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from psycopg import sql

from workers.billing import dunning
from workers.config import Settings
from workers.errors import BrokerUnavailable, DatabaseUnavailable
from workers.store import db, outbox
from workers.store.db import Conn

log = logging.getLogger(__name__)

BATCH = 500
EXPIRY_NOTE = "expiry passed without renewal (clock)"
# Lifetime licenses expire 9999-12-31; whatever their cycle says, they are never reminded.
LIFETIME_FROM = datetime(9999, 1, 1, tzinfo=UTC)
_END_OF_TIME = datetime.max.replace(tzinfo=UTC)
_START_OF_TIME = datetime.min.replace(tzinfo=UTC)


def _fact_time(column: str) -> sql.Composed:
    """The instant in `s.column` as outbox facts spell it (workers.store.jsonable.iso).

    ISO 8601 in UTC with a Z, microseconds only when there are some.
    """
    t = sql.SQL("(s.{} AT TIME ZONE 'UTC')").format(sql.Identifier(column))
    return sql.SQL(
        "to_char({t}, 'YYYY-MM-DD\"T\"HH24:MI:SS') "
        "|| CASE WHEN to_char({t}, 'US') = '000000' THEN '' ELSE '.' || to_char({t}, 'US') END "
        "|| 'Z'"
    ).format(t=t)


FACT_TIME = _fact_time("expires_at")

# The start of a past-due episode as dunning facts spell it (workers.billing.dunning.fact).
SINCE_FACT = sql.SQL("'past_due/' || {} || '/'").format(_fact_time("past_due_since"))

# Past-due subscriptions whose episode began on one day, through subscriptions_past_due_idx.
_DUNNING = sql.SQL(
    """
    SELECT {columns}, s.past_due_since
    FROM subscriptions s JOIN customers c ON c.id = s.customer_id
    WHERE s.status = 'past_due'
      AND s.past_due_since >= %(lo)s AND s.past_due_since < %(hi)s
      AND (s.past_due_since, s.id) > (%(after_at)s, %(after_id)s)
      AND NOT EXISTS (
          SELECT 1 FROM emails e
          WHERE e.subscription_id = s.id AND e.kind = %(kind)s AND e.fact = {fact} || %(day)s
      )
    ORDER BY s.past_due_since, s.id
    LIMIT %(limit)s
    FOR UPDATE OF s SKIP LOCKED
    """
).format(columns=outbox.SOURCE_COLUMNS, fact=SINCE_FACT)

# The predicate matches the partial index's, so the planner can use it.
_DUE = sql.SQL(
    """
    SELECT {columns}, {fact} AS fact_time
    FROM subscriptions s JOIN customers c ON c.id = s.customer_id
    WHERE s.status IN ('active', 'past_due')
      AND s.expires_at >= %(lo)s AND s.expires_at < %(hi)s
      AND (s.expires_at, s.id) > (%(after_at)s, %(after_id)s)
      AND s.auto_renew = %(auto_renew)s
      AND s.cycle <> 'lifetime' AND s.expires_at < %(lifetime)s
      -- The customer held the current period for the whole day the offset falls on: no
      -- "renews soon" on the day of purchase, nor for a period not started yet.
      AND COALESCE(s.period_start, s.created_at) < %(begun_by)s
      AND NOT EXISTS (
          SELECT 1 FROM emails e
          WHERE e.subscription_id = s.id AND e.kind = %(kind)s AND e.fact = {fact} || %(suffix)s
      )
    ORDER BY s.expires_at, s.id
    LIMIT %(limit)s
    FOR UPDATE OF s SKIP LOCKED
    """
).format(columns=outbox.SOURCE_COLUMNS, fact=FACT_TIME)

_EXPIRED = sql.SQL(
    """
    SELECT {columns}, {fact} AS fact_time
    FROM subscriptions s JOIN customers c ON c.id = s.customer_id
    WHERE s.status IN ('active', 'past_due')
      AND s.expires_at < %(cutoff)s
      -- A past-due episode keeps access DUNNING_GRACE_DAYS (what its emails promise); else
      -- automatic renewals get EXPIRY_GRACE_DAYS for a late renewal.
      AND CASE WHEN s.status = 'past_due' AND s.past_due_since IS NOT NULL
               THEN s.past_due_since < %(dunning_cutoff)s
               ELSE (NOT s.auto_renew OR s.expires_at < %(grace_cutoff)s) END
      AND s.cycle <> 'lifetime' AND s.expires_at < %(lifetime)s
      AND (s.expires_at, s.id) > (%(after_at)s, %(after_id)s)
    ORDER BY s.expires_at, s.id
    LIMIT %(limit)s
    FOR UPDATE OF s SKIP LOCKED
    """
).format(columns=outbox.SOURCE_COLUMNS, fact=FACT_TIME)


def day_start(day: date) -> datetime:
    """The instant a UTC calendar day begins."""
    return datetime.combine(day, time(0), tzinfo=UTC)


def _later(day: date, days: int) -> date | None:
    """The day `days` after `day`, or None past the calendar's end."""
    try:
        return day + timedelta(days=days)
    except OverflowError:
        return None


def _next_day_start(day: date) -> datetime:
    """The instant the day after `day` begins (the end of time for the calendar's last day)."""
    following = _later(day, 1)
    return _END_OF_TIME if following is None else day_start(following)


class _Dispatcher:
    """Enqueues each committed batch on a thread of its own while the scan reads the next one.

    After a broker failure the rest is left to the email relay; a failure to record the
    enqueueing only means the relay enqueues those emails again, which the mailer shrugs off.
    """

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.broker_down = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reminder-dispatch")
        self._futures: list[Future[None]] = []

    def __enter__(self) -> _Dispatcher:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._executor.shutdown(wait=True)
        if exc_type is None:
            for future in self._futures:
                future.result()  # an unexpected error surfaces here, not lost in the thread

    def __call__(self, email_ids: list[int]) -> None:
        if email_ids:
            self._futures.append(self._executor.submit(self._dispatch, email_ids))

    def _dispatch(self, email_ids: list[int]) -> None:
        if self.broker_down:
            return
        # Deferred: the actors are declared on the broker the entry point installs at start-up,
        # and a reminder run that writes nothing (a dry run) needs neither.
        from workers.jobs.actors import dispatch_emails

        try:
            dispatch_emails(self.database_url, email_ids)
        except BrokerUnavailable as exc:
            self.broker_down = True
            log.warning("reminder emails left for the relay: %s", exc)
        except DatabaseUnavailable as exc:
            log.warning("reminder emails enqueued but not marked so: %s", exc)


def run(settings: Settings, as_of: date, *, now: datetime | None = None) -> dict[str, int]:
    """Run the scan for the UTC day `as_of`; how many emails of each kind, and expiries, it wrote.

    Subscriptions are expired once their expiry has passed both by the end of `as_of` and by
    `now` (so even a run for a future day never expires anything early); auto-renewing ones
    only `expiry_grace_days` later, since the provider's renewal may arrive late. A reminder
    offset is skipped for a subscription whose current period had not begun when that day began.
    """
    return _scan(settings, as_of, now or datetime.now(UTC), None)


def plan(
    settings: Settings, as_of: date, *, now: datetime | None = None
) -> tuple[dict[str, int], list[outbox.Draft]]:
    """What a scan for `as_of` would write, without writing, sending or expiring anything.

    A future day is planned as if scanned at its end, with what is stored today.
    """
    now = now or datetime.now(UTC)
    if as_of > now.date():
        now = _next_day_start(as_of)
    planned: list[outbox.Draft] = []
    return _scan(settings, as_of, now, planned), planned


def _scan(
    settings: Settings, as_of: date, now: datetime, planned: list[outbox.Draft] | None
) -> dict[str, int]:
    """The scan itself; with `planned`, the drafts are collected there and nothing is kept."""
    counts = {
        "expired": 0,
        "expiry_notice": 0,
        "renewal_reminder": 0,
        "auto_renewal_notice": 0,
        "payment_failed": 0,
    }
    cutoff = min(now, _next_day_start(as_of))
    begun_by = day_start(as_of)
    with _Dispatcher(settings.database_url) as send:
        expired, notices = _expire(settings, cutoff, send, planned)
        counts["expired"] += expired
        counts["expiry_notice"] += notices
        for days in settings.reminder_days:
            counts["renewal_reminder"] += _remind(
                settings,
                _later(as_of, days),
                begun_by,
                kind="renewal_reminder",
                auto_renew=False,
                suffix=f"/{days}",
                extra={"days_left": days},
                send=send,
                planned=planned,
            )
        counts["auto_renewal_notice"] += _remind(
            settings,
            _later(as_of, settings.auto_renewal_notice_days),
            begun_by,
            kind="auto_renewal_notice",
            auto_renew=True,
            suffix="",
            extra=None,
            send=send,
            planned=planned,
        )
        for day in settings.dunning_days:
            counts["payment_failed"] += _dun(settings, as_of, day, send, planned)
    if planned is None:
        log.info("reminder scan for %s: %s", as_of.isoformat(), counts)
    return counts


def _batch(
    settings: Settings,
    query: sql.Composed,
    params: dict[str, Any],
    draft: Callable[[dict[str, Any]], outbox.Draft],
    planned: list[outbox.Draft] | None,
    mark: Callable[[Conn, list[dict[str, Any]]], None] | None = None,
) -> tuple[list[dict[str, Any]], list[int]]:
    """One batch of the scan in its own transaction: the rows read and the outbox ids written.

    With `planned`, the drafts are collected there and the transaction is rolled back.
    """
    dry = planned is not None
    with db.connection(settings.database_url) as conn, conn.transaction(force_rollback=dry):
        rows = conn.execute(query, params).fetchall()
        if rows and mark is not None:
            mark(conn, rows)
        drafts = [draft(row) for row in rows]
        if planned is not None:
            planned.extend(drafts)
            return rows, []
        return rows, outbox.write(conn, settings, drafts)


def _walk(
    settings: Settings,
    query: sql.Composed,
    params: dict[str, Any],
    draft: Callable[[dict[str, Any]], outbox.Draft],
    send: _Dispatcher,
    planned: list[outbox.Draft] | None,
    order: str,
    mark: Callable[[Conn, list[dict[str, Any]]], None] | None = None,
) -> tuple[int, int]:
    """Run `query` batch after batch, keyed on (`order`, id); (rows read, emails new or planned)."""
    read = written = 0
    while True:
        rows, ids = _batch(settings, query, params, draft, planned, mark)
        send(ids)
        read += len(rows)
        written += len(rows) if planned is not None else len(ids)
        if len(rows) < BATCH:
            return read, written
        params["after_at"], params["after_id"] = rows[-1][order], rows[-1]["subscription_id"]


def _remind(
    settings: Settings,
    expiry_day: date | None,
    begun_by: datetime,
    *,
    kind: str,
    auto_renew: bool,
    suffix: str,
    extra: dict[str, Any] | None,
    send: _Dispatcher,
    planned: list[outbox.Draft] | None,
) -> int:
    """Write `kind` for live subscriptions expiring on `expiry_day`, period begun by `begun_by`.

    Returns how many were new (or would be, when only `planned`).
    """
    if expiry_day is None:
        return 0
    lo = day_start(expiry_day)
    params: dict[str, Any] = {
        "lo": lo,
        "hi": _next_day_start(expiry_day),
        "lifetime": LIFETIME_FROM,
        "after_at": lo,
        "after_id": 0,
        "auto_renew": auto_renew,
        "kind": kind,
        "suffix": suffix,
        "begun_by": begun_by,
        "limit": BATCH,
    }

    def draft(row: dict[str, Any]) -> outbox.Draft:
        return outbox.Draft(source=row, kind=kind, fact=row["fact_time"] + suffix, extra=extra)

    return _walk(settings, _DUE, params, draft, send, planned, "expires_at")[1]


def _dun(
    settings: Settings,
    as_of: date,
    day: int,
    send: _Dispatcher,
    planned: list[outbox.Draft] | None,
) -> int:
    """Write day `day` of the payment-failed sequence for episodes begun `day` days before `as_of`.

    Returns how many were new (or would be, when only `planned`).
    """
    began = _later(as_of, -day)
    if began is None:
        return 0
    lo = day_start(began)
    params: dict[str, Any] = {
        "lo": lo,
        "hi": _next_day_start(began),
        "after_at": lo,
        "after_id": 0,
        "kind": dunning.KIND,
        "day": str(day),
        "limit": BATCH,
    }

    def draft(row: dict[str, Any]) -> outbox.Draft:
        since = row["past_due_since"]
        return outbox.Draft(
            source=row,
            kind=dunning.KIND,
            fact=dunning.fact(since, day),
            extra=dunning.context(settings, row, since, day),
        )

    return _walk(settings, _DUNNING, params, draft, send, planned, "past_due_since")[1]


def _expire(
    settings: Settings, cutoff: datetime, send: _Dispatcher, planned: list[outbox.Draft] | None
) -> tuple[int, int]:
    """Expire live subscriptions whose expiry passed before `cutoff`; (expired, notices written)."""
    params: dict[str, Any] = {
        "cutoff": cutoff,
        "grace_cutoff": cutoff - timedelta(days=settings.expiry_grace_days),
        "dunning_cutoff": cutoff - timedelta(days=settings.dunning_grace_days),
        "lifetime": LIFETIME_FROM,
        "after_at": _START_OF_TIME,
        "after_id": 0,
        "limit": BATCH,
    }

    def draft(row: dict[str, Any]) -> outbox.Draft:
        return outbox.Draft(source=row, kind="expiry_notice", fact=row["fact_time"])

    return _walk(settings, _EXPIRED, params, draft, send, planned, "expires_at", _mark_expired)


def _mark_expired(conn: Conn, rows: list[dict[str, Any]]) -> None:
    """Set the (locked) subscriptions `expired` and record the change in their history."""
    ids = [row["subscription_id"] for row in rows]
    conn.execute(
        "UPDATE subscriptions SET status = 'expired', past_due_since = NULL, updated_at = now() "
        "WHERE id = ANY(%s)",
        (ids,),
    )
    conn.execute(
        """
        INSERT INTO subscription_history (subscription_id, event_id, change, before, after, note)
        SELECT h.id, NULL, 'expired', jsonb_build_object('status', h.status),
               jsonb_build_object('status', 'expired'), %s
        FROM unnest(%s::bigint[], %s::text[]) AS h(id, status)
        """,
        (EXPIRY_NOTE, ids, [row["status"] for row in rows]),
    )
