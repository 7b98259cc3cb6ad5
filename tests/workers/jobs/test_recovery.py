"""Retries that Redis loses: the row says when its job is due, and the relay sends it again."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import psycopg
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.conftest import REDIS_NAMESPACE, TEST_DATABASE_URL, TEST_REDIS_URL
from tests.emails.conftest import Recorder, free_port
from tests.support import TcpProxy, broker, host_port, runtime_through
from tests.workers.jobs.mailing import new_email, row, smtp_url
from workers.config import Settings
from workers.jobs import actors, outbox

pytestmark = pytest.mark.slow  # end to end: real processes, services or a browser


class SlowRefusal(Recorder):
    """Refuses messages with a transient error after a pause (to cut Redis meanwhile), until
    told to accept them."""

    refusing = True

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if not self.refusing:
            return await super().handle_DATA(server, session, envelope)
        await asyncio.sleep(1.0)
        return "451 4.3.0 Try again later"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return dataclasses.replace(
        Settings.from_env(), mail_from="DocFlow <billing@docflow.example>", mail_dir=tmp_path
    )


@pytest.fixture
def cuttable_worker(
    conn, settings, proxy_factory, monkeypatch
) -> Iterator[Callable[[str], TcpProxy]]:
    """A dramatiq worker in this process whose broker reaches Redis through a cuttable proxy."""
    started: list[dramatiq.Worker] = []

    def start(smtp: str) -> TcpProxy:
        monkeypatch.setenv("MAIL_FROM", settings.mail_from)
        monkeypatch.setenv("MAIL_DIR", str(settings.mail_dir))
        monkeypatch.setenv("SMTP_URL", smtp)
        proxy = proxy_factory(*host_port(TEST_REDIS_URL))
        proxied = runtime_through(proxy).broker  # what the worker and the relay send on
        proxied.declare_actor(actors.send_email)
        worker = dramatiq.Worker(proxied, worker_threads=1, worker_timeout=100)
        worker.start()
        started.append(worker)
        return proxy

    yield start
    for worker in started:
        worker.stop(timeout=10_000)
        # What a worker that lost Redis left in its ack sets stays there; not for later tests.
        stranded = broker.client.scan_iter(
            match=f"{REDIS_NAMESPACE}:__acks__.{worker.broker.broker_id}.*"
        )
        for key in stranded:
            broker.client.delete(key)


def wait_until(check: Callable[[], Any], seconds: float = 20) -> Any:
    deadline = time.monotonic() + seconds
    while not (found := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return found


def delayed_messages() -> int:
    """Retries in Redis: waiting in the delay queue or held by a worker, until acknowledged."""
    return int(broker.client.hlen(f"{REDIS_NAMESPACE}:default.DQ.msgs"))


def held_by_a_worker() -> int:
    """Retries a worker took from the delay queue to keep in memory until their time."""
    keys = broker.client.scan_iter(match=f"{REDIS_NAMESPACE}:__acks__.*.default.DQ")
    return sum(int(broker.client.scard(key)) for key in keys)


def due() -> bool:
    """Whether every email's job is past due."""
    with psycopg.connect(TEST_DATABASE_URL) as conn:
        found = conn.execute("SELECT bool_and(due_at < now()) FROM emails").fetchone()
        return bool(found and found[0])


def the_grace_passes(conn: psycopg.Connection) -> None:
    """Move the emails' times back by the relay's grace, as if it had passed."""
    conn.execute(
        "UPDATE emails SET due_at = due_at - make_interval(secs => %s),"
        " enqueued_at = enqueued_at - make_interval(secs => %s)",
        (outbox.STALE_AFTER_SECONDS, outbox.STALE_AFTER_SECONDS),
    )


def test_a_retry_redis_refused_after_an_smtp_failure_is_sent_by_the_relay_once_due(
    conn, settings, smtp_server, cuttable_worker
):
    server = SlowRefusal()
    redis = cuttable_worker(smtp_url(smtp_server(server).port))
    email_id = new_email(conn, settings)

    actors.send_email.send(email_id)
    wait_until(lambda: row(conn, email_id)["status"] == "sending")
    redis.cut()  # the SMTP server is about to refuse: the retry will find Redis gone
    wait_until(lambda: row(conn, email_id)["status"] == "pending")
    time.sleep(0.5)
    redis.start()

    # Dramatiq dropped the retry; the row still says when it was due at the latest.
    assert delayed_messages() == 0
    waiting = row(conn, email_id)
    assert waiting["retry_job"] is not None and waiting["due_at"] > waiting["enqueued_at"]
    assert outbox.relay(TEST_DATABASE_URL) == 0  # not due yet
    server.refusing = False
    wait_until(due)
    the_grace_passes(conn)
    assert outbox.relay(TEST_DATABASE_URL) == 1

    wait_until(lambda: row(conn, email_id)["status"] == "sent")
    assert len(server.envelopes) == 1


def test_a_retry_held_by_a_worker_that_lost_redis_is_sent_by_the_relay_once_due(
    conn, settings, smtp_server, cuttable_worker
):
    port = free_port()  # nothing listens: every attempt fails at once
    redis = cuttable_worker(smtp_url(port))
    email_id = new_email(conn, settings)

    # A retry 1.5 to 3 s away, so the worker holds it in memory when Redis goes.
    actors.send_email.send_with_options(args=(email_id,), min_backoff=3_000, max_backoff=3_000)
    wait_until(lambda: row(conn, email_id)["attempts"] == 1 and held_by_a_worker() == 1)
    redis.cut()
    time.sleep(1.0)  # the worker's consumers fail, and drop what they held
    redis.start()
    recorder = Recorder()
    smtp_server(recorder, port=port)
    time.sleep(4.0)  # well past the retry's time: it never comes

    assert row(conn, email_id)["status"] == "pending" and recorder.envelopes == []
    wait_until(due)
    the_grace_passes(conn)
    assert outbox.relay(TEST_DATABASE_URL) == 1
    wait_until(lambda: row(conn, email_id)["status"] == "sent")
    assert len(recorder.envelopes) == 1
