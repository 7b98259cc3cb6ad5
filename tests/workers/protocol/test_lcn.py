"""Tests of LCN validation, identity and receipts."""

import re

import pytest

from workers.ops.samples import lcn_pairs, sign_pairs, verify_receipt
from workers.protocol import form, lcn
from workers.protocol.errors import MalformedNotification
from workers.protocol.signature import Algorithm, receipt, verify

KEY = "lcn-secret"


def change(**overrides):
    """Return a grouped, signed sample LCN."""
    arguments = {
        "license_code": "3C343D0FAF",
        "expiration_date": "2026-04-01 10:00:00",
        "date_updated": "2026-03-01 10:00:00",
        **overrides,
    }
    return form.group(sign_pairs(lcn_pairs(**arguments), KEY))


def test_a_sample_license_change_is_valid():
    lcn.validate(change())


@pytest.mark.parametrize("name", ["LICENSE_CODE", "EXPIRATION_DATE", "DATE_UPDATED", "STATUS"])
def test_a_missing_required_field_is_named(name):
    fields = {key: values for key, values in change().items() if key != name}
    with pytest.raises(MalformedNotification, match=re.escape(f"missing required field {name}")):
        lcn.validate(fields)


@pytest.mark.parametrize("name", ["LICENSE_CODE", "EXPIRATION_DATE", "DATE_UPDATED", "STATUS"])
def test_a_blank_required_field_is_named(name):
    fields = change()
    fields[name] = [""]
    with pytest.raises(MalformedNotification) as caught:
        lcn.validate(fields)
    assert caught.value.field == name


@pytest.mark.parametrize("name", ["EXPIRATION_DATE", "DATE_UPDATED"])
@pytest.mark.parametrize("value", ["20260401100000", "2026-04-31 10:00:00", "2026-04-01 25:00:00"])
def test_a_malformed_date_is_named(name, value):
    fields = change()
    fields[name] = [value]
    with pytest.raises(MalformedNotification) as caught:
        lcn.validate(fields)
    assert caught.value.field == name
    assert str(caught.value) == f"{name}: expected YYYY-MM-DD HH:MM:SS, got {value!r}"


def test_a_lifetime_expiration_is_valid():
    lcn.validate(change(expiration_date="9999-12-31 23:59:59"))


def test_unknown_fields_are_accepted():
    fields = change(extra={"LICENSE_PRODUCT_CODE": "AWD-TEAM-M"})
    lcn.validate(fields)
    assert verify(fields, [KEY], accept_md5=False).key_index == 0


def test_a_retry_with_a_new_signature_has_the_same_dedupe_key():
    first = change()
    pairs = [(name, value) for name, values in first.items() for value in values]
    again = form.group(sign_pairs(pairs, KEY, [Algorithm.SHA3_256]))
    assert again != first
    assert lcn.dedupe_key(again) == lcn.dedupe_key(first)


def test_a_different_status_or_update_time_has_a_different_dedupe_key():
    first = change()
    assert lcn.dedupe_key(dict(first, STATUS=["EXPIRED"])) != lcn.dedupe_key(first)
    later = dict(first, DATE_UPDATED=["2026-03-02 10:00:00"])
    assert lcn.dedupe_key(later) != lcn.dedupe_key(first)


def test_the_dedupe_key_names_the_kind():
    assert re.fullmatch(r"lcn:[0-9a-f]{64}", lcn.dedupe_key(change()))


def test_summary_license_codes_and_test_flag():
    fields = change(status="PAST DUE", test=True)
    assert lcn.summary(fields) == "PAST DUE"
    assert lcn.license_codes(fields) == ["3C343D0FAF"]
    assert lcn.is_test(fields)
    assert not lcn.is_test(change())


def test_receipt_values_are_the_license_code_and_expiration_date():
    assert lcn.receipt_values(change()) == ["3C343D0FAF", "2026-04-01 10:00:00"]


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_a_change_off_the_wire_verifies_and_gets_a_matching_receipt(algorithm):
    pairs = sign_pairs(
        lcn_pairs(
            license_code="3C343D0FAF",
            expiration_date="2026-04-01 10:00:00",
            date_updated="2026-03-01 10:00:00",
            first_name="José",
            extra={"COMPANY": "Müller GmbH"},
        ),
        KEY,
        [algorithm],
    )
    fields = form.group(form.parse_form(form.encode(pairs)))
    lcn.validate(fields)
    verified = verify(fields, [KEY], accept_md5=True)
    values = lcn.receipt_values(fields)
    body = receipt(verified.algorithm, KEY, values, "20260301100010")
    assert verify_receipt(body, algorithm, KEY, values)
