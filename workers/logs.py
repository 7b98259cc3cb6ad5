"""Logs as one JSON object per line, carrying the event id or license code in scope.

Every process logs through `JsonFormatter`: the `rinnovo` CLI (and so the clock) calls
`configure_logging` from its group callback, gunicorn uses `GunicornLogger` (Procfile:
`--logger-class workers.logs.GunicornLogger`), and Dramatiq worker processes get it from the
`WorkerLogging` middleware, which also puts the id of the event or email a message carries in
scope for every line logged while the message is processed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any, TextIO

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware
from gunicorn.glogging import Logger as _GunicornBaseLogger

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged.
_RECORD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", (), None)).keys()
) | {"message", "asctime", "taskName"}

# json.dumps escapes C0 only; these pass through raw and can still act on a terminal (C1 CSI),
# split a line for some readers (U+2028/9), or reorder what is shown (bidirectional overrides).
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

# An email address inside text that came from elsewhere (a mail server's reply names the
# recipient): customers' addresses are logged at debug level only.
_ADDRESS = re.compile(r"[^\s<>()\[\]@,;:\"']+@[^\s<>()\[\]@,;:\"']+")

# Set in a request's WSGI environ by an app that logged the request itself, with what the access
# log would say: the access log then leaves it out (one line per request).
LOGGED = "rinnovo.logged"

_scope: ContextVar[Mapping[str, Any] | None] = ContextVar("rinnovo_log_scope", default=None)


def without_addresses(text: object) -> str:
    """`text` with every email address in it replaced by `<address>`, for info-level lines."""
    return _ADDRESS.sub("<address>", str(text))


# Which message argument names what, for the worker's log scope.
_ACTOR_SCOPES = {"process_event": "event_id", "send_email": "email_id"}


@contextlib.contextmanager
def scope(**fields: Any) -> Iterator[None]:
    """Add fields (event_id=..., license_code=...) to every line logged inside the block."""
    token = _scope.set({**(_scope.get() or {}), **fields})
    try:
        yield
    finally:
        _scope.reset(token)


def _utc(created: float) -> str:
    moment = dt.datetime.fromtimestamp(created, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """Format a record as one line of JSON: time, level, logger, message, then the context."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a JSON object on one line, every control character escaped."""
        entry: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_scope.get() or {})
        for name, value in vars(record).items():
            if name not in _RECORD_ATTRIBUTES and not name.startswith("_"):
                entry[name] = value
        if record.exc_info:
            exc = record.exc_info[1]
            if exc is not None:
                entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["traceback"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        line = json.dumps(entry, ensure_ascii=False, default=str)
        return _JSON_UNSAFE.sub(lambda match: f"\\u{ord(match.group()):04x}", line)


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Write to whatever sys.stderr is at the time, so a redirected stderr is followed."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> TextIO:
        """The current standard error."""
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        """Ignore the stream StreamHandler's constructor sets."""


def _ours(handler: logging.Handler) -> bool:
    return getattr(handler, "_rinnovo", False)


def configure_logging(level: int | str = logging.INFO, *, force: bool = False) -> None:
    """Send every log record to stderr as JSON at `level`.

    Like logging.basicConfig, it leaves a root logger that something else already configured (a
    test harness, an embedding program) alone unless `force` is set; calling it again only
    replaces the handler it installed itself.
    """
    root = logging.getLogger()
    foreign = [handler for handler in root.handlers if not _ours(handler)]
    if foreign and not force:
        return
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter())
    handler._rinnovo = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)


class GunicornLogger(_GunicornBaseLogger):
    """Gunicorn's logger with JSON lines for its own messages, the access log and the app's."""

    def setup(self, cfg: Any) -> None:
        """Set gunicorn's handlers up as usual, then make them, and the root logger, JSON."""
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(JsonFormatter())
        configure_logging(self.loglevel, force=True)

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        """Log one request as fields (never its query string or body: they may carry data), unless
        the app logged it itself."""
        if not self.access_log_enabled or environ.get(LOGGED):
            return
        status = resp.status
        code = int(status.split(None, 1)[0]) if isinstance(status, str) else int(status)
        method = environ.get("REQUEST_METHOD", "")
        path = environ.get("PATH_INFO", "")
        self.access_log.info(
            "%s %s %d",
            method,
            path,
            code,
            extra={
                "method": method,
                "path": path,
                "status": code,
                "duration_ms": round(request_time.total_seconds() * 1000, 3),
                "bytes": getattr(resp, "sent", None),
                "remote_addr": environ.get("REMOTE_ADDR", ""),
                "user_agent": environ.get("HTTP_USER_AGENT", ""),
            },
        )


class WorkerLogging(Middleware):
    """JSON logs in Dramatiq worker processes, with the message's event or email id in scope."""

    def __init__(self, level: int | str = logging.INFO) -> None:
        self.level = level
        self._tokens: ContextVar[tuple[Any, ...]] = ContextVar("rinnovo_worker_scope", default=())

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        """Replace the plain-text logging Dramatiq's CLI set up with JSON lines."""
        configure_logging(self.level, force=True)

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        """Put the id the message carries in scope for the lines logged while it runs."""
        fields: dict[str, Any] = {"job_id": message.message_id, "actor": message.actor_name}
        name = _ACTOR_SCOPES.get(message.actor_name)
        if name is not None and message.args:
            fields[name] = message.args[0]
        token = _scope.set({**(_scope.get() or {}), **fields})
        self._tokens.set((*self._tokens.get(), token))

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        """Take the message's ids out of scope."""
        tokens = self._tokens.get()
        if tokens:
            _scope.reset(tokens[-1])
            self._tokens.set(tokens[:-1])

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        """Take the skipped message's ids out of scope."""
        self.after_process_message(broker, message)
