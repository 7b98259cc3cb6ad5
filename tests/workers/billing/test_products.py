"""The products: looked up by code or id, priced per currency, frozen, and found as the target
of an upgrade."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest

from workers.billing.catalog import load_default
from workers.billing.products import Catalog, Product, UnknownProduct, UnpricedCurrency

CATALOG = load_default()


def product(code: str) -> Product:
    """A product of the shipped catalog."""
    return CATALOG.require(code)


def test_a_product_is_found_by_its_code_or_by_its_numeric_id() -> None:
    team = product("AWDOC-TEAM-M")
    assert CATALOG.get("AWDOC-TEAM-M") is team
    assert CATALOG.get(team.pid) is team
    assert CATALOG.get(" AWDOC-TEAM-M ") is team
    assert CATALOG.get("NOPE") is None


def test_requiring_an_unknown_product_is_a_key_error_that_names_it() -> None:
    with pytest.raises(UnknownProduct, match="'NOPE'") as caught:
        CATALOG.require("NOPE")
    assert isinstance(caught.value, KeyError)
    assert str(caught.value) == "no product with code or id 'NOPE' in the catalog"


def test_a_price_in_a_currency_the_product_is_not_sold_in_is_a_clear_error() -> None:
    team = product("AWDOC-TEAM-M")
    assert team.is_priced("eur")
    assert team.price("eur") == Decimal("30.00")
    with pytest.raises(UnpricedCurrency) as caught:
        team.price("USD")
    assert str(caught.value) == (
        "AWDoc TEAM (monthly) (AWDOC-TEAM-M) has no price in 'USD'; it is priced in EUR"
    )


def test_products_cannot_be_changed_after_loading() -> None:
    team = product("AWDOC-TEAM-M")
    with pytest.raises(TypeError):
        team.prices["EUR"] = Decimal(0)  # type: ignore[index]
    with pytest.raises(AttributeError):
        team.code = "X"  # type: ignore[misc]
    assert hash(team) == hash(product("AWDOC-TEAM-M"))


def test_a_catalog_built_in_code_refuses_duplicate_codes() -> None:
    team = product("AWDOC-TEAM-M")
    with pytest.raises(ValueError, match="duplicate product code"):
        Catalog([team, team])
    assert len(Catalog([team])) == 1


def test_an_edition_name_with_a_cycle_resolves_within_the_product_line() -> None:
    team = product("AWDOC-TEAM-M")
    assert CATALOG.find_target(team, "BUSINESS", "annual") is product("AWDOC-BUSINESS-Y")


def test_an_edition_name_alone_keeps_the_current_cycle_and_ignores_case() -> None:
    team = product("AWDOC-TEAM-M")
    assert CATALOG.find_target(team, "business") is product("AWDOC-BUSINESS-M")
    assert CATALOG.find_target(team, "TEAM", "annual") is product("AWDOC-TEAM-Y")


def test_a_product_code_or_id_resolves_to_that_product() -> None:
    team = product("AWDOC-TEAM-M")
    target = product("AWDOC-BUSINESS-Y")
    assert CATALOG.find_target(team, "AWDOC-BUSINESS-Y") is target
    assert CATALOG.find_target(team, target.pid) is target
    assert CATALOG.find_target(team, "AWDoc BUSINESS (annual)") is target


def test_a_product_code_with_another_cycle_resolves_to_the_same_plan_in_that_cycle() -> None:
    team = product("AWDOC-TEAM-M")
    assert CATALOG.find_target(team, "AWDOC-BUSINESS-M", "annual") is product("AWDOC-BUSINESS-Y")
    assert CATALOG.find_target(product("GD-WORDS-NET-SB"), "GD-TOTAL-NET-SB", "monthly") is None


def test_a_license_type_resolves_within_the_product_line_and_platform() -> None:
    words = product("GD-WORDS-JAVA-SB")
    assert CATALOG.find_target(words, "Developer OEM") is product("GD-WORDS-JAVA-OEM")


def test_a_product_line_name_resolves_on_the_same_platform_keeping_the_license_type() -> None:
    assert CATALOG.find_target(product("GD-WORDS-NET-SB"), "GroupDocs.Total") is product(
        "GD-TOTAL-NET-SB"
    )
    assert CATALOG.find_target(product("GD-CELLS-JAVA-OEM"), "groupdocs.total") is product(
        "GD-TOTAL-JAVA-OEM"
    )


def test_an_unknown_target_or_an_unsold_cycle_resolves_to_nothing() -> None:
    team = product("AWDOC-TEAM-M")
    assert CATALOG.find_target(team, "ENTERPRISE") is None
    assert CATALOG.find_target(team, "BUSINESS", "lifetime") is None
    assert CATALOG.find_target(team, "  ") is None


def test_an_ambiguous_target_resolves_to_nothing() -> None:
    business = [product("AWDOC-BUSINESS-M"), product("AWDOC-BUSINESS-Y")]
    catalog = Catalog([product("AWDOC-TEAM-M"), *business])
    lifetime = replace(product("AWDOC-TEAM-M"), code="AWDOC-TEAM-L", pid="", cycle="lifetime")
    assert catalog.find_target(lifetime, "BUSINESS") is None
    assert catalog.find_target(lifetime, "BUSINESS", "annual") is business[1]


def test_an_unknown_cycle_for_a_target_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown billing cycle 'weekly'"):
        CATALOG.find_target(product("AWDOC-TEAM-M"), "BUSINESS", "weekly")
