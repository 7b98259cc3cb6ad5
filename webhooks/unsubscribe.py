"""One-click unsubscribe (RFC 8058): `POST /unsubscribe/<token>` records at once, `GET` only asks.

Mail clients post `List-Unsubscribe=One-Click` to the link; a person following it gets a page
whose button posts the same body, so a scanner that follows links changes nothing. A token that
is forged, truncated or signed with another key is refused with 400 and records nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, render_template, request

from emails import unsubscribe
from webhooks.intake import settings
from workers.errors import DatabaseUnavailable
from workers.store import db, suppressions

log = logging.getLogger("rinnovo.unsubscribe")

bp = Blueprint("unsubscribe", __name__, url_prefix="/unsubscribe", template_folder="templates")

# What each family is called on the pages, per locale.
FAMILY_NAMES = {
    "en": {"reminders": "renewal reminders"},
    "it": {"reminders": "promemoria di rinnovo"},
}


def _page(template: str, status: int, locale: str, **context: Any) -> Response:
    html = render_template(f"unsubscribe/{template}", locale=locale, **context)
    response = Response(html, status=status, mimetype="text/html")
    # No script, no framing, no caching of a page about one customer.
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _locale(found: dict[str, Any]) -> str:
    return "it" if str(found["locale"]).lower().startswith("it") else "en"


def _refused() -> Response:
    return _page("refused.html", 400, _browser_locale())


def _browser_locale() -> str:
    return request.accept_languages.best_match(["en", "it"]) or "en"


def _read(token: str) -> tuple[unsubscribe.Token, dict[str, Any]] | None:
    """The token's meaning and its customer, or None when either is not genuine."""
    parsed = unsubscribe.read(settings().secret_keys, token)
    if parsed is None:
        return None
    with db.connection(settings().database_url) as conn, conn.transaction():
        found = suppressions.customer(conn, parsed.customer_id)
    return None if found is None else (parsed, found)


@bp.errorhandler(DatabaseUnavailable)
def unavailable(exc: DatabaseUnavailable) -> Response:
    """The database is down: nothing was recorded; the mail client or the person tries again."""
    log.warning("unsubscribe: %s", exc)
    response = _page("unavailable.html", 503, _browser_locale())
    response.headers["Retry-After"] = "60"
    return response


@bp.get("/<token>")
def confirm(token: str) -> Response:
    """Ask: a page with a button that posts the one-click body. Nothing is recorded."""
    read = _read(token)
    if read is None:
        return _refused()
    parsed, found = read
    locale = _locale(found)
    return _page(
        "confirm.html", 200, locale, family=FAMILY_NAMES[locale][parsed.family], done=False
    )


@bp.post("/<token>")
def one_click(token: str) -> Response:
    """Record the suppression at once (RFC 8058's POST, or the page's button) and answer 200."""
    read = _read(token)
    if read is None or request.form.get("List-Unsubscribe") != "One-Click":
        return _refused()
    parsed, found = read
    how = "page" if request.form.get("from") == "page" else "one-click"
    with db.connection(settings().database_url) as conn, conn.transaction():
        suppressions.record(conn, parsed.customer_id, parsed.family, how)
    log.info("unsubscribed from %s (%s)", parsed.family, how)
    locale = _locale(found)
    return _page("confirm.html", 200, locale, family=FAMILY_NAMES[locale][parsed.family], done=True)
