"""Logs: one JSON object per line, with the event id or license code in scope."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dramatiq
import pytest
import requests
from dramatiq.brokers.redis import RedisBroker

from tests.conftest import REDIS_NAMESPACE, TEST_REDIS_URL
from tests.support import FORM, free_port, signed_ipn
from workers import logs


def _record(message: str = "hello %s", *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("rinnovo.test", logging.WARNING, __file__, 1, message, args, None)
    for name, value in extra.items():
        setattr(record, name, value)
    return record


def test_a_record_becomes_one_line_of_json_with_time_level_logger_message_and_extras():
    record = _record("event %s: %s", 7, "José\nsecond line", event_id=7, outcome="accepted")

    line = logs.JsonFormatter().format(record)

    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "warning"
    assert entry["logger"] == "rinnovo.test"
    assert entry["message"] == "event 7: José\nsecond line"
    assert entry["event_id"] == 7
    assert entry["outcome"] == "accepted"
    assert datetime.fromisoformat(entry["time"]).tzinfo == UTC
    assert abs(datetime.fromisoformat(entry["time"]).timestamp() - record.created) < 0.001
    assert "args" not in entry and "msg" not in entry and "levelno" not in entry


def test_fields_in_scope_are_on_every_line_logged_inside_the_block_and_gone_after():
    formatter = logs.JsonFormatter()
    with logs.scope(event_id=12):
        with logs.scope(license_code="3C343D0FAF"):
            inner = json.loads(formatter.format(_record()))
        outer = json.loads(formatter.format(_record()))
    after = json.loads(formatter.format(_record()))

    assert inner["event_id"] == 12 and inner["license_code"] == "3C343D0FAF"
    assert outer["event_id"] == 12 and "license_code" not in outer
    assert "event_id" not in after


def test_an_exception_is_logged_with_its_error_and_traceback_and_odd_values_as_text():
    try:
        raise ValueError("no such product")
    except ValueError:
        record = _record(when=datetime(2026, 1, 2, tzinfo=UTC), path=Path("var/mail"))
        record.exc_info = sys.exc_info()

    entry = json.loads(logs.JsonFormatter().format(record))

    assert entry["error"] == "ValueError: no such product"
    assert "Traceback (most recent call last)" in entry["traceback"]
    assert entry["when"] == "2026-01-02 00:00:00+00:00"
    assert entry["path"] == "var/mail"


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, restored after the test changes it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_configure_logging_leaves_a_configured_root_alone_unless_forced(root_logger):
    for handler in list(root_logger.handlers):
        root_logger.removeHandler(handler)
    foreign = logging.StreamHandler(io.StringIO())
    root_logger.addHandler(foreign)

    logs.configure_logging(logging.INFO)
    assert root_logger.handlers == [foreign]

    logs.configure_logging(logging.DEBUG, force=True)
    logs.configure_logging(logging.INFO)  # again: replaces its own handler, adds no second one
    assert len(root_logger.handlers) == 1
    assert isinstance(root_logger.handlers[0].formatter, logs.JsonFormatter)
    assert root_logger.level == logging.INFO


def test_the_json_handler_writes_to_whatever_stderr_is_when_it_logs(root_logger, monkeypatch):
    logs.configure_logging(logging.INFO, force=True)
    first, second = io.StringIO(), io.StringIO()

    monkeypatch.setattr(sys, "stderr", first)
    logging.getLogger("rinnovo.a").info("one", extra={"license_code": "LIC1"})
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("rinnovo.b").debug("below the level")
    logging.getLogger("rinnovo.b").warning("two")

    assert [json.loads(line)["message"] for line in first.getvalue().splitlines()] == ["one"]
    assert json.loads(first.getvalue())["license_code"] == "LIC1"
    assert [json.loads(line)["message"] for line in second.getvalue().splitlines()] == ["two"]


def test_the_rinnovo_command_logs_json_lines_on_stderr_with_v_and_only_warnings_without(
    conn, database_url
):
    def relay(*options: str) -> subprocess.CompletedProcess[str]:
        conn.execute(
            """
            INSERT INTO events (kind, dedupe_key, raw_body, content_type, fields, signature_algo,
                                key_index)
            VALUES ('lcn', %s, '', 'application/x-www-form-urlencoded', '{}', 'sha256', 0)
            """,
            (f"lcn:{len(options)}",),
        )
        return subprocess.run(
            [str(Path(sys.executable).parent / "rinnovo"), *options, "relay", "--older-than", "0"],
            env={**os.environ, "DATABASE_URL": database_url},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    quiet, verbose = relay(), relay("-v")

    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == "enqueued 1 event(s)\n"
    assert quiet.stderr == ""
    assert verbose.returncode == 0, verbose.stderr
    assert verbose.stdout == "enqueued 1 event(s)\n"
    entries = [json.loads(line) for line in verbose.stderr.splitlines()]
    [relayed] = [entry for entry in entries if entry["logger"] == "workers.jobs.dispatch"]
    assert relayed["level"] == "info"
    assert relayed["message"] == "relay enqueued 1 stored event(s)"


@pytest.mark.slow  # a real gunicorn or dramatiq process
def test_gunicorn_with_the_rinnovo_logger_writes_json_access_and_application_lines(conn, tmp_path):
    port = free_port()
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "gunicorn",
                "--bind", f"127.0.0.1:{port}",
                "--workers", "1",
                "--log-level", "info",
                "--access-logfile", "-",
                "--logger-class", "workers.logs.GunicornLogger",
                "webhooks.app:create_app()",
            ],
            stdout=stdout,
            stderr=stderr,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"{url}/healthz", timeout=5)
                break
            except requests.RequestException:
                assert process.poll() is None and time.monotonic() < deadline, err.read_text()
                time.sleep(0.2)
        accepted = requests.post(f"{url}/ipn", data=signed_ipn(), headers=FORM, timeout=10)
        refused = requests.post(
            f"{url}/ipn", data=signed_ipn(key="wrong"), headers=FORM, timeout=10
        )
    finally:
        process.terminate()
        process.wait(timeout=20)

    assert (accepted.status_code, refused.status_code) == (200, 400)
    lines = out.read_text().splitlines() + err.read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line, gunicorn's own included, is JSON
    event_id = conn.execute("SELECT id FROM events").fetchone()["id"]
    # One line per delivery: the receiver's, with what the access log would say; the access log
    # leaves deliveries out and keeps every other request.
    deliveries = [e for e in entries if e["logger"] == "rinnovo.receiver"]
    assert [(e["level"], e["outcome"], e["status"]) for e in deliveries] == [
        ("info", "accepted", 200),
        ("warning", "bad_signature", 400),
    ]
    assert deliveries[0]["event_id"] == event_id and deliveries[0]["duration_ms"] >= 0
    assert all(e["remote_addr"] == "127.0.0.1" for e in deliveries)
    access = [e for e in entries if e["logger"] == "gunicorn.access"]
    assert [e["path"] for e in access if e["path"] == "/ipn"] == []
    assert any(e["path"] == "/healthz" and e["status"] == 200 for e in access)
    assert all(e["duration_ms"] >= 0 for e in access)
    assert any(e["logger"] == "gunicorn.error" for e in entries)


def test_a_worker_logs_with_the_id_its_message_carries_in_scope(conn):
    # Under the session's namespace, so the session's clean-up removes its keys too.
    broker = RedisBroker(url=TEST_REDIS_URL, namespace=f"{REDIS_NAMESPACE}-logs")
    broker.add_middleware(logs.WorkerLogging())
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("rinnovo.test.worker")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    @dramatiq.actor(broker=broker, actor_name="process_event")
    def process_event(event_id: int) -> None:
        logger.info("applying")

    @dramatiq.actor(broker=broker, actor_name="send_email")
    def send_email(email_id: int) -> None:
        logger.info("sending")

    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        process_event.send(41)
        send_email.send(9)
        broker.join("default", timeout=10_000)
        worker.join()
    finally:
        worker.stop()
        logger.removeHandler(handler)
        broker.flush_all()
        broker.close()

    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    seen = {(e["message"], e["actor"], e.get("event_id"), e.get("email_id")) for e in entries}
    assert seen == {("applying", "process_event", 41, None), ("sending", "send_email", None, 9)}
    assert len(entries) == 2
    assert all(len(e["job_id"]) == 36 for e in entries)  # Dramatiq's message id, a UUID
    # Out of the message, nothing is in scope any more.
    assert "event_id" not in json.loads(logs.JsonFormatter().format(_record()))


def test_the_worker_middleware_turns_a_booted_worker_process_s_logs_to_json(root_logger):
    logging.basicConfig(stream=io.StringIO(), force=True)  # what Dramatiq's CLI does in a worker

    logs.WorkerLogging(logging.WARNING).after_process_boot(None)  # type: ignore[arg-type]

    assert len(root_logger.handlers) == 1
    assert isinstance(root_logger.handlers[0].formatter, logs.JsonFormatter)
    assert root_logger.level == logging.WARNING
