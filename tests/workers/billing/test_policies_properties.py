"""Properties of the policies that must hold for any subscription, product pair and instant."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from workers.billing.catalog import load_default
from workers.billing.policies import (
    UPGRADABLE,
    Terms,
    add_months,
    add_period,
    quote_renewal,
    quote_upgrade,
)
from workers.billing.products import Product

CATALOG = load_default()
PRODUCTS = CATALOG.products
# Babel's first look-up of a currency is slow; a deadline would make that a flaky failure.
PROFILE = settings(deadline=None, max_examples=300)

instants = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2090, 12, 31),
    timezones=st.just(UTC),
)
cents = st.integers(min_value=0, max_value=10_000_000).map(lambda n: Decimal(n).scaleb(-2))


@st.composite
def holdings(draw: st.DrawFn, statuses: tuple[str, ...] = UPGRADABLE) -> tuple[Terms, Product]:
    """A product and the terms of a subscription to it, in one of its currencies."""
    current = draw(st.sampled_from(PRODUCTS))
    start = draw(instants)
    if current.cycle == "lifetime":
        end = add_period(start, "lifetime")
    else:
        # Usually the period the cycle predicts, sometimes whatever the provider reported.
        natural = add_period(start, current.cycle)
        end = draw(
            st.one_of(
                st.just(natural),
                st.datetimes(
                    min_value=start.replace(tzinfo=None),
                    max_value=(natural + timedelta(days=400)).replace(tzinfo=None),
                    timezones=st.just(UTC),
                ),
            )
        )
    held = Terms(
        product_code=current.code,
        quantity=draw(st.integers(min_value=1, max_value=50)),
        cycle=current.cycle,
        currency=draw(st.sampled_from(sorted(current.prices))),
        price_paid=draw(cents),
        period_start=start,
        expires_at=end,
        status=draw(st.sampled_from(statuses)),
    )
    return held, current


def targets(current: Product) -> st.SearchStrategy[Product]:
    """Any product, most often one of the same family (where upgrades can be allowed)."""
    kin = [p for p in PRODUCTS if p.family == current.family]
    return st.one_of(st.sampled_from(kin), st.sampled_from(kin), st.sampled_from(PRODUCTS))


@st.composite
def moments(draw: st.DrawFn, held: Terms) -> datetime:
    """An instant around the subscription's period: before, inside, at its edges or after."""
    span = max(held.expires_at - held.period_start, timedelta(seconds=1))
    span = min(span, timedelta(days=800))
    edges = [
        held.period_start,
        held.period_start + timedelta(days=90),
        held.expires_at - timedelta(days=90),
        held.expires_at,
    ]
    jitter = timedelta(seconds=draw(st.integers(min_value=-2, max_value=2)))
    offset = draw(st.floats(min_value=-0.5, max_value=2.0, allow_nan=False))
    return draw(
        st.one_of(
            st.sampled_from(edges).map(lambda edge: edge + jitter),
            st.just(held.period_start + span * offset),
        )
    )


@PROFILE
@given(data=st.data(), holding=holdings())
def test_an_upgrade_credit_is_never_negative_nor_above_the_price_of_the_periods_left(
    data: st.DataObject, holding: tuple[Terms, Product]
) -> None:
    held, current = holding
    target = data.draw(targets(current))
    at = data.draw(moments(held))
    quantity = data.draw(st.none() | st.integers(min_value=1, max_value=60))
    quote = quote_upgrade(held, current, target, at, quantity=quantity)
    # Time before the current period was prepaid by earlier periods (an early renewal), each
    # worth at most one period's price; a period is at least 28 days long.
    periods = 1 if at >= held.period_start else 2 + (held.period_start - at) // timedelta(days=28)
    assert Decimal(0) <= quote.credit <= held.price_paid * periods


@PROFILE
@given(data=st.data(), holding=holdings())
def test_the_amount_due_is_never_negative_and_is_the_price_less_credit_plus_renewal(
    data: st.DataObject, holding: tuple[Terms, Product]
) -> None:
    held, current = holding
    target = data.draw(targets(current))
    at = data.draw(moments(held))
    quote = quote_upgrade(held, current, target, at)
    assert quote.amount_due >= 0
    assert quote.renewal_price >= 0
    if quote.allowed:
        assert quote.reason == ""
        owed = max(quote.new_price - quote.credit, Decimal(0))
        assert quote.amount_due == owed + quote.renewal_price
        assert quote.new_expires_at is not None
        assert quote.new_expires_at > at
    else:
        assert quote.reason
        assert quote.amount_due == 0
        assert quote.new_expires_at is None


@PROFILE
@given(data=st.data(), holding=holdings(statuses=("active", "past_due", "expired")))
def test_a_renewal_never_moves_the_expiry_backwards(
    data: st.DataObject, holding: tuple[Terms, Product]
) -> None:
    held, current = holding
    at = data.draw(moments(held))
    automatic = data.draw(st.booleans())
    quote = quote_renewal(held, current, at, automatic=automatic)
    if current.cycle == "lifetime":
        assert not quote.allowed
        return
    assert quote.allowed
    assert quote.new_expires_at is not None
    assert quote.new_expires_at > held.expires_at
    assert quote.amount_due == quote.new_price >= 0


@PROFILE
@given(start=instants, months=st.integers(min_value=-240, max_value=240))
def test_adding_months_never_overshoots_the_target_month(start: datetime, months: int) -> None:
    result = add_months(start, months)
    year, month0 = divmod(start.year * 12 + start.month - 1 + months, 12)
    assert (result.year, result.month) == (year, month0 + 1)
    assert result.day == min(start.day, calendar.monthrange(year, month0 + 1)[1])
    assert result.timetz() == start.timetz()


@PROFILE
@given(start=instants, months=st.integers(min_value=1, max_value=240))
def test_adding_months_always_moves_forward(start: datetime, months: int) -> None:
    assert add_months(start, months) > start
