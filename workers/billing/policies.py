"""The renewal rule and the two upgrade policies, as quotes: credit, amount due and new expiry.

Every rule in RULES.md is implemented here once; the workers and `rinnovo quote` both call it.

Boundaries, all to the second and inclusive where RULES.md says "within":
- a subscription is expired from the instant `at == expires_at` on (renewal after expiry, and a
  `maintenance` upgrade is refused);
- `maintenance` "within 90 days after the purchase or last renewal" holds while
  `at <= period_start + 90 days` (exactly 90 × 86,400 s after is still inside);
- `maintenance` "the last 90 days before expiry" holds from `at >= expires_at - 90 days`
  (exactly 90 × 86,400 s before expiry is already inside); if a short period makes both windows
  apply, the first (no renewal needed) wins.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, localcontext

from babel.numbers import get_currency_precision

from workers.billing.products import CYCLES, Product
from workers.billing.statuses import LIVE, STATUSES

LIFETIME_END = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
WINDOW = timedelta(days=90)
UPGRADABLE = LIVE
_CYCLE_RANK = {"monthly": 1, "annual": 2, "lifetime": 3}
_SECOND = timedelta(seconds=1)
_NOT_RENEWABLE = {
    "pending": "the order is not paid yet: there is nothing to renew",
    "canceled": "the subscription was canceled: its access has ended and it cannot be renewed",
    "refunded": "the order was refunded: its access has ended and it cannot be renewed",
}


def _utc(value: datetime, name: str) -> datetime:
    """The same instant in UTC, refusing naive datetimes."""
    if not isinstance(value, datetime):
        raise ValueError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got naive {value.isoformat()}")
    return value.astimezone(UTC)


def _amount(value: object, name: str) -> Decimal:
    """A non-negative, finite amount, or a ValueError naming the field."""
    amount = value
    if not isinstance(amount, Decimal):
        # Through str so that a float 30.1 means 30.1, not its binary expansion.
        try:
            amount = Decimal(str(amount))
        except InvalidOperation:
            raise ValueError(f"{name} must be an amount, not {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{name} must be a non-negative amount, not {value!r}")
    return amount


def add_months(dt: datetime, n: int) -> datetime:
    """The same wall-clock time n calendar months later, the day clamped to the month's last."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"add_months needs a timezone-aware datetime, got {dt.isoformat()}")
    year, month0 = divmod(dt.year * 12 + dt.month - 1 + n, 12)
    if not 1 <= year <= 9999:
        raise ValueError(f"{dt.isoformat()} plus {n} months is out of the calendar's range")
    day = min(dt.day, calendar.monthrange(year, month0 + 1)[1])
    return dt.replace(year=year, month=month0 + 1, day=day)


def add_period(dt: datetime, cycle: str, n: int = 1) -> datetime:
    """The end of n billing periods of this cycle starting at dt (lifetime never ends)."""
    if cycle == "monthly":
        return add_months(dt, n)
    if cycle == "annual":
        return add_months(dt, 12 * n)
    if cycle == "lifetime":
        _utc(dt, "dt")
        return LIFETIME_END
    raise ValueError(f"unknown billing cycle {cycle!r}; expected one of {', '.join(CYCLES)}")


def round_money(amount: Decimal, currency: str) -> Decimal:
    """Round half-up to the currency's minor unit (EUR cents, whole JPY)."""
    minor = Decimal(1).scaleb(-get_currency_precision(currency.upper()))
    return Decimal(amount).quantize(minor, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class Terms:
    """What a subscription holds now, as the policies need it."""

    product_code: str
    quantity: int
    cycle: str
    currency: str
    price_paid: Decimal
    period_start: datetime
    expires_at: datetime
    status: str
    # What the order that bought the current plan cost (a renewal does not change it); the
    # `maintenance` credit. None: the price paid for the current period.
    purchase_price: Decimal | None = None

    def __post_init__(self) -> None:
        """Check the terms and normalise instants to UTC and the currency to upper case."""
        if isinstance(self.quantity, bool) or not isinstance(self.quantity, int):
            raise ValueError(f"quantity must be an integer, not {self.quantity!r}")
        if self.quantity < 1:
            raise ValueError(f"quantity must be at least 1, not {self.quantity}")
        if self.cycle not in CYCLES:
            raise ValueError(f"unknown billing cycle {self.cycle!r}")
        if self.status not in STATUSES:
            raise ValueError(f"unknown subscription status {self.status!r}")
        if not self.currency.strip():
            raise ValueError("currency must not be empty")
        paid = _amount(self.price_paid, "price_paid")
        purchase = (
            paid if self.purchase_price is None else _amount(self.purchase_price, "purchase_price")
        )
        start = _utc(self.period_start, "period_start")
        end = _utc(self.expires_at, "expires_at")
        if end < start:
            raise ValueError(
                f"expires_at {end.isoformat()} is before period_start {start.isoformat()}"
            )
        object.__setattr__(self, "currency", self.currency.strip().upper())
        object.__setattr__(self, "price_paid", paid)
        object.__setattr__(self, "purchase_price", purchase)
        object.__setattr__(self, "period_start", start)
        object.__setattr__(self, "expires_at", end)


@dataclass(frozen=True)
class Quote:
    """The outcome of a renewal or an upgrade by the product's policy, or why it is refused."""

    kind: str
    allowed: bool
    reason: str
    policy: str
    credit: Decimal
    new_price: Decimal
    renewal_price: Decimal
    amount_due: Decimal
    currency: str
    new_period_start: datetime | None
    new_expires_at: datetime | None
    explanation: str


def _refused(kind: str, policy: str, currency: str, reason: str) -> Quote:
    """A quote that says no, and why."""
    zero = round_money(Decimal(0), currency)
    return Quote(
        kind=kind,
        allowed=False,
        reason=reason,
        policy=policy,
        credit=zero,
        new_price=zero,
        renewal_price=zero,
        amount_due=zero,
        currency=currency,
        new_period_start=None,
        new_expires_at=None,
        explanation=f"refused: {reason}",
    )


def _day(instant: datetime) -> str:
    """An instant as a short UTC date (with the time only when it is not midnight)."""
    if instant.time() == datetime.min.time():
        return instant.strftime("%Y-%m-%d")
    return instant.strftime("%Y-%m-%d %H:%M:%S UTC")


def quote_renewal(terms: Terms, product: Product, at: datetime, *, automatic: bool) -> Quote:
    """Quote renewing for one period of `product`: from the expiry, or from `at` once lapsed.

    Lapsed: the payment comes at or after the expiry of a manual renewal, or the subscription
    was already marked expired (an automatic renewal the provider retried past its grace).

    `new_price` and `amount_due` are the renewal price × quantity; `renewal_price` stays 0 (it is
    the renewal added to a `maintenance` upgrade).
    """
    at = _utc(at, "at")
    currency = terms.currency
    reason = _NOT_RENEWABLE.get(terms.status)
    if reason is None and product.cycle == "lifetime":
        reason = f"{product.name} is a lifetime license: there is nothing to renew"
    if reason is None and not product.is_priced(currency):
        reason = f"{product.name} has no renewal price in {currency}"
    if reason is not None:
        return _refused("renewal", product.policy, currency, reason)
    if automatic and terms.status != "expired":
        start = terms.expires_at
        rule = f"automatic renewal: one {product.cycle} period added to the current expiry"
    elif at < terms.expires_at:
        start = terms.expires_at
        rule = (
            f"manual renewal before expiry: one {product.cycle} period added to the natural "
            f"expiry {_day(terms.expires_at)}, not to the payment date"
        )
    else:
        start = at
        rule = f"renewal after expiry: a new {product.cycle} period starts at the payment"
    price = round_money(product.renewal_price(currency) * terms.quantity, currency)
    zero = round_money(Decimal(0), currency)
    return Quote(
        kind="renewal",
        allowed=True,
        reason="",
        policy=product.policy,
        credit=zero,
        new_price=price,
        renewal_price=zero,
        amount_due=price,
        currency=currency,
        new_period_start=start,
        new_expires_at=add_period(start, product.cycle),
        explanation=rule,
    )


def upgrade_refusal(
    current: Product, target: Product, terms: Terms, at: datetime, quantity: int | None = None
) -> str | None:
    """Why moving from `current` to `target` (× quantity) at `at` is not an upgrade, or None."""
    at = _utc(at, "at")
    units = terms.quantity if quantity is None else quantity
    currency = terms.currency
    if terms.status not in UPGRADABLE:
        return f"the subscription is {terms.status}: only an active subscription can be upgraded"
    if units < 1:
        return f"the quantity must be at least 1, not {units}"
    if target.code == current.code and units == terms.quantity:
        return f"nothing changes: it is already {current.name} × {units}"
    if target.family != current.family or target.policy != current.policy:
        return f"different product: {current.product} to {target.product} is not an upgrade"
    if current.policy == "maintenance":
        reason = _maintenance_refusal(current, target, terms, at)
    else:
        reason = _restart_refusal(current, target, terms, at)
    if reason is not None:
        return reason
    if _CYCLE_RANK[target.cycle] < _CYCLE_RANK[current.cycle]:
        return f"cheaper cycle: {current.cycle} to {target.cycle} billing is not an upgrade"
    if not target.is_priced(currency):
        return f"{target.name} is not sold in {currency}"
    if target.code == current.code and units < terms.quantity:
        return f"downgrade: {units} unit{'' if units == 1 else 's'} instead of {terms.quantity}"
    old_total = (
        current.price(currency) * terms.quantity
        if current.is_priced(currency)
        else terms.price_paid
    )
    new_total = target.price(currency) * units
    if new_total < old_total:
        return (
            f"downgrade: {target.name} × {units} costs {round_money(new_total, currency)} "
            f"{currency}, less than {round_money(old_total, currency)} {currency} now"
        )
    return None


def _maintenance_refusal(
    current: Product, target: Product, terms: Terms, at: datetime
) -> str | None:
    """The `maintenance` policy's own refusals: expiry, platform, product and license type."""
    if at >= terms.expires_at:
        return f"maintenance expired on {_day(terms.expires_at)}: renew it before upgrading"
    if target.platform != current.platform:
        return f"different product: {current.platform} to {target.platform} is not an upgrade"
    if current.suite and not target.suite:
        return f"downgrade: from the {current.product} suite to {target.product}"
    if not target.suite and not current.lines <= target.lines:
        return f"different product: {current.product} to {target.product} is not an upgrade"
    if target.license_rank < current.license_rank:
        return f"downgrade: {current.license_type} to {target.license_type} is a narrower license"
    return None


def _restart_refusal(current: Product, target: Product, terms: Terms, at: datetime) -> str | None:
    """The `restart` policy's own refusals: expiry, product line and edition."""
    if at >= terms.expires_at:
        return (
            f"the subscription expired on {_day(terms.expires_at)}: only an active subscription "
            "can be upgraded; renew it first"
        )
    if target.product != current.product or target.platform != current.platform:
        return f"different product: {current.product} to {target.product} is not an upgrade"
    if target.edition_rank < current.edition_rank:
        return f"downgrade: {current.edition} to {target.edition}"
    return None


def quote_upgrade(
    terms: Terms, current: Product, target: Product, at: datetime, *, quantity: int | None = None
) -> Quote:
    """Quote moving the subscription from `current` to `target` at `at`, by the current policy."""
    at = _utc(at, "at")
    units = terms.quantity if quantity is None else quantity
    reason = upgrade_refusal(current, target, terms, at, units)
    if reason is not None:
        return _refused("upgrade", current.policy, terms.currency, reason)
    if current.policy == "maintenance":
        return _maintenance(terms, target, at, units)
    return _restart(terms, target, at, units)


def _unused(terms: Terms, at: datetime) -> tuple[Decimal, int, int]:
    """The value of the paid seconds left after `at`, exactly; (value, seconds left, periods).

    The current period is valued by its own seconds, as RULES.md's formula says; time before it
    (prepaid by an early renewal) belongs to earlier periods of the same cycle, each valued by
    its own length, so a prepaid month is worth one month's price whatever its number of days.
    """
    value, left, periods = Decimal(0), 0, 0
    start, end = terms.period_start, terms.expires_at
    with localcontext() as exact:
        exact.prec = 60
        while end > at:
            length = (end - start) // _SECOND
            unused = (end - max(at, start)) // _SECOND
            if length > 0:
                value += terms.price_paid * unused / length
            left += unused
            periods += 1
            if at >= start or terms.cycle == "lifetime" or start.year == 1:
                break  # the calendar's first year has no period before it
            start, end = add_period(start, terms.cycle, -1), start
    return value, left, periods


def _restart(terms: Terms, target: Product, at: datetime, units: int) -> Quote:
    """A new period from `at`; every unused whole second paid for is credited pro rata."""
    currency = terms.currency
    value, remaining, periods = _unused(terms, at)
    credit = round_money(value, currency)
    # Rounding cannot lift the credit above what was paid unless the price had sub-cent digits.
    credit = min(credit, terms.price_paid * max(periods, 1))
    new_price = round_money(target.price(currency) * units, currency)
    if periods > 1:
        unused = (
            f"the unused {remaining:,} seconds to the expiry, over {periods} paid periods, "
            "are credited"
        )
    else:
        period = (terms.expires_at - terms.period_start) // _SECOND
        unused = f"the unused {remaining:,} of {period:,} seconds of the old period are credited"
    return Quote(
        kind="upgrade",
        allowed=True,
        reason="",
        policy="restart",
        credit=credit,
        new_price=new_price,
        renewal_price=round_money(Decimal(0), currency),
        amount_due=max(new_price - credit, round_money(Decimal(0), currency)),
        currency=currency,
        new_period_start=at,
        new_expires_at=add_period(at, target.cycle),
        explanation=f"a new {target.cycle} period starts at the upgrade: {unused}",
    )


def _maintenance(terms: Terms, target: Product, at: datetime, units: int) -> Quote:
    """The whole original purchase is credited; the 90-day windows decide expiry and renewal."""
    currency = terms.currency
    zero = round_money(Decimal(0), currency)
    assert terms.purchase_price is not None  # set by Terms itself
    credit = min(round_money(terms.purchase_price, currency), terms.purchase_price)
    new_price = round_money(target.price(currency) * units, currency)
    renewal = zero
    if at <= terms.period_start + WINDOW and add_months(at, 12) < terms.expires_at:
        # After an early renewal the paid term can run past a year from the upgrade: RULES.md
        # never moves a maintenance expiry earlier.
        start, expires = terms.period_start, terms.expires_at
        rule = (
            "within 90 days of the purchase or last renewal, but a year from the upgrade would "
            f"end before the paid term: the expiry stays {_day(terms.expires_at)}"
        )
    elif at <= terms.period_start + WINDOW:
        start, expires = at, add_months(at, 12)
        rule = (
            "within 90 days of the purchase or last renewal: expiry reset to one year "
            "from the upgrade"
        )
    elif at >= terms.expires_at - WINDOW:
        renewal = round_money(target.renewal_price(currency) * units, currency)
        start, expires = at, add_months(at, 12)
        rule = (
            "in the last 90 days of maintenance: the renewal is added and expiry reset to one "
            "year from the upgrade"
        )
    else:
        start, expires = terms.period_start, terms.expires_at
        rule = (
            f"during the maintenance term: the original purchase is credited and the expiry "
            f"stays {_day(terms.expires_at)}"
        )
    return Quote(
        kind="upgrade",
        allowed=True,
        reason="",
        policy="maintenance",
        credit=credit,
        new_price=new_price,
        renewal_price=renewal,
        amount_due=max(new_price - credit, zero) + renewal,
        currency=currency,
        new_period_start=start,
        new_expires_at=expires,
        explanation=rule,
    )
