"""A whole Rinnovo under faults: processes to kill; a Redis, SMTP server and database path to cut.

Everything faulty is private to the rig: a redis-server of its own on a free port (killed and
started again empty, as a Redis without persistence comes back), an aiosmtpd server of its own
(stopped and started on the same port), and a proxy in front of PostgreSQL (cut: every
connection dies and new ones are refused). The receiver (gunicorn), the workers (dramatiq, one
process each) and the clock run as in production, each under a supervisor that starts it again
when it dies, as systemd or the platform would. A provider posts signed IPNs and retries each
until it is acknowledged. Shared by the fault test and benchmarks/recovery.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from typing import IO, Any

import psycopg
import requests
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from benchmarks._common import procfile_gunicorn_options
from tests.support import FORM, KEY, TcpProxy, free_port, signed_ipn
from workers.ops import samples

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


class PrivateRedis:
    """A redis-server of the rig's own, without persistence: killed, it comes back empty."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socketed(self.port):
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@contextlib.contextmanager
def socketed(port: int) -> Any:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        yield sock


class Mailbox:
    """An aiosmtpd handler counting deliveries by Message-ID, and when the last one came."""

    def __init__(self) -> None:
        self.received: Counter[str] = Counter()
        self.last_at = 0.0
        self._lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content
        assert isinstance(content, bytes)
        message_id = str(BytesParser(policy=default_policy).parsebytes(content)["Message-ID"])
        with self._lock:
            self.received[message_id] += 1
            self.last_at = time.time()
        return "250 2.0.0 Message accepted"


class PrivateSMTP:
    """An SMTP server of the rig's own that can be stopped and started on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.mailbox = Mailbox()
        self.controller: Controller | None = None
        self.start()

    def start(self) -> None:
        self.controller = Controller(self.mailbox, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop(no_assert=True)
            self.controller = None


class Supervised:
    """A process started again whenever it dies, until stopped; `kill` SIGKILLs its whole group."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log: IO[bytes]):
        self.name, self.argv, self.env, self.log = name, list(argv), dict(env), log
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._running = True
        self._lock = threading.Lock()
        self._spawn()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _spawn(self) -> None:
        self.process = subprocess.Popen(
            self.argv, env=self.env, cwd=ROOT, stdout=self.log, stderr=self.log,
            start_new_session=True,
        )  # fmt: skip

    def _watch(self) -> None:
        while self._running:
            process = self.process
            if process is not None and process.poll() is not None:
                time.sleep(0.5)  # a supervisor's restart delay
                with self._lock:
                    if self._running:
                        self.restarts += 1
                        self._spawn()
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the process and its children, as the kernel's OOM killer or a crash would."""
        with self._lock:
            if self.process is not None and self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM the process group (a deploy) and wait for it to finish; its exit status."""
        self._running = False
        self._thread.join()
        process = self.process
        if process is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            return process.wait()


class Rig:
    """The receiver, workers and clock on a database path, Redis and SMTP server that can fail."""

    def __init__(self, database_url: str, *, workers: int = 2, threads: int = 4) -> None:
        self.database_url = database_url
        self.redis = PrivateRedis()
        self.smtp = PrivateSMTP()
        params = conninfo_to_dict(database_url)
        self.database = TcpProxy(
            str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432)
        )
        self.database.start()
        self.web_port = free_port()
        self.url = f"http://127.0.0.1:{self.web_port}"
        self.workdir = tempfile.TemporaryDirectory(prefix="rinnovo-faults-")
        self.log = open(Path(self.workdir.name) / "processes.log", "w+b")  # noqa: SIM115
        env = {
            **os.environ,
            "DATABASE_URL": make_conninfo(database_url, host="127.0.0.1", port=self.database.port),
            "REDIS_URL": self.redis.url,
            "REDIS_NAMESPACE": "rinnovo-faults",
            "SMTP_URL": f"smtp://127.0.0.1:{self.smtp.port}",
            "MAIL_FROM": "DocFlow <billing@docflow.example>",
            # Emails wait without the merchant's voice: a benchmark's environment has none.
            "MERCHANT_NAME": "DocFlow",
            "SUPPORT_EMAIL": "support@docflow.example",
            "MAIL_DIR": str(Path(self.workdir.name) / "mail"),
            "TWOCHECKOUT_SECRET_KEY": KEY,
            "PYTHONUNBUFFERED": "1",
        }
        self.web = Supervised(
            "web",
            [str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{self.web_port}", "--workers", "2",
             *procfile_gunicorn_options(), "--log-level", "warning", "webhooks.app:create_app()"],
            env, self.log,
        )  # fmt: skip
        self.workers = [
            Supervised(
                f"worker{n}",
                [
                    # As the Procfile's `worker:` line runs it.
                    str(BIN / "python"),
                    "-m",
                    "workers.jobs.dramatiq_main",
                    "workers.jobs.worker",
                    "--processes",
                    "1",
                    "--threads",
                    str(threads),
                ],
                env,
                self.log,
            )
            for n in range(workers)
        ]
        self.clock = Supervised("clock", [str(BIN / "rinnovo"), "clock"], env, self.log)
        self.acknowledged: list[str] = []  # the dedupe keys the provider got a receipt for
        self.retries = 0  # deliveries the provider had to make again

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait until the receiver answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the receiver did not start:\n{self.output()}")

    def deliver(self, n: int) -> None:
        """Post one new order as the provider does: again and again until it is acknowledged."""
        body = signed_ipn(
            email=f"customer{n}@example.com",
            items=(samples.SampleItem(license_ref=f"LICF{n:06d}"),),
        )
        while True:
            try:
                response = requests.post(f"{self.url}/ipn", data=body, headers=FORM, timeout=10)
                if response.status_code == 200 and response.text.startswith("<sig"):
                    self.acknowledged.append(f"LICF{n:06d}")
                    return
            except requests.RequestException:
                pass
            self.retries += 1
            time.sleep(1.0)  # the provider's retry, much sooner than in life

    def feed(self, count: int, seconds: float, start: int = 0) -> threading.Thread:
        """Deliver `count` orders spread over `seconds`, from a few provider threads."""

        def run(offset: int, step: int) -> None:
            began = time.monotonic()
            for n in range(offset, count, step):
                due = began + seconds * n / count
                time.sleep(max(0.0, due - time.monotonic()))
                self.deliver(start + n)

        threads = [threading.Thread(target=run, args=(k, 4), daemon=True) for k in range(4)]
        for thread in threads:
            thread.start()
        feeder = threading.Thread(target=lambda: [t.join() for t in threads], daemon=True)
        feeder.start()
        return feeder

    def state(self) -> dict[str, Any]:
        """What the database holds: events and emails by status, and the newest outcomes."""
        with psycopg.connect(self.database_url, row_factory=dict_row) as conn:
            events = conn.execute(
                "SELECT status, count(*) AS n, max(processed_at) AS last FROM events GROUP BY 1"
            ).fetchall()
            emails = conn.execute(
                "SELECT status, coalesce(failure, '') AS failure, count(*) AS n,"
                " max(sent_at) AS last FROM emails GROUP BY 1, 2"
            ).fetchall()
            licenses = conn.execute(
                "SELECT license_code FROM subscriptions WHERE license_code LIKE 'LICF%'"
            ).fetchall()
        return {
            "events": {row["status"]: row["n"] for row in events},
            "events_last": max((row["last"] for row in events if row["last"]), default=None),
            "emails": {
                f"{row['status']}{'/' + row['failure'] if row['failure'] else ''}": row["n"]
                for row in emails
            },
            "emails_last": max((row["last"] for row in emails if row["last"]), default=None),
            "licenses": {row["license_code"] for row in licenses},
        }

    def settled(self) -> bool:
        """Whether every acknowledged order is applied and every email is done (sent or failed)."""
        state = self.state()
        waiting = sum(state["events"].get(s, 0) for s in ("received", "enqueued"))
        unsent = sum(n for key, n in state["emails"].items() if key in ("pending", "sending"))
        return waiting == 0 and unsent == 0 and set(self.acknowledged) <= state["licenses"]

    def output(self) -> str:
        """What the processes wrote, for a failure's message."""
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-20_000:]

    def close(self) -> None:
        for process in [self.web, *self.workers, self.clock]:
            process.stop()
        self.database.stop()
        self.redis.kill()
        self.smtp.stop()
        self.log.close()
        self.workdir.cleanup()
