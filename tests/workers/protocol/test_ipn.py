"""Tests of IPN validation, identity and receipts."""

import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.ops.samples import SampleItem, ipn_pairs, sign_pairs, verify_receipt
from workers.protocol import form, ipn
from workers.protocol.errors import MalformedNotification
from workers.protocol.signature import SIGNATURE_FIELDS, Algorithm, receipt, verify

KEY = "ipn-secret"


def order(**overrides):
    """Return a grouped, signed sample IPN with two products."""
    items = [
        SampleItem(license_ref="AAAA111111"),
        SampleItem(code="AWD-PRO-Y", pid="4626544", name="AWDoc PRO (yearly)", license_ref=""),
    ]
    pairs = ipn_pairs(items=items, ipn_date="20260301100005", **overrides)
    return form.group(sign_pairs(pairs, KEY))


def without(fields, name):
    return {key: values for key, values in fields.items() if key != name}


def test_a_sample_order_is_valid():
    ipn.validate(order())


@pytest.mark.parametrize("name", ["IPN_DATE", "REFNO", "ORDERSTATUS", "IPN_PID[]", "IPN_PNAME[]"])
def test_a_missing_required_field_is_named(name):
    with pytest.raises(MalformedNotification, match=re.escape(f"missing required field {name}")):
        ipn.validate(without(order(), name))


@pytest.mark.parametrize("name", ["IPN_DATE", "REFNO", "ORDERSTATUS"])
def test_a_blank_required_field_is_named(name):
    fields = order()
    fields[name] = [""]
    with pytest.raises(MalformedNotification) as caught:
        ipn.validate(fields)
    assert caught.value.field == name


def test_a_repeated_single_field_is_malformed():
    fields = order()
    fields["REFNO"] = ["1", "2"]
    with pytest.raises(MalformedNotification, match="REFNO: expected one value, got 2"):
        ipn.validate(fields)


def test_the_first_problem_is_the_one_reported():
    fields = without(without(order(), "REFNO"), "ORDERSTATUS")
    with pytest.raises(MalformedNotification) as caught:
        ipn.validate(fields)
    assert caught.value.field == "REFNO"


def test_a_malformed_ipn_date_says_what_was_expected_and_what_came():
    fields = order()
    fields["IPN_DATE"] = ["2026-13"]
    with pytest.raises(MalformedNotification) as caught:
        ipn.validate(fields)
    assert str(caught.value) == "IPN_DATE: expected YYYYMMDDHHMMSS, got '2026-13'"
    assert caught.value.field == "IPN_DATE"


@pytest.mark.parametrize(
    "value", ["20260230100000", "20261301000000", "2026030110000", "２０２６０３０１１０００００"]
)
def test_an_ipn_date_must_be_a_real_date_in_ascii_digits(value):
    fields = order()
    fields["IPN_DATE"] = [value]
    with pytest.raises(MalformedNotification, match="IPN_DATE"):
        ipn.validate(fields)


@pytest.mark.parametrize(
    "name", ["SALEDATE", "PAYMENTDATE", "COMPLETE_DATE", "IPN_LICENSE_EXP[]", "IPN_LICENSE_START[]"]
)
@pytest.mark.parametrize("value", ["2026-03-01", "2026-02-30 10:00:00", "2026-03-01T10:00:00"])
def test_a_malformed_date_field_is_named(name, value):
    fields = order()
    fields[name] = [*fields[name][:-1], value]
    with pytest.raises(MalformedNotification) as caught:
        ipn.validate(fields)
    assert caught.value.field == name
    assert "YYYY-MM-DD HH:MM:SS" in str(caught.value)


def test_lifetime_licenses_and_blank_dates_are_valid():
    fields = order()
    fields["IPN_LICENSE_EXP[]"] = ["9999-12-31 23:59:59", ""]
    fields["PAYMENTDATE"] = [""]
    fields["COMPLETE_DATE"] = [""]
    ipn.validate(fields)


def test_unknown_fields_are_accepted():
    fields = order(extra={"IPN_SOMETHING_NEW[]": "x", "NEW_FIELD": ""})
    ipn.validate(fields)
    assert verify(fields, [KEY], accept_md5=False).algorithm is Algorithm.SHA256


def test_a_long_malformed_value_is_shortened_in_the_message():
    fields = order()
    fields["SALEDATE"] = ["x" * 500]
    with pytest.raises(MalformedNotification) as caught:
        ipn.validate(fields)
    assert len(str(caught.value)) < 120


def retry_of(fields):
    """Return the provider's next delivery of the same notification: new stamps, new signature."""
    pairs = [(name, value) for name, values in fields.items() for value in values]
    pairs = [
        ("IPN_DATE", "20260301100512")
        if name == "IPN_DATE"
        else ("MESSAGE_ID", "999999999999")
        if name == "MESSAGE_ID"
        else (name, value)
        for name, value in pairs
    ]
    return form.group(sign_pairs(pairs, KEY, [Algorithm.SHA256, Algorithm.SHA3_256]))


def test_a_retry_with_a_new_ipn_date_and_signature_has_the_same_dedupe_key():
    first = order()
    again = retry_of(first)
    assert again["IPN_DATE"] != first["IPN_DATE"]
    assert again["SIGNATURE_SHA2_256"] != first["SIGNATURE_SHA2_256"]
    assert ipn.dedupe_key(again) == ipn.dedupe_key(first)


def test_a_different_order_status_has_a_different_dedupe_key():
    first = order()
    refund = dict(first, ORDERSTATUS=["REFUND"])
    assert ipn.dedupe_key(refund) != ipn.dedupe_key(first)


def test_moving_a_value_between_fields_changes_the_dedupe_key():
    assert ipn.dedupe_key({"A": ["x"], "B": [""]}) != ipn.dedupe_key({"A": [""], "B": ["x"]})
    assert ipn.dedupe_key({"A": ["B", "x"]}) != ipn.dedupe_key({"A": [], "B": ["x"]})


def test_the_dedupe_key_names_the_kind_and_is_a_sha256():
    assert re.fullmatch(r"ipn:[0-9a-f]{64}", ipn.dedupe_key(order()))


def test_the_dedupe_key_of_fixed_fields_never_changes():
    # Stored events keep their keys: a new way of computing it must give the same digest, or a
    # provider retry of an event stored before an upgrade would be taken for a new event.
    fields = {"A": ["José", "", "x"], "B": "Müller GmbH", "C": [], "IPN_DATE": ["20260301"]}
    assert ipn.dedupe_key(fields) == (
        "ipn:52e3c97a7e195d5fa9076ee10acb00a3a251723577eed2af4a51da1e17c933dd"
    )


def _reference_event_key(kind, fields, skip):
    """The dedupe key spelled out plainly, to hold the receiver's faster code to it."""
    encoded = ""
    for name, found in fields.items():
        if name in SIGNATURE_FIELDS or name in skip:
            continue
        found = [found] if isinstance(found, str) else list(found)
        for part in [name, str(len(found)), *found]:
            encoded += f"{len(part.encode('utf-8'))}{part}"
    return f"{kind}:{hashlib.sha256(encoded.encode('utf-8')).hexdigest()}"


_NAME = st.sampled_from(["A", "B[]", "IPN_DATE", "HASH", "SIGNATURE_SHA2_256", "Ü", "12"])
_VALUE = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8)


@given(
    st.dictionaries(_NAME, st.one_of(_VALUE, st.lists(_VALUE, max_size=3))),
    st.frozensets(_NAME, max_size=2),
)
def test_the_dedupe_key_is_the_plain_digest_of_every_field_kept(fields, skip):
    assert ipn.event_key("ipn", fields, skip) == _reference_event_key("ipn", fields, skip)


@given(st.dictionaries(_NAME, st.lists(_VALUE, min_size=1, max_size=1)), st.frozensets(_NAME))
def test_the_dedupe_key_of_one_value_per_field_is_the_plain_digest_too(fields, skip):
    # What the provider sends (no array of several values): the key's faster path.
    assert ipn.event_key("ipn", fields, skip) == _reference_event_key("ipn", fields, skip)


def test_summary_is_the_status_and_the_first_license_type():
    assert ipn.summary(order()) == "COMPLETE REGULAR"
    assert ipn.summary({"ORDERSTATUS": ["REFUND"]}) == "REFUND"


def test_license_codes_are_the_non_blank_license_refs():
    fields = order()
    codes = ipn.license_codes(fields)
    assert codes[0] == "AAAA111111"
    assert len(codes) == 2
    fields["IPN_LICENSE_REF[]"] = ["", "BBBB222222"]
    assert ipn.license_codes(fields) == ["BBBB222222"]


def test_test_orders_are_recognised():
    assert ipn.is_test(order(test=True))
    assert not ipn.is_test(order())
    assert not ipn.is_test({})


def test_receipt_values_are_the_first_product_and_the_ipn_date_only():
    assert ipn.receipt_values(order()) == ["43811", "AWDoc TEAM (monthly)", "20260301100005"]


def test_receipt_values_of_an_order_without_products_are_malformed():
    with pytest.raises(MalformedNotification, match=re.escape("IPN_PID[]")):
        ipn.receipt_values(without(order(), "IPN_PID[]"))


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_an_order_off_the_wire_verifies_and_gets_a_matching_receipt(algorithm):
    items = [SampleItem(name="Lizenz für Müller GmbH / José"), SampleItem(pid="0", name="")]
    pairs = sign_pairs(ipn_pairs(items=items, first_name=" José "), KEY, [algorithm])
    fields = form.group(form.parse_form(form.encode(pairs)))
    ipn.validate(fields)
    verified = verify(fields, ["old", KEY], accept_md5=True)
    assert verified.key_index == 1
    values = ipn.receipt_values(fields)
    body = receipt(verified.algorithm, KEY, values, "20260301100010")
    assert verify_receipt(body, algorithm, KEY, values)
