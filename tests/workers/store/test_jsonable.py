"""The one conversion to JSON: exact, and refusing what it cannot keep exactly."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum, StrEnum

import pytest

from workers.store.jsonable import iso, jsonable


class Colour(StrEnum):
    RED = "red"


class Level(Enum):
    HIGH = 3


@dataclass(frozen=True)
class Row:
    at: datetime
    amount: Decimal


def test_instants_are_iso_8601_utc_with_a_z() -> None:
    rome = timezone(timedelta(hours=2))
    assert jsonable(datetime(2026, 6, 30, 14, 0, tzinfo=rome)) == "2026-06-30T12:00:00Z"
    assert jsonable(datetime(2026, 6, 30, 12, 0, 0, 5, tzinfo=UTC)) == "2026-06-30T12:00:00.000005Z"
    assert iso(None) is None


def test_a_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        jsonable({"expires_at": datetime(2030, 1, 1)})


def test_dates_decimals_and_enums_keep_their_exact_value() -> None:
    assert jsonable(date(2026, 1, 31)) == "2026-01-31"
    assert jsonable(Decimal("19.90")) == "19.90"  # the trailing zero too
    assert jsonable(Colour.RED) == "red" and type(jsonable(Colour.RED)) is str
    assert jsonable(Level.HIGH) == 3


def test_plain_values_pass_unchanged() -> None:
    for value in (None, True, 0, 1.5, "text"):
        assert jsonable(value) == value


def test_nested_mappings_sequences_and_records_are_converted_item_by_item() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    value = {
        1: [(Decimal("1.0"), at)],
        "row": Row(at=at, amount=Decimal("2.50")),
        "status": Colour.RED,
    }
    converted = jsonable(value)
    assert converted == {
        "1": [["1.0", "2026-01-01T00:00:00Z"]],
        "row": {"at": "2026-01-01T00:00:00Z", "amount": "2.50"},
        "status": "red",
    }
    assert json.loads(json.dumps(converted)) == converted


def test_a_value_of_any_other_type_is_refused() -> None:
    with pytest.raises(TypeError, match="set"):
        jsonable({"codes": {"A"}})
    with pytest.raises(TypeError, match="bytes"):
        jsonable([b"raw"])
