"""The receiver's one path for every notification: verify, parse, record, enqueue, answer."""

from __future__ import annotations

import ipaddress
import logging
import time
from types import ModuleType

from flask import Response, current_app, request
from werkzeug.exceptions import HTTPException

from webhooks import metrics
from webhooks.recording import Recorder
from workers.config import Settings
from workers.errors import DatabaseUnavailable, ValueNotStorable
from workers.jobs.runtime import Runtime
from workers.logs import LOGGED
from workers.protocol import form, ins, signature
from workers.protocol.errors import MalformedNotification, SignatureError
from workers.store import events

log = logging.getLogger("rinnovo.receiver")

FORM = "application/x-www-form-urlencoded"
MAX_BODY = 64 * 1024
# The request headers an event keeps, each with its key in the WSGI environ (read directly: a
# lookup through werkzeug's headers object costs several times more).
HEADERS_KEPT = {
    "User-Agent": "HTTP_USER_AGENT",
    "X-Forwarded-For": "HTTP_X_FORWARDED_FOR",
    "X-Real-Ip": "HTTP_X_REAL_IP",
    "Content-Length": "CONTENT_LENGTH",
}
# The metric outcome of each HTTP error a delivery can meet before its view runs.
HTTP_OUTCOMES = {400: "malformed", 408: "timeout", 413: "too_large"}


class Rejected(Exception):
    """A delivery refused with its own status, metric outcome and message."""

    def __init__(self, status: int, outcome: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome
        self.message = message


def settings() -> Settings:
    """The settings the app was created with."""
    settings: Settings = current_app.extensions["rinnovo"]
    return settings


def runtime() -> Runtime:
    """The runtime the app was created with: its broker, its pool, its metrics key."""
    built: Runtime = current_app.extensions["rinnovo.runtime"]
    return built


def recorder() -> Recorder:
    """The app's recorder of deliveries (one per process: it batches the process's requests)."""
    found: Recorder = current_app.extensions["rinnovo.recorder"]
    return found


def _text(body: str, status: int) -> Response:
    return Response(body, status=status, mimetype="text/plain")


def _read_body() -> bytes:
    if request.mimetype != FORM:
        shown = request.mimetype or "none"
        raise Rejected(415, "unsupported_media_type", f"Content-Type must be {FORM}, not {shown}")
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise Rejected(413, "too_large", f"body over {MAX_BODY} bytes")
    # A chunked body has no Content-Length: the app lets one byte past the limit through
    # (MAX_CONTENT_LENGTH = MAX_BODY + 1) so that an over-long body shows here, not truncated.
    raw = request.get_data()  # read (or refused) by the app before any view
    if len(raw) > MAX_BODY:
        raise Rejected(413, "too_large", f"body over {MAX_BODY} bytes")
    return raw


def check_source() -> Response | None:
    """Refuse a delivery from outside the endpoint's TRUSTED_SOURCES (when it has any)."""
    kind = request.blueprint or ""  # the receiver's blueprints are named by kind
    networks = settings().trusted_sources.get(kind)
    if kind not in metrics.KINDS or not networks:
        return None
    try:
        address = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        address = None
    if address is not None and any(address in network for network in networks):
        return None
    return reject(kind, Rejected(403, "forbidden_source", "source address not allowed"))


def _verify(module: ModuleType, fields: dict[str, list[str]]) -> tuple[str, int]:
    config = settings()
    if module is ins:
        if not config.ins_secret_words:
            raise Rejected(503, "not_configured", "INS is not configured on this receiver")
        return "ins-md5", ins.verify(fields, config.ins_secret_words)
    verified = signature.verify(fields, config.secret_keys, accept_md5=config.accept_md5)
    return str(verified.algorithm), verified.key_index


def _headers() -> dict[str, str]:
    environ = request.environ
    kept = {name: environ[key] for name, key in HEADERS_KEPT.items() if key in environ}
    kept["Remote-Addr"] = request.remote_addr or ""
    return kept


def _answer(module: ModuleType, fields: dict[str, list[str]], algorithm: str) -> Response:
    if module is ins:
        return _text("OK", 200)
    values = module.receipt_values(fields)
    body = signature.receipt(
        signature.Algorithm(algorithm), settings().secret_keys[0], values, signature.receipt_date()
    )
    return _text(body, 200)


def receive(module: ModuleType) -> Response:
    """Handle one delivery of the notification kind `module` describes."""
    started = time.perf_counter()
    kind = module.KIND
    try:
        raw = _read_body()
        fields = form.parse_grouped(raw)
        algorithm, key_index = _verify(module, fields)
        module.validate(fields)
        event = events.NewEvent(
            kind=kind,
            dedupe_key=module.dedupe_key(fields),
            raw_body=raw,
            content_type=request.content_type or FORM,
            headers=_headers(),
            fields=None,  # read again from the body when shown: not stored (NewEvent)
            signature_algo=algorithm,
            key_index=key_index,
            summary=module.summary(fields),
            license_codes=module.license_codes(fields),
            test=module.is_test(fields),
        )
        recorded = recorder().record(event)
    except Rejected as exc:
        return reject(kind, exc)
    except SignatureError as exc:
        body = f"<EPAYMENT>Error. Cannot verify signature: {exc}</EPAYMENT>"
        return reject(kind, Rejected(400, "bad_signature", str(exc)), body=body)
    except (MalformedNotification, ValueNotStorable) as exc:
        return reject(kind, Rejected(400, "malformed", str(exc)))
    except DatabaseUnavailable as exc:
        log.error("%s: not stored, answering 503 so the provider retries: %s", kind, exc)
        return reject(kind, Rejected(503, "unavailable", "temporarily unable to store; retry"))

    stored = recorded.stored
    outcome = "accepted" if stored.inserted else "duplicate"
    response = _answer(module, fields, algorithm)
    seconds = time.perf_counter() - started
    log.info(
        "%s event %s %s (%s) in %.1f ms",
        kind,
        stored.event_id,
        outcome,
        event.summary,
        seconds * 1000,
        extra=_access(200, seconds) | {"event_id": stored.event_id, "outcome": outcome},
    )
    metrics.delivered(kind, outcome, seconds)
    return response


def _access(status: int, seconds: float | None = None) -> dict[str, object]:
    """What the access log would say of this request, for the delivery's one log line; the
    access log leaves the request out (workers.logs.GunicornLogger)."""
    request.environ[LOGGED] = True
    found: dict[str, object] = {"status": status, "remote_addr": request.remote_addr or ""}
    if seconds is not None:
        found["duration_ms"] = round(seconds * 1000, 3)
    return found


def refused(kind: str, exc: HTTPException) -> Response | HTTPException:
    """A delivery the app refused before its view (body too large, malformed, late), answered."""
    outcome = HTTP_OUTCOMES.get(exc.code or 0)
    if outcome is None:
        return exc
    message = f"body over {MAX_BODY} bytes" if exc.code == 413 else str(exc.description)
    return reject(kind, Rejected(exc.code or 400, outcome, message))


def reject(kind: str, exc: Rejected, *, body: str | None = None) -> Response:
    """Log the refusal with its reason (never the payload or a secret) and answer it."""
    metrics.delivered(kind, exc.outcome)
    log.warning(
        "%s delivery rejected (%s, %d): %s from %s",
        kind,
        exc.outcome,
        exc.status,
        exc.message,
        request.remote_addr,
        extra=_access(exc.status) | {"outcome": exc.outcome},
    )
    return _text(body if body is not None else exc.message, exc.status)
