"""A deploy's SIGTERM: workers finish what they are doing and hand back the rest; the receiver
finishes the requests in flight."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.conftest import REDIS_NAMESPACE, TEST_DATABASE_URL
from tests.emails.conftest import Recorder
from tests.support import FORM, broker, signed_ipn
from tests.workers.jobs.mailing import new_email
from workers.config import Settings
from workers.jobs import actors

pytestmark = pytest.mark.slow  # end to end: real processes, services or a browser

BIN = Path(sys.executable).parent


class Slow(Recorder):
    """Takes two seconds over each message: long enough to stop a worker in the middle."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await asyncio.sleep(2.0)
        return await super().handle_DATA(server, session, envelope)


def wait_until(check, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_on_sigterm_a_worker_finishes_the_email_it_is_sending_and_hands_back_the_next(
    conn, smtp_server, tmp_path
):
    recorder = Slow()
    server = smtp_server(recorder)
    env = {
        **os.environ,
        "SMTP_URL": f"smtp://127.0.0.1:{server.port}",
        "MAIL_FROM": "DocFlow <billing@docflow.example>",
        "MAIL_DIR": str(tmp_path),
    }
    settings = Settings.from_env(env)
    first = new_email(conn, settings, fact="first", license_code="LICSTOP001")
    second = new_email(conn, settings, fact="second", license_code="LICSTOP002")
    held_before = set(broker.client.scan_iter(match=f"{REDIS_NAMESPACE}:__acks__.*"))
    worker = subprocess.Popen(
        [str(BIN / "dramatiq"), "workers.jobs.worker", "--processes", "1", "--threads", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        actors.dispatch_emails(TEST_DATABASE_URL, [first, second])

        def status(email_id: int) -> str:
            found = conn.execute("SELECT status FROM emails WHERE id = %s", (email_id,))
            return str(found.fetchone()["status"])

        wait_until(lambda: status(first) == "sending")
        worker.send_signal(signal.SIGTERM)  # a deploy, in the middle of a delivery
        assert worker.wait(timeout=30) == 0
    finally:
        if worker.poll() is None:  # its worker process too: a killed main would orphan it
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()

    assert status(first) == "sent" and len(recorder.envelopes) == 1
    assert status(second) == "pending"
    # Handed back to the queue, not left in the stopped worker's hands for a relay to find.
    assert broker.client.llen(f"{REDIS_NAMESPACE}:default") == 1
    held = set(broker.client.scan_iter(match=f"{REDIS_NAMESPACE}:__acks__.*")) - held_before
    assert held == set()


def test_on_sigterm_the_receiver_finishes_the_request_in_flight(conn, receiver_factory):
    receiver = receiver_factory()
    body = signed_ipn()
    head = (
        f"POST /ipn HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {FORM['Content-Type']}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=30) as client:
        client.sendall(head + body[:100])  # the request is under way when the deploy starts
        time.sleep(0.3)
        receiver.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        client.sendall(body[100:])
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk

    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b"<sig" in answer
    assert conn.execute("SELECT count(*) AS n FROM events").fetchone()["n"] == 1
    assert receiver.process.wait(timeout=30) == 0
