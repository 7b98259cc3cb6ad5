"""The Procfile's gunicorn worker: gevent, with deadlines on reading a request's headers and body.

A sync worker gives a whole process to each request until its body has arrived, so a few hundred
clients that send a byte every few seconds stop the receiver. Under gevent an unfinished request
costs one greenlet, and these deadlines close the ones that never finish: the headers of each
request must arrive within HEADER_TIMEOUT seconds (gunicorn's keep-alive wait becomes this
deadline), the whole body within BODY_TIMEOUT seconds of the request's start. A body that is late
or that gunicorn cannot parse reaches the app as an OSError from `wsgi.input`, which the app
answers with 408 or 400 (webhooks/app.py).

This module is imported by gunicorn's master before it forks, and so before gevent patches the
standard library in each worker: it imports nothing that opens sockets or picks a wait function
(psycopg chooses a gevent-friendly one only if it is first imported after the patching).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import gevent
from gunicorn.http.errors import NoMoreData, ParseException
from gunicorn.workers.ggevent import GeventWorker

DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0

# Modules that decide at import time whether gevent is active (and define helpers only if so).
GEVENT_AWARE_MODULES = ("dramatiq.middleware.shutdown", "dramatiq.middleware.time_limit")

Wsgi = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def seconds(name: str, default: float) -> float:
    """A positive number of seconds from the environment, `default` when unset."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {text!r}") from None
    if not 0 < value < 3600:
        raise ValueError(f"{name} must be more than 0 and less than 3600 seconds, not {text!r}")
    return value


class DeadlineInput:
    """`wsgi.input` that must be read to the end before a deadline; errors become OSError."""

    def __init__(self, stream: Any, timeout: float) -> None:
        self._stream = stream
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout
        self.failed = False

    def _call(self, method: Callable[..., bytes], *args: Any) -> Any:
        late = TimeoutError(f"request body not received within {self._timeout:g} s")
        left = self._deadline - time.monotonic()
        self.failed = True  # until the read below succeeds
        if left <= 0:
            raise late
        try:
            with gevent.Timeout(left, late):
                data = method(*args)
            self.failed = False
            return data
        except NoMoreData as exc:
            raise ConnectionError(f"client closed the connection mid-body: {exc}") from None
        except ParseException as exc:  # a malformed chunked body, among others
            raise OSError(f"malformed request body: {type(exc).__name__}: {exc}") from None

    def read(self, size: int | None = None) -> bytes:
        """Read up to `size` bytes (all when None) before the deadline."""
        return self._call(self._stream.read, size)

    def readline(self, size: int | None = None) -> bytes:
        """Read one line before the deadline."""
        return self._call(self._stream.readline, size)

    def readlines(self, hint: int | None = None) -> list[bytes]:
        """Read every line before the deadline."""
        return self._call(self._stream.readlines, hint)

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


def with_body_deadline(app: Wsgi, timeout: float) -> Wsgi:
    """Wrap a WSGI app so that its request body must arrive within `timeout` seconds."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        stream = DeadlineInput(environ["wsgi.input"], timeout)
        environ["wsgi.input"] = stream
        result = app(environ, start_response)
        if stream.failed:
            # The rest of an unreadable body cannot be told from a next request: close after
            # answering (gunicorn's start_response is a method of its response object).
            response = getattr(start_response, "__self__", None)
            if response is not None:
                response.force_close()
        return result

    return wrapped


class Worker(GeventWorker):
    """gunicorn's gevent worker with a deadline for each request's headers and for its body."""

    def init_process(self) -> None:
        """Read the deadlines, then start as gunicorn's gevent worker does."""
        self.header_timeout = seconds("HEADER_TIMEOUT", DEFAULT_HEADER_TIMEOUT)
        self.body_timeout = seconds("BODY_TIMEOUT", DEFAULT_BODY_TIMEOUT)
        self.waiting_for_headers: dict[Any, gevent.Timeout] = {}
        if not self.cfg.keepalive:
            # gunicorn reads a request's headers under timeout_ctx only on keep-alive connections.
            raise RuntimeError("this worker needs --keep-alive above 0: it bounds header reads")
        super().init_process()

    def patch(self) -> None:
        """Patch the standard library for gevent, then let dramatiq see it.

        The master imported dramatiq unpatched (through the JSON logger class), and dramatiq
        defines its gevent helpers at import only when gevent is active, yet picks them when
        building a broker: run those modules again, now that gevent is active.
        """
        super().patch()
        for name in GEVENT_AWARE_MODULES:
            module = sys.modules.get(name)
            if module is not None:
                importlib.reload(module)

    @contextlib.contextmanager
    def timeout_ctx(self) -> Iterator[None]:
        """The deadline for the next request's headers (and for an idle keep-alive connection)."""
        deadline = gevent.Timeout(self.header_timeout, False)  # False: ends the block quietly
        current = gevent.getcurrent()
        self.waiting_for_headers[current] = deadline
        try:
            with deadline:
                yield
        finally:
            self.waiting_for_headers.pop(current, None)

    def handle_exit(self, sig: int, frame: Any) -> None:
        """Stop; connections waiting for a request are closed now, not at their deadline."""
        super().handle_exit(sig, frame)
        for greenlet, deadline in list(self.waiting_for_headers.items()):
            greenlet.kill(deadline, block=False)

    def run(self) -> None:
        """Serve until told to stop, then close the database pool while gevent still runs."""
        super().run()
        # Deferred: the master must not import psycopg at start-up, before gevent patches.
        from workers.store import db

        db.close_pool()

    def load_wsgi(self) -> None:
        """Load the app, wrapped so that its request bodies have a deadline too, and freeze
        what it built (`gc.freeze`)."""
        super().load_wsgi()
        loaded: Wsgi = self.wsgi  # type: ignore[has-type]
        self.wsgi = with_body_deadline(loaded, self.body_timeout)
        # What the app built to serve lives as long as the process: kept out of the cyclic
        # garbage collector's full passes (about 13 ms each over it here), which would otherwise
        # stop every request in flight in this process now and then.
        gc.collect()
        gc.freeze()
