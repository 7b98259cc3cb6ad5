"""Tests of the HMAC signature scheme and of receipts."""

import hashlib
import hmac
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.protocol import form
from workers.protocol.errors import ProtocolError, SignatureError
from workers.protocol.signature import (
    SIGNATURE_FIELDS,
    Algorithm,
    Verified,
    length_prefixed,
    receipt,
    receipt_date,
    sign,
    source_string,
    verify,
)

PUBLISHED_KEY = "AABBCCDDEEFF"
IPN_SOURCE = "1116Software program14200503031234341420050303123434"
LCN_SOURCE = "103C343D0FAF102005-03-031420081117145935"

VECTORS = [
    (IPN_SOURCE, Algorithm.MD5, "7bf97ed39681027d0c45aa45e3ea98f0"),
    (
        IPN_SOURCE,
        Algorithm.SHA256,
        "ea6f44c39b3d204b59500998fcb9221c92744d9721a94b45fc6d5cda99980176",
    ),
    (
        IPN_SOURCE,
        Algorithm.SHA3_256,
        "85180497aaaa4844a278b52b1ce257d2820dbf5857470a5f678fef2266d0d4a8",
    ),
    (LCN_SOURCE, Algorithm.MD5, "cb34fe2991668eb82364edf62f845a34"),
    (
        LCN_SOURCE,
        Algorithm.SHA256,
        "cdd64ce75e6cf013a60291229c83063a5d903eae3bfa216e99aae8af65a055e8",
    ),
    (
        LCN_SOURCE,
        Algorithm.SHA3_256,
        "7fc19d21103ea56f1b413315fb3feb5fbdd137758623a73c7ed12d9bb84f21db",
    ),
]

IPN_RECEIPT_VALUES = ["1", "Software program", "20050303123434"]
LCN_RECEIPT_VALUES = ["3C343D0FAF", "2005-03-03"]


@pytest.mark.parametrize(("source", "algorithm", "expected"), VECTORS)
def test_published_vectors_sign_as_published(source, algorithm, expected):
    assert sign(algorithm, PUBLISHED_KEY, source) == expected


def test_published_receipt_sources_are_length_prefixed_values_and_date():
    assert length_prefixed([*IPN_RECEIPT_VALUES, "20050303123434"]) == IPN_SOURCE
    assert length_prefixed([*LCN_RECEIPT_VALUES, "20081117145935"]) == LCN_SOURCE


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        (Algorithm.MD5, "<EPAYMENT>20050303123434|7bf97ed39681027d0c45aa45e3ea98f0</EPAYMENT>"),
        (
            Algorithm.SHA256,
            '<sig algo="sha256" date="20050303123434">'
            "ea6f44c39b3d204b59500998fcb9221c92744d9721a94b45fc6d5cda99980176</sig>",
        ),
        (
            Algorithm.SHA3_256,
            '<sig algo="sha3-256" date="20050303123434">'
            "85180497aaaa4844a278b52b1ce257d2820dbf5857470a5f678fef2266d0d4a8</sig>",
        ),
    ],
)
def test_ipn_receipt_matches_the_published_vector(algorithm, expected):
    assert receipt(algorithm, PUBLISHED_KEY, IPN_RECEIPT_VALUES, "20050303123434") == expected


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        (Algorithm.MD5, "<EPAYMENT>20081117145935|cb34fe2991668eb82364edf62f845a34</EPAYMENT>"),
        (
            Algorithm.SHA256,
            '<sig algo="sha256" date="20081117145935">'
            "cdd64ce75e6cf013a60291229c83063a5d903eae3bfa216e99aae8af65a055e8</sig>",
        ),
        (
            Algorithm.SHA3_256,
            '<sig algo="sha3-256" date="20081117145935">'
            "7fc19d21103ea56f1b413315fb3feb5fbdd137758623a73c7ed12d9bb84f21db</sig>",
        ),
    ],
)
def test_lcn_receipt_matches_the_published_vector(algorithm, expected):
    assert receipt(algorithm, PUBLISHED_KEY, LCN_RECEIPT_VALUES, "20081117145935") == expected


def test_values_are_counted_in_utf8_bytes_not_characters():
    assert length_prefixed(["José"]) == "5José"
    assert length_prefixed(["Müller GmbH"]) == "12Müller GmbH"
    assert length_prefixed(["€"]) == "3€"


@given(st.lists(st.text(alphabet=st.characters(codec="utf-8"), max_size=6), max_size=8))
def test_length_prefixing_is_each_value_after_its_utf8_byte_count(values):
    assert length_prefixed(values) == "".join(f"{len(v.encode('utf-8'))}{v}" for v in values)
    assert length_prefixed(iter(values)) == length_prefixed(values)


def test_a_value_longer_than_the_lengths_spelled_in_advance_is_counted_all_the_same():
    assert length_prefixed(["x" * 5000, "é" * 2500]) == "5000" + "x" * 5000 + "5000" + "é" * 2500


def test_an_empty_value_contributes_zero_and_the_value_zero_contributes_ten():
    assert length_prefixed([""]) == "0"
    assert length_prefixed(["0"]) == "10"
    assert length_prefixed(["", "0", ""]) == "0100"


def test_whitespace_and_slashes_are_signed_as_they_are():
    assert length_prefixed([" a/b\\ "]) == "6 a/b\\ "


def test_source_string_takes_every_value_in_order_and_skips_signature_fields():
    fields = {
        "REFNO": ["123"],
        "HASH": ["x"],
        "IPN_PID[]": ["1", "2"],
        "SIGNATURE_SHA2_256": ["y"],
        "IPN_PNAME[]": ["José", "Müller GmbH"],
        "COMPANY": [""],
        "SIGNATURE_SHA3_256": ["z"],
        "GIFT_ORDER": ["0"],
    }
    assert source_string(fields) == "312311125José12Müller GmbH010"


def test_source_string_of_interleaved_wire_fields_groups_them_like_php():
    body = b"IPN_PID%5B%5D=1&IPN_PNAME%5B%5D=A&IPN_PID%5B%5D=22&IPN_PNAME%5B%5D=B"
    assert source_string(form.group(form.parse_form(body))) == "112221A1B"


def test_a_bare_string_value_is_one_value_not_a_list_of_characters():
    assert source_string({"FIRSTNAME": "José"}) == "5José"


def test_signature_fields_are_listed_strongest_first():
    assert list(SIGNATURE_FIELDS.values()) == [Algorithm.SHA3_256, Algorithm.SHA256, Algorithm.MD5]
    assert [str(algorithm) for algorithm in Algorithm] == ["sha3-256", "sha256", "md5"]


KEY = "s3cr3t-κλειδί"
OLD_KEY = "previous-key"


def signed(fields, key=KEY, algorithms=(Algorithm.SHA256,)):
    """Return fields with signatures computed independently of the module under test."""
    message = "".join(f"{len(v.encode())}{v}" for values in fields.values() for v in values)
    digests = {
        Algorithm.MD5: ("HASH", hashlib.md5),
        Algorithm.SHA256: ("SIGNATURE_SHA2_256", hashlib.sha256),
        Algorithm.SHA3_256: ("SIGNATURE_SHA3_256", hashlib.sha3_256),
    }
    result = {name: list(values) for name, values in fields.items()}
    for algorithm in algorithms:
        name, digest = digests[algorithm]
        result[name] = [hmac.new(key.encode(), message.encode(), digest).hexdigest()]
    return result


ORDER = {
    "SALEDATE": ["2026-03-01 10:00:00"],
    "REFNO": ["81234567"],
    "ORDERSTATUS": ["COMPLETE"],
    "FIRSTNAME": ["José"],
    "COMPANY": ["Müller GmbH"],
    "ADDRESS2": [""],
    "IPN_PID[]": ["4626543", "4626544"],
    "IPN_PNAME[]": ["AWDoc TEAM (monthly)", "AWDoc PRO / yearly"],
    "IPN_QTY[]": ["1", "0"],
    "IPN_DATE": ["20260301100005"],
}


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_every_algorithm_verifies_a_multi_product_order(algorithm):
    fields = signed(ORDER, algorithms=[algorithm])
    assert verify(fields, [KEY], accept_md5=True) == Verified(algorithm, 0)


def test_a_rotated_key_verifies_and_reports_which_key_matched():
    fields = signed(ORDER, key=OLD_KEY)
    assert verify(fields, [KEY, OLD_KEY], accept_md5=False) == Verified(Algorithm.SHA256, 1)


def test_a_wrong_key_fails():
    fields = signed(ORDER, key="not-the-key")
    with pytest.raises(SignatureError):
        verify(fields, [KEY, OLD_KEY], accept_md5=False)


@pytest.mark.parametrize(
    ("name", "value"),
    [("REFNO", "81234568"), ("FIRSTNAME", "Jose"), ("ADDRESS2", " "), ("COMPANY", "Müller GmbH ")],
)
def test_a_tampered_value_fails(name, value):
    fields = signed(ORDER, algorithms=list(Algorithm))
    fields[name] = [value]
    with pytest.raises(SignatureError):
        verify(fields, [KEY], accept_md5=True)


def test_an_added_field_fails():
    fields = signed(ORDER)
    fields["IPN_DISCOUNT[]"] = ["0"]
    with pytest.raises(SignatureError):
        verify(fields, [KEY], accept_md5=False)


def test_md5_only_notifications_are_refused_unless_md5_is_accepted():
    fields = signed(ORDER, algorithms=[Algorithm.MD5])
    with pytest.raises(SignatureError, match="MD5"):
        verify(fields, [KEY], accept_md5=False)
    assert verify(fields, [KEY], accept_md5=True) == Verified(Algorithm.MD5, 0)


def test_only_the_strongest_signature_is_verified():
    fields = signed(ORDER, algorithms=[Algorithm.MD5, Algorithm.SHA256])
    fields["SIGNATURE_SHA3_256"] = ["0" * 64]
    with pytest.raises(SignatureError, match="SIGNATURE_SHA3_256"):
        verify(fields, [KEY], accept_md5=True)


def test_the_strongest_signature_present_chooses_the_algorithm():
    fields = signed(ORDER, algorithms=list(Algorithm))
    assert verify(fields, [KEY], accept_md5=False).algorithm is Algorithm.SHA3_256
    del fields["SIGNATURE_SHA3_256"]
    assert verify(fields, [KEY], accept_md5=False).algorithm is Algorithm.SHA256


def test_a_weaker_wrong_signature_does_not_matter():
    fields = signed(ORDER, algorithms=[Algorithm.SHA3_256])
    fields["HASH"] = ["0" * 32]
    assert verify(fields, [KEY], accept_md5=False).algorithm is Algorithm.SHA3_256


def test_uppercase_hex_is_accepted():
    fields = signed(ORDER)
    fields["SIGNATURE_SHA2_256"] = [fields["SIGNATURE_SHA2_256"][0].upper()]
    assert verify(fields, [KEY], accept_md5=False) == Verified(Algorithm.SHA256, 0)


def test_a_signature_field_present_twice_fails():
    fields = signed(ORDER)
    fields["SIGNATURE_SHA2_256"] = fields["SIGNATURE_SHA2_256"] * 2
    with pytest.raises(SignatureError, match="more than once"):
        verify(fields, [KEY], accept_md5=False)


def test_no_signature_field_fails_as_missing_signature():
    with pytest.raises(SignatureError, match="missing signature"):
        verify(ORDER, [KEY], accept_md5=True)


def test_a_blank_signature_field_signs_nothing():
    fields = signed(ORDER)
    fields["SIGNATURE_SHA3_256"] = [""]
    assert verify(fields, [KEY], accept_md5=False) == Verified(Algorithm.SHA256, 0)
    fields["SIGNATURE_SHA2_256"] = [""]
    with pytest.raises(SignatureError, match="missing signature"):
        verify(fields, [KEY], accept_md5=False)


def test_a_non_ascii_signature_is_a_plain_failure():
    fields = signed(ORDER)
    fields["SIGNATURE_SHA2_256"] = ["é" * 64]
    with pytest.raises(SignatureError):
        verify(fields, [KEY], accept_md5=False)


def test_empty_keys_never_verify_anything():
    fields = signed(ORDER, key="")
    with pytest.raises(SignatureError):
        verify(fields, ["", KEY], accept_md5=False)
    with pytest.raises(SignatureError, match="no secret key"):
        verify(fields, [""], accept_md5=False)
    with pytest.raises(SignatureError, match="no secret key"):
        verify(fields, [], accept_md5=False)


def test_a_signature_error_reveals_neither_key_nor_expected_signature():
    fields = signed(ORDER, key="not-the-key")
    expected = signed(ORDER)["SIGNATURE_SHA2_256"][0]
    with pytest.raises(SignatureError) as caught:
        verify(fields, [KEY], accept_md5=False)
    message = str(caught.value)
    assert KEY not in message
    assert expected not in message
    assert isinstance(caught.value, ProtocolError)


def test_receipt_date_is_utc_in_the_compact_layout():
    rome = timezone(timedelta(hours=2))
    assert receipt_date(datetime(2026, 7, 1, 1, 2, 3, tzinfo=rome)) == "20260630230203"
    assert receipt_date(datetime(2026, 7, 1, 1, 2, 3)) == "20260701010203"
    assert len(receipt_date()) == 14


def test_receipt_date_defaults_to_now():
    before = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    stamp = receipt_date()
    after = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    assert before <= stamp <= after


def test_receipts_count_utf8_bytes_of_the_product_name():
    body = receipt(Algorithm.SHA256, KEY, ["1", "Café"], "20260101000000")
    source = "11" + "5Café" + "1420260101000000"
    digest = hmac.new(KEY.encode(), source.encode(), hashlib.sha256).hexdigest()
    assert body == f'<sig algo="sha256" date="20260101000000">{digest}</sig>'
