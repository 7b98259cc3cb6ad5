"""Tests of the form wire format: parsing, grouping, encoding."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from webhooks.protocol import form
from webhooks.protocol.errors import MalformedNotification, ProtocolError


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


_COMPONENT = st.text(alphabet=st.sampled_from([*"aZ09 +&=%/._-~\n", "à", "é", "€", "ü"]))


@given(
    pairs=st.lists(st.tuples(_COMPONENT, _COMPONENT), max_size=6),
    mangle=st.booleans(),
)
def test_the_fast_path_for_ascii_bodies_decodes_exactly_as_the_byte_path(pairs, mangle):
    body = form.encode(pairs)
    if mangle:  # raw '+' and '%', and invalid UTF-8 after decoding
        body = body.replace(b"%2B", b"+").replace(b"%25", b"%").replace(b"%C3", b"%FF", 1)

    def outcome(parse):
        try:
            return parse(body)
        except MalformedNotification as exc:
            return ("malformed", exc.field)

    def byte_path(raw: bytes) -> list[tuple[str, str]]:
        decoded = []
        for chunk in raw.split(b"&"):
            if chunk:
                name, _, value = chunk.partition(b"=")
                field = form._decode(name, None)
                decoded.append((field, form._decode(value, field)))
        return decoded

    assert outcome(form.parse_form) == outcome(byte_path)


@pytest.mark.parametrize(
    "body", [b"COMPANY=Acme%00Corp", b"COMPANY=Acme\x00Corp", b"COMPANY=\xc3\xa9%00"]
)
def test_a_nul_character_is_malformed_whichever_way_it_arrives(body):
    with pytest.raises(MalformedNotification, match="COMPANY: contains a NUL character"):
        form.parse_form(body)
