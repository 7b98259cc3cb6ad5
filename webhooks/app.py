"""The Flask application factory."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from flask import Flask, Response, request
from werkzeug.exceptions import BadRequest, ClientDisconnected, HTTPException, RequestTimeout
from werkzeug.middleware.proxy_fix import ProxyFix

from webhooks import health, ins, intake, ipn, lcn, metrics, recording, unsubscribe
from webhooks.admin import api as admin_api
from webhooks.admin import page as admin_page
from workers.config import Settings
from workers.jobs.runtime import Runtime

log = logging.getLogger("rinnovo.http")

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def create_app(test_config: Mapping[str, str] | None = None) -> Flask:
    """Build the receiver; `test_config` overrides environment variables by name."""
    env = {**os.environ, **(test_config or {})}
    settings = Settings.from_env(env)
    settings.require_secret_keys()
    settings.check_admin_token()

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = intake.MAX_BODY + 1
    app.extensions["rinnovo"] = settings
    # The receiver's runtime, installed: dispatch and the admin page's jobs send on its broker.
    runtime = app.extensions["rinnovo.runtime"] = Runtime(settings).install()
    app.extensions["rinnovo.counters"] = metrics.ReceiverCounters(
        runtime.broker.client, runtime.metrics_key
    )
    app.extensions["rinnovo.recorder"] = recording.Recorder(settings.database_url)
    if settings.trusted_proxies:
        # The client's address and scheme come from X-Forwarded-For/-Proto as set by this many
        # proxies of ours, counted from the right; what a client wrote there itself is ignored.
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n)  # type: ignore[method-assign]

    for module in (ipn, lcn, ins, health):
        app.register_blueprint(module.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(admin_api.bp)
    app.register_blueprint(admin_page.bp)
    app.register_blueprint(unsubscribe.bp)

    app.before_request(intake.check_source)  # before the body is read: refused unread
    app.before_request(read_body)
    app.register_error_handler(HTTPException, http_error)
    return app


def read_body() -> None:
    """Read a request's body once, before any view, so that an unreadable one is a 400 or 408.

    The server reports a body it cannot read (a malformed chunk size, a client gone mid-body, a
    body not sent in time) as an OSError from `wsgi.input`; unhandled, each would be a 500 with a
    traceback in the log. Views then read the cached body.
    """
    if request.method not in BODY_METHODS:
        return
    try:
        request.get_data(cache=True)
    except (OSError, ClientDisconnected) as exc:
        # With a Content-Length, werkzeug reports the server's error as ClientDisconnected.
        cause = exc if isinstance(exc, OSError) else exc.__cause__ or exc.__context__
        reason = str(cause or "the client closed the connection before the whole body")
        log.warning(
            "%s %s: request body unreadable (%s) from %s",
            request.method,
            request.path,
            reason,
            request.remote_addr,
        )
        if isinstance(cause, TimeoutError):
            raise RequestTimeout(reason) from None
        raise BadRequest(f"unreadable request body: {reason}") from None


def http_error(exc: HTTPException) -> Response | HTTPException | tuple[str, int]:
    """Answer an HTTP error as the part of the app it happened in speaks: text, JSON or a page."""
    if exc.code is None or exc.code < 400:
        return exc
    if request.blueprint in metrics.KINDS:  # the receiver's blueprints are named by kind
        return intake.refused(request.blueprint, exc)
    if admin_api.owns(request.path):
        return admin_api.http_error(exc)
    if admin_page.owns(request.path):
        return admin_page.http_error(exc)
    return exc
