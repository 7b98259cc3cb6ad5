"""Realistic, correctly signed sample notifications for tests, simulations and benchmarks."""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from babel.numbers import get_currency_precision

from workers.protocol import form, ins
from workers.protocol.signature import SIGNATURE_FIELDS, Algorithm, sign, source_string

Pairs = list[tuple[str, str]]

_DATETIME = "%Y-%m-%d %H:%M:%S"
_VAT_RATE = Decimal("22.00")
_CENT = Decimal("0.01")


@dataclass
class SampleItem:
    """One product line of a sample order; a blank license_ref gets a random code."""

    code: str = "AWDOC-TEAM-M"
    pid: str = "43811"
    name: str = "AWDoc TEAM (monthly)"
    license_ref: str = ""
    quantity: int = 1
    price: str = "30.00"
    license_type: str = "REGULAR"
    license_start: str = ""
    license_exp: str = ""

    def __post_init__(self) -> None:
        """Give the item a license code like the provider's, if it has none."""
        if not self.license_ref:
            self.license_ref = random_code()


def random_code() -> str:
    """Return a random 10-character uppercase license code, like 3C343D0FAF."""
    return secrets.token_hex(5).upper()


def _digits(count: int) -> str:
    """Return a random number of exactly count digits, not starting with 0."""
    return str(secrets.randbelow(9 * 10 ** (count - 1)) + 10 ** (count - 1))


def _add_month(moment: datetime) -> datetime:
    """Return the same time one calendar month later, clamped to the month's last day."""
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def _month_after(start: str) -> str:
    """Return the date one month after start, or "" when start is not a valid date."""
    try:
        moment = datetime.strptime(start, _DATETIME)
    except ValueError:
        # Callers build deliberately malformed samples; the expiry then stays blank.
        return ""
    return _add_month(moment).strftime(_DATETIME)


def _apply_extra(pairs: Pairs, extra: Mapping[str, str]) -> Pairs:
    """Replace the first field of each extra name in place, or append it."""
    result = list(pairs)
    for name, value in extra.items():
        for index, (existing, _) in enumerate(result):
            if existing == name:
                result[index] = (name, value)
                break
        else:
            result.append((name, value))
    return result


def _each(name: str, values: Sequence[str]) -> Pairs:
    """One field per value: an order's per-line fields (`IPN_PCODE[]`, ...)."""
    return [(name, value) for value in values]


def _buyer(first_name: str, last_name: str, email: str) -> Pairs:
    """An IPN's billing then delivery details, in the provider's field order."""
    return [
        ("FIRSTNAME", first_name),
        ("LASTNAME", last_name),
        ("COMPANY", ""),
        ("REGISTRATIONNUMBER", ""),
        ("FISCALCODE", ""),
        ("TAX_OFFICE", ""),
        ("CBANKNAME", ""),
        ("CBANKACCOUNT", ""),
        ("ADDRESS1", "Via Roma 1"),
        ("ADDRESS2", ""),
        ("CITY", "Milano"),
        ("STATE", "MI"),
        ("ZIPCODE", "20121"),
        ("COUNTRY", "Italy"),
        ("COUNTRY_CODE", "it"),
        ("PHONE", ""),
        ("FAX", ""),
        ("CUSTOMEREMAIL", email),
        ("FIRSTNAME_D", first_name),
        ("LASTNAME_D", last_name),
        ("COMPANY_D", ""),
        ("ADDRESS1_D", "Via Roma 1"),
        ("ADDRESS2_D", ""),
        ("CITY_D", "Milano"),
        ("STATE_D", "MI"),
        ("ZIPCODE_D", "20121"),
        ("COUNTRY_D", "Italy"),
        ("COUNTRY_D_CODE", "it"),
        ("PHONE_D", ""),
        ("EMAIL_D", email),
    ]


def _products(
    lines: Sequence[SampleItem], money: Callable[[Decimal], str], vats: Sequence[Decimal]
) -> Pairs:
    """An IPN's product fields, one value per order line each, in the provider's field order."""
    return [
        *_each("IPN_PID[]", [item.pid for item in lines]),
        *_each("IPN_PNAME[]", [item.name for item in lines]),
        *_each("IPN_PCODE[]", [item.code for item in lines]),
        *_each("IPN_EXTERNAL_REFERENCE[]", ["" for _ in lines]),
        *_each("IPN_INFO[]", ["" for _ in lines]),
        *_each("IPN_QTY[]", [str(item.quantity) for item in lines]),
        *_each("IPN_PRICE[]", [money(Decimal(item.price)) for item in lines]),
        *_each("IPN_VAT[]", [money(vat) for vat in vats]),
        *_each("IPN_VAT_RATE[]", [str(_VAT_RATE) for _ in lines]),
        *_each("IPN_VER[]", ["1" for _ in lines]),
        *_each("IPN_DISCOUNT[]", ["0.00" for _ in lines]),
        *_each("IPN_PROMOCODE[]", ["" for _ in lines]),
        *_each("IPN_ORDER_COSTS[]", ["0" for _ in lines]),
        *_each("IPN_SKU[]", ["" for _ in lines]),
        ("IPN_PARTNER_CODE", ""),
        *_each("IPN_PGROUP[]", ["0" for _ in lines]),
        *_each("IPN_PGROUP_NAME[]", ["" for _ in lines]),
    ]


def ipn_pairs(
    *,
    status: str = "COMPLETE",
    email: str = "customer@example.com",
    first_name: str = "Mario",
    last_name: str = "Rossi",
    language: str = "en",
    items: Sequence[SampleItem] = (),
    refno: str = "",
    currency: str = "EUR",
    test: bool = False,
    ipn_date: str | None = None,
    sale_date: str | None = None,
    extra: Mapping[str, str] = {},
) -> Pairs:
    """Return an unsigned IPN in the provider's field order; extra replaces or adds fields.

    Without items there is one default item; an item without license dates starts at the sale
    and expires a month later. REVERSED and REFUND orders carry negative totals.
    """
    now = datetime.now(UTC).replace(microsecond=0)
    lines = list(items) or [SampleItem()]
    refno = refno or _digits(8)
    sale_date = sale_date or now.strftime(_DATETIME)
    ipn_date = ipn_date or now.strftime("%Y%m%d%H%M%S")
    sign_of_totals = Decimal(-1) if status in ("REVERSED", "REFUND") else Decimal(1)

    starts = [item.license_start or sale_date for item in lines]
    expiries = [
        item.license_exp or _month_after(start) for item, start in zip(lines, starts, strict=True)
    ]
    # Amounts in the currency's own minor unit, as the provider sends them (3 decimals for BHD).
    minor = Decimal(1).scaleb(-get_currency_precision(currency.upper()))
    nets = [Decimal(item.price) * item.quantity for item in lines]
    vats = [(net * _VAT_RATE / 100).quantize(minor) for net in nets]
    totals = [net + vat for net, vat in zip(nets, vats, strict=True)]
    general = sum(totals, Decimal(0))

    def money(amount: Decimal) -> str:
        return str((amount * sign_of_totals).quantize(minor))

    pairs: Pairs = [
        ("GIFT_ORDER", "0"),
        ("SALEDATE", sale_date),
        ("PAYMENTDATE", sale_date if status == "COMPLETE" else ""),
        ("REFNO", refno),
        ("REFNOEXT", ""),
        ("SHOPPER_REFERENCE_NUMBER", ""),
        ("ORDERNO", "0"),
        ("ORDERSTATUS", status),
        ("PAYMETHOD", "Visa/MasterCard"),
        ("PAYMETHOD_CODE", "CCVISAMC"),
        *_buyer(first_name, last_name, email),
        ("IPADDRESS", "203.0.113.7"),
        ("IPCOUNTRY", "Italy"),
        ("COMPLETE_DATE", sale_date if status == "COMPLETE" else ""),
        ("TIMEZONE_OFFSET", "GMT+02:00"),
        ("CURRENCY", currency),
        ("LANGUAGE", language),
        ("ORDERFLOW", "REGULAR"),
        *_products(lines, money, vats),
        ("MESSAGE_ID", _digits(12)),
        ("MESSAGE_TYPE", status),
        *_each("IPN_LICENSE_PROD[]", [item.pid for item in lines]),
        *_each("IPN_LICENSE_TYPE[]", [item.license_type for item in lines]),
        *_each("IPN_LICENSE_REF[]", [item.license_ref for item in lines]),
        *_each("IPN_LICENSE_EXP[]", expiries),
        *_each("IPN_LICENSE_START[]", starts),
        *_each("IPN_LICENSE_LIFETIME[]", ["NO" for _ in lines]),
        *_each("IPN_LICENSE_ADDITIONAL_INFO[]", ["" for _ in lines]),
        *_each("IPN_DELIVEREDCODES[]", ["" for _ in lines]),
        ("IPN_DOWNLOAD_LINK", ""),
        *_each("IPN_TOTAL[]", [money(total) for total in totals]),
        ("IPN_TOTALGENERAL", money(general)),
        ("IPN_SHIPPING", "0.00"),
        ("IPN_SHIPPING_TAX", "0.00"),
        ("AVANGATE_CUSTOMER_REFERENCE", _digits(9)),
        ("EXTERNAL_CUSTOMER_REFERENCE", ""),
        ("IPN_PARTNER_MARGIN_PERCENT", "0.00"),
        ("IPN_PARTNER_MARGIN", "0.00"),
        ("IPN_EXTRA_MARGIN", "0.00"),
        ("IPN_EXTRA_DISCOUNT", "0.00"),
        ("IPN_COUPON_DISCOUNT", "0.00"),
        ("IPN_LINK_SOURCE", ""),
        ("IPN_COMMISSION", "0.00"),
        ("REFUND_TYPE", "FULL" if status == "REFUND" else ""),
        ("CHARGEBACK_RESOLUTION", "NONE"),
        ("CHARGEBACK_REASON_CODE", ""),
        ("TEST_ORDER", "1" if test else "0"),
        ("IPN_ORDER_ORIGIN", "Web"),
        ("FRAUD_STATUS", "APPROVED"),
        ("CARD_TYPE", "visa"),
        ("CARD_LAST_DIGITS", "1111"),
        ("CARD_EXPIRATION_DATE", "12/30"),
        ("GATEWAY_RESPONSE", ""),
        ("IPN_DATE", ipn_date),
        ("FX_RATE", "1"),
        ("FX_MARKUP", "0"),
        ("PAYABLE_AMOUNT", money(general)),
        ("PAYOUT_CURRENCY", currency),
        ("VENDOR_CODE", "RINNOVO01"),
    ]
    return _apply_extra(pairs, extra)


def lcn_pairs(
    *,
    license_code: str,
    status: str = "ACTIVE",
    expiration_date: str,
    date_updated: str,
    recurring: bool = True,
    email: str = "customer@example.com",
    first_name: str = "Mario",
    last_name: str = "Rossi",
    changed_by: str = "SYSTEM",
    license_type: str = "REGULAR",
    test: bool = False,
    extra: Mapping[str, str] = {},
) -> Pairs:
    """Return an unsigned LCN in the provider's field order; extra replaces or adds fields."""
    pairs: Pairs = [
        ("FIRST_NAME", first_name),
        ("LAST_NAME", last_name),
        ("COMPANY", ""),
        ("EMAIL", email),
        ("PHONE", ""),
        ("FAX", ""),
        ("COUNTRY", "it"),
        ("STATE", "MI"),
        ("CITY", "Milano"),
        ("ZIP", "20121"),
        ("ADDRESS", "Via Roma 1"),
        ("LICENSE_CODE", license_code),
        ("EXPIRATION_DATE", expiration_date),
        ("DATE_UPDATED", date_updated),
        ("AVANGATE_CUSTOMER_REFERENCE", _digits(9)),
        ("EXTERNAL_CUSTOMER_REFERENCE", ""),
        ("TEST", "1" if test else "0"),
        ("CHANGED_BY", changed_by),
        ("LICENSE_TYPE", license_type),
        ("DISABLED", "1" if status == "DISABLED" else "0"),
        ("STATUS", status),
        ("RECURRING", "1" if recurring else "0"),
    ]
    return _apply_extra(pairs, extra)


_INS_DESCRIPTIONS = {
    "ORDER_CREATED": "New Order Created",
    "FRAUD_STATUS_CHANGED": "Fraud status changed",
    "SHIP_STATUS_CHANGED": "Shipping status changed",
    "INVOICE_STATUS_CHANGED": "Invoice status changed",
    "REFUND_ISSUED": "Refund issued",
    "RECURRING_INSTALLMENT_SUCCESS": "Recurring installment successfully billed",
    "RECURRING_INSTALLMENT_FAILED": "Recurring installment failed to bill",
    "RECURRING_STOPPED": "Recurring billing stopped",
    "RECURRING_COMPLETE": "Recurring billing complete",
    "RECURRING_RESTARTED": "Recurring billing restarted",
}


def ins_pairs(
    *,
    message_type: str,
    sale_id: str | int,
    vendor_id: str = "250111206876",
    invoice_id: str | int,
    secret_word: str,
    customer_email: str,
    customer_language: str = "en",
    customer_first_name: str = "Mario",
    customer_last_name: str = "Rossi",
    currency: str = "EUR",
    items: Sequence[tuple[str, str, str, str]] = (),
    timestamp: str | None = None,
    message_id: str | None = None,
    demo: bool = False,
    extra: Mapping[str, str] = {},
) -> Pairs:
    """Return an INS message with a correct md5_hash; items are (name, id, amount, next date).

    Without items there is one monthly item billed again a month from today. The md5_hash is
    computed after extra is applied, unless extra sets md5_hash itself.
    """
    now = datetime.now(UTC).replace(microsecond=0)
    lines = list(items) or [
        ("AWDoc TEAM (monthly)", "AWD-TEAM-M", "30.00", _add_month(now).strftime("%Y-%m-%d"))
    ]
    total = sum((Decimal(amount) for _, _, amount, _ in lines), Decimal(0))
    pairs: Pairs = [
        ("message_type", message_type),
        ("message_description", _INS_DESCRIPTIONS.get(message_type, message_type)),
        ("timestamp", timestamp or now.strftime(_DATETIME)),
        ("md5_hash", ""),
        ("message_id", message_id or _digits(6)),
        ("key_count", ""),
        ("vendor_id", vendor_id),
        ("sale_id", str(sale_id)),
        ("sale_date_placed", now.strftime(_DATETIME)),
        ("vendor_order_id", ""),
        ("invoice_id", str(invoice_id)),
        ("recurring", "1" if any(next_date for *_, next_date in lines) else "0"),
        ("payment_type", "credit card"),
        ("list_currency", currency),
        ("cust_currency", currency),
        ("customer_first_name", customer_first_name),
        ("customer_last_name", customer_last_name),
        ("customer_name", f"{customer_first_name} {customer_last_name}"),
        ("customer_email", customer_email),
        ("customer_language", customer_language),
        ("invoice_status", "deposited"),
        ("fraud_status", "pass"),
        ("invoice_list_amount", str(total.quantize(_CENT))),
        ("item_count", str(len(lines))),
    ]
    for number, (name, item_id, amount, next_date) in enumerate(lines, start=1):
        pairs += [
            (f"item_name_{number}", name),
            (f"item_id_{number}", item_id),
            (f"item_list_amount_{number}", amount),
            (f"item_type_{number}", "refund" if message_type == "REFUND_ISSUED" else "bill"),
            (f"item_rec_status_{number}", "live" if next_date else ""),
            (f"item_rec_date_next_{number}", next_date),
            (f"item_rec_install_billed_{number}", "1" if next_date else ""),
            (f"item_recurrence_{number}", "1 Month" if next_date else ""),
            (f"item_duration_{number}", "Forever" if next_date else ""),
        ]
    if demo:
        pairs.append(("demo", "Y"))
    pairs = _apply_extra(pairs, extra)
    pairs = [("key_count", str(len(pairs))) if n == "key_count" else (n, v) for n, v in pairs]
    if "md5_hash" not in extra:
        digest = ins.expected_hash(form.group(pairs), secret_word)
        pairs = [("md5_hash", digest) if n == "md5_hash" else (n, v) for n, v in pairs]
    return pairs


# The order the provider appends signature fields in, weakest first.
_APPEND_ORDER = ("HASH", "SIGNATURE_SHA2_256", "SIGNATURE_SHA3_256")


def sign_pairs(
    pairs: Sequence[tuple[str, str]],
    key: str,
    algorithms: Sequence[Algorithm] = (Algorithm.SHA256,),
) -> Pairs:
    """Return pairs signed with key, replacing any signature already present."""
    unsigned = [(name, value) for name, value in pairs if name not in SIGNATURE_FIELDS]
    message = source_string(form.group(unsigned))
    wanted = {Algorithm(algorithm) for algorithm in algorithms}
    return unsigned + [
        (name, sign(SIGNATURE_FIELDS[name], key, message))
        for name in _APPEND_ORDER
        if SIGNATURE_FIELDS[name] in wanted
    ]


_RECEIPT_SIG = re.compile(
    r'\s*<sig algo="(sha256|sha3-256)" date="([0-9]{14})">([0-9a-f]+)</sig>\s*'
)
_RECEIPT_EPAYMENT = re.compile(r"\s*<EPAYMENT>([0-9]{14})\|([0-9a-f]+)</EPAYMENT>\s*")
_HASHES = {"sha256": hashlib.sha256, "sha3-256": hashlib.sha3_256, "md5": hashlib.md5}


def verify_receipt(body: str, algorithm: Algorithm, key: str, values: Sequence[str]) -> bool:
    """Tell whether body is a receipt for values under key with algorithm, whatever its format.

    Deliberately independent of signature.receipt(), so that tests of receipts are not circular.
    """
    if match := _RECEIPT_SIG.fullmatch(body):
        algo, stamp, digest = match.groups()
    elif match := _RECEIPT_EPAYMENT.fullmatch(body):
        algo, (stamp, digest) = "md5", match.groups()
    else:
        return False
    if algo != str(algorithm):
        return False
    source = "".join(f"{len(v.encode('utf-8'))}{v}" for v in [*values, stamp])
    expected = hmac.new(key.encode("utf-8"), source.encode("utf-8"), _HASHES[algo]).hexdigest()
    return hmac.compare_digest(digest, expected)
