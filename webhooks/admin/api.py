"""The admin JSON API: events, replay, subscriptions and emails, behind a bearer token."""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from webhooks.admin import sessions
from webhooks.intake import settings
from workers.errors import BadFilter, BrokerUnavailable, DatabaseUnavailable, EventNotFound
from workers.ops import replay
from workers.store import db, subscriptions, suppressions
from workers.store.events import EventFilter
from workers.store.jsonable import iso, jsonable
from workers.store.reports import emails as email_reports
from workers.store.reports import events as event_reports
from workers.store.reports.filters import make_filter

log = logging.getLogger("rinnovo.admin")

PREFIX = "/admin/api"
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_ID = 2**63 - 1  # bigint: a larger number cannot name a row
OPENAPI_PATH = Path(__file__).with_name("openapi.json")
DISABLED = "admin API is disabled: set ADMIN_TOKEN"

bp = Blueprint("admin_api", __name__, url_prefix=PREFIX)


class ApiError(Exception):
    """A request the API refuses, with its status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """An error answer: JSON {"error": message} with its status."""
    response = jsonify(error=message)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def _refusal() -> Response | None:
    """The answer for a request without the right token, or None when it may go on."""
    token = settings().admin_token
    if token is None:
        return error(404, DISABLED)
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return error(401, "missing bearer token", {"WWW-Authenticate": 'Bearer realm="rinnovo"'})
    # The page's login and the API share one count of wrong tokens per address: guessing here
    # is no faster than guessing there. Redis down leaves the API usable, just uncounted.
    with contextlib.suppress(BrokerUnavailable):
        wait = sessions.take_attempt()
        if wait:
            log.warning("admin API: refused, too many wrong tokens from %s", request.remote_addr)
            return error(429, "too many wrong tokens from this address", {"Retry-After": str(wait)})
    if hmac.compare_digest(given.strip().encode(), token.encode()):
        with contextlib.suppress(BrokerUnavailable):
            sessions.give_back_attempt()
    else:
        log.warning("admin API: wrong token from %s for %s", request.remote_addr, request.path)
        return error(
            401,
            "wrong bearer token",
            {"WWW-Authenticate": 'Bearer realm="rinnovo", error="invalid_token"'},
        )
    return None


@bp.before_request
def require_admin() -> Response | None:
    """Every route here needs `Authorization: Bearer $ADMIN_TOKEN`; none exist without it."""
    return _refusal()


def owns(path: str) -> bool:
    """Whether a path is under the API."""
    return path == PREFIX or path.startswith(PREFIX + "/")


def http_error(exc: HTTPException) -> Response:
    """Unknown paths, wrong methods and unreadable bodies under the API answer JSON too."""
    refused = _refusal()
    if refused is not None:
        return refused
    response = error(exc.code or 500, exc.description or exc.name)
    if exc.code == 405 and exc.valid_methods:  # type: ignore[attr-defined]
        response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
    return response


@bp.errorhandler(ApiError)
def api_error(exc: ApiError) -> Response:
    """A refused request."""
    return error(exc.status, exc.message)


@bp.errorhandler(BadFilter)
def bad_filter(exc: BadFilter) -> Response:
    """A filter, date or id the API cannot understand."""
    return error(400, str(exc))


@bp.errorhandler(EventNotFound)
def not_found(exc: EventNotFound) -> Response:
    """An id that names no event."""
    return error(404, str(exc))


@bp.errorhandler(DatabaseUnavailable)
@bp.errorhandler(BrokerUnavailable)
def unavailable(exc: DatabaseUnavailable | BrokerUnavailable) -> Response:
    """PostgreSQL or Redis did not answer: try again later."""
    log.error("admin API: %s", exc)
    return error(503, str(exc), {"Retry-After": "30"})


# --- reading the request ---------------------------------------------------------------------

_DIGITS = re.compile(r"[0-9]{1,19}")


def _whole(name: str, text: str, *, low: int = 1, high: int = MAX_ID) -> int:
    if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
        raise ApiError(400, f"{name} must be a whole number from {low} to {high}, not {text!r}")
    return int(text)


def _only_args(*allowed: str) -> None:
    """Refuse query parameters the route does not know, so a misspelt filter is not ignored."""
    unknown = sorted(set(request.args) - set(allowed))
    if unknown:
        known = ", ".join(allowed) or "none"
        raise ApiError(400, f"unknown query parameter(s) {', '.join(unknown)}: use {known}")


def _page() -> tuple[int, int | None]:
    limit = request.args.get("limit")
    before = request.args.get("before")
    return (
        _whole("limit", limit, high=MAX_LIMIT) if limit is not None else DEFAULT_LIMIT,
        _whole("before", before) if before is not None else None,
    )


def _text_arg(name: str) -> str | None:
    value = request.args.get(name)
    if value is None:
        return None
    if not value.strip():
        raise ApiError(400, f"{name} is blank")
    return value.strip()


def _event_id(text: str) -> int:
    if not _DIGITS.fullmatch(text) or not 1 <= int(text) <= MAX_ID:
        raise ApiError(400, f"event id must be a positive whole number, not {text!r}")
    return int(text)


def _body(allowed: tuple[str, ...]) -> dict[str, Any]:
    """The JSON object sent, with only the keys this route knows; empty when nothing is sent."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not JSON: send a JSON object") from None
    except RecursionError:
        raise ApiError(400, "the body is nested too deeply: send a flat JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    try:  # JSON can spell a lone surrogate (\ud800), which no database or reply can hold
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(
            400, "the body holds an invalid Unicode character (a lone surrogate)"
        ) from None
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise ApiError(400, f"unknown field(s) {', '.join(unknown)}: use {', '.join(allowed)}")
    return body


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise ApiError(400, f"{name} must be true or false")
    return value


def _string(body: dict[str, Any], name: str) -> str | None:
    if name not in body:
        return None
    value = body[name]
    if not isinstance(value, str):  # null included: leave the field out to mean "any"
        raise ApiError(400, f"{name} must be a string (leave it out to mean any)")
    return value


def _report(report: replay.ReplayReport) -> tuple[Response, int]:
    body = {
        "event_ids": report.event_ids,
        "enqueued": report.enqueued,
        "dry_run": report.dry_run,
        "previews": jsonable(report.previews),
        "errors": report.errors,
        "refreshed": report.refreshed,
    }
    return jsonify(body), (200 if report.dry_run else 202)


# --- routes ----------------------------------------------------------------------------------


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI description of this API."""
    return Response(_openapi_text(), mimetype="application/json")


@lru_cache(maxsize=1)
def _openapi_text() -> str:
    return OPENAPI_PATH.read_text(encoding="utf-8")


@bp.get("/events")
def list_events() -> Response:
    """Events matching the filter, newest first, a page at a time."""
    _only_args("status", "kind", "license", "since", "until", "limit", "before")
    flt = make_filter(
        status=_text_arg("status"),
        kind=_text_arg("kind"),
        license_code=_text_arg("license"),
        since=_text_arg("since"),
        until=_text_arg("until"),
    )
    limit, before = _page()
    with db.connection(settings().database_url) as conn, conn.transaction():
        page, cursor = event_reports.list_events(conn, flt, limit=limit, before=before)
    return jsonify(events=jsonable(page), next=cursor)


@bp.get("/events/<event_id>")
def show_event(event_id: str) -> Response:
    """One event: request, reading, attempts, last error, and the changes and emails it caused."""
    _only_args()
    number = _event_id(event_id)
    with db.connection(settings().database_url) as conn, conn.transaction():
        detail = event_reports.event_detail(conn, number)
    if detail is None:
        raise EventNotFound(f"no event with id {number}")
    return jsonify(jsonable(detail))


@bp.post("/events/<event_id>/replay")
def replay_event(event_id: str) -> tuple[Response, int]:
    """Re-parse one event and apply it again (or, with dry_run, say what that would do)."""
    _only_args()
    number = _event_id(event_id)
    body = _body(("dry_run", "emails"))
    report = replay.replay(
        settings(),
        [number],
        dry_run=_flag(body, "dry_run", False),
        emails=_flag(body, "emails", True),
        by="replay-api",
    )
    return _report(report)


@bp.post("/events/replay")
def replay_events() -> tuple[Response, int]:
    """Replay every event a filter selects: failed ones, by kind, license or time."""
    _only_args()
    body = _body(("failed", "kind", "license", "since", "until", "dry_run", "emails"))
    flt = make_filter(
        kind=_string(body, "kind"),
        license_code=_string(body, "license"),
        since=_string(body, "since"),
        until=_string(body, "until"),
    )
    failed = _flag(body, "failed", False)
    if not failed and flt == EventFilter():
        raise ApiError(400, "say which events to replay: failed, kind, license, since or until")
    ids = replay.select_ids(settings(), flt, failed_only=failed)
    report = replay.replay(
        settings(),
        ids,
        dry_run=_flag(body, "dry_run", False),
        emails=_flag(body, "emails", True),
        by="replay-api",
    )
    return _report(report)


@bp.get("/subscriptions/<license_code>")
def show_subscription(license_code: str) -> Response:
    """One subscription: its state, customer and history."""
    _only_args()

    with db.connection(settings().database_url) as conn, conn.transaction():
        found = subscriptions.describe(conn, license_code)
    if found is None:
        raise ApiError(404, f"no subscription with license code {license_code!r}")
    return jsonify(found)


@bp.get("/emails")
def list_emails() -> Response:
    """Outbox rows, newest first, by recipient, kind and status, a page at a time."""
    _only_args("to", "kind", "status", "limit", "before")
    limit, before = _page()
    with db.connection(settings().database_url) as conn, conn.transaction():
        page, cursor = email_reports.list_emails(
            conn,
            to=_text_arg("to"),
            kind=_text_arg("kind"),
            status=_text_arg("status"),
            limit=limit,
            before=before,
        )
    return jsonify(emails=jsonable(page), next=cursor)


@bp.get("/suppressions")
def list_suppressions() -> Response:
    """Addresses that unsubscribed, newest first (only `address`'s when given)."""

    _only_args("address", "limit")
    limit, _ = _page()
    with db.connection(settings().database_url) as conn, conn.transaction():
        rows = suppressions.listing(conn, address=_text_arg("address"), limit=limit)
    return jsonify(suppressions=[row | {"created_at": iso(row["created_at"])} for row in rows])
