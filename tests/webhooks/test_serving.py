"""The Procfile's serving setup: slow or stalled clients do not stop the receiver."""

from __future__ import annotations

import gc
import socket
import threading
import time

import psycopg

from benchmarks.slow_clients import Stalled, describe, signed_ipn, timed_posts
from tests.support import KEY
from webhooks.serving import Worker


def test_signed_ipns_are_answered_while_200_connections_stall(receiver_factory, capsys):
    receiver = receiver_factory()  # one worker process: the stalled clients cannot spread out
    with Stalled(receiver.port, 200) as stalled:
        time.sleep(1.5)  # every stalled request has started
        times, statuses = timed_posts(receiver.url, 5, KEY)
        health = receiver.get("/healthz")
        login = receiver.get("/admin/login")
        still_open = stalled.open_count()
    assert statuses == [200] * 5
    assert health.status_code == 200
    assert login.status_code == 404  # answered (the admin page is off without ADMIN_TOKEN)
    assert still_open > 150  # the stall was in effect while they were answered
    with capsys.disabled():
        print(f"\nsigned IPNs with 200 connections stalled: {describe(times)}")


def test_a_client_that_never_finishes_its_headers_is_disconnected(receiver_factory):
    receiver = receiver_factory(HEADER_TIMEOUT="1")
    with Stalled(receiver.port, 2, seconds_per_byte=0.2) as stalled:
        deadline = time.monotonic() + 20
        # The second one finished its headers and waits for its body: that has its own deadline.
        while time.monotonic() < deadline and stalled.open_count() > 1:
            time.sleep(0.2)
        header_sock = stalled.sockets[0]
        header_sock.setblocking(True)
        header_sock.settimeout(5)
        assert header_sock.recv(100) == b""  # closed without an answer


def test_a_body_that_does_not_arrive_in_time_is_answered_408(receiver_factory):
    receiver = receiver_factory(BODY_TIMEOUT="1")
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=20) as sock:
        sock.sendall(
            b"POST /ipn HTTP/1.1\r\nHost: localhost\r\nContent-Length: 500\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n\r\nIPN_PID"
        )
        answer = b"".join(iter(lambda: sock.recv(4096), b""))  # until the server closes
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"Connection: close" in answer
    assert b"request body not received within 1 s" in answer


def test_a_request_waiting_on_postgresql_does_not_hold_up_the_others(
    receiver_factory, database_url, conn
):
    # psycopg must wait on gevent's patched select: a C-level wait would stop the whole process.
    receiver = receiver_factory()
    outcome: dict[str, int] = {}
    with psycopg.connect(database_url) as locker:
        locker.execute("LOCK TABLE events IN EXCLUSIVE MODE")  # INSERTs wait; SELECTs do not

        def post() -> None:
            outcome["status"] = receiver.post("/ipn", signed_ipn(KEY)).status_code

        waiting = threading.Thread(target=post)
        waiting.start()
        deadline = time.monotonic() + 20
        while not waits_for_a_lock(conn):  # the insert is waiting for the lock
            assert time.monotonic() < deadline, "the insert never waited for the lock"
            time.sleep(0.02)
        assert "status" not in outcome
        ready = receiver.get("/readyz")  # another pooled connection, while the first one waits
        assert ready.status_code == 200, ready.text
        locker.rollback()
    waiting.join(timeout=60)
    assert outcome == {"status": 200}


def waits_for_a_lock(conn: psycopg.Connection) -> bool:
    """Whether a session of the database waits for a lock (`conn` in autocommit: a transaction
    would see the sessions as they were when it began)."""
    found = conn.execute(
        "SELECT count(*) AS n FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    ).fetchone()
    return bool(found and found["n"])


def test_the_worker_freezes_what_the_loaded_app_built():
    # A full pass of the cyclic collector over the app's start-up objects stops every request in
    # flight; frozen, they are left out of it.
    class App:
        def wsgi(self):
            return lambda environ, start_response: [b""]

    worker = Worker.__new__(Worker)  # only what load_wsgi reads: no process, socket or config
    worker.app, worker.body_timeout = App(), 1.0
    gc.unfreeze()
    try:
        worker.load_wsgi()

        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
