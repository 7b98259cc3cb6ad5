"""The Flask application factory."""

from __future__ import annotations

import os
from collections.abc import Mapping

from flask import Flask, Response, request
from werkzeug.exceptions import RequestEntityTooLarge

from webhooks import admin_api, admin_page, health, ins, intake, ipn, lcn, metrics, unsubscribe
from workers.config import Settings


def create_app(test_config: Mapping[str, str] | None = None) -> Flask:
    """Build the receiver; `test_config` overrides environment variables by name."""
    env = {**os.environ, **(test_config or {})}
    settings = Settings.from_env(env)
    settings.require_secret_keys()

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = intake.MAX_BODY + 1
    app.extensions["rinnovo"] = settings

    for module in (ipn, lcn, ins, health):
        app.register_blueprint(module.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(admin_api.bp)
    app.register_blueprint(admin_page.bp)
    app.register_blueprint(unsubscribe.bp)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_exc: RequestEntityTooLarge) -> Response:
        kind = request.path.strip("/") or "http"
        return intake.reject(
            kind, intake.Rejected(413, "too_large", f"body over {intake.MAX_BODY} bytes")
        )

    return app
