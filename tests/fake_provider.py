"""A fake of the provider's REST API 6.0: a real HTTP server on 127.0.0.1, in a thread.

It checks `X-Avangate-Authentication` as the provider documents it (its own implementation, not
the client's), serves paginated subscriptions and orders from what a test gives it, and can be
told to answer the next requests with 429, 5xx, garbage, a wrong shape, a cut connection or body,
or nothing at all.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

PREFIX = "/rest/6.0"
HEADER = re.compile(
    r'code="(?P<code>[^"]*)" date="(?P<date>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)" '
    r'hash="(?P<hash>[0-9a-f]{64})" algo="(?P<algo>sha256|sha3-256)"'
)
DIGESTS = {"sha256": hashlib.sha256, "sha3-256": hashlib.sha3_256, "md5": hashlib.md5}
FAULTS = ("429", "500", "503", "garbage", "shape", "timeout", "reset", "truncated")


def provider_hash(key: str, code: str, when: str, algo: str) -> str:
    """The hash as the provider's documentation computes it: HMAC over LEN+code+LEN+date."""
    source = f"{len(code.encode())}{code}{len(when.encode())}{when}"
    return hmac.new(key.encode(), source.encode(), DIGESTS[algo]).hexdigest()


@dataclass
class Seen:
    """One request as the fake received it."""

    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


@dataclass
class Fault:
    kind: str
    retry_after: str | None = None


@dataclass
class FakeProvider:
    """The provider's API for one merchant account."""

    merchant_code: str = "RINNOVOTEST"
    key: str = "AABBCCDDEEFF"
    window: timedelta = timedelta(minutes=10)  # how far the header's date may be from now
    auth_status: int = 401  # undocumented: the client must not depend on it
    bare_lists: bool = False  # answer searches with a bare list, as REST 4.0 did
    stall_seconds: float = 3.0  # how long a "timeout" fault keeps the client waiting
    seen: list[Seen] = field(default_factory=list)
    _subscriptions: dict[str, tuple[dict[str, Any], date]] = field(default_factory=dict)
    _orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    _faults: deque[Fault | None] = field(default_factory=deque)  # None: answer as usual
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    # What a test tells it.

    def add_subscription(self, subscription: dict[str, Any], modified: date) -> None:
        """Serve this subscription object, changed on that day."""
        with self._lock:
            self._subscriptions[subscription["SubscriptionReference"]] = (subscription, modified)

    def add_order(self, order: dict[str, Any]) -> None:
        """Serve this order object (found by the day of its OrderDate)."""
        with self._lock:
            self._orders[str(order["RefNo"])] = order

    def fail_next(
        self, count: int, kind: str, retry_after: str | None = None, *, after: int = 0
    ) -> None:
        """Answer `count` requests with this fault, once `after` more have been answered."""
        assert kind in FAULTS, kind
        with self._lock:
            self._faults.extend([None] * after + [Fault(kind, retry_after)] * count)

    @property
    def url(self) -> str:
        """The API's base URL, as TWOCHECKOUT_API_URL takes it."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}{PREFIX}"

    def paths(self) -> list[str]:
        """Each request's path and query, in order, for assertions."""
        return [
            seen.path + ("?" + "&".join(f"{k}={v[0]}" for k, v in seen.query.items()))
            if seen.query
            else seen.path
            for seen in self.seen
        ]

    # Serving.

    def start(self) -> FakeProvider:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                fake._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test's output is for the test

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # Looking every 20 ms whether stop() was called, not every half second (the default):
        # stop() waits for that look, at the end of every test that uses the fake.
        serve = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        serve.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(request.path)
        seen = Seen(unquote(parts.path), parse_qs(parts.query), dict(request.headers.items()))
        with self._lock:
            self.seen.append(seen)
            fault = self._faults.popleft() if self._faults else None
        if fault is not None:
            self._fault(request, fault)
            return
        status, body = self._route(seen)
        _send(request, status, json.dumps(body).encode(), "application/json")

    def _fault(self, request: BaseHTTPRequestHandler, fault: Fault) -> None:
        if fault.kind == "timeout":
            time.sleep(self.stall_seconds)
            fault = Fault("503")
        if fault.kind == "reset":
            request.close_connection = True
            request.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault.kind == "truncated":  # promises more body than it sends, then hangs up
            request.close_connection = True
            request.send_response(200)
            request.send_header("Content-Type", "application/json")
            request.send_header("Content-Length", "1000")
            request.end_headers()
            request.wfile.write(b'{"Items": [')
            request.connection.shutdown(socket.SHUT_RDWR)
        elif fault.kind == "garbage":
            _send(request, 200, b"<html>Service temporarily unavailable</html>", "text/html")
        elif fault.kind == "shape":
            _send(request, 200, b'{"Items": "none", "Pagination": {}}', "application/json")
        else:
            extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            body = json.dumps({"error_code": "BUSY", "message": "try again later"}).encode()
            _send(request, int(fault.kind), body, "application/json", extra)

    def _route(self, seen: Seen) -> tuple[int, Any]:
        refused = self._authenticate(seen.headers)
        if refused:
            return self.auth_status, {"error_code": "AUTHENTICATION_ERROR", "message": refused}
        if "application/json" not in seen.headers.get("Accept", ""):
            return 406, {"error_code": "NOT_ACCEPTABLE", "message": "Accept application/json"}
        if not seen.path.startswith(PREFIX + "/") or not seen.path.endswith("/"):
            return 404, {"error_code": "NOT_FOUND", "message": "no such endpoint"}
        segments = seen.path[len(PREFIX) :].strip("/").split("/")
        query = {name: values[-1] for name, values in seen.query.items()}
        with self._lock:
            subscriptions = dict(self._subscriptions)
            orders = dict(self._orders)
        if segments == ["subscriptions"]:
            after = query.get("ModifiedAfter")
            found = [
                sub
                for sub, modified in subscriptions.values()
                if after is None or modified >= date.fromisoformat(after)
            ]
            return self._page(found, query)
        if segments == ["orders"]:
            start, end = _order_window(query)
            found = [
                order
                for order in orders.values()
                if start <= date.fromisoformat(order["OrderDate"][:10]) <= end
            ]
            return self._page(found, query)
        if len(segments) == 2 and segments[0] in ("subscriptions", "orders"):
            table: dict[str, Any] = orders
            if segments[0] == "subscriptions":
                table = {ref: sub for ref, (sub, _) in subscriptions.items()}
            if segments[1] in table:
                return 200, table[segments[1]]
            return 404, {"error_code": "NOT_FOUND", "message": f"{segments[1]} not found"}
        return 404, {"error_code": "NOT_FOUND", "message": "no such endpoint"}

    def _page(self, found: list[dict[str, Any]], query: dict[str, str]) -> tuple[int, Any]:
        limit, page = int(query.get("Limit", "10")), int(query.get("Page", "1"))
        if not 1 <= limit <= 200:
            return 400, {"error_code": "INVALID_PARAMETER", "message": "Limit is 1 to 200"}
        if self.bare_lists:
            return 200, found
        items = found[(page - 1) * limit : page * limit]
        paging = {"Page": page, "Limit": limit, "Count": len(found)}
        return 200, {"Items": items, "Pagination": paging}

    def _authenticate(self, headers: dict[str, str]) -> str | None:
        """Why the authentication header is refused, or None when it is right."""
        value = headers.get("X-Avangate-Authentication")
        if value is None:
            return "X-Avangate-Authentication header missing"
        matched = HEADER.fullmatch(value)
        if matched is None:
            return "malformed X-Avangate-Authentication header"
        if matched["code"] != self.merchant_code:
            return "unknown merchant code"
        sent = datetime.strptime(matched["date"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        if abs(datetime.now(UTC) - sent) > self.window:
            return "request date out of range"
        expected = provider_hash(self.key, matched["code"], matched["date"], matched["algo"])
        if not hmac.compare_digest(expected, matched["hash"]):
            return "Hash signature could not be authenticated"
        return None


def _order_window(query: dict[str, str]) -> tuple[date, date]:
    """StartDate..EndDate; without StartDate, the last seven days (as documented)."""
    today = datetime.now(UTC).date()
    start = query.get("StartDate")
    end = query.get("EndDate")
    return (
        date.fromisoformat(start) if start else today - timedelta(days=7),
        date.fromisoformat(end) if end else today,
    )


def _send(
    request: BaseHTTPRequestHandler,
    status: int,
    body: bytes,
    content_type: str,
    headers: dict[str, str] | None = None,
) -> None:
    try:
        request.send_response(status)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(body)
    except OSError:
        pass  # the client gave up waiting (a "timeout" fault)


def subscription(
    reference: str,
    *,
    expires: str = "2027-01-10",
    product_code: str = "AWDOC-TEAM-Y",
    quantity: int = 1,
    recurring: bool = True,
    enabled: bool = True,
    email: str = "customer@example.com",
    lifetime: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """A subscription object in the shape the API documents."""
    return {
        "SubscriptionReference": reference,
        "StartDate": "2026-01-10",
        "ExpirationDate": expires,
        "RecurringEnabled": recurring,
        "SubscriptionEnabled": enabled,
        "Lifetime": lifetime,
        "Product": {
            "ProductCode": product_code,
            "ProductId": 43811,
            "ProductName": product_code,
            "ProductQuantity": quantity,
            "ProductVersion": "",
            "PriceOptionCodes": [],
        },
        "EndUser": {"Email": email, "FirstName": "Mario", "LastName": "Rossi"},
        **extra,
    }


def order(
    refno: str,
    *,
    ordered: str,
    references: tuple[str, ...] = (),
    status: str = "COMPLETE",
    currency: str = "EUR",
    gross: str = "300.00",
    product_code: str = "AWDOC-TEAM-Y",
    email: str = "customer@example.com",
) -> dict[str, Any]:
    """An order object in the shape the API documents."""
    return {
        "RefNo": refno,
        "BillingDetails": {"Email": email, "FirstName": "Mario", "LastName": "Rossi"},
        "Status": status,
        "Currency": currency,
        "GrossPrice": gross,
        "NetPrice": gross,
        "OrderDate": ordered,
        "Items": [
            {
                "Code": product_code,
                "Quantity": 1,
                "ProductDetails": {
                    "Subscriptions": [{"SubscriptionReference": ref} for ref in references]
                },
            }
        ],
    }
