"""The application/x-www-form-urlencoded wire format, and reading fields from it."""

from __future__ import annotations

import re
from collections.abc import Collection, Container, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from itertools import chain
from typing import NamedTuple
from urllib.parse import quote_plus, unquote_plus, unquote_to_bytes

from workers.protocol.errors import MalformedNotification

Fields = Mapping[str, Sequence[str]]


def parse_form(body: bytes) -> list[tuple[str, str]]:
    """Return the body's (name, value) pairs in wire order, blank values kept, nothing stripped."""
    if body.isascii():  # what a form-encoded body should be; raw bytes take the careful path
        return _parse_ascii(body.decode("ascii"))
    pairs: list[tuple[str, str]] = []
    for chunk in body.split(b"&"):
        if not chunk:
            continue
        raw_name, _, raw_value = chunk.partition(b"=")
        name = _decode(raw_name, None)
        pairs.append((name, _decode(raw_value, name)))
    return pairs


def _parse_ascii(text: str) -> list[tuple[str, str]]:
    # Every name, then every value, is decoded in one call: the boundaries between them become
    # NULs, which decoding cannot produce when the text holds no "%00". A NUL or invalid UTF-8
    # takes the field-by-field path instead, whose error names the field.
    if "\x00" in text or "%00" in text:
        return _parse_ascii_fields(text)
    if _ONE_EQUALS_EACH.fullmatch(text):
        # The usual body: every field is name=value. Its "&" and "=" become NULs and the whole
        # text is decoded in one call; names and values then alternate.
        try:
            decoded = _unescape_all(text.replace("&", "\x00").replace("=", "\x00"))
        except UnicodeDecodeError:
            return _parse_ascii_fields(text)
        flat = decoded.split("\x00")
        return list(zip(flat[0::2], flat[1::2], strict=True))
    parts = [chunk.partition("=") for chunk in text.split("&") if chunk]
    if not parts:
        return []
    try:
        names = _unescape_all("\x00".join([part[0] for part in parts]))
        values = _unescape_all("\x00".join([part[2] for part in parts]))
    except UnicodeDecodeError:
        return _parse_ascii_fields(text)
    return list(zip(names.split("\x00"), values.split("\x00"), strict=True))


# A body of name=value fields with exactly one "=" each and no empty field (no "&&", no leading
# or trailing "&"): what the provider sends.
_ONE_EQUALS_EACH = re.compile(r"[^&=]*=[^&=]*(?:&[^&=]*=[^&=]*)*")


def _unescape_all(text: str) -> str:
    if "+" in text:
        text = text.replace("+", " ")
    if "%" not in text:
        return text
    if "\\" not in text:
        # Percent-escapes become \xNN escapes that the C codec decodes in one call, byte by
        # byte (as latin-1), then the bytes are read as UTF-8. Text holding a backslash, or a
        # "%" not followed by two hex digits, takes urllib's path: the same result, slower.
        try:
            escaped = text.replace("%", "\\x").encode("ascii").decode("unicode_escape")
            return escaped.encode("latin-1").decode("utf-8")
        except UnicodeDecodeError as exc:
            if not isinstance(exc.object, bytes) or exc.encoding != "utf-8":
                return unquote_to_bytes(text).decode("utf-8")
            raise
    return unquote_to_bytes(text).decode("utf-8")


def _parse_ascii_fields(text: str) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for chunk in text.split("&"):
        if not chunk:
            continue
        raw_name, _, raw_value = chunk.partition("=")
        name = _unescape(raw_name, None)
        pairs.append((name, _unescape(raw_value, name)))
    return pairs


def _unescape(raw: str, field: str | None) -> str:
    """The same decoding as _decode, for ASCII text; most components need none."""
    if "%" not in raw and "+" not in raw:
        return _no_nul(raw, field)
    try:
        return _no_nul(unquote_plus(raw, encoding="utf-8", errors="strict"), field)
    except UnicodeDecodeError:
        where = f"field {field}" if field is not None else "a field name"
        raise MalformedNotification(f"{where}: invalid UTF-8", field) from None


def _no_nul(text: str, field: str | None) -> str:
    # PostgreSQL text cannot hold NUL, and no real field carries one: refuse it as malformed.
    if "\x00" in text:
        where = f"field {field}" if field is not None else "a field name"
        raise MalformedNotification(f"{where}: contains a NUL character", field)
    return text


def _decode(raw: bytes, field: str | None) -> str:
    """Decode one form component: '+' is a space, then percent-escapes, then strict UTF-8."""
    try:
        return _no_nul(unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8"), field)
    except UnicodeDecodeError:
        where = f"field {field}" if field is not None else "a field name"
        raise MalformedNotification(f"{where}: invalid UTF-8", field) from None


def parse_grouped(body: bytes) -> dict[str, list[str]]:
    """`group(parse_form(body))`: the body's fields, each name's values in wire order."""
    pairs = parse_form(body)
    grouped = {name: [value] for name, value in pairs}
    if len(grouped) == len(pairs):  # the usual case: no name repeats
        return grouped
    return group(pairs)


def group(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Group values by name, names in order of first appearance, as PHP's $_POST does."""
    grouped: dict[str, list[str]] = {}
    for name, value in pairs:
        found = grouped.get(name)
        if found is None:
            grouped[name] = [value]
        else:
            found.append(value)
    return grouped


def encode(pairs: Iterable[tuple[str, str]]) -> bytes:
    """Encode pairs, in the given order, as an application/x-www-form-urlencoded body."""
    return "&".join(
        f"{quote_plus(name, safe='')}={quote_plus(value, safe='')}" for name, value in pairs
    ).encode("ascii")


def values(fields: Fields, name: str) -> list[str]:
    """Return every value of a field, or an empty list when the field is absent."""
    found = fields.get(name, ())
    # A bare string is one value, never a sequence of one-character values.
    return [found] if isinstance(found, str) else list(found)


def all_values(fields: Fields, *, skip: Collection[str] = ()) -> list[str]:
    """Every value of every field not skipped, in order (a bare string is one value)."""
    if str not in set(map(type, fields.values())):  # lists only: flattened without a loop here
        kept = dict(fields)
        for name in skip:
            kept.pop(name, None)
        return list(chain.from_iterable(kept.values()))
    found: list[str] = []
    for name, values_ in fields.items():
        if name in skip:
            continue
        if isinstance(values_, str):
            found.append(values_)
        else:
            found.extend(values_)
    return found


def first(fields: Fields, name: str) -> str:
    """Return the first value of a field, or "" when the field is absent."""
    found = values(fields, name)
    return found[0] if found else ""


MAX_CODE = 255  # characters: identifiers, codes, references, addresses (indexed when stored)
MAX_VALUE = 4096  # characters: any other field (the whole body is at most 64 KiB)
_DIGITS = "0123456789"


def check_lengths(fields: Fields, codes: Container[str]) -> None:
    """Raise MalformedNotification naming the first value over its size limit.

    A field is held to MAX_CODE when its name, or its name without a trailing number (INS's
    item_id_1, item_id_2, ...), is in `codes`; every other field to MAX_VALUE.
    """
    if str not in set(map(type, fields.values())):
        longest = max(map(len, chain.from_iterable(fields.values())), default=0)
        if longest <= MAX_CODE:  # within any limit: the usual notification, checked at once
            return
    for name, found in fields.items():
        if isinstance(found, str):  # a bare string is one value
            found = [found]
        if not found or max(map(len, found)) <= MAX_CODE:  # within any limit: most fields
            continue
        limit = MAX_CODE if name in codes or name.rstrip(_DIGITS) in codes else MAX_VALUE
        for value in found:
            if len(value) > limit:
                raise MalformedNotification(
                    f"{name}: {len(value)} characters, over the limit of {limit}", name
                )


def required(fields: Fields, name: str) -> str:
    """Return the one non-blank value of a field, or raise MalformedNotification."""
    found = values(fields, name)
    if not found:
        raise MalformedNotification(f"missing required field {name}", name)
    if len(found) > 1:
        raise MalformedNotification(f"{name}: expected one value, got {len(found)}", name)
    if not found[0]:
        raise MalformedNotification(f"required field {name} is blank", name)
    return found[0]


def required_first(fields: Fields, name: str) -> str:
    """Return the first value of an array field that must have at least one value."""
    found = values(fields, name)
    if not found:
        raise MalformedNotification(f"missing required field {name}", name)
    return found[0]


class Layout(NamedTuple):
    """A date layout: how it is shown in messages, and its exact shape, one group per part."""

    label: str
    shape: re.Pattern[str]

    def parse(self, value: str) -> datetime:
        """The naive datetime value spells; ValueError unless it has this layout and is real."""
        match = self.shape.fullmatch(value)
        if match is None:
            raise ValueError(f"not {self.label}: {value!r}")
        # Built from the parts, as strptime would, without strptime's cost on every request.
        parts = [int(part) for part in match.groups()]
        year, month, day, hour, minute, second = parts + [0] * (6 - len(parts))
        return datetime(year, month, day, hour, minute, second)

    def check(self, name: str, value: str) -> None:
        """Raise MalformedNotification unless value has this layout and is a real date."""
        try:
            self.parse(value)
        except ValueError:
            shown = value if len(value) <= 40 else value[:40] + "..."
            raise MalformedNotification(
                f"{name}: expected {self.label}, got {shown!r}", name
            ) from None

    def check_field(self, fields: Fields, name: str) -> None:
        """Check every non-blank value of a field, if the field is present."""
        for value in values(fields, name):
            if value:
                self.check(name, value)


# Explicit [0-9] because \d also matches non-ASCII digits.
DATETIME = Layout(
    "YYYY-MM-DD HH:MM:SS",
    re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2}) ([0-9]{2}):([0-9]{2}):([0-9]{2})"),
)
DATE = Layout("YYYY-MM-DD", re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})"))
STAMP = Layout(
    "YYYYMMDDHHMMSS", re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})")
)
LAYOUTS = (DATETIME, DATE, STAMP)


def check_date_or_datetime(name: str, value: str) -> None:
    """Raise MalformedNotification unless value is YYYY-MM-DD HH:MM:SS or YYYY-MM-DD."""
    if DATE.shape.fullmatch(value):
        DATE.check(name, value)
    else:
        DATETIME.check(name, value)


def parse_time(value: str) -> datetime:
    """A provider date in any of its layouts, as an aware UTC instant (RULES.md: times are UTC)."""
    for layout in LAYOUTS:
        if layout.shape.fullmatch(value):
            return layout.parse(value).replace(tzinfo=UTC)
    raise ValueError(f"not a provider date: {value!r}")
