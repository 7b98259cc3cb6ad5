"""The product catalog file: the shipped default, and the errors of malformed files by line."""

from __future__ import annotations

import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from workers.billing.catalog import CatalogError, default_path, load, load_default, loads
from workers.billing.products import Product

CATALOG = load_default()


def product(code: str) -> Product:
    """A product of the shipped catalog."""
    return CATALOG.require(code)


VALID = """\
# a small catalog
[[product]]
code = "A-TEAM-M"
pid = "101"
name = "A TEAM (monthly)"
product = "A"
edition = "TEAM"
edition_rank = 1
cycle = "monthly"
prices = { EUR = "30.00" }
family = "A"
policy = "restart"

[[product]]
code = "A-BUSINESS-M"
pid = "102"
name = "A BUSINESS (monthly)"
product = "A"
edition = "BUSINESS"
edition_rank = 2
cycle = "monthly"
prices = { EUR = "60.00" }
family = "A"
policy = "restart"
"""


def write(tmp_path: Path, text: str) -> Path:
    """Write a catalog file and return its path."""
    path = tmp_path / "catalog.toml"
    path.write_text(text, encoding="utf-8")
    return path


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """The 1-based line of the n-th line containing needle."""
    found = [n for n, line in enumerate(text.splitlines(), 1) if needle in line]
    return found[occurrence - 1]


# The shipped default


def test_the_shipped_catalog_loads_and_models_both_vendors() -> None:
    families = {p.family for p in CATALOG.products}
    assert families == {"AWDoc", "GroupDocs"}
    assert {p.policy for p in CATALOG.products if p.family == "AWDoc"} == {"restart"}
    assert {p.policy for p in CATALOG.products if p.family == "GroupDocs"} == {"maintenance"}


def test_the_default_path_is_the_toml_file_beside_the_module() -> None:
    assert default_path().name == "catalog.toml"
    assert default_path().is_file()
    assert load(default_path()).products == CATALOG.products


def test_awdoc_sells_team_and_business_monthly_and_annual_at_the_documented_prices() -> None:
    expected = {
        ("TEAM", "monthly"): Decimal("30.00"),
        ("TEAM", "annual"): Decimal("300.00"),
        ("BUSINESS", "monthly"): Decimal("60.00"),
        ("BUSINESS", "annual"): Decimal("600.00"),
    }
    awdoc = [p for p in CATALOG.products if p.family == "AWDoc"]
    assert {(p.edition, p.cycle): p.price("EUR") for p in awdoc} == expected
    for item in awdoc:
        assert item.product == "AWDoc"
        assert item.platform == ""
        assert set(item.components) == {
            "users",
            "storage_gb",
            "document_domains",
            "archived_mailboxes",
        }


def test_business_ranks_above_team_and_offers_more_of_every_component() -> None:
    team, business = product("AWDOC-TEAM-M"), product("AWDOC-BUSINESS-M")
    assert business.edition_rank > team.edition_rank
    assert all(business.components[k] > team.components[k] for k in team.components)


def test_groupdocs_sells_words_cells_and_the_total_suite_per_platform_in_both_license_types() -> (
    None
):
    groupdocs = [p for p in CATALOG.products if p.family == "GroupDocs"]
    combos = {(p.product, p.platform, p.license_type) for p in groupdocs}
    for line in ("GroupDocs.Words", "GroupDocs.Cells", "GroupDocs.Total"):
        for platform in (".NET", "Java"):
            for license_type in ("Developer Small Business", "Developer OEM"):
                assert (line, platform, license_type) in combos
    suites = [p for p in groupdocs if p.suite]
    assert {p.product for p in suites} == {"GroupDocs.Total"}
    assert all(p.cycle == "annual" for p in groupdocs)
    assert all(set(p.prices) == {"USD", "EUR"} for p in groupdocs)
    assert all(p.license_rank == (2 if p.license_type == "Developer OEM" else 1) for p in groupdocs)


def test_the_maintenance_worked_example_maps_onto_words_and_total_for_dotnet() -> None:
    words = product("GD-WORDS-NET-SB")
    total = product("GD-TOTAL-NET-SB")
    assert (words.product, words.platform, words.license_type) == (
        "GroupDocs.Words",
        ".NET",
        "Developer Small Business",
    )
    assert words.price("USD") == Decimal("1000.00")
    assert total.price("USD") == Decimal("3000.00")
    assert total.suite


def test_a_bundle_lists_the_product_lines_it_contains() -> None:
    bundle = product("GD-WORDS-CELLS-NET-SB")
    assert bundle.lines == {"GroupDocs.Words", "GroupDocs.Cells"}
    assert product("GD-WORDS-NET-SB").lines == {"GroupDocs.Words"}


def test_renewal_prices_default_to_the_prices() -> None:
    team = product("AWDOC-TEAM-Y")
    assert team.renewal_price("EUR") == team.price("EUR") == Decimal("300.00")
    words = product("GD-WORDS-NET-SB")
    assert words.renewal_price("USD") == Decimal("600.00")


def test_every_price_is_an_exact_decimal() -> None:
    for item in CATALOG.products:
        for table in (item.prices, item.renewal_prices):
            assert all(isinstance(v, Decimal) and v > 0 for v in table.values())


# Look-ups


def test_a_code_wins_over_an_equal_numeric_id_of_another_product(tmp_path: Path) -> None:
    text = VALID.replace('code = "A-BUSINESS-M"', 'code = "101"')
    catalog = load(write(tmp_path, text))
    assert catalog.require("101").edition == "BUSINESS"


# Resolving `--to`


# Reading catalog files


def test_a_valid_catalog_file_loads_with_optional_keys_defaulted(tmp_path: Path) -> None:
    catalog = load(write(tmp_path, VALID))
    team = catalog.require("A-TEAM-M")
    assert team.renewal_prices == team.prices
    assert (team.platform, team.license_type, team.license_rank, team.suite) == ("", "", 0, False)
    assert dict(team.components) == {}
    assert team.includes == ()


def test_prices_may_be_toml_numbers_and_keep_their_exact_value(tmp_path: Path) -> None:
    text = VALID.replace('prices = { EUR = "30.00" }', "prices = { EUR = 30.10, JPY = 4000 }")
    team = load(write(tmp_path, text)).require("A-TEAM-M")
    assert team.price("EUR") == Decimal("30.10")
    assert str(team.price("EUR")) == "30.10"
    assert team.price("JPY") == Decimal(4000)


def test_a_numeric_pid_is_read_as_a_string(tmp_path: Path) -> None:
    text = VALID.replace('pid = "101"', "pid = 101")
    assert load(write(tmp_path, text)).require("101").code == "A-TEAM-M"


def _case(
    name: str,
    old: str,
    new: str,
    needle: str,
    fragment: str,
    *,
    second: bool = False,
    needle_nth: int = 1,
) -> object:
    """A malformed-catalog case: replace old by new (in the second product if asked)."""
    assert old in VALID, old
    text = _replace_nth(VALID, old, new) if second else VALID.replace(old, new, 1)
    return pytest.param(text, line_of(text, needle, needle_nth), fragment, id=name)


def _replace_nth(text: str, old: str, new: str) -> str:
    """Replace the second occurrence of old."""
    first = text.index(old)
    second = text.index(old, first + 1)
    return text[:second] + new + text[second + len(old) :]


MALFORMED = [
    _case(
        "syntax error", 'cycle = "monthly"', "cycle = monthly", "cycle = monthly", "invalid TOML"
    ),
    _case(
        "missing key",
        'policy = "restart"\n',
        "",
        "[[product]]",
        "product 'A-BUSINESS-M' is missing the key 'policy'",
        second=True,
        needle_nth=2,
    ),
    _case(
        "unknown policy",
        'policy = "restart"',
        'policy = "prorate"',
        'policy = "prorate"',
        "unknown policy 'prorate'; expected one of restart, maintenance",
        second=True,
    ),
    _case(
        "bad price",
        'prices = { EUR = "60.00" }',
        'prices = { EUR = "sixty" }',
        "sixty",
        "bad EUR price 'sixty' in prices",
    ),
    _case(
        "negative price",
        'prices = { EUR = "30.00" }',
        'prices = { EUR = "-30.00" }',
        "-30.00",
        "bad EUR price '-30.00'",
    ),
    _case(
        "price with sub-cent digits",
        'prices = { EUR = "30.00" }',
        'prices = { EUR = "30.005" }',
        "30.005",
        "has more decimals than EUR allows",
    ),
    _case(
        "price as a boolean",
        'prices = { EUR = "30.00" }',
        "prices = { EUR = true }",
        "EUR = true",
        "bad EUR price True",
    ),
    _case(
        "currency that is not an ISO code",
        'prices = { EUR = "30.00" }',
        'prices = { euro = "30.00" }',
        "euro",
        "'euro' in prices is not an ISO currency code",
    ),
    _case(
        "unknown cycle",
        'cycle = "monthly"',
        'cycle = "weekly"',
        "weekly",
        "unknown cycle 'weekly'",
        second=True,
    ),
    _case(
        "duplicate code",
        'code = "A-BUSINESS-M"',
        'code = "A-TEAM-M"',
        'code = "A-TEAM-M"',
        "duplicate product code 'A-TEAM-M' (first at line 3)",
        needle_nth=2,
    ),
    _case(
        "duplicate pid",
        'pid = "102"',
        'pid = "101"',
        'pid = "101"',
        "duplicate product id '101' (first at line 4)",
        needle_nth=2,
    ),
    _case(
        "misspelt key",
        "edition_rank = 2\n",
        "edition_rnak = 2\n",
        "edition_rnak",
        "unknown key 'edition_rnak'",
    ),
    _case(
        "edition rank that is not an integer",
        "edition_rank = 2",
        'edition_rank = "high"',
        '"high"',
        "edition_rank must be a non-negative integer",
    ),
    _case(
        "unknown component",
        'prices = { EUR = "60.00" }',
        'prices = { EUR = "60.00" }\ncomponents = { seats = 5 }',
        "seats",
        "unknown component 'seats'",
    ),
    _case(
        "renewal prices in other currencies",
        'prices = { EUR = "60.00" }',
        'prices = { EUR = "60.00" }\nrenewal_prices = { USD = "60.00" }',
        "renewal_prices",
        "renewal_prices must cover the same currencies as prices",
    ),
    _case(
        "family with two policies",
        'policy = "restart"',
        'policy = "maintenance"',
        'policy = "maintenance"',
        "family 'A' mixes policies (restart and maintenance)",
        second=True,
    ),
    _case(
        "bundle of an unknown product line",
        'policy = "restart"',
        'includes = ["A", "B"]\npolicy = "restart"',
        "includes",
        "includes unknown product line 'B'",
        second=True,
    ),
    _case(
        "empty name",
        'name = "A TEAM (monthly)"',
        'name = "  "',
        'name = "  "',
        "name must be a non-empty string",
    ),
    _case(
        "unknown top-level table",
        "# a small catalog\n",
        '[settings]\ncurrency = "EUR"\n',
        "[settings]",
        "unknown top-level key 'settings'",
    ),
]


@pytest.mark.parametrize(("text", "line", "fragment"), MALFORMED)
def test_a_malformed_catalog_is_an_error_naming_the_file_and_line(
    tmp_path: Path, text: str, line: int, fragment: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(CatalogError) as caught:
        load(path)
    assert caught.value.line == line
    assert caught.value.path == str(path)
    assert str(caught.value).startswith(f"{path}, line {line}")
    assert fragment in str(caught.value)


def test_a_syntax_error_also_names_the_column() -> None:
    with pytest.raises(CatalogError) as caught:
        loads('[[product]]\ncode = "X"\nname = \n', "shop.toml")
    assert (caught.value.line, caught.value.column) == (3, 8)
    assert str(caught.value).startswith("shop.toml, line 3, column 8: invalid TOML: ")


def test_a_key_set_in_a_sub_table_is_located_on_its_header_line(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        [[product]]
        code = "A-TEAM-M"
        name = "A TEAM (monthly)"
        product = "A"
        edition = "TEAM"
        cycle = "monthly"
        family = "A"
        policy = "restart"

        [product.prices]
        EUR = "nope"
        """
    )
    with pytest.raises(CatalogError, match="bad EUR price 'nope'") as caught:
        load(write(tmp_path, text))
    assert caught.value.line == 10


def test_a_catalog_without_products_is_an_error_on_line_one(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r", line 1: the catalog has no \[\[product\]\] tables"):
        load(write(tmp_path, "# nothing for sale\n"))


def test_a_missing_catalog_file_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(CatalogError, match=r"absent\.toml: cannot read the catalog") as caught:
        load(path)
    assert caught.value.line is None


def test_a_catalog_that_is_not_utf8_is_an_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(VALID.replace("a small catalog", "caff\xe8").encode("latin-1"))
    with pytest.raises(CatalogError, match=r", line 1: the catalog is not UTF-8 text"):
        load(path)
