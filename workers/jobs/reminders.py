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

from workers.billing import dunning
from workers.config import Settings
from workers.errors import BrokerUnavailable, DatabaseUnavailable
from workers.store import db, outbox
from workers.store import reminders as scan
from workers.store.db import Conn

log = logging.getLogger(__name__)

BATCH = 500
EXPIRY_NOTE = "expiry passed without renewal (clock)"
# Lifetime licenses expire 9999-12-31; whatever their cycle says, they are never reminded.
LIFETIME_FROM = datetime(9999, 1, 1, tzinfo=UTC)
_END_OF_TIME = datetime.max.replace(tzinfo=UTC)
_START_OF_TIME = datetime.min.replace(tzinfo=UTC)

# One batch of the scan read (and locked) in the caller's transaction, from named parameters.
Read = Callable[[Conn, dict[str, Any]], list[dict[str, Any]]]


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
    fetch: Read,
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
        rows = fetch(conn, params)
        if rows and mark is not None:
            mark(conn, rows)
        drafts = [draft(row) for row in rows]
        if planned is not None:
            planned.extend(drafts)
            return rows, []
        return rows, outbox.write(conn, settings, drafts)


def _walk(
    settings: Settings,
    fetch: Read,
    params: dict[str, Any],
    draft: Callable[[dict[str, Any]], outbox.Draft],
    send: _Dispatcher,
    planned: list[outbox.Draft] | None,
    order: str,
    mark: Callable[[Conn, list[dict[str, Any]]], None] | None = None,
) -> tuple[int, int]:
    """Run `fetch` batch after batch, keyed on (`order`, id); (rows read, emails new or planned)."""
    read = written = 0
    while True:
        rows, ids = _batch(settings, fetch, params, draft, planned, mark)
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

    return _walk(settings, scan.due, params, draft, send, planned, "expires_at")[1]


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

    return _walk(settings, scan.dunning, params, draft, send, planned, "past_due_since")[1]


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

    return _walk(settings, scan.expired, params, draft, send, planned, "expires_at", _mark_expired)


def _mark_expired(conn: Conn, rows: list[dict[str, Any]]) -> None:
    """Expire the (locked) subscriptions of `rows`, recording why in their history."""
    scan.mark_expired(conn, rows, EXPIRY_NOTE)
