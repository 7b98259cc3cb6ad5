"""IPN (Instant Payment Notification): order events."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from itertools import chain

from workers.protocol import form
from workers.protocol.signature import SIGNATURE_FIELDS, length_prefixed

KIND = "ipn"

# Stamped anew on every delivery attempt, so they must not make a retry look like a new event.
PER_DELIVERY_FIELDS = frozenset({"IPN_DATE", "MESSAGE_ID"})

_DATETIME_FIELDS = ("SALEDATE", "PAYMENTDATE", "COMPLETE_DATE")
_DATETIME_ARRAYS = ("IPN_LICENSE_EXP[]", "IPN_LICENSE_START[]")

# Held to form.MAX_CODE characters (stored in indexed columns or compared as codes); the rest to
# form.MAX_VALUE. README, "Size limits", lists them.
CODE_FIELDS = frozenset(
    {
        "REFNO", "REFNOEXT", "ORDERNO", "ORDERSTATUS", "CURRENCY", "LANGUAGE", "CUSTOMEREMAIL",
        "AVANGATE_CUSTOMER_REFERENCE", "IPN_LICENSE_REF[]", "IPN_LICENSE_TYPE[]", "IPN_PCODE[]",
        "IPN_PID[]", "IPN_QTY[]", "IPN_PRICE[]", "FIRSTNAME", "LASTNAME", "COMPANY",
    }
)  # fmt: skip


def validate(fields: Mapping[str, Sequence[str]]) -> None:
    """Raise MalformedNotification naming the first required field missing or malformed."""
    form.check_lengths(fields, CODE_FIELDS)
    form.STAMP.check("IPN_DATE", form.required(fields, "IPN_DATE"))
    form.required(fields, "REFNO")
    form.required(fields, "ORDERSTATUS")
    form.required_first(fields, "IPN_PID[]")
    form.required_first(fields, "IPN_PNAME[]")
    for name in _DATETIME_FIELDS:
        form.DATETIME.check_field(fields, name)
    for name in _DATETIME_ARRAYS:
        form.DATETIME.check_field(fields, name)


def dedupe_key(fields: Mapping[str, Sequence[str]]) -> str:
    """Identify the event a notification describes, the same for every delivery of it.

    A provider retry re-stamps the delivery time and re-signs, but says the same thing; two
    deliveries that say the same thing are the same event. So the key digests every field but
    the signatures and the per-delivery ones, names included, so that moving a value from one
    field to another changes the key.
    """
    return event_key(KIND, fields, PER_DELIVERY_FIELDS)


def event_key(kind: str, fields: Mapping[str, Sequence[str]], skip: frozenset[str]) -> str:
    """Digest every field not skipped (and no signature) as kind:hex-sha256."""
    kept = dict(fields)
    for name in (*SIGNATURE_FIELDS, *skip):
        kept.pop(name, None)
    if str not in set(map(type, kept.values())):  # lists only: the usual case, without a loop
        # Each field as its name, its count of values, then its values; counts and values come
        # in order from C, names are interleaved by stride when every field has one value.
        counts = list(map(len, kept.values()))
        if counts and min(counts) == max(counts) == 1:
            flat: list[str] = [""] * (3 * len(kept))
            flat[0::3] = kept
            flat[1::3] = ["1"] * len(kept)
            flat[2::3] = chain.from_iterable(kept.values())
            return _digest(kind, flat)
    parts: list[str] = []
    add, extend = parts.append, parts.extend
    for name, found in fields.items():
        if name in SIGNATURE_FIELDS or name in skip:
            continue
        if isinstance(found, str):  # a bare string is one value
            found = [found]
        # The count keeps the encoding unambiguous: names and values cannot be confused.
        add(name)
        add(str(len(found)))
        extend(found)
    return _digest(kind, parts)


def _digest(kind: str, parts: list[str]) -> str:
    digest = hashlib.sha256(length_prefixed(parts).encode("utf-8")).hexdigest()
    return f"{kind}:{digest}"


def summary(fields: Mapping[str, Sequence[str]]) -> str:
    """Return a short description for operators: the order status and the license type."""
    license_type = form.first(fields, "IPN_LICENSE_TYPE[]")
    status = form.first(fields, "ORDERSTATUS")
    return f"{status} {license_type}" if license_type else status


def license_codes(fields: Mapping[str, Sequence[str]]) -> list[str]:
    """Return the license codes the order concerns, one per licensed product."""
    return [code for code in form.values(fields, "IPN_LICENSE_REF[]") if code]


def is_test(fields: Mapping[str, Sequence[str]]) -> bool:
    """Tell whether the provider marked this as a test order."""
    return form.first(fields, "TEST_ORDER") == "1"


def receipt_values(fields: Mapping[str, Sequence[str]]) -> list[str]:
    """Return the values a receipt signs: the first product's id and name, and IPN_DATE."""
    return [
        form.required_first(fields, "IPN_PID[]"),
        form.required_first(fields, "IPN_PNAME[]"),
        form.required(fields, "IPN_DATE"),
    ]
