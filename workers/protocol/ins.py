"""INS (the legacy 2CO Instant Notification Service), signed with an MD5 hash."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence

from workers.protocol import form
from workers.protocol.errors import SignatureError
from workers.protocol.ipn import event_key

KIND = "ins"

# Stamped anew on every delivery attempt, so they must not make a retry look like a new event.
PER_DELIVERY_FIELDS = frozenset({"md5_hash", "timestamp", "message_id"})

_REQUIRED = ("message_type", "sale_id", "vendor_id", "invoice_id", "md5_hash")
_NEXT_BILLING = re.compile(r"item_rec_date_next_[0-9]+")
_ITEM_ID = re.compile(r"item_id_([0-9]{1,6})")
# Item types that bill (or refund) a subscription; others (shipping, tax, coupon) do not.
BILLED_TYPES = frozenset({"", "bill", "refund"})
_ITEM_KEYS = (
    "item_name",
    "item_id",
    "item_list_amount",
    "item_type",
    "item_rec_status",
    "item_rec_date_next",
    "item_recurrence",
)

# Held to form.MAX_CODE characters (stored in indexed columns or compared as codes); the rest to
# form.MAX_VALUE. README, "Size limits", lists them.
CODE_FIELDS = frozenset(
    {
        "message_type", "sale_id", "vendor_id", "invoice_id", "md5_hash", "customer_email",
        "customer_first_name", "customer_last_name", "customer_language", "list_currency",
        "cust_currency", "item_id_", "item_type_", "item_rec_status_", "item_rec_date_next_",
    }
)  # fmt: skip


def validate(fields: Mapping[str, Sequence[str]]) -> None:
    """Raise MalformedNotification naming the first required field missing or malformed."""
    form.check_lengths(fields, CODE_FIELDS)
    for name in _REQUIRED:
        form.required(fields, name)
    for name in fields:
        if _NEXT_BILLING.fullmatch(name):
            form.DATE.check_field(fields, name)


def dedupe_key(fields: Mapping[str, Sequence[str]]) -> str:
    """Identify the event a message describes, the same for every delivery of it.

    A provider retry re-stamps the delivery time and the message id, but says the same thing;
    two deliveries that say the same thing are the same event. So the key digests every field
    but the hash and the per-delivery ones, names included, so that moving a value from one
    field to another changes the key.
    """
    return event_key(KIND, fields, PER_DELIVERY_FIELDS)


def summary(fields: Mapping[str, Sequence[str]]) -> str:
    """Return a short description for operators: the message type."""
    return form.first(fields, "message_type")


def items(fields: Mapping[str, Sequence[str]]) -> list[dict[str, str]]:
    """Return the billed items (numbered up to item_count), each as its item_* fields unnumbered.

    Only numbers that have an item_id field are read, so a huge item_count costs nothing.
    """
    count = form.first(fields, "item_count")
    total = int(count) if count.isdigit() else 0
    numbers = sorted(
        {int(found.group(1)) for name in fields if (found := _ITEM_ID.fullmatch(name))}
    )
    billed = []
    for number in (n for n in numbers if 1 <= n <= total):
        item = {key: form.first(fields, f"{key}_{number}") for key in _ITEM_KEYS}
        if item["item_type"] in BILLED_TYPES and item["item_id"]:
            billed.append(item)
    return billed


def license_code(sale_id: str, item_id: str) -> str:
    """Return the license code Rinnovo gives an INS subscription: INS has none of its own."""
    return f"2CO-{sale_id}-{item_id}"


def license_codes(fields: Mapping[str, Sequence[str]]) -> list[str]:
    """Return the license codes of the billed items: one subscription per sale and item."""
    sale_id = form.first(fields, "sale_id")
    return sorted({license_code(sale_id, item["item_id"]) for item in items(fields)})


def is_test(fields: Mapping[str, Sequence[str]]) -> bool:
    """Tell whether the message is a demo sale."""
    return form.first(fields, "demo").upper() == "Y"


def expected_hash(fields: Mapping[str, Sequence[str]], secret_word: str) -> str:
    """Return the md5_hash the provider computes: UPPER(MD5(sale_id vendor_id invoice_id word))."""
    source = "".join(form.first(fields, name) for name in ("sale_id", "vendor_id", "invoice_id"))
    # MD5 is the provider's scheme for INS, not a choice made here.
    return hashlib.md5((source + secret_word).encode("utf-8")).hexdigest().upper()  # noqa: S324


def verify(fields: Mapping[str, Sequence[str]], secret_words: Sequence[str]) -> int:
    """Return the index of the secret word that signed the message, or raise SignatureError."""
    found = form.values(fields, "md5_hash")
    if len(found) > 1:
        raise SignatureError("md5_hash present more than once")
    if not found or not found[0]:
        raise SignatureError("missing signature")
    # Bytes, because compare_digest refuses non-ASCII str and the received value is untrusted.
    candidate = found[0].upper().encode("utf-8")
    # An empty secret word (e.g. unset configuration) would let anyone sign.
    usable = [(index, word) for index, word in enumerate(secret_words) if word]
    if not usable:
        raise SignatureError("no secret word configured")
    for index, word in usable:
        if hmac.compare_digest(candidate, expected_hash(fields, word).encode("ascii")):
            return index
    raise SignatureError("md5_hash does not match")
