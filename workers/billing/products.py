"""The products Rinnovo sells, as the catalog describes them: looked up by the provider's code or
id, priced per currency, and found as the target of an upgrade."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType

CYCLES = ("monthly", "annual", "lifetime")
POLICIES = ("restart", "maintenance")
COMPONENTS = ("users", "storage_gb", "document_domains", "archived_mailboxes")


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
