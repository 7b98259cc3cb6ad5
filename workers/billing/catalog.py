"""The product catalog: what each of the provider's product codes sells, and by which policy."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

from babel.numbers import get_currency_precision

from workers.errors import ConfigError

CYCLES = ("monthly", "annual", "lifetime")
POLICIES = ("restart", "maintenance")
COMPONENTS = ("users", "storage_gb", "document_domains", "archived_mailboxes")

_REQUIRED = ("code", "name", "product", "edition", "cycle", "prices", "family", "policy")
_OPTIONAL = (
    "pid",
    "edition_rank",
    "renewal_prices",
    "components",
    "platform",
    "license_type",
    "license_rank",
    "suite",
    "includes",
)
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_PRODUCT_HEADER = re.compile(r"^\s*\[\[\s*product\s*\]\]")
_SYNTAX_LOCATION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


class CatalogError(ConfigError):
    """The catalog file cannot be read or says something impossible; the message names the line."""

    def __init__(self, path: str | Path, line: int | None, message: str, column: int | None = None):
        self.path = str(path)
        self.line = line
        self.column = column
        self.detail = message
        where = self.path
        if line is not None:
            where += f", line {line}"
            if column is not None:
                where += f", column {column}"
        super().__init__(f"{where}: {message}")


class UnknownProduct(KeyError):
    """No product in the catalog has this code or id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown product"


class UnpricedCurrency(KeyError):
    """The product has no price in the requested currency."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "no price in this currency"


@dataclass(frozen=True)
class Product:
    """One sellable thing: a product line's edition, billing cycle, prices and upgrade policy."""

    code: str
    pid: str
    name: str
    product: str
    edition: str
    edition_rank: int
    cycle: str
    prices: Mapping[str, Decimal] = field(hash=False)
    renewal_prices: Mapping[str, Decimal] = field(hash=False)
    components: Mapping[str, int] = field(hash=False)
    family: str
    platform: str
    license_type: str
    license_rank: int
    suite: bool
    policy: str
    # Product lines a bundle contains ("adding products to an order"); empty means just `product`.
    includes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Freeze the mappings so a product cannot change after loading."""
        object.__setattr__(self, "prices", MappingProxyType(dict(self.prices)))
        object.__setattr__(self, "renewal_prices", MappingProxyType(dict(self.renewal_prices)))
        object.__setattr__(self, "components", MappingProxyType(dict(self.components)))
        object.__setattr__(self, "includes", tuple(self.includes))

    @property
    def lines(self) -> frozenset[str]:
        """The product lines this product gives: its own, or those its bundle includes."""
        return frozenset(self.includes) if self.includes else frozenset((self.product,))

    def is_priced(self, currency: str) -> bool:
        """Whether the product is sold in this currency."""
        return currency.upper() in self.prices

    def price(self, currency: str) -> Decimal:
        """The price of one unit for one period in this currency."""
        return self._lookup(self.prices, currency, "price")

    def renewal_price(self, currency: str) -> Decimal:
        """The price of renewing one unit for one period in this currency."""
        return self._lookup(self.renewal_prices, currency, "renewal price")

    def _lookup(self, table: Mapping[str, Decimal], currency: str, what: str) -> Decimal:
        """Look a currency up in one of the price tables, failing with a sentence."""
        try:
            return table[currency.upper()]
        except KeyError:
            sold = ", ".join(sorted(table)) or "nothing"
            raise UnpricedCurrency(
                f"{self.name} ({self.code}) has no {what} in {currency!r}; it is priced in {sold}"
            ) from None


class Catalog:
    """All products, looked up by the provider's product code or numeric product id."""

    def __init__(self, products: Iterable[Product]):
        self.products: tuple[Product, ...] = tuple(products)
        self._by_code: dict[str, Product] = {}
        self._by_pid: dict[str, Product] = {}
        for item in self.products:
            if item.code in self._by_code:
                raise ValueError(f"duplicate product code {item.code!r}")
            self._by_code[item.code] = item
            if item.pid:
                if item.pid in self._by_pid:
                    raise ValueError(f"duplicate product id {item.pid!r}")
                self._by_pid[item.pid] = item

    def __iter__(self) -> Iterator[Product]:
        return iter(self.products)

    def __len__(self) -> int:
        return len(self.products)

    def get(self, code_or_pid: str) -> Product | None:
        """The product with this code, else with this numeric id, else None."""
        key = str(code_or_pid).strip()
        return self._by_code.get(key) or self._by_pid.get(key)

    def require(self, code_or_pid: str) -> Product:
        """The product with this code or id, or UnknownProduct."""
        found = self.get(code_or_pid)
        if found is None:
            raise UnknownProduct(f"no product with code or id {code_or_pid!r} in the catalog")
        return found

    def find_target(self, current: Product, to: str, cycle: str | None = None) -> Product | None:
        """Resolve `--to` (code, id, name, edition or product line); None unless one fits."""
        if cycle is not None and cycle not in CYCLES:
            raise ValueError(
                f"unknown billing cycle {cycle!r}; expected one of {', '.join(CYCLES)}"
            )
        wanted = to.strip()
        if not wanted:
            return None
        folded = wanted.casefold()
        exact = self.get(wanted) or next(
            (p for p in self.products if p.name.casefold() == folded), None
        )
        if exact is not None:
            if cycle is None or exact.cycle == cycle:
                return exact
            return _pick(
                [p for p in self.products if _same_plan(p, exact)],
                current,
                cycle,
            )
        neighbours = [
            p
            for p in self.products
            if p.family == current.family and p.platform == current.platform
        ]
        editions = [
            p
            for p in neighbours
            if p.product == current.product
            and folded in (p.edition.casefold(), p.license_type.casefold())
        ]
        if editions:
            return _pick(editions, current, cycle)
        lines = [p for p in neighbours if p.product.casefold() == folded]
        # Moving to another product line keeps the license type (edition) unless told otherwise.
        kept = [p for p in lines if p.edition == current.edition]
        return _pick(kept or lines, current, cycle)


def _same_plan(a: Product, b: Product) -> bool:
    """Whether two products differ at most in billing cycle."""
    return (a.family, a.product, a.edition, a.platform, a.license_type, a.suite, a.includes) == (
        b.family,
        b.product,
        b.edition,
        b.platform,
        b.license_type,
        b.suite,
        b.includes,
    )


def _pick(candidates: list[Product], current: Product, cycle: str | None) -> Product | None:
    """The one candidate of the requested cycle (else of the current cycle), or None."""
    if cycle is not None:
        candidates = [p for p in candidates if p.cycle == cycle]
    else:
        candidates = [p for p in candidates if p.cycle == current.cycle] or candidates
    return candidates[0] if len(candidates) == 1 else None


def default_path() -> Path:
    """The catalog that ships with Rinnovo."""
    return Path(__file__).with_name("catalog.toml")


def load_default() -> Catalog:
    """Load the catalog that ships with Rinnovo."""
    return load(default_path())


def load(path: str | Path) -> Catalog:
    """Read and check a TOML catalog, raising CatalogError that names the offending line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(path, None, f"cannot read the catalog: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        line = Path(path).read_bytes()[: exc.start].count(b"\n") + 1
        raise CatalogError(path, line, "the catalog is not UTF-8 text") from exc
    return loads(text, path)


def loads(text: str, path: str | Path = "<catalog>") -> Catalog:
    """Parse and check catalog text; `path` only names the source in errors."""
    try:
        data = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = _SYNTAX_LOCATION.search(message)
        if found:
            line, column = int(found.group(1)), int(found.group(2))
            message = message[: found.start()]
        else:
            line, column = max(1, text.count("\n") + 1), None
        raise CatalogError(path, line, f"invalid TOML: {message}", column) from exc
    return _Checker(text, path).catalog(data)


class _Checker:
    """Turns parsed TOML into products, pointing errors at the offending table or key."""

    def __init__(self, text: str, path: str | Path):
        self.path = path
        self.lines = text.splitlines()
        self.headers = [
            number for number, line in enumerate(self.lines, 1) if _PRODUCT_HEADER.match(line)
        ]

    def catalog(self, data: dict[str, Any]) -> Catalog:
        """Check the whole document and build the catalog."""
        for key in data:
            if key != "product":
                self.fail(
                    self.top_key_line(key), f"unknown top-level key {key!r}; expected [[product]]"
                )
        entries = data.get("product")
        if not isinstance(entries, list) or not entries:
            self.fail(1, "the catalog has no [[product]] tables")
        products: list[Product] = []
        codes: dict[str, int] = {}
        pids: dict[str, int] = {}
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict):
                self.fail(self.header_line(index), "each product must be a [[product]] table")
            item = self.product(index, entry)
            if item.code in codes:
                self.fail(
                    self.key_line(index, "code"),
                    f"duplicate product code {item.code!r} (first at line {codes[item.code]})",
                )
            codes[item.code] = self.key_line(index, "code")
            if item.pid:
                if item.pid in pids:
                    self.fail(
                        self.key_line(index, "pid"),
                        f"duplicate product id {item.pid!r} (first at line {pids[item.pid]})",
                    )
                pids[item.pid] = self.key_line(index, "pid")
            products.append(item)
        self.check_families(products)
        return Catalog(products)

    def product(self, index: int, entry: dict[str, Any]) -> Product:
        """Check one [[product]] table and build its Product."""
        for key in entry:
            if key not in _REQUIRED and key not in _OPTIONAL:
                self.fail(self.key_line(index, key), f"{_who(entry)}unknown key {key!r}")
        for key in _REQUIRED:
            if key not in entry:
                code = entry.get("code")
                which = f"product {code!r}" if isinstance(code, str) else "this product"
                self.fail(self.header_line(index), f"{which} is missing the key {key!r}")
        code = self.text(index, entry, "code", empty=False)
        raw_pid = entry.get("pid", "")
        if isinstance(raw_pid, int) and not isinstance(raw_pid, bool):
            raw_pid = str(raw_pid)
        if not isinstance(raw_pid, str):
            self.fail(self.key_line(index, "pid"), f"product {code!r}: pid must be a string")
        cycle = self.text(index, entry, "cycle", empty=False)
        if cycle not in CYCLES:
            self.fail(
                self.key_line(index, "cycle"),
                f"product {code!r}: unknown cycle {cycle!r}; expected one of {', '.join(CYCLES)}",
            )
        policy = self.text(index, entry, "policy", empty=False)
        if policy not in POLICIES:
            self.fail(
                self.key_line(index, "policy"),
                f"product {code!r}: unknown policy {policy!r}; "
                f"expected one of {', '.join(POLICIES)}",
            )
        prices = self.prices(index, code, entry, "prices")
        renewal = (
            self.prices(index, code, entry, "renewal_prices")
            if "renewal_prices" in entry
            else prices
        )
        if set(renewal) != set(prices):
            self.fail(
                self.key_line(index, "renewal_prices"),
                f"product {code!r}: renewal_prices must cover the same currencies as prices",
            )
        includes = entry.get("includes", [])
        if not isinstance(includes, list) or not all(
            isinstance(x, str) and x.strip() for x in includes
        ):
            self.fail(
                self.key_line(index, "includes"),
                f"product {code!r}: includes must be a list of product line names",
            )
        return Product(
            code=code,
            pid=raw_pid.strip(),
            name=self.text(index, entry, "name", empty=False),
            product=self.text(index, entry, "product", empty=False),
            edition=self.text(index, entry, "edition"),
            edition_rank=self.integer(index, code, entry, "edition_rank"),
            cycle=cycle,
            prices=prices,
            renewal_prices=renewal,
            components=self.components(index, code, entry),
            family=self.text(index, entry, "family", empty=False),
            platform=self.text(index, entry, "platform"),
            license_type=self.text(index, entry, "license_type"),
            license_rank=self.integer(index, code, entry, "license_rank"),
            suite=self.flag(index, code, entry, "suite"),
            policy=policy,
            includes=tuple(x.strip() for x in includes),
        )

    def text(self, index: int, entry: dict[str, Any], key: str, *, empty: bool = True) -> str:
        """A string value (optional ones default to "")."""
        value = entry.get(key, "")
        if not isinstance(value, str) or (not empty and not value.strip()):
            need = "a string" if empty else "a non-empty string"
            self.fail(
                self.key_line(index, key), f"{_who(entry)}{key} must be {need}, not {value!r}"
            )
        return value.strip()

    def integer(self, index: int, code: str, entry: dict[str, Any], key: str) -> int:
        """A non-negative integer value (default 0)."""
        value = entry.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.fail(
                self.key_line(index, key),
                f"product {code!r}: {key} must be a non-negative integer, not {value!r}",
            )
        return value

    def flag(self, index: int, code: str, entry: dict[str, Any], key: str) -> bool:
        """A boolean value (default false)."""
        value = entry.get(key, False)
        if not isinstance(value, bool):
            self.fail(self.key_line(index, key), f"product {code!r}: {key} must be true or false")
        return value

    def prices(self, index: int, code: str, entry: dict[str, Any], key: str) -> dict[str, Decimal]:
        """A currency -> price table: ISO codes, non-negative amounts in whole minor units."""
        table = entry[key]
        line = self.key_line(index, key)
        if not isinstance(table, dict) or not table:
            self.fail(line, f'product {code!r}: {key} must be a table like {{ EUR = "30.00" }}')
        result: dict[str, Decimal] = {}
        for currency, raw in table.items():
            if not _CURRENCY.match(currency):
                self.fail(
                    line, f"product {code!r}: {currency!r} in {key} is not an ISO currency code"
                )
            amount = _decimal(raw)
            if amount is None or amount < 0:
                self.fail(line, f"product {code!r}: bad {currency} price {raw!r} in {key}")
            minor = Decimal(1).scaleb(-get_currency_precision(currency))
            try:
                exact = amount.quantize(minor) == amount
            except InvalidOperation:
                self.fail(line, f"product {code!r}: bad {currency} price {raw!r} in {key}")
            if not exact:
                self.fail(
                    line,
                    f"product {code!r}: {currency} price {raw!r} in {key} has more decimals "
                    f"than {currency} allows",
                )
            result[currency] = amount.quantize(minor)
        return result

    def components(self, index: int, code: str, entry: dict[str, Any]) -> dict[str, int]:
        """The per-unit variable components, each a known name and a non-negative integer."""
        table = entry.get("components", {})
        line = self.key_line(index, "components")
        if not isinstance(table, dict):
            self.fail(line, f"product {code!r}: components must be a table")
        for name, amount in table.items():
            if name not in COMPONENTS:
                self.fail(
                    line,
                    f"product {code!r}: unknown component {name!r}; "
                    f"expected one of {', '.join(COMPONENTS)}",
                )
            if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
                self.fail(
                    line, f"product {code!r}: component {name} must be a non-negative integer"
                )
        return dict(table)

    def check_families(self, products: list[Product]) -> None:
        """Every family follows one policy, and bundles include product lines that exist."""
        policy_of: dict[str, str] = {}
        for index, item in enumerate(products):
            first = policy_of.setdefault(item.family, item.policy)
            if item.policy != first:
                self.fail(
                    self.key_line(index, "policy"),
                    f"product {item.code!r}: family {item.family!r} mixes policies "
                    f"({first} and {item.policy})",
                )
        for index, item in enumerate(products):
            known = {
                p.product
                for p in products
                if (p.family, p.platform) == (item.family, item.platform)
            }
            missing = [line for line in item.includes if line not in known]
            if missing:
                self.fail(
                    self.key_line(index, "includes"),
                    f"product {item.code!r}: includes unknown product line {missing[0]!r}",
                )

    def header_line(self, index: int) -> int:
        """The line of the index-th [[product]] header (line 1 if the file does not use headers)."""
        if index < len(self.headers):
            return self.headers[index]
        return self.top_key_line("product")

    def key_line(self, index: int, key: str) -> int:
        """The line where a product's key is set, else the line of its header."""
        start = self.header_line(index)
        end = self.headers[index + 1] if index + 1 < len(self.headers) else len(self.lines) + 1
        pattern = re.compile(
            rf"^\s*(?:{re.escape(key)}|\"{re.escape(key)}\"|'{re.escape(key)}')\s*[=.]"
            rf"|^\s*\[\s*product\s*\.\s*{re.escape(key)}\s*\]"
        )
        for number in range(start, end):
            if pattern.match(self.lines[number - 1]):
                return number
        return start

    def top_key_line(self, key: str) -> int:
        """The first line that sets or opens a top-level key, else line 1."""
        pattern = re.compile(rf"^\s*(?:\[+\s*)?(?:{re.escape(key)}|\"{re.escape(key)}\")\s*[=.\]]")
        for number, line in enumerate(self.lines, 1):
            if pattern.match(line):
                return number
        return 1

    def fail(self, line: int, message: str) -> NoReturn:
        """Raise the CatalogError for this line."""
        raise CatalogError(self.path, line, message)


def _who(entry: dict[str, Any]) -> str:
    """A "product 'CODE': " prefix for messages, when the table has a usable code."""
    code = entry.get("code")
    return f"product {code.strip()!r}: " if isinstance(code, str) and code.strip() else ""


def _decimal(raw: object) -> Decimal | None:
    """A finite Decimal from a TOML string, integer or float, or None."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, Decimal):
        value = raw
    elif isinstance(raw, int):
        value = Decimal(raw)
    elif isinstance(raw, str):
        try:
            value = Decimal(raw.strip())
        except InvalidOperation:
            return None
    else:
        return None
    return value if value.is_finite() else None
