"""Sending outbox emails through a dramatiq worker: delivered once, retried through an outage, and
a worker started without the merchant's voice saying so."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import dramatiq
import psycopg
import pytest

from tests.conftest import TEST_DATABASE_URL
from tests.emails.conftest import Recorder, free_port
from tests.support import broker, runtime_from_env
from tests.workers.jobs import mailing
from tests.workers.jobs.mailing import new_email, received, row, smtp_url
from workers.jobs import actors

settings = mailing.settings  # the fixture: a mail setup writing to a temporary folder


@pytest.fixture
def worker_env(monkeypatch, settings) -> Iterator[Callable[[str | None], None]]:
    """Point the actors' settings at a mail setup; a dramatiq worker in this process runs them."""

    def configure(smtp: str | None) -> None:
        monkeypatch.setenv("MAIL_FROM", settings.mail_from)
        monkeypatch.setenv("MAIL_DIR", str(settings.mail_dir))
        if smtp is None:
            monkeypatch.delenv("SMTP_URL", raising=False)
        else:
            monkeypatch.setenv("SMTP_URL", smtp)
        runtime_from_env()

    yield configure


def wait_for(conn: psycopg.Connection, email_id: int, status: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while row(conn, email_id)["status"] != status:
        assert time.monotonic() < deadline, row(conn, email_id)
        time.sleep(0.05)


def test_the_send_email_actor_delivers_through_a_dramatiq_worker(
    conn, settings, smtp_server, worker_env
):
    recorder = Recorder()
    worker_env(smtp_url(smtp_server(recorder).port))
    email_id = new_email(conn, settings)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        actors.dispatch_emails(TEST_DATABASE_URL, [email_id])
        actors.dispatch_emails(TEST_DATABASE_URL, [email_id])  # a duplicate job
        wait_for(conn, email_id, "sent")
        broker.join(actors.send_email.queue_name, timeout=10_000)
        worker.join()
    finally:
        worker.stop()

    assert len(recorder.envelopes) == 1
    assert received(recorder.envelopes[0])["X-Rinnovo-Kind"] == "renewal_confirmation"


def test_through_the_worker_an_smtp_outage_is_retried_until_delivered(
    conn, settings, smtp_server, worker_env
):
    port = free_port()
    worker_env(smtp_url(port))
    email_id = new_email(conn, settings)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        # Short backoff for the test; production waits seconds to hours between tries.
        actors.send_email.send_with_options(args=(email_id,), min_backoff=200, max_backoff=400)
        deadline = time.monotonic() + 20
        # Two attempts over and failed: the server comes back before the third.
        while (state := row(conn, email_id))["attempts"] < 2 or state["status"] != "pending":
            assert time.monotonic() < deadline, state
            time.sleep(0.02)
        recorder = Recorder()
        smtp_server(recorder, port=port)
        wait_for(conn, email_id, "sent")
    finally:
        worker.stop()

    assert len(recorder.envelopes) == 1
    assert row(conn, email_id)["attempts"] >= 3


def test_a_worker_started_without_the_merchant_voice_says_at_once_that_emails_will_wait():
    env = {key: value for key, value in os.environ.items() if key != "SUPPORT_EMAIL"}
    started = subprocess.run(
        [sys.executable, "-c", "import workers.jobs.worker"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    assert "emails will wait until this is fixed: SUPPORT_EMAIL not set" in started.stderr
