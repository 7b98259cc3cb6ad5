"""Fixtures: a database of the session's own, Redis db 15, a live receiver, and cuttable proxies."""

from __future__ import annotations

import os
import shutil
import tempfile

# Before anything imports the broker or reads settings: the tests' own database and Redis db.
PG_SERVER = os.environ.get("RINNOVO_TEST_PG", "postgresql://127.0.0.1:5432")
TEST_DATABASE_URL = f"{PG_SERVER}/rinnovo_test_{os.getpid()}"
TEST_REDIS_URL = os.environ.get("RINNOVO_TEST_REDIS", "redis://127.0.0.1:6379/15")
SECRET_KEYS = "AABBCCDDEEFF,previous-key-still-accepted"
INS_SECRET_WORD = "tango"
# Each session has its own queue names, so concurrent test runs never share a message.
REDIS_NAMESPACE = f"rinnovo-test-{os.getpid()}"
# Emails written by workers during tests go to a directory of the session's, removed at the end.
MAIL_DIR = tempfile.mkdtemp(prefix="rinnovo-test-mail-")
os.environ.update(
    MAIL_DIR=MAIL_DIR,
    REDIS_NAMESPACE=REDIS_NAMESPACE,
    DATABASE_URL=TEST_DATABASE_URL,
    REDIS_URL=TEST_REDIS_URL,
    TWOCHECKOUT_SECRET_KEY=SECRET_KEYS,
    TWOCHECKOUT_INS_SECRET_WORD=INS_SECRET_WORD,
    TWOCHECKOUT_ACCEPT_MD5="",
    MERCHANT_NAME="Example Shop",
    SUPPORT_EMAIL="help@shop.example",
)

import threading  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from typing import Any  # noqa: E402

import psycopg  # noqa: E402
import pytest  # noqa: E402
import redis  # noqa: E402
from aiosmtpd.controller import Controller  # noqa: E402
from psycopg import sql  # noqa: E402
from psycopg.rows import dict_row  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

from tests.support import (  # noqa: E402
    RUNTIME,
    SERVE,
    Receiver,
    TcpProxy,
    broker,
    free_port,
    queued_event_ids,
)

# Declared on the session's broker (installed by tests.support), so that flush_all() empties their
# queues even in a run whose modules never import the actors themselves.
from workers.jobs import actors  # noqa: E402, F401
from workers.jobs.runtime import Runtime  # noqa: E402
from workers.store import db as database  # noqa: E402

# Emptied before and after each test, each before the tables it refers to (reconcile_differences
# refers to events: TRUNCATE ... CASCADE, which these tests used, emptied it too).
TABLES = (
    "reconcile_differences",
    "email_suppressions",
    "event_attempts",
    "emails",
    "subscription_history",
    "orders",
    "subscriptions",
    "customers",
    "events",
)
# The sequences of the tables' serial columns.
SEQUENCES = """
    SELECT n.nspname AS schema, s.relname AS name
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid,
         LATERAL (SELECT pg_get_serial_sequence(format('%%I', c.relname), a.attname)::regclass
                  AS seq) AS found
         JOIN pg_class s ON s.oid = found.seq JOIN pg_namespace n ON n.oid = s.relnamespace
    WHERE c.relname = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped
"""
_emptying: dict[tuple[str, ...], sql.Composed] = {}


def empty(connection: psycopg.Connection, tables: tuple[str, ...]) -> None:
    """Delete every row of `tables` (listed each before those it refers to) and restart the
    sequences of their serial columns, in one round trip: what TRUNCATE ... RESTART IDENTITY
    leaves, without the new file TRUNCATE makes for each table and index (tens of ms a time,
    twice a test, which was a third of the suite's time)."""
    statement = _emptying.get(tables)
    if statement is None:
        rows = connection.execute(SEQUENCES, (list(tables),)).fetchall()
        names = sorted((row["schema"], row["name"]) for row in rows)
        restarts = [sql.SQL("ALTER SEQUENCE {} RESTART;").format(sql.Identifier(*name))
                    for name in names]  # fmt: skip
        deletes = [sql.SQL("DELETE FROM {};").format(sql.Identifier(table)) for table in tables]
        statement = _emptying[tables] = sql.SQL(" ").join(deletes + restarts)
    connection.execute(statement)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh database with the schema, dropped when the session ends."""
    database.drop_database(TEST_DATABASE_URL)
    database.init_db(TEST_DATABASE_URL)
    yield TEST_DATABASE_URL
    database.close_pool()
    database.drop_database(TEST_DATABASE_URL)


def _delete_session_keys() -> None:
    try:
        keys = list(broker.client.scan_iter(match=f"{REDIS_NAMESPACE}*", count=1000))
    except redis.ConnectionError:  # no Redis: the tests that need none still run
        return
    if keys:
        broker.client.delete(*keys)


def _delete_admin_keys() -> None:
    keys = list(broker.client.scan_iter(match=f"{REDIS_NAMESPACE}:admin:*", count=1000))
    if keys:
        broker.client.delete(*keys)


@pytest.fixture(autouse=True)
def runtime() -> Iterator[Runtime]:
    """The session's runtime, installed again after each test (an app or a command a test
    built installs its own)."""
    yield RUNTIME.install()
    RUNTIME.install()


@pytest.fixture(scope="session", autouse=True)
def _redis_session_keys() -> Iterator[None]:
    _delete_session_keys()
    yield
    _delete_session_keys()
    broker.close()
    shutil.rmtree(MAIL_DIR, ignore_errors=True)


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    """A connection to an emptied database (autocommit, so tests see what workers committed)."""
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as connection:
        empty(connection, TABLES)
        broker.flush_all()
        _delete_admin_keys()  # sessions and login failures of earlier tests
        yield connection
        empty(connection, TABLES)
    broker.flush_all()


@pytest.fixture
def app(conn: psycopg.Connection):
    from webhooks.app import create_app

    return create_app({"TESTING": "1"})


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def live_url(app) -> Iterator[str]:
    """The receiver served over real HTTP on a free port."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs=SERVE, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def queued() -> object:
    """A function returning the event ids waiting in the broker's queue."""
    return queued_event_ids


@pytest.fixture
def proxy_factory() -> Iterator[object]:
    proxies: list[TcpProxy] = []

    def make(host: str, port: int) -> TcpProxy:
        proxy = TcpProxy(host, port)
        proxy.start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()


@pytest.fixture
def receiver_factory(conn: psycopg.Connection) -> Iterator[object]:
    """Start the receiver under gunicorn in processes of its own, with environment overrides."""
    started: list[Receiver] = []

    def start(workers: int = 1, **env: str) -> Receiver:
        receiver = Receiver(env, workers=workers)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


@pytest.fixture
def smtp_server() -> Iterator[Callable[..., Controller]]:
    """Start real SMTP servers (aiosmtpd) on localhost; stop them all after the test.

    `start(handler, port=None, **controller_options)`: a free port unless one is given (to bring
    a server back where it was).
    """
    started: list[Controller] = []

    def start(handler: Any, port: int | None = None, **options: Any) -> Controller:
        controller = Controller(handler, hostname="127.0.0.1", port=port or free_port(), **options)
        started.append(controller)
        controller.start()
        return controller

    try:
        yield start
    finally:
        for controller in started:
            controller.stop(no_assert=True)
