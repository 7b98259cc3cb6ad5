"""The rendering context each email kind needs, and realistic sample data for previews and tests.

Every kind requires ``COMMON_KEYS``:

- ``customer_name`` (str, may be empty), ``customer_email`` (str);
- ``license_code`` (str), ``order_ref`` (str): the provider's license code and order reference;
- ``product`` (str), ``edition`` (str, e.g. ``"BUSINESS"``), ``quantity`` (int);
- ``cycle``: ``"monthly"`` or ``"annual"`` (shown translated);
- ``expires_at``: the subscription's expiry (aware datetime or ISO 8601 string). In
  ``renewal_confirmation`` and ``upgrade_confirmation`` it is the expiry *before* the change;
- ``portal_url``, ``renewal_url``: built with :mod:`emails.links`, never by hand;
- ``currency`` (ISO 4217 code, e.g. ``"EUR"``), ``test`` (bool: a test order, flagged in the email);
- ``merchant_name``, ``support_email`` (``MERCHANT_KEYS``): the signature and the support address,
  from the settings of the same names (optional ``support_url``: a help page).

Kind-specific required keys are in ``REQUIRED_KEYS``. Optional keys (``OPTIONAL_KEYS``) may be
left out or set to ``None``; the email then simply omits them. Money amounts are ``Decimal``
(or strings / ints) in ``currency``; the key ``locale`` is reserved for the renderer.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from emails.links import portal_url, renewal_url

COMMON_KEYS: tuple[str, ...] = (
    "customer_name",
    "customer_email",
    "license_code",
    "product",
    "edition",
    "cycle",
    "quantity",
    "order_ref",
    "expires_at",
    "portal_url",
    "renewal_url",
    "currency",
    "test",
)

# The merchant's voice, from the MERCHANT_NAME and SUPPORT_EMAIL settings (every kind): the
# signature and the address the "contact our support" line gives. SUPPORT_URL is optional.
MERCHANT_KEYS: tuple[str, ...] = ("merchant_name", "support_email")

REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "order_confirmation": COMMON_KEYS,
    # days_left: whole days until expires_at (0 means today).
    "renewal_reminder": (*COMMON_KEYS, "days_left"),
    "auto_renewal_notice": COMMON_KEYS,
    "expiry_notice": COMMON_KEYS,
    # new_expires_at: the expiry after the renewal.
    "renewal_confirmation": (*COMMON_KEYS, "new_expires_at"),
    # product/edition/cycle/quantity are the new values; previous_* what the customer had.
    "upgrade_confirmation": (
        *COMMON_KEYS,
        "previous_product",
        "previous_edition",
        "previous_cycle",
        "previous_quantity",
        "credit",
        # amount: what the provider charged for the upgrade, tax included.
        "amount",
        "new_expires_at",
    ),
    "payment_failed": COMMON_KEYS,
    # amount: what the provider refunded, as the refund notification states it.
    "refund_notice": (*COMMON_KEYS, "amount"),
    "cancellation_notice": COMMON_KEYS,
    # past_due_since: when the payment first failed; expires_at: the expiry after the payment.
    "payment_recovered": (*COMMON_KEYS, "past_due_since"),
}

REQUIRED_KEYS = {kind: (*keys, *MERCHANT_KEYS) for kind, keys in REQUIRED_KEYS.items()}

# Every kind also accepts support_url (a help page, linked beside the support address).
COMMON_OPTIONAL_KEYS: tuple[str, ...] = ("support_url",)

OPTIONAL_KEYS: dict[str, tuple[str, ...]] = {
    kind: COMMON_OPTIONAL_KEYS
    + {
        # amount: the expected charge, if known.
        "auto_renewal_notice": ("amount",),
        # amount: what the renewal cost, tax included, when the notification states it (an LCN
        # carries no amount); tax: the tax in it, when there is some.
        "renewal_confirmation": ("amount", "tax"),
        "upgrade_confirmation": ("tax",),
        "refund_notice": ("tax",),
        # amount: the charge that failed, if the notification states it; automatic: False when
        # automatic renewal is off (nothing was charged: the customer is asked to renew);
        # next_retry_at: when the provider tries the charge again, if known; dunning_day: the
        # day of the dunning sequence (0 the day the payment failed); access_ends_at: when
        # access ends if nothing happens, as far as Rinnovo knows.
        "payment_failed": (
            "amount",
            "automatic",
            "next_retry_at",
            "dunning_day",
            "access_ends_at",
        ),
        # amount: what the recovering payment cost, when the notification states it.
        "payment_recovered": ("amount",),
    }.get(kind, ())
    for kind in REQUIRED_KEYS
}

_PORTAL = "https://secure.2checkout.com/myaccount/"
_RENEWAL = "https://secure.2checkout.com/renewal/?LICENSE={license_code}&EMAIL={email}"


def _base() -> dict[str, Any]:
    """Return the common sample context: a BUSINESS annual subscription expiring 30 June 2026."""
    email = "giulia.rossi@example.com"
    license_code = "DF7K2M9QX4"
    return {
        "customer_name": "Giulia Rossi",
        "customer_email": email,
        "license_code": license_code,
        "product": "DocFlow",
        "edition": "BUSINESS",
        "cycle": "annual",
        "quantity": 10,
        "order_ref": "170623894",
        "expires_at": datetime(2026, 6, 30, tzinfo=UTC),
        "portal_url": portal_url(_PORTAL),
        "renewal_url": renewal_url(
            _RENEWAL, license_code=license_code, product_code="DOCFLOW-BIZ", email=email
        ),
        "currency": "EUR",
        "test": False,
        # Tests render with this voice; `rinnovo emails preview` replaces it with the settings'.
        "merchant_name": "Example Shop",
        "support_email": "support@example.com",
    }


def sample_context(kind: str) -> dict[str, Any]:
    """Return realistic sample data for ``kind`` (all required and optional keys set)."""
    if kind not in REQUIRED_KEYS:
        raise ValueError(f"unknown email kind: {kind!r}")
    ctx = _base()
    # What the provider charges, tax (22 % VAT) included.
    renewal_amount = Decimal("1000.00")
    renewal_tax = Decimal("180.33")
    extra: dict[str, dict[str, Any]] = {
        "renewal_reminder": {"days_left": 30},
        "auto_renewal_notice": {"amount": renewal_amount},
        "renewal_confirmation": {
            "amount": renewal_amount,
            "tax": renewal_tax,
            "new_expires_at": datetime(2027, 6, 30, tzinfo=UTC),
        },
        # The worked example of the "restart" policy: TEAM monthly to BUSINESS annual.
        "upgrade_confirmation": {
            "previous_product": "DocFlow",
            "previous_edition": "TEAM",
            "previous_cycle": "monthly",
            "previous_quantity": 5,
            "expires_at": datetime(2026, 2, 1, tzinfo=UTC),
            "credit": Decimal("15.00"),
            "amount": Decimal("713.70"),  # 585.00 due + 22 % VAT
            "tax": Decimal("128.70"),
            "new_expires_at": datetime(2027, 1, 16, 12, tzinfo=UTC),
        },
        "payment_failed": {
            "amount": renewal_amount,
            "automatic": True,
            "next_retry_at": datetime(2026, 7, 3, 9, 30, tzinfo=UTC),
            "dunning_day": 3,
            "access_ends_at": datetime(2026, 7, 7, tzinfo=UTC),
        },
        "payment_recovered": {
            "amount": renewal_amount,
            "past_due_since": datetime(2026, 6, 30, tzinfo=UTC),
            "expires_at": datetime(2027, 6, 30, tzinfo=UTC),
        },
        "refund_notice": {"amount": renewal_amount, "tax": renewal_tax},
    }
    ctx.update(extra.get(kind, {}))
    return ctx
