"""The provider's REST API 6.0, read by hand: subscriptions and orders as small typed records.

Only this module knows the API's paths and field names; callers get `Subscription` and `Order`.
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import logging
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import requests

from workers.config import Settings
from workers.errors import ConfigError, RinnovoError

log = logging.getLogger(__name__)

ALGORITHMS: dict[str, Callable[..., Any]] = {"sha256": hashlib.sha256, "sha3-256": hashlib.sha3_256}
PAGE_LIMIT = 200  # the most the provider serves per page
HEADER = "X-Avangate-Authentication"

T = TypeVar("T")


class ProviderApiError(RinnovoError):
    """The provider's API gave no usable answer; nothing from that answer may be used."""


class AuthenticationFailed(ProviderApiError):
    """The provider refused the merchant code, key or algorithm."""


class MalformedAnswer(ProviderApiError):
    """An answer that is not JSON, or not the shape the API documents."""


class ProviderUnavailable(ProviderApiError):
    """Timeouts, connection errors, 429 or 5xx for longer than the client may wait."""


@dataclass(frozen=True)
class Subscription:
    """A subscription as the provider holds it."""

    reference: str  # SubscriptionReference: the license code of IPNs and LCNs
    product_code: str
    quantity: int
    expires_at: datetime | None  # midnight UTC of the provider's day; None only for lifetime ones
    recurring: bool  # automatic renewal on
    enabled: bool
    email: str
    name: str
    lifetime: bool
    status: str | None = None  # read when the provider sends one; not documented for REST
    starts_at: datetime | None = None
    first_name: str = ""
    last_name: str = ""
    raw: Any = field(default=None, compare=False, repr=False)  # the provider's JSON object


@dataclass(frozen=True)
class OrderItem:
    """One line of an order."""

    product_code: str
    quantity: int | None
    subscription_references: tuple[str, ...]


@dataclass(frozen=True)
class Order:
    """An order as the provider holds it."""

    refno: str
    status: str
    currency: str
    gross_price: Decimal | None
    net_price: Decimal | None
    items: tuple[OrderItem, ...]
    ordered_at: datetime | None  # read as UTC
    email: str = ""  # the billing details' customer, when the answer has them
    first_name: str = ""
    last_name: str = ""
    company: str = ""
    language: str = ""
    raw: Any = field(default=None, compare=False, repr=False)  # the provider's JSON object

    @property
    def subscription_references(self) -> tuple[str, ...]:
        """The subscriptions this order concerns, in item order."""
        return tuple(ref for item in self.items for ref in item.subscription_references)


# --- authentication ---------------------------------------------------------------------------


def signed_string(code: str, when: str) -> str:
    """What the HMAC covers: each value prefixed with its length in UTF-8 bytes."""
    return f"{len(code.encode())}{code}{len(when.encode())}{when}"


def authentication(code: str, key: str, algo: str, now: datetime) -> str:
    """The `X-Avangate-Authentication` value for a request made at `now`."""
    when = now.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    digest = hmac.new(key.encode(), signed_string(code, when).encode(), ALGORITHMS[algo])
    return f'code="{code}" date="{when}" hash="{digest.hexdigest()}" algo="{algo}"'


# --- parsing ------------------------------------------------------------------------------------


def _field(raw: Mapping[str, Any], name: str, kind: type[T], where: str) -> T:
    """raw[name] if it is of that JSON type (a boolean is not a number here)."""
    value = raw.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise MalformedAnswer(f"{where}: {name} is {type(value).__name__}, not {kind.__name__}")
    return value


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise MalformedAnswer(f"{where} is {type(value).__name__}, not an object")
    return value


def _text(raw: Mapping[str, Any], name: str, where: str) -> str:
    value = raw.get(name)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # RefNo comes as a number in some answers
    return _field(raw, name, str, where)


def _optional_text(raw: Mapping[str, Any], name: str, where: str) -> str:
    return "" if raw.get(name) is None else _text(raw, name, where)


def _count(raw: Mapping[str, Any], name: str, where: str) -> int:
    value = raw.get(name)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return _field(raw, name, int, where)


def _time(value: Any, name: str, where: str) -> datetime | None:
    """`YYYY-MM-DD` (or an ISO time) as a UTC datetime, a bare one read as UTC; None when absent."""
    if value is None or value == "":
        return None
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise MalformedAnswer(f"{where}: {name} {value!r} is not a YYYY-MM-DD date") from None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _money(raw: Mapping[str, Any], name: str, where: str) -> Decimal | None:
    value = raw.get(name)
    if value is None:
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise InvalidOperation
        return Decimal(str(value))
    except InvalidOperation:
        raise MalformedAnswer(f"{where}: {name} {value!r} is not an amount") from None


def parse_subscription(raw: Any) -> Subscription:
    """A subscription object of the API as a record; MalformedAnswer when it is not one."""
    sub = _object(raw, "a subscription")
    reference = _text(sub, "SubscriptionReference", "a subscription")
    where = f"subscription {reference}"
    product = _object(sub.get("Product"), f"{where}: Product")
    user = _object(sub.get("EndUser") or {}, f"{where}: EndUser")
    lifetime = sub.get("Lifetime") is not None and _field(sub, "Lifetime", bool, where)
    expires_at = _time(sub.get("ExpirationDate"), "ExpirationDate", where)
    if expires_at is None and not lifetime:
        raise MalformedAnswer(f"{where}: no ExpirationDate")
    status = sub.get("Status")
    first = _optional_text(user, "FirstName", f"{where}: EndUser")
    last = _optional_text(user, "LastName", f"{where}: EndUser")
    return Subscription(
        reference=reference,
        product_code=_text(product, "ProductCode", f"{where}: Product"),
        quantity=_count(product, "ProductQuantity", f"{where}: Product"),
        expires_at=expires_at,
        recurring=_field(sub, "RecurringEnabled", bool, where),
        enabled=_field(sub, "SubscriptionEnabled", bool, where),
        email=_optional_text(user, "Email", f"{where}: EndUser"),
        name=" ".join(part for part in (first, last) if part),
        lifetime=lifetime,
        status=None if status is None else _text(sub, "Status", where),
        starts_at=_time(sub.get("StartDate"), "StartDate", where),
        first_name=first,
        last_name=last,
        raw=sub,
    )


def _item(raw: Any, where: str) -> OrderItem:
    item = _object(raw, f"{where}: an item")
    details = _object(item.get("ProductDetails") or {}, f"{where}: ProductDetails")
    subscriptions = details.get("Subscriptions") or []
    if not isinstance(subscriptions, list):
        raise MalformedAnswer(f"{where}: ProductDetails.Subscriptions is not a list")
    quantity = item.get("Quantity")
    code = _optional_text(item, "Code", where) or _optional_text(item, "ProductCode", where)
    return OrderItem(
        product_code=code,
        quantity=None if quantity is None else _count(item, "Quantity", where),
        subscription_references=tuple(
            _text(_object(sub, f"{where}: a subscription"), "SubscriptionReference", where)
            for sub in subscriptions
        ),
    )


def parse_order(raw: Any) -> Order:
    """An order object of the API as a record; MalformedAnswer when it is not one."""
    order = _object(raw, "an order")
    refno = _text(order, "RefNo", "an order")
    where = f"order {refno}"
    items = order.get("Items") or []
    if not isinstance(items, list):
        raise MalformedAnswer(f"{where}: Items is not a list")
    billing = _object(order.get("BillingDetails") or {}, f"{where}: BillingDetails")

    def billed(name: str) -> str:
        return _optional_text(billing, name, f"{where}: BillingDetails")

    return Order(
        refno=refno,
        status=_text(order, "Status", where),
        currency=_optional_text(order, "Currency", where).upper(),
        gross_price=_money(order, "GrossPrice", where),
        net_price=_money(order, "NetPrice", where),
        items=tuple(_item(item, where) for item in items),
        ordered_at=_time(order.get("OrderDate"), "OrderDate", where),
        email=billed("Email"),
        first_name=billed("FirstName"),
        last_name=billed("LastName"),
        company=billed("Company"),
        language=_optional_text(order, "Language", where).lower(),
        raw=order,
    )


def parse_record(raw: Any) -> Subscription | Order:
    """A subscription or an order object, told apart by its reference field (a stored body)."""
    if isinstance(raw, dict) and "SubscriptionReference" in raw:
        return parse_subscription(raw)
    return parse_order(raw)


# --- the client ---------------------------------------------------------------------------------


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date); None when absent."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class Client:
    """Reads the provider's REST API 6.0, retrying what is transient within a bounded time."""

    def __init__(
        self,
        base_url: str,
        merchant_code: str,
        secret_key: str,
        algo: str = "sha3-256",
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_total: float = 120.0,  # seconds one call may spend, retries and waits included
        first_delay: float = 1.0,  # backoff: 1, 2, 4 ... seconds, unless Retry-After says more
        max_delay: float = 30.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if algo not in ALGORITHMS:
            raise ConfigError(f"unknown API algorithm {algo!r}")
        self.base_url = base_url.rstrip("/")
        self.merchant_code = merchant_code
        self.algo = algo
        self._key = secret_key
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_total = max_total
        self.first_delay = first_delay
        self.max_delay = max_delay
        self._clock = clock
        self._session = requests.Session()

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> Client:
        """A client for the configured account; ConfigError when the API is not configured."""
        if not settings.merchant_code:
            raise ConfigError(
                "TWOCHECKOUT_MERCHANT_CODE is not set: the provider's API is off "
                "(set it to the merchant code from the 2Checkout control panel)"
            )
        if not settings.secret_keys:
            raise ConfigError("TWOCHECKOUT_SECRET_KEY is not set: the provider's API needs it")
        return cls(
            settings.api_url,
            settings.merchant_code,
            settings.secret_keys[0],
            settings.api_algo,
            **options,
        )

    def close(self) -> None:
        """Close the HTTP connections kept open."""
        self._session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # The calls.

    def search_subscriptions(self, modified_after: date) -> Iterator[list[Subscription]]:
        """Pages of the subscriptions changed on or after that day (the filter is per day)."""
        params = {"ModifiedAfter": modified_after.isoformat()}
        return self._pages("subscriptions", params, parse_subscription)

    def subscription(self, reference: str) -> Subscription | None:
        """One subscription by its reference; None when the provider has none."""
        answer = self._get(f"subscriptions/{_segment(reference)}", {}, missing_ok=True)
        return None if answer is None else _parsed(parse_subscription, answer, reference)

    def search_orders(self, start: date, end: date) -> Iterator[list[Order]]:
        """Pages of the orders placed from `start` to `end` (days, both included)."""
        params = {"StartDate": start.isoformat(), "EndDate": end.isoformat()}
        return self._pages("orders", params, parse_order)

    def order(self, refno: str) -> Order | None:
        """One order by its reference number; None when the provider has none."""
        answer = self._get(f"orders/{_segment(refno)}", {}, missing_ok=True)
        return None if answer is None else _parsed(parse_order, answer, refno)

    # Paging.

    def _pages(
        self, path: str, params: dict[str, str], parse: Callable[[Any], T]
    ) -> Iterator[list[T]]:
        """Each page parsed whole before it is handed over, so a bad page yields nothing."""
        page, previous = 1, None
        while True:
            answer = self._get(path, {**params, "Limit": str(PAGE_LIMIT), "Page": str(page)})
            where = f"/{path}/ page {page}"
            if isinstance(answer, list):  # a bare list: the old, unpaginated shape
                if answer and answer == previous:
                    raise MalformedAnswer(f"{where} repeats the page before: paging is ignored")
                yield [_parsed(parse, raw, where) for raw in answer]
                if len(answer) < PAGE_LIMIT:
                    return
                page, previous = page + 1, answer
                continue
            body = _object(answer, where)
            items = body.get("Items")
            if not isinstance(items, list):
                raise MalformedAnswer(f"{where} has no Items list")
            paging = _object(body.get("Pagination"), f"{where}: Pagination")
            total = _count(paging, "Count", f"{where}: Pagination")
            limit = paging.get("Limit")
            per_page = limit if isinstance(limit, int) and 0 < limit <= PAGE_LIMIT else PAGE_LIMIT
            yield [_parsed(parse, raw, where) for raw in items]
            if not items or page * per_page >= total:
                return
            page += 1

    # One request, retried.

    def _get(self, path: str, params: Mapping[str, str], *, missing_ok: bool = False) -> Any:
        """The JSON of GET `path`, retrying transient faults; None for a 404 when missing_ok."""
        url = f"{self.base_url}/{path}/"
        deadline = time.monotonic() + self.max_total
        delay, attempt = self.first_delay, 0
        while True:
            attempt += 1
            left = deadline - time.monotonic()
            try:
                response = self._session.get(
                    url,
                    params=params,
                    headers=self._headers(),
                    timeout=(self.connect_timeout, max(0.1, min(self.read_timeout, left))),
                    allow_redirects=False,
                )
            except (
                requests.Timeout,
                requests.ConnectionError,
                requests.exceptions.ChunkedEncodingError,  # cut in the middle of the body
            ) as exc:
                reason, wait = type(exc).__name__, None
            else:
                if response.status_code != 429 and response.status_code < 500:
                    where = f"/{path}/" + (f" page {params['Page']}" if "Page" in params else "")
                    return self._answer(response, where, missing_ok=missing_ok)
                reason = f"HTTP {response.status_code}"
                wait = _retry_after(response.headers.get("Retry-After"))
            pause = wait if wait is not None else delay
            if time.monotonic() + pause >= deadline:
                raise ProviderUnavailable(
                    f"the provider's API gave no answer to /{path}/ within {self.max_total:g} s "
                    f"({attempt} attempt(s), the last: {reason})"
                )
            log.warning(
                "provider API retry",
                extra={"path": f"/{path}/", "attempt": attempt, "reason": reason, "wait": pause},
            )
            time.sleep(pause)
            delay = min(delay * 2, self.max_delay)

    def _headers(self) -> dict[str, str]:
        """Fresh for every request: the date in the header is checked by the provider."""
        return {
            HEADER: authentication(self.merchant_code, self._key, self.algo, self._clock()),
            "Accept": "application/json",
            "Content-Type": "application/json",
        }

    def _answer(self, response: requests.Response, where: str, *, missing_ok: bool) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = None
            if response.ok:
                raise MalformedAnswer(
                    f"the provider's answer to {where} is not JSON "
                    f"({response.headers.get('Content-Type') or 'no content type'})"
                ) from None
        code, message = _error(body)
        if code == "AUTHENTICATION_ERROR" or response.status_code in (401, 403):
            raise AuthenticationFailed(
                f"the provider refused the API authentication of merchant code "
                f"{self.merchant_code} with algorithm {self.algo}"
                + (f" ({message})" if message else "")
                + ": check TWOCHECKOUT_MERCHANT_CODE, the first TWOCHECKOUT_SECRET_KEY, "
                "TWOCHECKOUT_API_ALGO and this machine's clock"
            )
        if response.status_code == 404 and missing_ok:
            return None
        if code or not response.ok:
            raise ProviderApiError(
                f"the provider's API refused {where}: HTTP {response.status_code} "
                f"{code or ''} {message or ''}".rstrip()
            )
        return body


def _error(body: Any) -> tuple[str | None, str | None]:
    """The error code and message of an error answer, in the shapes the SDKs read."""
    if not isinstance(body, dict):
        return None, None
    if "error_code" in body:
        return str(body["error_code"]), str(body.get("message") or "")
    nested = body.get("Error") or body.get("error")
    if isinstance(nested, dict):
        return str(nested.get("code") or "ERROR"), str(nested.get("message") or "")
    return None, None


def _segment(reference: str) -> str:
    """A reference as one path segment: references are letters and digits, anything else quoted."""
    return urllib.parse.quote(reference, safe="")


def _parsed(parse: Callable[[Any], T], raw: Any, where: str) -> T:
    """`parse(raw)`, naming where the bad object came from."""
    try:
        return parse(raw)
    except MalformedAnswer as exc:
        raise MalformedAnswer(f"{where}: {exc}") from None
