"""Test helpers: a TCP proxy that can cut a service off, signed sample posts, queue inspection."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence

import requests

from benchmarks._common import procfile_gunicorn_options
from workers.config import Settings
from workers.jobs.broker import build_broker
from workers.jobs.runtime import Runtime
from workers.ops import samples
from workers.protocol import form
from workers.protocol.signature import Algorithm

# The session's runtime, from the environment conftest set: installed before any test module
# imports the actors, which dramatiq declares on the broker installed when they are imported.
RUNTIME = Runtime.from_env().install()
broker = RUNTIME.broker


def runtime_from_env() -> Runtime:
    """Install a runtime with the settings the environment has now (a test changed it), on the
    session's broker; conftest installs the session's runtime again after each test."""
    return Runtime(Settings.from_env(), broker=broker).install()


def runtime_through(proxy: TcpProxy) -> Runtime:
    """Install a runtime whose broker reaches the session's Redis through `proxy` (cut it and
    Redis is down for whatever sends on the runtime's broker); conftest installs the session's
    runtime again after each test."""
    db_index = RUNTIME.settings.redis_url.rsplit("/", 1)[1]
    proxied = build_broker(f"redis://127.0.0.1:{proxy.port}/{db_index}", broker.namespace)
    return Runtime(Settings.from_env(), broker=proxied).install()


# The environment of a process whose database a test cuts off, and which need not see it back
# within the wait: it waits two seconds for a pooled connection before taking the database for
# unavailable, not five (the one-click test keeps five: its pool reconnects within them).
QUICK_OUTAGE = {"DATABASE_POOL_TIMEOUT": "2"}

KEY = "AABBCCDDEEFF"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
# How often a test's HTTP server in a thread looks whether it was told to shut down: shutdown()
# waits for that look, half a second at the standard library's default, at every teardown.
SERVE = {"poll_interval": 0.02}


def queued_event_ids(queue: str = "default") -> list[int]:
    """Event ids of the process_event messages waiting in Redis."""
    raw = broker.client.hvals(f"{broker.namespace}:{queue}.msgs")
    ids = [json.loads(item)["args"][0] for item in raw]
    return sorted(ids)


def signed_ipn(
    *, key: str = KEY, algorithms: Sequence[Algorithm] = (Algorithm.SHA256,), **kwargs: object
) -> bytes:
    """A signed IPN body as the provider sends it."""
    return form.encode(samples.sign_pairs(samples.ipn_pairs(**kwargs), key, algorithms))  # type: ignore[arg-type]


def signed_ins(secret_word: str, **extra: str) -> bytes:
    """An INS message with a correct md5_hash for `secret_word`; `extra` replaces or adds fields."""
    pairs = samples.ins_pairs(
        message_type="ORDER_CREATED",
        sale_id="9100001",
        invoice_id="9100002",
        secret_word=secret_word,
        customer_email="customer@example.com",
        extra=extra,
    )
    return form.encode(pairs)


def host_port(url: str) -> tuple[str, int]:
    """The host and port a database or Redis URL names."""
    found = re.search(r"//(?:[^@/]*@)?([^:/]+):(\d+)", url)
    assert found is not None, url
    return found.group(1), int(found.group(2))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TcpProxy:
    """Forwards a local port to a service; `cut()` drops every connection and refuses new ones."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.02)  # a blocked accept() would not notice cut(), which waits for it
        self._listener = listener
        self._running = threading.Event()
        self._running.set()
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()

    def _accept(self, listener: socket.socket) -> None:
        while self._running.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
        listener.close()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        # This thread alone closes the pair: cut() only shuts them down, which wakes the select
        # below. A close from cut() could land between two selects, which then fail on fd -1.
        try:
            while True:
                readable, _, _ = select.select([a, b], [], [], 0.5)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (b if sock is a else a).sendall(data)
        except OSError:
            return
        finally:
            for sock in (a, b):
                sock.close()

    def cut(self) -> None:
        """Simulate the service going down: close the listener and every open connection."""
        if self._listener is not None:
            self._running.clear()
            self._listener = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            for sock in self._conns:
                with contextlib.suppress(OSError):  # its piping thread closed it already
                    sock.shutdown(socket.SHUT_RDWR)
            self._conns.clear()

    def stop(self) -> None:
        self.cut()


class Receiver:
    """The receiver under gunicorn as the Procfile runs it, in a process of its own."""

    def __init__(self, env: Mapping[str, str], *, workers: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()  # noqa: SIM115  # lives as long as the server; closed in stop()
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "gunicorn",
                "--bind", f"127.0.0.1:{self.port}",
                "--workers", str(workers),
                *procfile_gunicorn_options(),  # the production setup: worker class, deadlines
                "--log-level", "warning",
                "webhooks.app:create_app()",
            ],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=self.log,  # a file, not a pipe: a full pipe would block the server
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                requests.get(f"{self.url}/healthz", timeout=5)
                return
            except (requests.ConnectionError, requests.Timeout):
                if self.process.poll() is not None:
                    self.log.seek(0)
                    raise RuntimeError(self.log.read().decode(errors="replace")) from None
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("receiver did not start")

    def post(self, path: str, body: bytes) -> requests.Response:
        return requests.post(self.url + path, data=body, headers=FORM, timeout=15)

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, timeout=15)

    def logged(self) -> str:
        """What the server has logged so far."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def send_raw(self, request: bytes) -> bytes:
        """Send bytes as they are on a new connection; what comes back until the server closes."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=15) as sock:
            sock.sendall(request)
            with contextlib.suppress(ConnectionResetError):
                sock.shutdown(socket.SHUT_WR)
            return b"".join(iter(lambda: sock.recv(65536), b""))

    def stop(self) -> None:
        """Stop the server at once (SIGQUIT), the test being over: the graceful stop of a deploy
        (SIGTERM, tests/test_graceful_stop.py) waits a second more, for gunicorn's gevent worker
        to wake up and see it was told to stop."""
        self.process.send_signal(signal.SIGQUIT)
        self.process.wait(timeout=35)
        self.log.close()


def post_signed(client, path: str, pairs: list[tuple[str, str]]) -> int:
    """Sign and POST a notification through the receiver; the stored event's id."""
    body = form.encode(samples.sign_pairs(pairs, KEY))
    response = client.post(path, data=body, headers=FORM)
    assert response.status_code == 200, response.text
    from workers.store import db

    with db.connection(os.environ["DATABASE_URL"]) as conn:
        row = (
            conn.execute("SELECT id FROM events WHERE raw_body = %s", (body,)).fetchone()
            or conn.execute("SELECT max(id) AS id FROM events").fetchone()
        )
    assert row is not None
    return int(row["id"])


def drain(timeout_ms: int = 60_000, threads: int = 2) -> None:
    """Run a real Dramatiq worker until the queues are empty."""
    import dramatiq

    # Its threads look for work, and whether to stop, every 10 ms when idle, and the queue is
    # looked at every 10 ms: a drain waits for the messages, not for 100 ms sleeps to end.
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=10)
    worker.start()
    try:
        broker.join("default", interval=10, timeout=timeout_ms)
        worker.join()
    finally:
        worker.stop()


_rows = itertools.count(1)


def insert_subscription(
    conn, *, expires_at: object, email: str | None = None, **values: object
) -> int:
    """Insert a customer and an active annual subscription in SQL; the subscription's id."""
    n = next(_rows)
    customer_id = conn.execute(
        """
        INSERT INTO customers (email, first_name, last_name, locale, customer_key)
        VALUES (%s, 'Giulia', 'Rossi', 'it', %s) RETURNING id
        """,
        (email or f"customer{n}@example.com", f"key-{os.getpid()}-{n}"),
    ).fetchone()["id"]
    row = {
        "license_code": f"LIC{n:07d}",
        "cycle": "annual",
        "status": "active",
        "auto_renew": False,
        "expires_at": expires_at,
        "period_start": None,  # default: a year before the expiry, as if bought then
    } | values
    return int(
        conn.execute(
            """
            INSERT INTO subscriptions (license_code, customer_id, product_code, product, edition,
                cycle, quantity, status, auto_renew, currency, price_paid, expires_at,
                period_start, last_order_ref)
            VALUES (%(license_code)s, %(customer_id)s, 'DOCFLOW-BIZ', 'DocFlow', 'BUSINESS',
                %(cycle)s, 10, %(status)s, %(auto_renew)s, 'EUR', 1000, %(expires_at)s,
                COALESCE(%(period_start)s, %(expires_at)s::timestamptz - interval '1 year'),
                '170623894')
            RETURNING id
            """,
            row | {"customer_id": customer_id},
        ).fetchone()["id"]
    )
