"""Log lines a person reads: every control character escaped, no customer address at info."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import REDIS_NAMESPACE, TEST_REDIS_URL
from tests.workers.jobs.mailing import new_email, settings  # noqa: F401
from workers import logs
from workers.jobs import mailer


def test_json_log_lines_escape_c0_c1_del_and_the_line_separators():
    hostile = "name\x1b[2J\x07\x7f\x85\x9b31m\u2028\u2029\u202e end"
    record = logging.LogRecord("rinnovo.test", logging.INFO, __file__, 1, "%s", (hostile,), None)
    record.company = hostile
    line = logs.JsonFormatter().format(record)
    for char in "\x1b\x07\x7f\x85\x9b\u2028\u2029\u202e":
        assert char not in line, repr(char)
    assert "\\u001b[2J\\u0007\\u007f\\u0085\\u009b31m\\u2028\\u2029\\u202e" in line
    entry = json.loads(line)
    assert entry["message"] == hostile
    assert entry["company"] == hostile


def test_a_sent_email_is_logged_by_id_and_kind_with_the_address_only_at_debug(
    conn,
    settings,  # noqa: F811
    caplog,
):
    email_id = new_email(conn, settings, email="giulia.rossi@example.com")
    with caplog.at_level(logging.DEBUG, logger="workers.jobs.mailer"):
        mailer.send(settings, email_id, final=False)
    sent = [r for r in caplog.records if r.levelno >= logging.INFO and f"{email_id}" in r.message]
    assert sent, caplog.records
    assert "renewal_confirmation" in " ".join(r.getMessage() for r in sent)
    for record in caplog.records:
        if record.levelno >= logging.INFO:
            assert "giulia.rossi@example.com" not in logs.JsonFormatter().format(record)
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("giulia.rossi@example.com" in message for message in debug)


@pytest.mark.slow  # a real gunicorn or dramatiq process
def test_the_worker_main_process_logs_json_lines_too(database_url, tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": TEST_REDIS_URL,
        "REDIS_NAMESPACE": f"{REDIS_NAMESPACE}-main",
    }
    stderr = tmp_path / "stderr"
    with stderr.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "workers.jobs.dramatiq_main", "workers.jobs.actors",
             "--processes", "1", "--threads", "1"],
            env=env, stdout=out, stderr=out,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and b"ready for action" not in stderr.read_bytes():
            if process.poll() is not None:
                break
            time.sleep(0.2)
        process.terminate()
        process.wait(timeout=30)
    lines = [line for line in stderr.read_text().splitlines() if line.strip()]
    main_lines = [json.loads(line) for line in lines if "MainProcess" in line]
    assert main_lines, lines
    assert all(json.loads(line)["message"] for line in lines)  # every line is JSON
