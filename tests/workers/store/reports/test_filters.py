"""An operator's filters, read from text: dates and times as UTC, and a clear reason when not."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from workers.errors import BadFilter
from workers.store.reports.filters import is_empty, make_filter, parse_instant


@pytest.mark.parametrize(
    ("text", "end_of_day", "expected"),
    [
        ("2026-01-31", False, datetime(2026, 1, 31, tzinfo=UTC)),
        ("2026-01-31", True, datetime(2026, 2, 1, tzinfo=UTC)),
        ("2026-01-31T10:15:00", False, datetime(2026, 1, 31, 10, 15, tzinfo=UTC)),
        ("2026-01-31T10:15:00Z", True, datetime(2026, 1, 31, 10, 15, tzinfo=UTC)),
        ("2026-01-31T12:15:00+02:00", False, datetime(2026, 1, 31, 10, 15, tzinfo=UTC)),
        (" 2026-01-31 10:15 ", False, datetime(2026, 1, 31, 10, 15, tzinfo=UTC)),
        ("2026-01-31t10:15:00.5z", False, datetime(2026, 1, 31, 10, 15, 0, 500_000, tzinfo=UTC)),
        ("9999-12-31", True, datetime.max.replace(tzinfo=UTC)),
        ("0001-01-01T00:00:00+01:00", False, datetime.min.replace(tzinfo=UTC)),
    ],
)
def test_dates_and_times_are_read_as_utc_and_a_bare_until_date_includes_its_day(
    text, end_of_day, expected
):
    assert parse_instant(text, end_of_day=end_of_day) == expected


@pytest.mark.parametrize(
    ("criteria", "message"),
    [
        ({"since": "yesterday"}, "not a date"),
        ({"until": "2026-02-30"}, "not a date"),
        ({"status": "done"}, "unknown status 'done'"),
        ({"kind": "sms"}, "unknown kind 'sms'"),
        ({"license_code": "  "}, "license code is blank"),
        ({"since": "2026-02-01", "until": "2026-01-31"}, "since must be before until"),
    ],
)
def test_a_filter_that_cannot_be_understood_says_why(criteria, message):
    with pytest.raises(BadFilter, match=message):
        make_filter(**criteria)


def test_a_filter_reads_its_license_code_trimmed_and_an_empty_one_selects_everything():
    assert make_filter(license_code=" LIC-A ").license_code == "LIC-A"
    assert is_empty(make_filter()) and not is_empty(make_filter(kind="ipn"))
    with pytest.raises(BadFilter, match="NUL"):
        make_filter(license_code="LIC\x00")
