"""Tests of the legacy INS messages and their MD5 hash."""

import hashlib
import re

import pytest

from workers.ops.samples import ins_pairs
from workers.protocol import form, ins
from workers.protocol.errors import MalformedNotification, SignatureError

WORD = "tango"


def message(**overrides):
    """Return a grouped sample INS message."""
    arguments = {
        "message_type": "RECURRING_INSTALLMENT_SUCCESS",
        "sale_id": "4596431256",
        "invoice_id": "4596431265",
        "secret_word": WORD,
        "customer_email": "customer@example.com",
        "items": [("AWDoc TEAM (monthly)", "AWD-TEAM-M", "30.00", "2026-04-01")],
        **overrides,
    }
    return form.group(ins_pairs(**arguments))


def test_the_hash_is_uppercase_md5_of_sale_vendor_invoice_and_secret_word():
    fields = {
        "sale_id": ["1234567890"],
        "vendor_id": ["250111206876"],
        "invoice_id": ["9876543210"],
    }
    # MD5 is what the provider's INS scheme uses.
    source = b"1234567890" + b"250111206876" + b"9876543210" + b"tango"
    by_hand = hashlib.md5(source).hexdigest()  # noqa: S324
    assert ins.expected_hash(fields, "tango") == by_hand.upper()
    assert ins.expected_hash(fields, "tango") == "A2BD225BB6B82ECCC2CE2E33ABDCB357"


def test_a_sample_message_is_valid_and_verifies():
    fields = message()
    ins.validate(fields)
    assert ins.verify(fields, [WORD]) == 0


def test_a_rotated_secret_word_verifies_and_reports_its_index():
    assert ins.verify(message(), ["new-word", WORD]) == 1


def test_a_lowercase_hash_is_accepted():
    fields = message()
    fields["md5_hash"] = [fields["md5_hash"][0].lower()]
    assert ins.verify(fields, [WORD]) == 0


def test_a_wrong_secret_word_fails_without_revealing_it():
    with pytest.raises(SignatureError) as caught:
        ins.verify(message(), ["wrong-word"])
    assert "wrong-word" not in str(caught.value)
    assert ins.expected_hash(message(), "wrong-word") not in str(caught.value)


def test_a_tampered_sale_id_fails():
    fields = message()
    fields["sale_id"] = ["4596431257"]
    with pytest.raises(SignatureError):
        ins.verify(fields, [WORD])


def test_a_missing_or_repeated_hash_fails():
    fields = message()
    with pytest.raises(SignatureError, match="missing signature"):
        ins.verify({key: value for key, value in fields.items() if key != "md5_hash"}, [WORD])
    with pytest.raises(SignatureError, match="more than once"):
        ins.verify(dict(fields, md5_hash=fields["md5_hash"] * 2), [WORD])


def test_a_non_ascii_hash_is_a_plain_failure():
    with pytest.raises(SignatureError):
        ins.verify(dict(message(), md5_hash=["é" * 32]), [WORD])


def test_an_empty_secret_word_never_verifies():
    fields = message(secret_word="")
    with pytest.raises(SignatureError):
        ins.verify(fields, [""])


@pytest.mark.parametrize("name", ["message_type", "sale_id", "vendor_id", "invoice_id", "md5_hash"])
def test_a_missing_required_field_is_named(name):
    fields = {key: value for key, value in message().items() if key != name}
    with pytest.raises(MalformedNotification, match=re.escape(f"missing required field {name}")):
        ins.validate(fields)


def test_a_malformed_next_billing_date_is_named():
    fields = message()
    fields["item_rec_date_next_1"] = ["2026-04-01 00:00:00"]
    with pytest.raises(MalformedNotification) as caught:
        ins.validate(fields)
    assert caught.value.field == "item_rec_date_next_1"
    assert "YYYY-MM-DD" in str(caught.value)


def test_a_blank_next_billing_date_and_unknown_fields_are_valid():
    fields = message(
        items=[("Setup", "SETUP", "10.00", ""), ("Plan", "P", "5.00", "2026-04-30")],
        extra={"new_field": "x"},
    )
    ins.validate(fields)
    assert fields["item_rec_date_next_1"] == [""]


def test_a_retry_with_a_new_timestamp_and_message_id_has_the_same_dedupe_key():
    first = message(timestamp="2026-03-01 10:00:00", message_id="1")
    again = dict(first, timestamp=["2026-03-01 10:05:00"], message_id=["2"])
    assert ins.dedupe_key(again) == ins.dedupe_key(first)
    assert re.fullmatch(r"ins:[0-9a-f]{64}", ins.dedupe_key(first))


def test_a_different_message_type_has_a_different_dedupe_key():
    first = message()
    failed = dict(first, message_type=["RECURRING_INSTALLMENT_FAILED"])
    assert ins.dedupe_key(failed) != ins.dedupe_key(first)


def test_summary_license_codes_and_demo_flag():
    fields = message()
    assert ins.summary(fields) == "RECURRING_INSTALLMENT_SUCCESS"
    assert ins.license_codes(fields) == ["2CO-4596431256-AWD-TEAM-M"]
    assert not ins.is_test(fields)
    assert ins.is_test(message(demo=True))
    assert not ins.is_test(dict(fields, demo=["N"]))


def test_license_codes_name_every_billed_item_and_no_shipping_line_nor_phantom_number():
    fields = message(
        items=[
            ("AWDoc TEAM (monthly)", "AWD-TEAM-M", "30.00", "2026-04-01"),
            ("Setup", "SETUP", "5.00", ""),
        ],
        extra={"item_type_2": "shipping", "item_count": "999999999"},
    )
    assert ins.license_codes(fields) == ["2CO-4596431256-AWD-TEAM-M"]
    assert ins.license_codes(dict(fields, item_count=["0"])) == []
