"""Tests of the sample notification builders and of the independent receipt checker."""

import re
from decimal import Decimal

import pytest

from workers.ops.samples import (
    SampleItem,
    ins_pairs,
    ipn_pairs,
    lcn_pairs,
    sign_pairs,
    verify_receipt,
)
from workers.protocol import form, ins, ipn, lcn
from workers.protocol.signature import Algorithm, receipt, verify

KEY = "AABBCCDDEEFF"


def names(pairs):
    return [name for name, _ in pairs]


def test_a_sample_item_gets_a_random_uppercase_license_code():
    first, second = SampleItem(), SampleItem()
    assert re.fullmatch(r"[0-9A-F]{10}", first.license_ref)
    assert first.license_ref != second.license_ref
    assert SampleItem(license_ref="3C343D0FAF").license_ref == "3C343D0FAF"


def test_an_ipn_has_one_default_item_and_the_provider_field_order():
    pairs = ipn_pairs()
    order = names(pairs)
    assert order[0] == "GIFT_ORDER"
    assert order[-1] == "VENDOR_CODE"
    documented = [
        "GIFT_ORDER",
        "SALEDATE",
        "PAYMENTDATE",
        "REFNO",
        "REFNOEXT",
        "ORDERSTATUS",
        "CUSTOMEREMAIL",
        "COMPLETE_DATE",
        "CURRENCY",
        "LANGUAGE",
        "IPN_PID[]",
        "IPN_PNAME[]",
        "IPN_PCODE[]",
        "IPN_QTY[]",
        "IPN_PRICE[]",
        "MESSAGE_ID",
        "IPN_LICENSE_TYPE[]",
        "IPN_LICENSE_REF[]",
        "IPN_LICENSE_EXP[]",
        "IPN_TOTAL[]",
        "IPN_TOTALGENERAL",
        "TEST_ORDER",
        "FRAUD_STATUS",
        "IPN_DATE",
        "VENDOR_CODE",
    ]
    assert [name for name in order if name in documented] == documented
    assert order.count("IPN_PID[]") == 1
    assert not {"HASH", "SIGNATURE_SHA2_256", "SIGNATURE_SHA3_256"} & set(order)


def test_an_ipn_with_several_items_groups_each_array():
    items = [SampleItem(pid="1"), SampleItem(pid="2"), SampleItem(pid="3")]
    order = names(ipn_pairs(items=items))
    first_pid = order.index("IPN_PID[]")
    assert order[first_pid : first_pid + 6] == ["IPN_PID[]"] * 3 + ["IPN_PNAME[]"] * 3
    fields = form.group(ipn_pairs(items=items))
    assert fields["IPN_PID[]"] == ["1", "2", "3"]
    assert ipn.license_codes(fields) == [item.license_ref for item in items]


def test_an_ipn_carries_what_it_was_asked_for():
    item = SampleItem(quantity=2, price="30.00", license_type="RENEWAL")
    fields = form.group(
        ipn_pairs(
            status="PAYMENT_AUTHORIZED",
            email="jose@example.com",
            first_name="José",
            language="it",
            items=[item],
            refno="81234567",
            currency="USD",
            test=True,
            ipn_date="20260301100005",
            sale_date="2026-01-31 09:00:00",
        )
    )
    ipn.validate(fields)
    assert fields["ORDERSTATUS"] == ["PAYMENT_AUTHORIZED"]
    assert fields["CUSTOMEREMAIL"] == ["jose@example.com"]
    assert fields["FIRSTNAME"] == ["José"]
    assert fields["LANGUAGE"] == ["it"]
    assert fields["REFNO"] == ["81234567"]
    assert fields["CURRENCY"] == ["USD"]
    assert fields["TEST_ORDER"] == ["1"]
    assert fields["IPN_DATE"] == ["20260301100005"]
    assert fields["IPN_LICENSE_TYPE[]"] == ["RENEWAL"]
    assert fields["IPN_LICENSE_START[]"] == ["2026-01-31 09:00:00"]
    assert fields["IPN_LICENSE_EXP[]"] == ["2026-02-28 09:00:00"]
    assert fields["IPN_TOTAL[]"] == ["73.20"]


def test_reversed_orders_have_negative_totals():
    fields = form.group(ipn_pairs(status="REVERSED"))
    assert Decimal(fields["IPN_TOTALGENERAL"][0]) < 0


@pytest.mark.parametrize(
    "status", ["PENDING", "PAYMENT_AUTHORIZED", "COMPLETE", "REFUND", "REVERSED", "CANCELED"]
)
def test_every_sample_ipn_is_valid(status):
    ipn.validate(form.group(ipn_pairs(status=status)))


def test_extra_replaces_a_field_in_place_or_adds_it_at_the_end():
    pairs = ipn_pairs(extra={"ORDERSTATUS": "REFUND", "NEW_FIELD": "x"})
    assert names(pairs) == [*names(ipn_pairs()), "NEW_FIELD"]
    assert dict(pairs)["ORDERSTATUS"] == "REFUND"
    assert pairs[-1] == ("NEW_FIELD", "x")


def test_sign_pairs_appends_the_asked_signatures_weakest_first():
    signed = sign_pairs(ipn_pairs(), KEY, [Algorithm.SHA3_256, Algorithm.MD5, Algorithm.SHA256])
    assert names(signed)[-3:] == ["HASH", "SIGNATURE_SHA2_256", "SIGNATURE_SHA3_256"]
    assert names(sign_pairs(ipn_pairs(), KEY))[-1] == "SIGNATURE_SHA2_256"
    assert "HASH" not in names(sign_pairs(ipn_pairs(), KEY))


def test_sign_pairs_replaces_signatures_already_present():
    pairs = sign_pairs(ipn_pairs(), "old-key", list(Algorithm))
    resigned = sign_pairs(pairs, KEY, [Algorithm.SHA256])
    assert names(resigned).count("SIGNATURE_SHA2_256") == 1
    assert "SIGNATURE_SHA3_256" not in names(resigned)
    assert verify(form.group(resigned), [KEY], accept_md5=False).algorithm is Algorithm.SHA256


def test_a_sample_lcn_is_valid_and_verifies():
    pairs = lcn_pairs(
        license_code="3C343D0FAF",
        status="DISABLED",
        expiration_date="2026-04-01 10:00:00",
        date_updated="2026-03-01 10:00:00",
        recurring=False,
        changed_by="VENDOR",
    )
    fields = form.group(sign_pairs(pairs, KEY))
    lcn.validate(fields)
    assert verify(fields, [KEY], accept_md5=False).key_index == 0
    assert fields["DISABLED"] == ["1"]
    assert fields["RECURRING"] == ["0"]
    assert fields["CHANGED_BY"] == ["VENDOR"]
    assert names(pairs)[-1] == "RECURRING"


def test_a_sample_ins_has_a_correct_hash_and_numbered_items():
    pairs = ins_pairs(
        message_type="ORDER_CREATED",
        sale_id=4596431256,
        invoice_id=4596431265,
        secret_word="tango",
        customer_email="customer@example.com",
        items=[("A", "a", "10.00", ""), ("B", "b", "20.00", "2026-04-01")],
    )
    fields = form.group(pairs)
    ins.validate(fields)
    assert ins.verify(fields, ["tango"]) == 0
    assert fields["item_count"] == ["2"]
    assert fields["item_name_2"] == ["B"]
    assert fields["invoice_list_amount"] == ["30.00"]
    assert fields["key_count"] == [str(len(pairs))]
    assert names(pairs)[0] == "message_type"


def test_ins_extra_is_hashed_unless_it_sets_the_hash():
    common = {
        "message_type": "ORDER_CREATED",
        "sale_id": "1",
        "invoice_id": "2",
        "secret_word": "tango",
        "customer_email": "customer@example.com",
    }
    moved = form.group(ins_pairs(**common, extra={"sale_id": "9"}))
    assert ins.verify(moved, ["tango"]) == 0
    forged = form.group(ins_pairs(**common, extra={"md5_hash": "0" * 32}))
    with pytest.raises(Exception, match="does not match"):
        ins.verify(forged, ["tango"])


PUBLISHED_RECEIPTS = [
    (
        Algorithm.MD5,
        "<EPAYMENT>20050303123434|7bf97ed39681027d0c45aa45e3ea98f0</EPAYMENT>",
    ),
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
]
VALUES = ["1", "Software program", "20050303123434"]


@pytest.mark.parametrize(("algorithm", "body"), PUBLISHED_RECEIPTS)
def test_verify_receipt_accepts_the_published_receipts(algorithm, body):
    assert verify_receipt(body, algorithm, KEY, VALUES)
    assert verify_receipt(f"\n{body}\n", algorithm, KEY, VALUES)


@pytest.mark.parametrize(("algorithm", "body"), PUBLISHED_RECEIPTS)
def test_verify_receipt_rejects_a_wrong_key_values_or_algorithm(algorithm, body):
    assert not verify_receipt(body, algorithm, "other", VALUES)
    assert not verify_receipt(body, algorithm, KEY, ["2", *VALUES[1:]])
    other = Algorithm.SHA256 if algorithm != Algorithm.SHA256 else Algorithm.SHA3_256
    assert not verify_receipt(body, other, KEY, VALUES)


@pytest.mark.parametrize(
    "body",
    [
        "",
        "OK",
        "<EPAYMENT>Error. Cannot verify signature.</EPAYMENT>",
        '<sig algo="sha3_256" date="20050303123434">'
        "85180497aaaa4844a278b52b1ce257d2820dbf5857470a5f678fef2266d0d4a8</sig>",
        "<EPAYMENT>20050303123434|7BF97ED39681027D0C45AA45E3EA98F0</EPAYMENT>",
    ],
)
def test_verify_receipt_rejects_anything_else(body):
    assert not verify_receipt(body, Algorithm.MD5, KEY, VALUES)
    assert not verify_receipt(body, Algorithm.SHA3_256, KEY, VALUES)


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_receipts_made_by_the_signature_module_pass_the_independent_check(algorithm):
    values = ["4626543", "Lizenz für José", "20260301100005"]
    body = receipt(algorithm, "κλειδί", values, "20260301100006")
    assert verify_receipt(body, algorithm, "κλειδί", values)
