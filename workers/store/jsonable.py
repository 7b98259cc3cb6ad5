"""Values as JSON keeps them exactly: the one conversion of history rows, email contexts and the
read models the API, the page and the CLI show."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any


def iso(value: datetime | None) -> str | None:
    """An instant as ISO 8601 in UTC with a Z, the one format the API and facts use."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def jsonable(value: Any) -> Any:
    """`value` in a form JSON keeps exactly: instants as ISO 8601 UTC strings, dates as ISO
    dates, decimals as strings (exact), enums as their values; mappings, sequences and the
    typed records (dataclasses) converted item by item.

    A naive datetime is refused (ValueError): it names no instant. So is a value of any other
    type (TypeError), rather than stored as whatever its text happens to be.
    """
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Enum):  # before str: a StrEnum is stored as its plain value
        return jsonable(value.value)
    if isinstance(value, str):
        return value
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()}: an instant needs its offset")
        return iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if is_dataclass(value) and not isinstance(value, type):
        return {field.name: jsonable(getattr(value, field.name)) for field in fields(value)}
    raise TypeError(f"cannot keep a {type(value).__name__} as JSON")
