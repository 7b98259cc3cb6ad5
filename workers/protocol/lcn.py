"""LCN (License Change Notification): changes to a subscription's license."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from workers.protocol import form
from workers.protocol.ipn import event_key

KIND = "lcn"

# An LCN carries no delivery stamp of its own: only the signatures change on a retry.
PER_DELIVERY_FIELDS: frozenset[str] = frozenset()

# Held to form.MAX_CODE characters (stored in indexed columns or compared as codes); the rest to
# form.MAX_VALUE. README, "Size limits", lists them.
CODE_FIELDS = frozenset(
    {"LICENSE_CODE", "STATUS", "EXPIRATION_DATE", "DATE_UPDATED", "PRODUCT_CODE", "CHANGED_BY"}
)


def validate(fields: Mapping[str, Sequence[str]]) -> None:
    """Raise MalformedNotification naming the first required field missing or malformed."""
    form.check_lengths(fields, CODE_FIELDS)
    form.required(fields, "LICENSE_CODE")
    # The provider's own LCN example sends a bare date here; both layouts are accepted.
    form.check_date_or_datetime("EXPIRATION_DATE", form.required(fields, "EXPIRATION_DATE"))
    form.DATETIME.check("DATE_UPDATED", form.required(fields, "DATE_UPDATED"))
    form.required(fields, "STATUS")


def dedupe_key(fields: Mapping[str, Sequence[str]]) -> str:
    """Identify the license change a notification describes, the same for every delivery of it.

    A provider retry re-signs, but says the same thing; two deliveries that say the same thing
    are the same event. So the key digests every field but the signatures, names included, so
    that moving a value from one field to another changes the key.
    """
    return event_key(KIND, fields, PER_DELIVERY_FIELDS)


def summary(fields: Mapping[str, Sequence[str]]) -> str:
    """Return a short description for operators: the license status."""
    return form.first(fields, "STATUS")


def license_codes(fields: Mapping[str, Sequence[str]]) -> list[str]:
    """Return the one license code the change concerns."""
    code = form.first(fields, "LICENSE_CODE")
    return [code] if code else []


def is_test(fields: Mapping[str, Sequence[str]]) -> bool:
    """Tell whether the provider marked this as a test license."""
    return form.first(fields, "TEST") == "1"


def receipt_values(fields: Mapping[str, Sequence[str]]) -> list[str]:
    """Return the values a receipt signs: the license code and its expiration date."""
    return [form.required(fields, "LICENSE_CODE"), form.required(fields, "EXPIRATION_DATE")]
