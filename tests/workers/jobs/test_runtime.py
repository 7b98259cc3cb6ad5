"""The runtime: built from settings, sized as they say, and nothing built at import time."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tests.conftest import REDIS_NAMESPACE, TEST_DATABASE_URL
from tests.support import FORM, broker, queued_event_ids, signed_ipn
from webhooks.app import create_app
from workers.config import Settings
from workers.errors import ConfigError
from workers.jobs.runtime import Runtime
from workers.store import db


def test_the_pool_size_defaults_to_the_worker_threads_and_four_more():
    assert Settings.from_env({}).database_pool_size == 12
    assert Settings.from_env({"WORKER_THREADS": "16"}).database_pool_size == 20
    assert Settings.from_env({"DATABASE_POOL_SIZE": "5"}).database_pool_size == 5


def test_a_pooled_connection_is_waited_for_five_seconds_unless_the_settings_say():
    assert Settings.from_env({}).database_pool_timeout == 5
    assert Settings.from_env({"DATABASE_POOL_TIMEOUT": "2"}).database_pool_timeout == 2
    with pytest.raises(ConfigError, match="DATABASE_POOL_TIMEOUT must be at least 1"):
        Settings.from_env({"DATABASE_POOL_TIMEOUT": "0"})


def test_the_runtime_opens_its_pool_with_the_size_and_timeout_the_settings_give(database_url):
    url = f"{TEST_DATABASE_URL}?application_name=sized"  # a URL of its own, hence a pool of its own
    env = {"DATABASE_URL": url, "DATABASE_POOL_SIZE": "3", "DATABASE_POOL_TIMEOUT": "2"}
    runtime = Runtime(Settings.from_env(env))
    try:
        assert (runtime.pool.max_size, runtime.pool.timeout) == (3, 2)
        with runtime.pool.connection() as conn:
            assert conn.execute("SELECT 1 AS one").fetchone() == {"one": 1}
    finally:
        runtime.close()


@pytest.fixture
def other_database(database_url) -> Iterator[str]:
    """A second database with the schema, dropped afterwards."""
    url = make_conninfo(TEST_DATABASE_URL, dbname=f"rinnovo_test_{os.getpid()}_other")
    db.drop_database(url)
    db.init_db(url)
    yield url
    db.close_pool(url)
    db.drop_database(url)


def test_create_app_stores_and_enqueues_where_its_test_config_says(conn, other_database):
    namespace = f"{REDIS_NAMESPACE}-other"
    app = create_app({"DATABASE_URL": other_database, "REDIS_NAMESPACE": namespace})
    body = signed_ipn()
    try:
        assert app.test_client().post("/ipn", data=body, headers=FORM).status_code == 200
        with psycopg.connect(other_database) as other:
            stored = other.execute("SELECT count(*) FROM events").fetchone()
        queued = broker.client.hlen(f"{namespace}:default.msgs")
        counted = broker.client.exists(f"{namespace}:metrics:receiver")
    finally:
        for key in broker.client.scan_iter(match=f"{namespace}:*"):
            broker.client.delete(key)
    assert (stored, queued) == ((1,), 1)
    assert conn.execute("SELECT count(*) AS n FROM events").fetchone() == {"n": 0}
    assert queued_event_ids() == []  # nothing went to the session's own namespace
    assert counted in (0, 1)  # the counters flush within a second, to the app's namespace


def test_importing_the_broker_and_the_pool_reads_no_setting_and_connects_nowhere():
    # A Redis and a PostgreSQL that would hang any connection: the import must not try one.
    env = {
        **os.environ,
        "REDIS_URL": "redis://10.255.255.1:6379/0",
        "DATABASE_URL": "postgresql://10.255.255.1:5432/nowhere",
    }
    code = (
        "import os, sys, socket, dramatiq.broker\n"
        "read = []\n"
        "class Watched(os._Environ):\n"
        "    def __getitem__(self, key):\n"
        "        caller = sys._getframe(1).f_code.co_filename\n"
        "        if '/workers/' in caller or '/webhooks/' in caller: read.append(key)\n"
        "        return super().__getitem__(key)\n"
        "os.environ.__class__ = Watched\n"
        "def refuse(*args, **kwargs): raise AssertionError('a connection at import')\n"
        "socket.create_connection = refuse\n"
        "socket.socket.connect = refuse\n"
        "import workers.jobs.broker, workers.store.db, workers.jobs.runtime\n"
        "assert dramatiq.broker.global_broker is None, 'a broker was set at import'\n"
        "print(read)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr
