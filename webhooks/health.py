"""Liveness and readiness."""

from flask import Blueprint, Response, jsonify

from webhooks.intake import runtime, settings
from workers.errors import DatabaseUnavailable
from workers.store import db

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process is up."""
    return Response("ok", mimetype="text/plain")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """The database and Redis both answer, so notifications can be stored and enqueued."""
    checks: dict[str, str] = {}
    try:
        db.ping(settings().database_url)
        checks["database"] = "ok"
    except DatabaseUnavailable as exc:
        checks["database"] = str(exc)
    try:
        runtime().broker.client.ping()
        checks["redis"] = "ok"
    except Exception as exc:  # any failure to answer means "not ready"; the reason is reported
        checks["redis"] = f"redis unavailable: {type(exc).__name__}"
    ready = all(value == "ok" for value in checks.values())
    return jsonify(ready=ready, checks=checks), (200 if ready else 503)
