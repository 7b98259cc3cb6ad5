"""Both upgrade policies, restart and maintenance: every RULES.md example, boundaries, refusals."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from tests.workers.billing.test_policies import DAY90, SECOND, product, terms, upgrade, utc
from workers.billing.policies import (
    Terms,
    add_months,
    upgrade_refusal,
)

# Policy `restart`


def test_the_restart_worked_example_credits_the_unused_half_month_by_the_second() -> None:
    held = terms("AWDOC-TEAM-M", utc(2026, 1, 1), utc(2026, 2, 1), "30.00")
    quote = upgrade(held, "AWDOC-BUSINESS-Y", utc(2026, 1, 16, 12))
    assert quote.allowed, quote.reason
    assert quote.policy == "restart"
    assert quote.credit == Decimal("15.00")
    assert quote.new_price == Decimal("600.00")
    assert quote.renewal_price == Decimal("0.00")
    assert quote.amount_due == Decimal("585.00")
    assert quote.new_period_start == utc(2026, 1, 16, 12, 0, 0)
    assert quote.new_expires_at == utc(2027, 1, 16, 12, 0, 0)
    assert "1,339,200 of 2,678,400 seconds" in quote.explanation


def test_a_restart_credit_is_rounded_half_up_to_the_cent() -> None:
    held = terms("AWDOC-TEAM-M", utc(2026, 1, 1), utc(2026, 2, 1), "30.00")
    # 1 s short of a third of January left: 30 × 892,799 / 2,678,400 = 9.99998... -> 10.00
    quote = upgrade(held, "AWDOC-BUSINESS-M", utc(2026, 2, 1) - timedelta(seconds=892_799))
    assert quote.credit == Decimal("10.00")
    # Exactly 1/80 of the period left of 0.40 paid is 0.005: half-up gives 0.01, half-even 0.00.
    cheap = terms("AWDOC-TEAM-M", utc(2026, 1, 1), utc(2026, 2, 1), "0.40")
    quote = upgrade(cheap, "AWDOC-BUSINESS-M", utc(2026, 2, 1) - timedelta(seconds=2_678_400 // 80))
    assert quote.credit == Decimal("0.01")


def test_a_restart_upgrade_from_monthly_to_annual_of_the_same_edition_is_allowed() -> None:
    held = terms("AWDOC-TEAM-M", utc(2026, 1, 1), utc(2026, 2, 1), "30.00")
    quote = upgrade(held, "AWDOC-TEAM-Y", utc(2026, 1, 16, 12))
    assert (quote.credit, quote.amount_due) == (Decimal("15.00"), Decimal("285.00"))
    assert quote.new_expires_at == utc(2027, 1, 16, 12)


def test_a_restart_upgrade_to_more_units_of_the_same_edition_is_allowed() -> None:
    held = terms("AWDOC-TEAM-M", utc(2026, 1, 1), utc(2026, 2, 1), "60.00", quantity=2)
    quote = upgrade(held, "AWDOC-TEAM-M", utc(2026, 1, 16, 12), quantity=3)
    assert quote.allowed
    assert (quote.credit, quote.new_price, quote.amount_due) == (
        Decimal("30.00"),
        Decimal("90.00"),
        Decimal("60.00"),
    )
    assert quote.new_expires_at == utc(2026, 2, 16, 12)


def test_a_restart_period_beginning_on_the_31st_ends_on_the_last_day_of_next_month() -> None:
    held = terms("AWDOC-TEAM-M", utc(2026, 1, 1), utc(2026, 2, 1), "30.00")
    quote = upgrade(held, "AWDOC-BUSINESS-M", utc(2026, 1, 31, 10, 20, 30))
    assert quote.new_expires_at == utc(2026, 2, 28, 10, 20, 30)


def test_a_restart_on_a_leap_day_to_annual_ends_on_the_28th_of_february() -> None:
    held = terms("AWDOC-TEAM-M", utc(2028, 2, 1), utc(2028, 3, 1), "30.00")
    quote = upgrade(held, "AWDOC-BUSINESS-Y", utc(2028, 2, 29))
    assert quote.new_expires_at == utc(2029, 2, 28)
    # February 2028 has 29 days: one day left of 29 is 30.00 / 29 = 1.034... -> 1.03
    assert quote.credit == Decimal("1.03")


def test_a_restart_credit_counts_whole_seconds_to_the_second() -> None:
    held = terms("AWDOC-TEAM-M", utc(2026, 1, 1), utc(2026, 2, 1), "2678400.00")
    quote = upgrade(held, "AWDOC-BUSINESS-Y", utc(2026, 2, 1) - timedelta(seconds=7))
    assert quote.credit == Decimal("7.00")
    quote = upgrade(
        held, "AWDOC-BUSINESS-Y", utc(2026, 2, 1) - timedelta(seconds=7, microseconds=9)
    )
    assert quote.credit == Decimal("7.00")


def test_a_restart_upgrade_after_the_expiry_is_refused_as_it_needs_an_active_subscription() -> None:
    held = terms("AWDOC-TEAM-M", utc(2026, 1, 1), utc(2026, 2, 1), "30.00", status="past_due")
    for at in (utc(2026, 2, 1), utc(2026, 2, 3)):
        quote = upgrade(held, "AWDOC-BUSINESS-M", at)
        assert not quote.allowed
        assert quote.reason == (
            "the subscription expired on 2026-02-01: only an active subscription can be "
            "upgraded; renew it first"
        )
    assert upgrade(held, "AWDOC-BUSINESS-M", utc(2026, 2, 1) - SECOND).allowed


def test_a_restart_upgrade_at_the_period_start_credits_everything_paid() -> None:
    held = terms("AWDOC-TEAM-M", utc(2026, 1, 1), utc(2026, 2, 1), "30.00")
    assert upgrade(held, "AWDOC-BUSINESS-M", utc(2026, 1, 1)).credit == Decimal("30.00")


def test_a_restart_upgrade_after_an_early_renewal_credits_the_prepaid_periods_too() -> None:
    # Bought 2026-01-01 for 30.00 and renewed by hand the same day: 60.00 paid, the current
    # (renewed) period runs 2026-02-01 -> 2026-03-01. One day later every unused second counts:
    # the rest of January at January's rate (30 of 31 days) and the whole of February.
    held = terms("AWDOC-TEAM-M", utc(2026, 2, 1), utc(2026, 3, 1), "30.00")
    quote = upgrade(held, "AWDOC-BUSINESS-M", utc(2026, 1, 2))
    assert quote.allowed, quote.reason
    assert quote.credit == Decimal("59.03")  # 30 × 30/31 + 30
    assert quote.amount_due == Decimal("0.97")
    assert "5,011,200 seconds to the expiry" in quote.explanation
    # Halfway through the renewed period only the half left counts, as in the worked example.
    assert upgrade(held, "AWDOC-BUSINESS-M", utc(2026, 2, 15)).credit == Decimal("15.00")


def test_a_credit_larger_than_the_new_price_leaves_nothing_due() -> None:
    held = terms("AWDOC-TEAM-M", utc(2026, 1, 1), utc(2026, 2, 1), "100.00")
    quote = upgrade(held, "AWDOC-BUSINESS-M", utc(2026, 1, 2))
    assert quote.credit > quote.new_price
    assert quote.amount_due == Decimal("0.00")


# Policy `maintenance`


BOUGHT = utc(2026, 1, 10)
EXPIRES = utc(2027, 1, 10)


def words(status: str = "active", quantity: int = 1, paid: str = "1000.00") -> Terms:
    """GroupDocs.Words for .NET, Small Business: bought 2026-01-10 for 1,000.00 USD."""
    return terms(
        "GD-WORDS-NET-SB",
        BOUGHT,
        EXPIRES,
        paid,
        currency="USD",
        quantity=quantity,
        status=status,
    )


def test_the_maintenance_worked_example_within_90_days_resets_the_expiry() -> None:
    quote = upgrade(words(), "GD-TOTAL-NET-SB", utc(2026, 3, 1))
    assert quote.allowed, quote.reason
    assert quote.policy == "maintenance"
    assert (quote.credit, quote.new_price) == (Decimal("1000.00"), Decimal("3000.00"))
    assert quote.renewal_price == Decimal("0.00")
    assert quote.amount_due == Decimal("2000.00")
    assert quote.new_period_start == utc(2026, 3, 1)
    assert quote.new_expires_at == utc(2027, 3, 1)
    assert quote.explanation == (
        "within 90 days of the purchase or last renewal: expiry reset to one year from the upgrade"
    )


def test_a_maintenance_upgrade_after_an_early_renewal_never_moves_the_expiry_earlier() -> None:
    # Renewed early: the paid term runs 2027-01-10 to 2028-01-10, and the upgrade on 2026-12-15
    # falls within 90 days of that renewal. A year from the upgrade (2027-12-15) would take back
    # 26 days already paid for: RULES.md keeps the current expiry.
    renewed = terms("GD-WORDS-NET-SB", EXPIRES, utc(2028, 1, 10), "1000.00", currency="USD")
    quote = upgrade(renewed, "GD-TOTAL-NET-SB", utc(2026, 12, 15))
    assert quote.allowed, quote.reason
    assert quote.new_expires_at == utc(2028, 1, 10)
    assert quote.explanation.endswith("the paid term: the expiry stays 2028-01-10")


def test_the_maintenance_worked_example_mid_term_keeps_the_expiry() -> None:
    quote = upgrade(words(), "GD-TOTAL-NET-SB", utc(2026, 7, 1))
    assert quote.amount_due == Decimal("2000.00")
    assert quote.new_expires_at == utc(2027, 1, 10)
    assert quote.new_period_start == BOUGHT
    assert quote.explanation.endswith("the expiry stays 2027-01-10")


def test_the_maintenance_worked_example_in_the_last_90_days_adds_the_renewal() -> None:
    quote = upgrade(words(), "GD-TOTAL-NET-SB", utc(2026, 11, 15))
    renewal = product("GD-TOTAL-NET-SB").renewal_price("USD")
    assert quote.renewal_price == renewal == Decimal("1800.00")
    assert quote.amount_due == Decimal("2000.00") + renewal == Decimal("3800.00")
    assert quote.new_expires_at == utc(2027, 11, 15)


def test_the_maintenance_worked_example_after_expiry_is_refused() -> None:
    quote = upgrade(words(), "GD-TOTAL-NET-SB", utc(2027, 2, 1))
    assert not quote.allowed
    assert quote.reason == "maintenance expired on 2027-01-10: renew it before upgrading"
    assert quote.amount_due == Decimal("0.00")
    assert quote.new_expires_at is None


@pytest.mark.parametrize(
    ("at", "window"),
    [
        (BOUGHT + DAY90 - SECOND, "within"),
        (BOUGHT + DAY90, "within"),
        (BOUGHT + DAY90 + SECOND, "during"),
        (EXPIRES - DAY90 - SECOND, "during"),
        (EXPIRES - DAY90, "last"),
        (EXPIRES - DAY90 + SECOND, "last"),
        (EXPIRES - SECOND, "last"),
    ],
    ids=[
        "one second before day 90 after purchase",
        "exactly 90 days after purchase",
        "one second after 90 days after purchase",
        "one second before the last 90 days",
        "exactly 90 days before expiry",
        "one second into the last 90 days",
        "one second before expiry",
    ],
)
def test_the_90_day_boundaries_are_inclusive_to_the_second(at: datetime, window: str) -> None:
    quote = upgrade(words(), "GD-TOTAL-NET-SB", at)
    assert quote.allowed
    if window == "during":
        assert quote.new_expires_at == EXPIRES
        assert quote.renewal_price == Decimal("0.00")
        assert quote.amount_due == Decimal("2000.00")
    else:
        assert quote.new_expires_at == add_months(at, 12)
        assert quote.new_period_start == at
        expected_renewal = Decimal("1800.00") if window == "last" else Decimal("0.00")
        assert quote.renewal_price == expected_renewal
        assert quote.amount_due == Decimal("2000.00") + expected_renewal


def test_the_boundary_instants_are_the_documented_dates() -> None:
    assert utc(2026, 4, 10) == BOUGHT + DAY90
    assert utc(2026, 10, 12) == EXPIRES - DAY90


def test_a_maintenance_upgrade_at_the_instant_of_expiry_is_refused() -> None:
    quote = upgrade(words(), "GD-TOTAL-NET-SB", EXPIRES)
    assert quote.reason.startswith("maintenance expired on 2027-01-10")


def test_the_renewal_added_in_the_last_90_days_is_for_every_unit_of_the_target() -> None:
    quote = upgrade(words(quantity=2, paid="2000.00"), "GD-TOTAL-NET-SB", utc(2026, 12, 1))
    assert quote.new_price == Decimal("6000.00")
    assert quote.renewal_price == Decimal("3600.00")
    assert quote.amount_due == Decimal("7600.00")


def test_a_leap_day_maintenance_upgrade_resets_the_expiry_to_the_28th_of_february() -> None:
    held = terms("GD-WORDS-NET-SB", utc(2028, 1, 10), utc(2029, 1, 10), "1000.00", currency="USD")
    quote = upgrade(held, "GD-TOTAL-NET-SB", utc(2028, 2, 29, 12))
    assert quote.new_expires_at == utc(2029, 2, 28, 12)


def test_a_broader_license_of_the_same_product_is_an_upgrade() -> None:
    held = terms("GD-TOTAL-NET-SB", BOUGHT, EXPIRES, "3000.00", currency="USD")
    quote = upgrade(held, "GD-TOTAL-NET-OEM", utc(2026, 7, 1))
    assert quote.allowed
    assert quote.amount_due == Decimal("6000.00")


def test_a_single_product_to_the_suite_of_a_broader_license_is_an_upgrade() -> None:
    quote = upgrade(words(), "GD-TOTAL-NET-OEM", utc(2026, 7, 1))
    assert quote.allowed
    assert quote.amount_due == Decimal("8000.00")


def test_adding_a_product_by_moving_to_the_bundle_that_includes_both_is_an_upgrade() -> None:
    quote = upgrade(words(), "GD-WORDS-CELLS-NET-SB", utc(2026, 7, 1))
    assert quote.allowed
    assert quote.amount_due == Decimal("800.00")
    held = terms("GD-WORDS-CELLS-NET-SB", BOUGHT, EXPIRES, "1800.00", currency="USD")
    assert upgrade(held, "GD-TOTAL-NET-SB", utc(2026, 7, 1)).amount_due == Decimal("1200.00")


def test_more_units_of_the_same_library_is_an_upgrade() -> None:
    quote = upgrade(words(), "GD-WORDS-NET-SB", utc(2026, 7, 1), quantity=3)
    assert quote.allowed
    assert quote.amount_due == Decimal("2000.00")


def test_the_maintenance_credit_after_a_renewal_is_the_original_purchase_not_the_renewal() -> None:
    # Bought for 920.00, lapsed, renewed for 552.00: the order that bought the plan is credited.
    held = dataclasses.replace(
        terms("GD-WORDS-JAVA-SB", utc(2027, 2, 1), utc(2028, 2, 1), "552.00", currency="EUR"),
        purchase_price=Decimal("920.00"),
    )
    quote = upgrade(held, "GD-TOTAL-JAVA-SB", utc(2027, 7, 1))
    assert (quote.credit, quote.new_price) == (Decimal("920.00"), Decimal("2760.00"))
    assert quote.amount_due == Decimal("1840.00")


def test_the_maintenance_credit_is_the_whole_price_paid_even_in_euro() -> None:
    held = terms("GD-WORDS-JAVA-SB", BOUGHT, EXPIRES, "920.00", currency="EUR")
    quote = upgrade(held, "GD-TOTAL-JAVA-SB", utc(2026, 7, 1))
    assert (quote.credit, quote.amount_due) == (Decimal("920.00"), Decimal("1840.00"))


# Refusals


@pytest.mark.parametrize(
    ("held", "to", "at", "quantity", "reason"),
    [
        pytest.param(
            terms("GD-TOTAL-NET-SB", BOUGHT, EXPIRES, "3000.00", currency="USD"),
            "GD-TOTAL-JAVA-OEM",
            utc(2026, 7, 1),
            None,
            "different product: .NET to Java is not an upgrade",
            id="cross-platform",
        ),
        pytest.param(
            words(),
            "GD-CELLS-NET-OEM",
            utc(2026, 7, 1),
            None,
            "different product: GroupDocs.Words to GroupDocs.Cells is not an upgrade",
            id="cross-product library",
        ),
        pytest.param(
            terms("AWDOC-TEAM-M", utc(2026, 1, 1), utc(2026, 2, 1), "30.00", currency="USD"),
            "GD-TOTAL-NET-SB",
            utc(2026, 1, 16),
            None,
            "different product: AWDoc to GroupDocs.Total is not an upgrade",
            id="cross-family",
        ),
        pytest.param(
            terms("GD-TOTAL-NET-SB", BOUGHT, EXPIRES, "3000.00", currency="USD"),
            "GD-WORDS-NET-OEM",
            utc(2026, 7, 1),
            None,
            "downgrade: from the GroupDocs.Total suite to GroupDocs.Words",
            id="suite to single product",
        ),
        pytest.param(
            terms("GD-WORDS-NET-OEM", BOUGHT, EXPIRES, "3000.00", currency="USD"),
            "GD-TOTAL-NET-SB",
            utc(2026, 7, 1),
            None,
            "downgrade: Developer OEM to Developer Small Business is a narrower license",
            id="narrower license",
        ),
        pytest.param(
            words(quantity=3, paid="3000.00"),
            "GD-WORDS-NET-SB",
            utc(2026, 7, 1),
            2,
            "downgrade: 2 units instead of 3",
            id="fewer library units",
        ),
        pytest.param(
            words(quantity=4, paid="4000.00"),
            "GD-TOTAL-NET-SB",
            utc(2026, 7, 1),
            1,
            "downgrade: GroupDocs.Total for .NET Developer Small Business × 1 costs 3000.00 USD, "
            "less than 4000.00 USD now",
            id="cheaper suite",
        ),
        pytest.param(
            terms("AWDOC-BUSINESS-M", utc(2026, 1, 1), utc(2026, 2, 1), "60.00"),
            "AWDOC-TEAM-Y",
            utc(2026, 1, 16),
            None,
            "downgrade: BUSINESS to TEAM",
            id="lower edition",
        ),
        pytest.param(
            terms("AWDOC-TEAM-Y", utc(2026, 1, 1), utc(2027, 1, 1), "300.00"),
            "AWDOC-TEAM-M",
            utc(2026, 3, 1),
            None,
            "cheaper cycle: annual to monthly billing is not an upgrade",
            id="cheaper cycle",
        ),
        pytest.param(
            terms("AWDOC-TEAM-Y", utc(2026, 1, 1), utc(2027, 1, 1), "300.00"),
            "AWDOC-BUSINESS-M",
            utc(2026, 3, 1),
            None,
            "cheaper cycle: annual to monthly billing is not an upgrade",
            id="higher edition on a cheaper cycle",
        ),
        pytest.param(
            terms("AWDOC-TEAM-M", utc(2026, 1, 1), utc(2026, 2, 1), "150.00", quantity=5),
            "AWDOC-BUSINESS-M",
            utc(2026, 1, 16),
            1,
            "downgrade: AWDoc BUSINESS (monthly) × 1 costs 60.00 EUR, less than 150.00 EUR now",
            id="fewer units of a higher edition",
        ),
        pytest.param(
            terms("AWDOC-TEAM-M", utc(2026, 1, 1), utc(2026, 2, 1), "30.00"),
            "AWDOC-TEAM-M",
            utc(2026, 1, 16),
            None,
            "nothing changes: it is already AWDoc TEAM (monthly) × 1",
            id="identical",
        ),
        pytest.param(
            terms("AWDOC-TEAM-M", utc(2026, 1, 1), utc(2026, 2, 1), "30.00", status="expired"),
            "AWDOC-BUSINESS-M",
            utc(2026, 1, 16),
            None,
            "the subscription is expired: only an active subscription can be upgraded",
            id="expired subscription",
        ),
        pytest.param(
            terms("AWDOC-TEAM-M", utc(2026, 1, 1), utc(2026, 2, 1), "30.00", status="canceled"),
            "AWDOC-BUSINESS-M",
            utc(2026, 1, 16),
            None,
            "the subscription is canceled: only an active subscription can be upgraded",
            id="canceled subscription",
        ),
        pytest.param(
            terms("AWDOC-TEAM-M", utc(2026, 1, 1), utc(2026, 2, 1), "33.00", currency="USD"),
            "AWDOC-BUSINESS-M",
            utc(2026, 1, 16),
            None,
            "AWDoc BUSINESS (monthly) is not sold in USD",
            id="unpriced currency",
        ),
    ],
)
def test_a_refused_upgrade_says_why_and_quotes_nothing(
    held: Terms, to: str, at: datetime, quantity: int | None, reason: str
) -> None:
    quote = upgrade(held, to, at, quantity=quantity)
    assert not quote.allowed
    assert quote.reason == reason
    assert quote.explanation == f"refused: {reason}"
    assert quote.kind == "upgrade"
    assert (quote.credit, quote.amount_due, quote.renewal_price) == (Decimal(0),) * 3
    assert quote.new_period_start is None
    assert quote.new_expires_at is None
    current = product(held.product_code)
    assert upgrade_refusal(current, product(to), held, at, quantity) == reason


def test_an_allowed_upgrade_has_no_refusal() -> None:
    held = terms("AWDOC-TEAM-M", utc(2026, 1, 1), utc(2026, 2, 1), "30.00")
    current, target = product("AWDOC-TEAM-M"), product("AWDOC-BUSINESS-Y")
    assert upgrade_refusal(current, target, held, utc(2026, 1, 16)) is None
    assert upgrade(held, "AWDOC-BUSINESS-Y", utc(2026, 1, 16)).reason == ""


def test_a_quantity_below_one_is_refused() -> None:
    held = terms("AWDOC-TEAM-M", utc(2026, 1, 1), utc(2026, 2, 1), "30.00")
    quote = upgrade(held, "AWDOC-BUSINESS-M", utc(2026, 1, 16), quantity=0)
    assert quote.reason == "the quantity must be at least 1, not 0"


def test_a_past_due_subscription_can_still_be_upgraded() -> None:
    quote = upgrade(words(status="past_due"), "GD-TOTAL-NET-SB", utc(2026, 7, 1))
    assert quote.allowed


def test_an_upgrade_refuses_a_naive_instant() -> None:
    with pytest.raises(ValueError, match="at must be timezone-aware"):
        upgrade(words(), "GD-TOTAL-NET-SB", datetime(2026, 7, 1))


def test_terms_refuse_a_negative_purchase_price_and_default_it_to_the_price_paid() -> None:
    held = terms("GD-WORDS-NET-SB", BOUGHT, EXPIRES, "600.00", currency="USD")
    assert held.purchase_price == Decimal("600.00")
    with pytest.raises(ValueError, match="purchase_price must be a non-negative amount"):
        dataclasses.replace(held, purchase_price=Decimal("-1"))


def test_a_restart_quote_long_before_the_period_walks_back_no_further_than_the_calendar() -> None:
    held = terms("AWDOC-TEAM-M", utc(2, 1, 15), utc(2, 2, 15), "30.00")
    quote = upgrade(held, "AWDOC-BUSINESS-M", utc(1, 1, 1))
    assert quote.allowed and quote.credit > Decimal("30.00")
