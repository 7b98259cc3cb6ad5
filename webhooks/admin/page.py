"""The admin page: events with filters, one event, replay, a subscription; rendered on the server.

Operators log in with ADMIN_TOKEN once; a signed session cookie (HttpOnly, SameSite=Lax, path
/admin, twelve hours, Secure over HTTPS) carries the login and a session id that Redis must still
know (webhooks.admin.sessions). The cookie's key is derived from ADMIN_TOKEN, so every gunicorn
worker accepts it and changing the token logs everyone out. Wrong tokens are counted per client
address. Every form that changes something carries the session's CSRF token. Templates are
autoescaped Jinja2; no JavaScript.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.blueprints import BlueprintSetupState
from werkzeug.exceptions import HTTPException

from webhooks.admin import sessions
from workers.config import Settings
from workers.errors import BadFilter, BrokerUnavailable, DatabaseUnavailable, EventNotFound
from workers.ops import replay
from workers.protocol import form
from workers.protocol.errors import MalformedNotification
from workers.store import db, events, subscriptions, suppressions
from workers.store.jsonable import iso
from workers.store.reports import emails as email_reports
from workers.store.reports import events as event_reports
from workers.store.reports import runs as runs_report
from workers.store.reports.events import EventDetail
from workers.store.reports.filters import make_filter
from workers.store.statuses import EVENT_STATUSES, WAITING
from workers.terminal import printable, visible

log = logging.getLogger("rinnovo.admin")

bp = Blueprint("admin_page", __name__, url_prefix="/admin", template_folder="templates")

PAGE_SIZE = 50
_DIGITS = re.compile(r"[0-9]{1,18}")
Record = TypeVar("Record")  # what a page reads by an id in its path
SECURITY_HEADERS = {
    # No scripts at all; styles only inline in the page; forms only post back here.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@bp.record_once
def _configure(state: BlueprintSetupState) -> None:
    app = state.app
    settings: Settings = app.extensions["rinnovo"]
    if settings.admin_token:
        app.secret_key = sessions.session_key(settings.admin_token)
    app.session_interface = sessions.SessionInterface()  # type: ignore[attr-defined]
    app.config.update(
        SESSION_COOKIE_NAME="rinnovo_admin",
        SESSION_COOKIE_PATH="/admin",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
    )


# --- how values read on the page -------------------------------------------------------------

_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")


@bp.app_template_filter("admin_time")
def admin_time(value: str | None) -> str:
    """An ISO 8601 UTC instant as operators read it, to the second: `2026-01-31 10:00:00 UTC`."""
    if not value:
        return ""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    return moment.strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if moment.utcoffset() is not None else "")


@bp.app_template_filter("admin_value")
def admin_value(value: Any) -> str:
    """A stored value as a person reads it: yes/no, a readable instant, "none" for null."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str) and _INSTANT.match(value):
        return admin_time(value)
    if isinstance(value, list):
        return ", ".join(admin_value(item) for item in value) or "none"
    return str(value)


def diff(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, str | None, str]]:
    """Each changed value as (name, before or None for a new value, after), readable."""
    return [
        (name, admin_value(before[name]) if name in before else None, admin_value(value))
        for name, value in after.items()
    ]


def _settings() -> Settings:
    settings: Settings = current_app.extensions["rinnovo"]
    return settings


def _page(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
    return render_template(f"admin/{template}", **context), status


def _message(title: str, text: str, status: int) -> tuple[str, int]:
    return _page("message.html", status, title=title, text=text)


@bp.context_processor
def _template_globals() -> dict[str, Any]:
    enabled = _settings().admin_token is not None
    return {
        "csrf_token": sessions.csrf_token,
        "logged_in": enabled and sessions.logged_in(),
        "statuses": EVENT_STATUSES,
        "kinds": events.KINDS,
        "diff": diff,
        "requested_by": events.requested_by,
        "finished_labels": events.FINISHED_LABELS,
    }


@bp.before_request
def _guard() -> Any:
    """No page without ADMIN_TOKEN; none but the login without a session; no POST without CSRF."""
    if _settings().admin_token is None:
        return _message("Admin page disabled", "Set ADMIN_TOKEN to turn the admin page on.", 404)
    if request.method == "POST" and not sessions.csrf_ok():
        log.warning("admin page: POST %s without a valid CSRF token", request.path)
        return _message(
            "Form expired",
            "This form is no longer valid (its session ended or it came from elsewhere). "
            "Go back, reload the page and try again.",
            400,
        )
    if request.endpoint != "admin_page.login" and not sessions.logged_in():
        return redirect(url_for(".login", next=request.full_path.rstrip("?")))
    return None


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def owns(path: str) -> bool:
    """Whether a path belongs to the admin page (and not to its API)."""
    return path == "/admin" or path.startswith("/admin/")


def http_error(exc: HTTPException) -> Response:
    """An HTTP error (an unreadable body, an unknown page) as a styled page, never a bare 500."""
    if exc.code == 404:
        title, text = "Page not found", f"There is no admin page at {request.path}."
    else:
        title, text = exc.name, str(exc.description or exc.name)
    # Where no route matched, the blueprint's context and headers are not applied: here they are.
    page = _page("message.html", exc.code or 500, title=title, text=text, **_template_globals())
    return _headers(make_response(page))


@bp.errorhandler(DatabaseUnavailable)
def _database_down(exc: DatabaseUnavailable) -> tuple[str, int]:
    log.error("admin page: %s", exc)
    return _message("Database unavailable", "PostgreSQL did not answer; try again shortly.", 503)


@bp.errorhandler(BrokerUnavailable)
def _redis_down(exc: BrokerUnavailable) -> tuple[str, int]:
    log.error("admin page: %s", exc)
    return _message("Redis unavailable", "Redis did not answer; try again shortly.", 503)


@bp.errorhandler(BadFilter)
def _bad_filter(exc: BadFilter) -> tuple[str, int]:
    return _message("Filter not understood", str(exc), 400)


def _next_page(target: str | None) -> str:
    """Where to go after logging in: only a path of this page, never another site."""
    if target and printable(target):
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and parts.path.startswith("/admin/"):
            return target
    return url_for(".events_list")


# --- login -----------------------------------------------------------------------------------


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    """The login form; the admin token starts a session."""
    target = request.values.get("next")
    if target and not printable(target):  # a CR/LF would split the Location header
        return _message("Link not understood", "The page to open after login is malformed.", 400)
    if request.method == "GET":
        if sessions.logged_in():
            return redirect(_next_page(target))
        return _page("login.html", next=target or "")
    wait = sessions.take_attempt()
    if wait:
        log.warning("admin page: login refused, too many wrong tokens from %s", request.remote_addr)
        page, status = _page(
            "login.html",
            429,
            next=target or "",
            error=f"Too many wrong tokens from your address: try again in {-(-wait // 60)} min.",
        )
        return Response(page, status, headers={"Retry-After": str(wait)})
    given = request.form.get("token", "")
    token = _settings().admin_token or ""
    if not given or not hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8")):
        log.warning("admin page: wrong token from %s", request.remote_addr)
        return _page("login.html", 403, next=target or "", error="That is not the admin token.")
    sessions.give_back_attempt()
    sessions.start()
    log.info("admin page: login from %s", request.remote_addr)
    return redirect(_next_page(target), 303)


@bp.post("/logout")
def logout() -> Any:
    """End the session here and on the server: its id is forgotten, so the cookie opens nothing."""
    sessions.end()
    return redirect(url_for(".login"), 303)


# --- events ----------------------------------------------------------------------------------


def _arg(name: str) -> str | None:
    value = request.args.get(name, "").strip()
    return value or None


@bp.get("/")
def events_list() -> Any:
    """Events matching the filters, newest first, fifty at a time."""
    filters = {name: _arg(name) for name in ("status", "kind", "license", "since", "until")}
    flt = make_filter(
        status=filters["status"],
        kind=filters["kind"],
        license_code=filters["license"],
        since=filters["since"],
        until=filters["until"],
    )
    before_text = _arg("before")
    if before_text is not None and not _DIGITS.fullmatch(before_text):
        return _message("Filter not understood", "before must be an event id.", 400)
    before = int(before_text) if before_text is not None else None
    with db.connection(_settings().database_url) as conn, conn.transaction():
        rows, cursor = event_reports.list_events(conn, flt, limit=PAGE_SIZE, before=before)
        counts = events.counts_by_status(conn)
    shown = {name: value for name, value in filters.items() if value}
    return _page(
        "events.html", rows=rows, cursor=cursor, counts=counts, filters=filters, shown=shown
    )


def _event_id(text: str) -> int | None:
    return int(text) if _DIGITS.fullmatch(text) and int(text) > 0 else None


def _by_id(text: str, read: Callable[[db.Conn, int], Record | None]) -> Record | None:
    """The record `read` finds for the id in a path, or None (not a valid id, or none stored)."""
    number = _event_id(text)
    if number is None:
        return None
    with db.connection(_settings().database_url) as conn, conn.transaction():
        return read(conn, number)


@bp.get("/events/<event_id>")
def event_detail(event_id: str) -> Any:
    """One event: what arrived, how it verified, each attempt's error, and what it caused."""
    detail = _by_id(event_id, event_reports.event_detail)
    if detail is None:
        return _message("No such event", f"There is no event {event_id}.", 404)
    waiting = detail.status in WAITING
    fields = _wire_order(detail)
    filled = {name: values for name, values in fields.items() if any(values)}
    blank = [name for name, values in fields.items() if not any(values)]
    return _page("event.html", event=detail, fields=filled, blank=blank, waiting=waiting)


def _wire_order(detail: EventDetail) -> dict[str, list[str]]:
    """The fields in the order the provider sent them (the stored JSON does not keep it)."""
    if detail.kind == "api":
        return dict(detail.fields)  # the provider's JSON object: no form to read
    try:
        return form.group(form.parse_form(detail.raw_body.encode("utf-8")))
    except MalformedNotification:
        return dict(detail.fields)


@bp.post("/events/<event_id>/replay")
def replay_event(event_id: str) -> Any:
    """Apply the event again with today's code (and, unless told not to, its emails)."""
    number = _event_id(event_id)
    if number is None:
        return _message("No such event", f"There is no event {event_id}.", 404)
    emails = request.form.get("emails", "1") != "0"
    try:
        report = replay.replay(_settings(), [number], emails=emails, by="replay-page")
    except EventNotFound:
        return _message("No such event", f"There is no event {number}.", 404)
    except BrokerUnavailable as exc:
        log.error("admin page: replay of event %s: %s", number, exc)
        return _message("Broker unavailable", f"Event {number} was not replayed: {exc}", 503)
    if report.errors:
        flash(f"Event {number} was not replayed: {report.errors[0]['error']}", "error")
    else:
        suffix = "" if emails else " without emails"
        flash(f"Event {number} enqueued for replay{suffix}.", "info")
        log.info("admin page: event %s replayed%s", number, suffix, extra={"event_id": number})
    return redirect(url_for(".event_detail", event_id=number), 303)


# --- emails ----------------------------------------------------------------------------------


@bp.post("/emails/<email_id>/resend")
def resend_email(email_id: str) -> Any:
    """Send a failed email again, same Message-ID (interrupted: check the mail log first)."""

    number = _event_id(email_id)
    found = None
    if number is not None:
        with db.connection(_settings().database_url) as conn, conn.transaction():
            found = email_reports.concerning(conn, number)
    if number is None or found is None:
        return _message("No such email", f"There is no email {email_id}.", 404)
    # Deferred: the relay imports the actors, and with them the rules, which the receiver's
    # start-up must not load.
    from workers.jobs import outbox

    result = outbox.resend(_settings().database_url, [number])
    if result.refused:
        flash(f"Email {number} was not resent: {result.refused[number]}.", "error")
    else:
        later = " (Redis is unavailable: the relay sends it)" if result.for_relay else ""
        flash(f"Email {number} will be sent again{later}.", "info")
        log.info("admin page: email %s resent", number)
    if found.event_id is not None:
        return redirect(url_for(".event_detail", event_id=found.event_id), 303)
    return redirect(url_for(".subscription", license_code=found.license_code), 303)


# --- subscriptions ---------------------------------------------------------------------------


@bp.get("/subscriptions")
def find_subscription() -> Any:
    """The license lookup form's target."""
    code = _arg("license")
    if code is None:
        return _message("No license given", "Type a license code to look it up.", 400)
    return redirect(url_for(".subscription", license_code=code))


@bp.get("/subscriptions/<license_code>")
def subscription(license_code: str) -> Any:
    """One subscription: state, customer, and every change with the event that made it."""

    with db.connection(_settings().database_url) as conn, conn.transaction():
        found = subscriptions.describe(conn, license_code)
        sent = [] if found is None else subscriptions.emails(conn, license_code)
    if found is None:
        shown = visible(license_code)  # a NUL or ESC typed into the address bar, shown
        return _message("No such subscription", f"No subscription has license {shown}.", 404)
    return _page("subscription.html", sub=found, emails=sent)


# --- reconciliation --------------------------------------------------------------------------


@bp.get("/reconcile")
def reconcile_runs() -> Any:
    """The latest sweeps of the provider's API: window, counts, outcome."""

    with db.connection(_settings().database_url) as conn, conn.transaction():
        runs = runs_report.recent_runs(conn, PAGE_SIZE)
    return _page("reconcile.html", runs=runs)


@bp.get("/reconcile/<run_id>")
def reconcile_run(run_id: str) -> Any:
    """One sweep: each difference, the event that applied it, and what that changed."""
    detail = _by_id(run_id, runs_report.run_detail)
    if detail is None:
        return _message("No such sweep", f"There is no reconciliation sweep {run_id}.", 404)
    return _page(
        "reconcile_run.html", run=detail.run, differences=detail.differences, changes=detail.changes
    )


@bp.get("/suppressions")
def suppression_list() -> Any:
    """Addresses that unsubscribed from reminders, newest first."""

    with db.connection(_settings().database_url) as conn, conn.transaction():
        rows = suppressions.listing(conn, address=_arg("address"), limit=PAGE_SIZE)
    shown = [row | {"created_at": iso(row["created_at"])} for row in rows]
    return _page("suppressions.html", rows=shown)
