"""The provider's field names are read in workers/protocol/ only: the rules get typed values."""

from __future__ import annotations

import re
from pathlib import Path

from workers.protocol import ins, ipn, lcn

ROOT = Path(__file__).resolve().parent.parent
# The layers above the protocol that must never read a notification's fields themselves.
SCANNED = ("workers/billing", "workers/jobs", "workers/store")
# Names the receiver does not hold to a size limit, so they are in no CODE_FIELDS.
OTHER_NAMES = {
    "RECURRING", "FRAUD_STATUS", "PAYMENTDATE", "COMPLETE_DATE", "SALEDATE", "IPN_DATE",
    "TEST_ORDER", "IPN_TOTALGENERAL", "TEST", "fraud_status", "invoice_status", "timestamp",
    "sale_date_placed", "demo", "item_count", "item_name", "item_id", "item_list_amount",
    "item_rec_status", "item_rec_date_next", "item_type", "item_recurrence",
}  # fmt: skip
# Rinnovo's own column and email context share this name with INS: it is not scanned for.
OWN_NAMES = {"customer_email"}
NAMES = {name.rstrip("_") for name in ipn.CODE_FIELDS | lcn.CODE_FIELDS | ins.CODE_FIELDS}
QUOTED = "|".join(re.escape(name) for name in sorted((NAMES | OTHER_NAMES) - OWN_NAMES))
WIRE_NAME = re.compile(
    rf"IPN_[A-Z_]+\[\]"  # IPN's arrays: IPN_PCODE[], IPN_TOTAL[], ...
    rf"|\bitem_[a-z_]+_[0-9]"  # INS's numbered item fields: item_rec_date_next_1, ...
    rf"|[\"'](?:{QUOTED})_?[\"']"  # any other field name, as a string
)


def wire_names(text: str) -> list[str]:
    """The provider's field names a source text spells."""
    return [found.group(0) for found in WIRE_NAME.finditer(text)]


def test_no_field_name_of_the_provider_is_read_outside_the_protocol() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {name}"
        for package in SCANNED
        for path in sorted((ROOT / package).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        for name in wire_names(line)
    ]
    assert found == []


def test_the_scan_finds_each_kind_of_field_name() -> None:
    assert wire_names('fields["IPN_PCODE[]"], f"IPN_TOTAL[]"') == ['"IPN_PCODE[]"', "IPN_TOTAL[]"]
    assert wire_names('item["item_rec_date_next"] or f"item_rec_date_next_1"') == [
        '"item_rec_date_next"',
        "item_rec_date_next_1",
    ]
    assert wire_names("first(fields, 'LICENSE_CODE'), first(fields, \"sale_id\")") == [
        "'LICENSE_CODE'",
        '"sale_id"',
    ]
    assert wire_names('lcn.license_code, ins.sale_id, status == "COMPLETE"') == []
