"""Events', attempts' and emails' statuses are spelled in one place, and the schema allows exactly
those."""

from __future__ import annotations

import json
import re

from tests.test_layers import ROOT
from workers.store.statuses import (
    APPLIED,
    EMAIL_DONE,
    EMAIL_STATUSES,
    EVENT_STATUSES,
    WAITING,
    AttemptStatus,
    EmailStatus,
    EventStatus,
)

SCHEMA = (ROOT / "schema.sql").read_text()


def _checked(pattern: str) -> tuple[str, ...]:
    """The strings of the last `CHECK (status IN (...))` the pattern finds (a later constraint
    replaces an earlier one)."""
    found = re.findall(pattern + r"\s*CHECK \(status IN \(([^)]*)\)\)", SCHEMA)
    assert found, pattern
    return tuple(re.findall(r"'([a-z_]+)'", found[-1]))


def test_the_schema_checks_exactly_the_event_statuses_of_the_enum() -> None:
    assert _checked(r"status\s+text NOT NULL DEFAULT 'received'\s*") == EVENT_STATUSES
    assert tuple(EventStatus) == EVENT_STATUSES


def test_the_schema_checks_exactly_the_attempt_statuses_of_the_enum() -> None:
    attempts = SCHEMA[SCHEMA.index("CREATE TABLE IF NOT EXISTS event_attempts") :]
    found = re.search(r"CHECK \(status IN \(([^)]*)\)\)", attempts)
    assert found is not None
    assert tuple(re.findall(r"'([a-z_]+)'", found.group(1))) == tuple(AttemptStatus)


def test_the_schema_checks_exactly_the_email_statuses_of_the_enum() -> None:
    assert _checked(r"ADD CONSTRAINT emails_status_check") == EMAIL_STATUSES
    assert tuple(EmailStatus) == EMAIL_STATUSES


def test_the_groups_of_statuses_split_them_as_the_workers_read_them() -> None:
    assert set(APPLIED) | set(WAITING) | {EventStatus.FAILED} == set(EVENT_STATUSES)
    assert set(EMAIL_DONE) | {EmailStatus.PENDING, EmailStatus.SENDING} == set(EMAIL_STATUSES)


def test_a_status_is_its_string_in_json_and_in_text() -> None:
    assert json.dumps({"status": EventStatus.IGNORED}) == '{"status": "ignored"}'
    assert f"{EmailStatus.OFF}" == "off" and EmailStatus("sent") is EmailStatus.SENT
