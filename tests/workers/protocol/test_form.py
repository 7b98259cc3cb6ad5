"""Tests of the form wire format: parsing, grouping, encoding."""

from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.protocol import form
from workers.protocol.errors import MalformedNotification, ProtocolError


def test_pairs_come_back_in_wire_order_with_blank_values_kept():
    assert form.parse_form(b"B=2&A=&C=3&A=1") == [("B", "2"), ("A", ""), ("C", "3"), ("A", "1")]


def test_percent_escapes_and_plus_are_decoded_in_names_and_values():
    body = b"IPN_PNAME%5B%5D=AWDoc+TEAM+%28monthly%29&FIRSTNAME=Jos%C3%A9"
    assert form.parse_form(body) == [("IPN_PNAME[]", "AWDoc TEAM (monthly)"), ("FIRSTNAME", "José")]


def test_an_encoded_plus_stays_a_plus():
    assert form.parse_form(b"EMAIL=a%2Bb%40example.com") == [("EMAIL", "a+b@example.com")]


def test_whitespace_and_slashes_are_preserved():
    body = b"ADDRESS1=+Via+Roma+1%2F2+&NOTE=%09back%5Cslash%0A"
    assert form.parse_form(body) == [("ADDRESS1", " Via Roma 1/2 "), ("NOTE", "\tback\\slash\n")]


def test_raw_utf8_bytes_are_accepted_as_well_as_escapes():
    assert form.parse_form("COMPANY=Müller GmbH".encode()) == [("COMPANY", "Müller GmbH")]


def test_invalid_utf8_in_a_value_is_malformed_and_names_the_field():
    with pytest.raises(MalformedNotification) as caught:
        form.parse_form(b"REFNO=1&FIRSTNAME=Jos%E9")
    assert caught.value.field == "FIRSTNAME"
    assert "FIRSTNAME" in str(caught.value)
    assert isinstance(caught.value, ProtocolError)


def test_invalid_utf8_in_a_name_is_malformed_without_a_field():
    with pytest.raises(MalformedNotification) as caught:
        form.parse_form(b"\xff\xfe=1")
    assert caught.value.field is None


def test_a_name_without_an_equals_sign_has_a_blank_value():
    assert form.parse_form(b"GIFT_ORDER&REFNO=1") == [("GIFT_ORDER", ""), ("REFNO", "1")]


def test_empty_segments_are_skipped_and_an_empty_body_has_no_pairs():
    assert form.parse_form(b"&A=1&&B=2&") == [("A", "1"), ("B", "2")]
    assert form.parse_form(b"") == []


def test_only_ampersands_separate_pairs():
    assert form.parse_form(b"A=1;B=2") == [("A", "1;B=2")]


def test_an_equals_sign_inside_a_value_is_kept():
    assert form.parse_form(b"A=x=y") == [("A", "x=y")]


def test_group_keeps_interleaved_array_values_together_in_order_of_first_appearance():
    pairs = [
        ("IPN_PID[]", "1"),
        ("IPN_PNAME[]", "A"),
        ("IPN_PID[]", "2"),
        ("IPN_PNAME[]", "B"),
        ("IPN_DATE", "20260101000000"),
    ]
    grouped = form.group(pairs)
    assert list(grouped) == ["IPN_PID[]", "IPN_PNAME[]", "IPN_DATE"]
    assert grouped == {
        "IPN_PID[]": ["1", "2"],
        "IPN_PNAME[]": ["A", "B"],
        "IPN_DATE": ["20260101000000"],
    }


def test_encode_escapes_every_reserved_character():
    assert form.encode([("a b", "x&y=z/é+")]) == b"a+b=x%26y%3Dz%2F%C3%A9%2B"


def test_encode_keeps_the_given_order_and_blank_values():
    assert form.encode([("B", ""), ("A", "1"), ("B", "2")]) == b"B=&A=1&B=2"


def test_values_treats_a_bare_string_as_one_value():
    assert form.values({"A": "José"}, "A") == ["José"]
    assert form.values({"A": ["1", "2"]}, "A") == ["1", "2"]
    assert form.values({}, "A") == []


def test_first_is_blank_for_an_absent_field():
    assert form.first({"A": ["1", "2"]}, "A") == "1"
    assert form.first({}, "A") == ""


# Any text UTF-8 can encode (no surrogates) and PostgreSQL can store (no NUL, refused as malformed).
text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"))


@given(st.lists(st.tuples(text, text)))
def test_encoding_then_parsing_gives_the_pairs_back(pairs):
    assert form.parse_form(form.encode(pairs)) == pairs


def _byte_path(raw: bytes) -> list[tuple[str, str]]:
    """The reference decoding, one component at a time from bytes."""
    decoded = []
    for chunk in raw.split(b"&"):
        if chunk:
            name, _, value = chunk.partition(b"=")
            field = form._decode(name, None)
            decoded.append((field, form._decode(value, field)))
    return decoded


def _outcome(parse, body: bytes) -> object:
    try:
        return parse(body)
    except MalformedNotification as exc:
        return ("malformed", exc.field, str(exc))


_COMPONENT = st.text(alphabet=st.sampled_from([*"aZ09 +&=%/._-~\n", "à", "é", "€", "ü"]))


@given(
    pairs=st.lists(st.tuples(_COMPONENT, _COMPONENT), max_size=6),
    mangle=st.booleans(),
)
def test_the_fast_path_for_ascii_bodies_decodes_exactly_as_the_byte_path(pairs, mangle):
    body = form.encode(pairs)
    if mangle:  # raw '+', '%' and '=', and invalid UTF-8 after decoding
        body = (
            body.replace(b"%2B", b"+")
            .replace(b"%25", b"%")
            .replace(b"%3D", b"=", 1)
            .replace(b"%C3", b"%FF", 1)
        )

    assert _outcome(form.parse_form, body) == _outcome(_byte_path, body)


# Raw bodies from the pieces that make decoding hard: separators, escapes of separators, broken
# and partial escapes, escaped and raw NULs, UTF-8 split across components.
_PIECE = st.sampled_from(
    ["a", "Z", "0", "&", "=", "+", "%", "%3D", "%3d", "%26", "%2B", "%20", "%4", "%G1", "%00",
     "%C3", "%A9", "%E2%82%AC", "%FF", "\x00", "\x01", "IPN_PID[]",
     # Backslashes, raw and escaped: the fast decoding turns escapes into backslash escapes.
     "\\", "\\x41", "\\u00e9", "\\n", "%5C", "%5Cx41", "%5cu00e9", "x", "u00"]
)  # fmt: skip


@given(st.lists(_PIECE, max_size=24).map("".join))
def test_any_ascii_body_decodes_and_fails_exactly_as_the_byte_path(text):
    body = text.encode("ascii")

    assert _outcome(form.parse_form, body) == _outcome(_byte_path, body)


@pytest.mark.parametrize(
    "body", [b"COMPANY=Acme%00Corp", b"COMPANY=Acme\x00Corp", b"COMPANY=\xc3\xa9%00"]
)
def test_a_nul_character_is_malformed_whichever_way_it_arrives(body):
    with pytest.raises(MalformedNotification, match="COMPANY: contains a NUL character"):
        form.parse_form(body)


_STRPTIME = {form.DATETIME: "%Y-%m-%d %H:%M:%S", form.DATE: "%Y-%m-%d", form.STAMP: "%Y%m%d%H%M%S"}


def _strptime_accepts(layout: form.Layout, value: str) -> bool:
    if not layout.shape.fullmatch(value):
        return False
    try:
        datetime.strptime(value, _STRPTIME[layout])
    except ValueError:
        return False
    return True


_PARTS = st.tuples(
    st.sampled_from([0, 1, 1900, 2024, 2026, 9999]),
    st.sampled_from([0, 1, 2, 4, 12, 13]),
    st.sampled_from([0, 1, 28, 29, 30, 31, 32]),
    st.sampled_from([0, 23, 24]),
    st.sampled_from([0, 59, 60]),
    st.sampled_from([0, 59, 60, 61]),
)
_SPELLINGS = {
    form.DATETIME: "{:04d}-{:02d}-{:02d} {:02d}:{:02d}:{:02d}",
    form.DATE: "{:04d}-{:02d}-{:02d}",
    form.STAMP: "{:04d}{:02d}{:02d}{:02d}{:02d}{:02d}",
}


@settings(max_examples=400)
@given(st.data(), st.sampled_from(form.LAYOUTS))
def test_a_date_is_accepted_exactly_when_strptime_reads_it_in_its_layout(data, layout):
    # Parts around every calendar boundary (month 13, 30 February, hour 24, second 60), any
    # digits in the layout's shape, and wrong shapes.
    value = data.draw(
        st.one_of(
            _PARTS.map(lambda parts: _SPELLINGS[layout].format(*parts)),
            st.from_regex(layout.shape, fullmatch=True),
            st.text(alphabet="0123456789-: ", max_size=20),
        )
    )
    accepted = _strptime_accepts(layout, value)

    if accepted:
        layout.check("F", value)
        assert layout.parse(value) == datetime.strptime(value, _STRPTIME[layout])
    else:
        with pytest.raises(MalformedNotification, match=f"F: expected {layout.label}"):
            layout.check("F", value)


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("2028-02-29 23:59:59", True),
        ("2026-02-29 00:00:00", False),
        ("2026-12-31 24:00:00", False),
        ("2026-12-31 23:60:00", False),
        ("2026-12-31 23:59:60", False),
        ("0000-01-01 00:00:00", False),
        ("2026-00-10 00:00:00", False),
        ("2026-13-10 00:00:00", False),
        ("２026-01-01 00:00:00", False),
    ],
)
def test_date_boundaries_are_those_of_the_calendar(value, valid):
    assert _strptime_accepts(form.DATETIME, value) is valid
    if valid:
        form.DATETIME.check("F", value)
    else:
        with pytest.raises(MalformedNotification):
            form.DATETIME.check("F", value)


@given(st.lists(_PIECE, max_size=24).map("".join))
def test_parse_grouped_is_group_of_parse_form(text):
    body = text.encode("ascii")

    grouped = _outcome(form.parse_grouped, body)
    assert grouped == _outcome(lambda raw: form.group(form.parse_form(raw)), body)
    if isinstance(grouped, dict):
        assert list(grouped) == list(dict.fromkeys(name for name, _ in form.parse_form(body)))
