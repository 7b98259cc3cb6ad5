"""The calendar, money and the renewal rule: every RULES.md example, calendar edges, refusals
(the upgrade policies: test_policies_upgrade.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from workers.billing.catalog import load_default
from workers.billing.policies import (
    LIFETIME_END,
    Quote,
    Terms,
    add_months,
    add_period,
    quote_renewal,
    quote_upgrade,
    round_money,
)
from workers.billing.products import Product

CATALOG = load_default()
SECOND = timedelta(seconds=1)
DAY90 = timedelta(days=90)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    """A UTC instant."""
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def product(code: str) -> Product:
    """A product of the shipped catalog."""
    return CATALOG.require(code)


def terms(
    code: str,
    start: datetime,
    end: datetime,
    paid: str,
    *,
    currency: str = "EUR",
    quantity: int = 1,
    status: str = "active",
) -> Terms:
    """What a subscription to this product holds now."""
    return Terms(
        product_code=code,
        quantity=quantity,
        cycle=product(code).cycle,
        currency=currency,
        price_paid=Decimal(paid),
        period_start=start,
        expires_at=end,
        status=status,
    )


def upgrade(held: Terms, to: str, at: datetime, quantity: int | None = None) -> Quote:
    """Quote upgrading the held subscription to the product with this code."""
    return quote_upgrade(held, product(held.product_code), product(to), at, quantity=quantity)


# Calendar arithmetic


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        (utc(2026, 1, 31), 1, utc(2026, 2, 28)),
        (utc(2028, 1, 31), 1, utc(2028, 2, 29)),
        (utc(2026, 3, 31), 1, utc(2026, 4, 30)),
        (utc(2026, 1, 30), 1, utc(2026, 2, 28)),
        (utc(2026, 12, 15), 1, utc(2027, 1, 15)),
        (utc(2028, 2, 29), 12, utc(2029, 2, 28)),
        (utc(2028, 2, 29), 48, utc(2032, 2, 29)),
        (utc(2026, 2, 28), 1, utc(2026, 3, 28)),
        (utc(2026, 3, 31), -1, utc(2026, 2, 28)),
        (utc(2026, 1, 15), -1, utc(2025, 12, 15)),
        (utc(2026, 5, 31), 0, utc(2026, 5, 31)),
    ],
)
def test_adding_months_clamps_to_the_last_day_of_the_month(
    start: datetime, months: int, expected: datetime
) -> None:
    assert add_months(start, months) == expected


def test_adding_months_keeps_the_time_of_day_and_the_timezone() -> None:
    rome = timezone(timedelta(hours=2))
    start = datetime(2026, 1, 31, 23, 59, 58, 123, tzinfo=rome)
    assert add_months(start, 1) == datetime(2026, 2, 28, 23, 59, 58, 123, tzinfo=rome)
    assert add_months(start, 1).tzinfo is rome


def test_adding_months_to_a_naive_datetime_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        add_months(datetime(2026, 1, 31), 1)


def test_adding_months_beyond_the_calendar_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="out of the calendar's range"):
        add_months(utc(9999, 6, 1), 12)


def test_a_period_is_one_or_more_calendar_months_or_years_and_lifetime_never_ends() -> None:
    assert add_period(utc(2026, 1, 31, 8), "monthly") == utc(2026, 2, 28, 8)
    assert add_period(utc(2026, 1, 31, 8), "monthly", 3) == utc(2026, 4, 30, 8)
    assert add_period(utc(2028, 2, 29), "annual") == utc(2029, 2, 28)
    assert add_period(utc(2026, 6, 30), "annual", 2) == utc(2028, 6, 30)
    assert add_period(utc(2026, 6, 30), "lifetime") == LIFETIME_END == utc(9999, 12, 31, 23, 59, 59)


def test_an_unknown_cycle_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown billing cycle 'weekly'"):
        add_period(utc(2026, 1, 1), "weekly")


def test_a_lifetime_period_still_refuses_a_naive_start() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        add_period(datetime(2026, 1, 1), "lifetime")


# Money


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        ("0.125", "EUR", "0.13"),
        ("0.124999", "EUR", "0.12"),
        ("2.675", "EUR", "2.68"),
        ("15", "eur", "15.00"),
        ("1000.5", "JPY", "1001"),
        ("1000.49", "JPY", "1000"),
        ("-0.125", "EUR", "-0.13"),
    ],
)
def test_money_rounds_half_up_to_the_currency_minor_unit(
    amount: str, currency: str, expected: str
) -> None:
    rounded = round_money(Decimal(amount), currency)
    assert rounded == Decimal(expected)
    assert str(rounded) == expected


# Terms


def test_terms_refuse_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="period_start must be timezone-aware"):
        terms("AWDOC-TEAM-M", datetime(2026, 1, 1), utc(2026, 2, 1), "30.00")
    with pytest.raises(ValueError, match="expires_at must be timezone-aware"):
        terms("AWDOC-TEAM-M", utc(2026, 1, 1), datetime(2026, 2, 1), "30.00")


def test_terms_refuse_an_expiry_before_the_period_start_and_a_zero_quantity() -> None:
    with pytest.raises(ValueError, match="is before period_start"):
        terms("AWDOC-TEAM-M", utc(2026, 2, 1), utc(2026, 1, 1), "30.00")
    with pytest.raises(ValueError, match="quantity must be at least 1"):
        terms("AWDOC-TEAM-M", utc(2026, 1, 1), utc(2026, 2, 1), "30.00", quantity=0)
    with pytest.raises(ValueError, match="price_paid must be a non-negative amount"):
        terms("AWDOC-TEAM-M", utc(2026, 1, 1), utc(2026, 2, 1), "-1")


def test_terms_hold_instants_in_utc_and_the_currency_in_upper_case() -> None:
    rome = timezone(timedelta(hours=1))
    held = Terms(
        product_code="AWDOC-TEAM-M",
        quantity=1,
        cycle="monthly",
        currency="eur",
        price_paid=Decimal("30.00"),
        period_start=datetime(2026, 1, 1, 1, tzinfo=rome),
        expires_at=datetime(2026, 2, 1, 1, tzinfo=rome),
        status="active",
    )
    assert held.period_start == utc(2026, 1, 1)
    assert held.period_start.tzinfo is UTC
    assert held.currency == "EUR"


# Renewal


def test_a_manual_renewal_before_expiry_adds_the_period_to_the_natural_expiry() -> None:
    held = terms("AWDOC-TEAM-Y", utc(2025, 6, 30), utc(2026, 6, 30), "300.00")
    quote = quote_renewal(held, product("AWDOC-TEAM-Y"), utc(2026, 5, 1), automatic=False)
    assert quote.allowed
    assert quote.kind == "renewal"
    assert quote.new_period_start == utc(2026, 6, 30)
    assert quote.new_expires_at == utc(2027, 6, 30, 0, 0, 0)
    assert quote.amount_due == Decimal("300.00")
    assert quote.explanation.startswith("manual renewal before expiry")


def test_an_automatic_renewal_extends_by_one_period_from_the_current_expiry() -> None:
    held = terms("AWDOC-TEAM-M", utc(2025, 12, 31, 9), utc(2026, 1, 31, 9), "30.00")
    quote = quote_renewal(held, product("AWDOC-TEAM-M"), utc(2026, 1, 31, 9), automatic=True)
    assert quote.new_period_start == utc(2026, 1, 31, 9)
    assert quote.new_expires_at == utc(2026, 2, 28, 9)
    assert quote.amount_due == Decimal("30.00")
    assert quote.explanation.startswith("automatic renewal")


def test_an_automatic_renewal_charged_late_still_extends_from_the_expiry() -> None:
    held = terms("AWDOC-TEAM-M", utc(2026, 1, 1), utc(2026, 2, 1), "30.00", status="past_due")
    quote = quote_renewal(held, product("AWDOC-TEAM-M"), utc(2026, 2, 5), automatic=True)
    assert quote.new_expires_at == utc(2026, 3, 1)


def test_a_renewal_after_expiry_starts_a_new_period_at_the_payment() -> None:
    held = terms("AWDOC-TEAM-Y", utc(2025, 6, 30), utc(2026, 6, 30), "300.00", status="expired")
    paid_at = utc(2026, 8, 14, 10, 30, 15)
    quote = quote_renewal(held, product("AWDOC-TEAM-Y"), paid_at, automatic=False)
    assert quote.new_period_start == paid_at
    assert quote.new_expires_at == utc(2027, 8, 14, 10, 30, 15)
    assert quote.explanation.startswith("renewal after expiry")


def test_a_manual_renewal_one_second_before_expiry_still_counts_from_the_natural_expiry() -> None:
    held = terms("AWDOC-TEAM-Y", utc(2025, 6, 30), utc(2026, 6, 30), "300.00")
    before = quote_renewal(
        held, product("AWDOC-TEAM-Y"), utc(2026, 6, 30) - SECOND, automatic=False
    )
    at = quote_renewal(held, product("AWDOC-TEAM-Y"), utc(2026, 6, 30), automatic=False)
    assert before.explanation.startswith("manual renewal before expiry")
    assert at.explanation.startswith("renewal after expiry")
    assert before.new_expires_at == at.new_expires_at == utc(2027, 6, 30)


def test_a_leap_day_annual_renewal_ends_on_the_last_day_of_february() -> None:
    held = terms("AWDOC-TEAM-Y", utc(2027, 2, 28), utc(2028, 2, 29), "300.00")
    quote = quote_renewal(held, product("AWDOC-TEAM-Y"), utc(2028, 2, 1), automatic=False)
    assert quote.new_expires_at == utc(2029, 2, 28)


def test_a_renewal_costs_the_renewal_price_times_the_quantity() -> None:
    held = terms(
        "GD-WORDS-NET-SB",
        utc(2026, 1, 10),
        utc(2027, 1, 10),
        "2000.00",
        currency="USD",
        quantity=2,
    )
    quote = quote_renewal(held, product("GD-WORDS-NET-SB"), utc(2026, 12, 1), automatic=True)
    assert quote.new_price == quote.amount_due == Decimal("1200.00")
    assert quote.credit == quote.renewal_price == Decimal("0.00")
    assert quote.policy == "maintenance"
    assert quote.currency == "USD"


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ("pending", "the order is not paid yet: there is nothing to renew"),
        ("canceled", "the subscription was canceled: its access has ended"),
        ("refunded", "the order was refunded: its access has ended"),
    ],
)
def test_a_subscription_whose_access_has_ended_or_never_began_is_not_renewed(
    status: str, reason: str
) -> None:
    held = terms("AWDOC-TEAM-Y", utc(2025, 6, 30), utc(2026, 6, 30), "300.00", status=status)
    quote = quote_renewal(held, product("AWDOC-TEAM-Y"), utc(2026, 5, 1), automatic=False)
    assert not quote.allowed
    assert quote.reason.startswith(reason)
    assert quote.new_expires_at is None
    assert quote.amount_due == Decimal("0.00")


def test_a_renewal_in_an_unpriced_currency_is_refused() -> None:
    held = terms("AWDOC-TEAM-Y", utc(2025, 6, 30), utc(2026, 6, 30), "330.00", currency="USD")
    quote = quote_renewal(held, product("AWDOC-TEAM-Y"), utc(2026, 5, 1), automatic=False)
    assert quote.reason == "AWDoc TEAM (annual) has no renewal price in USD"


def test_a_renewal_refuses_a_naive_instant() -> None:
    held = terms("AWDOC-TEAM-Y", utc(2025, 6, 30), utc(2026, 6, 30), "300.00")
    with pytest.raises(ValueError, match="at must be timezone-aware"):
        quote_renewal(held, product("AWDOC-TEAM-Y"), datetime(2026, 5, 1), automatic=False)
