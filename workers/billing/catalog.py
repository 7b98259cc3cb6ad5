"""The product catalog file: TOML read and checked, each error naming its line (the products
themselves are workers.billing.products)."""

from __future__ import annotations

import re
import tomllib
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NoReturn

from babel.numbers import get_currency_precision

from workers.billing.products import COMPONENTS, CYCLES, POLICIES, Catalog, Product
from workers.errors import ConfigError

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
        self.check_keys(index, entry)
        code = self.text(index, entry, "code", empty=False)
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
        return Product(
            code=code,
            pid=self.pid(index, code, entry),
            name=self.text(index, entry, "name", empty=False),
            product=self.text(index, entry, "product", empty=False),
            edition=self.text(index, entry, "edition"),
            edition_rank=self.integer(index, code, entry, "edition_rank"),
            cycle=self.choice(index, code, entry, "cycle", CYCLES),
            prices=prices,
            renewal_prices=renewal,
            components=self.components(index, code, entry),
            family=self.text(index, entry, "family", empty=False),
            platform=self.text(index, entry, "platform"),
            license_type=self.text(index, entry, "license_type"),
            license_rank=self.integer(index, code, entry, "license_rank"),
            suite=self.flag(index, code, entry, "suite"),
            policy=self.choice(index, code, entry, "policy", POLICIES),
            includes=self.includes(index, code, entry),
        )

    def check_keys(self, index: int, entry: dict[str, Any]) -> None:
        """No key the catalog does not know, and every required one."""
        for key in entry:
            if key not in _REQUIRED and key not in _OPTIONAL:
                self.fail(self.key_line(index, key), f"{_who(entry)}unknown key {key!r}")
        for key in _REQUIRED:
            if key not in entry:
                code = entry.get("code")
                which = f"product {code!r}" if isinstance(code, str) else "this product"
                self.fail(self.header_line(index), f"{which} is missing the key {key!r}")

    def pid(self, index: int, code: str, entry: dict[str, Any]) -> str:
        """The provider's numeric product id, as text (empty when not given)."""
        raw = entry.get("pid", "")
        if isinstance(raw, int) and not isinstance(raw, bool):
            raw = str(raw)
        if not isinstance(raw, str):
            self.fail(self.key_line(index, "pid"), f"product {code!r}: pid must be a string")
        return raw.strip()

    def choice(
        self, index: int, code: str, entry: dict[str, Any], key: str, known: tuple[str, ...]
    ) -> str:
        """A value that must be one of `known` (a cycle, a policy)."""
        value = self.text(index, entry, key, empty=False)
        if value not in known:
            self.fail(
                self.key_line(index, key),
                f"product {code!r}: unknown {key} {value!r}; expected one of {', '.join(known)}",
            )
        return value

    def includes(self, index: int, code: str, entry: dict[str, Any]) -> tuple[str, ...]:
        """The product lines a bundle includes (none for a single product)."""
        includes = entry.get("includes", [])
        if not isinstance(includes, list) or not all(
            isinstance(x, str) and x.strip() for x in includes
        ):
            self.fail(
                self.key_line(index, "includes"),
                f"product {code!r}: includes must be a list of product line names",
            )
        return tuple(x.strip() for x in includes)

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
