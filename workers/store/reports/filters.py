"""An operator's filters, read from text once for the CLI, the admin API and the admin page."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time

from workers.errors import BadFilter
from workers.store.events import KINDS, EventFilter
from workers.store.statuses import EVENT_STATUSES


def parse_instant(text: str, *, end_of_day: bool = False) -> datetime:
    """Read a date (YYYY-MM-DD) or an ISO 8601 time; naive times are UTC.

    A bare date is the start of that day, or with `end_of_day` the start of the next one, so that
    `--until 2026-01-31` includes the 31st.
    """
    value = text.strip().upper()  # ISO 8601 allows a lowercase t and z
    try:
        day = date.fromisoformat(value)
    except ValueError:
        pass
    else:
        start = datetime.combine(day, clock_time(0), tzinfo=UTC)
        if not end_of_day:
            return start
        return start + timedelta(days=1) if day < date.max else datetime.max.replace(tzinfo=UTC)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadFilter(
            f"{text!r} is not a date: use YYYY-MM-DD or an ISO 8601 time such as "
            "2026-01-31T10:00:00Z"
        ) from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # within a day of the calendar's ends: as far as it goes
        return (datetime.min if moment.year == 1 else datetime.max).replace(tzinfo=UTC)


def refuse_nul(name: str, value: str | None) -> None:
    """Refuse a NUL character, which no stored text can contain (PostgreSQL refuses it)."""
    if value is not None and "\x00" in value:
        raise BadFilter(f"{name} contains a NUL character")


def make_filter(
    *,
    status: str | None = None,
    kind: str | None = None,
    license_code: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> EventFilter:
    """Build an EventFilter from an operator's text, raising BadFilter with the reason."""
    if status is not None and status not in EVENT_STATUSES:
        raise BadFilter(f"unknown status {status!r}: use one of {', '.join(EVENT_STATUSES)}")
    if kind is not None and kind not in KINDS:
        raise BadFilter(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}")
    if license_code is not None and not license_code.strip():
        raise BadFilter("license code is blank")
    refuse_nul("license code", license_code)
    start = parse_instant(since) if since is not None else None
    end = parse_instant(until, end_of_day=True) if until is not None else None
    if start is not None and end is not None and start >= end:
        raise BadFilter("since must be before until")
    return EventFilter(
        status=status,
        kind=kind,
        license_code=license_code.strip() if license_code is not None else None,
        since=start,
        until=end,
    )


def is_empty(flt: EventFilter) -> bool:
    """Whether the filter selects every event."""
    return flt == EventFilter()
