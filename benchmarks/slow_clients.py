"""Slow-client benchmark: how long signed IPNs take while hundreds of connections stall.

The receiver runs as the Procfile runs it (its gunicorn options, WEB_CONCURRENCY workers). Half
of the stalled connections send their headers a byte a second, the other half send whole headers
and then their body a byte a second; meanwhile valid signed IPNs are posted one after another and
each one's time to its receipt is printed, with /healthz's. Figures are printed, never asserted.

    .venv/bin/python -m benchmarks.slow_clients [--stalled 200] [--posts 20] [--workers N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence

import requests

from benchmarks._common import (
    ROOT,
    cpus,
    own_database_url,
    own_redis_url,
    procfile_gunicorn_options,
)
from workers.ops import samples
from workers.protocol import form
from workers.store import db

DB_NAME = "rinnovo_bench_slow_clients"
REDIS_DB = 11
KEY = "BENCH-SLOW-KEY"
# One request per connection, as the provider sends them (and no idle connection is left open).
HEADERS = {"Content-Type": "application/x-www-form-urlencoded", "Connection": "close"}


class Stalled:
    """Connections that send a request a byte a second, from one thread, until stopped."""

    def __init__(self, port: int, count: int, *, seconds_per_byte: float = 1.0) -> None:
        self.sockets: list[socket.socket] = []
        self._pending: list[bytes] = []
        self._interval = seconds_per_byte
        self._stop = threading.Event()
        for number in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            if number % 2:  # whole headers, then a body that never finishes
                sock.sendall(
                    b"POST /ipn HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10000\r\n"
                    b"Content-Type: application/x-www-form-urlencoded\r\n\r\n"
                )
                rest = b"x" * 10000
            else:  # headers that never finish
                rest = b"POST /ipn HTTP/1.1\r\nHost: localhost\r\n" + b"X-Slow: y\r\n" * 1000
            sock.setblocking(False)
            self.sockets.append(sock)
            self._pending.append(rest)
        self._thread = threading.Thread(target=self._trickle, daemon=True)

    def _trickle(self) -> None:
        while not self._stop.wait(self._interval):
            for index, sock in enumerate(self.sockets):
                rest = self._pending[index]
                if not rest:
                    continue
                with contextlib.suppress(OSError):  # a connection the server closed stays closed
                    sock.send(rest[:1])
                self._pending[index] = rest[1:]

    def open_count(self) -> int:
        """How many of the connections the server has neither closed nor answered."""
        count = 0
        for sock in self.sockets:
            try:
                if sock.recv(1, socket.MSG_PEEK) == b"":
                    continue  # closed by the server
            except BlockingIOError:
                count += 1  # nothing to read: still waiting on us
                continue
            except OSError:
                continue
        return count

    def __enter__(self) -> Stalled:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for sock in self.sockets:
            sock.close()


def signed_ipn(key: str = KEY) -> bytes:
    """A fresh IPN body signed with `key`."""
    return form.encode(samples.sign_pairs(samples.ipn_pairs(), key))


def timed_posts(url: str, count: int, key: str = KEY) -> tuple[list[float], list[int]]:
    """POST `count` signed IPNs one after another; their times in seconds and statuses."""
    times: list[float] = []
    statuses: list[int] = []
    for _ in range(count):
        body = signed_ipn(key)
        started = time.perf_counter()
        response = requests.post(f"{url}/ipn", data=body, headers=HEADERS, timeout=60)
        times.append(time.perf_counter() - started)
        statuses.append(response.status_code)
    return times, statuses


def describe(times: Sequence[float]) -> str:
    """Median and slowest of some durations, in milliseconds."""
    return f"median {statistics.median(times) * 1000:.0f} ms, slowest {max(times) * 1000:.0f} ms"


@contextlib.contextmanager
def receiver(workers: int, env: dict[str, str]) -> Iterator[tuple[str, int]]:
    """The receiver under gunicorn with the Procfile's options; yields its URL and port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    command = [
        sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
        "--workers", str(workers), *procfile_gunicorn_options(), "--log-level", "warning",
        "--chdir", str(ROOT), "webhooks.app:create_app()",
    ]  # fmt: skip
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(command, env={**os.environ, **env}, stdout=log, stderr=log)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    requests.get(f"{url}/healthz", timeout=2)
                    break
                except requests.RequestException:
                    if server.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        raise RuntimeError(log.read().decode(errors="replace")) from None
                    time.sleep(0.1)
            yield url, port
        finally:
            server.terminate()
            server.wait(timeout=30)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its figures; non-zero when an IPN was not accepted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stalled", type=int, default=200, help="stalled connections")
    parser.add_argument("--posts", type=int, default=20, help="signed IPNs posted meanwhile")
    parser.add_argument(
        "--workers", type=int, default=cpus(), help="gunicorn worker processes (one per CPU)"
    )
    args = parser.parse_args(argv)
    url = own_database_url(DB_NAME)
    env = {
        "DATABASE_URL": url,
        "REDIS_URL": own_redis_url(REDIS_DB),
        "TWOCHECKOUT_SECRET_KEY": KEY,
        "TWOCHECKOUT_ACCEPT_MD5": "",
    }
    db.drop_database(url)
    db.init_db(url)
    try:
        with receiver(args.workers, env) as (base, port):
            quiet, _ = timed_posts(base, args.posts)
            print(f"setup: gunicorn {' '.join(procfile_gunicorn_options())} "
                  f"--workers {args.workers}; {args.stalled} stalled connections")  # fmt: skip
            print(f"signed IPNs, nothing stalled:      {describe(quiet)}")
            with Stalled(port, args.stalled) as stalled:
                time.sleep(2)  # every stalled request has started
                times, statuses = timed_posts(base, args.posts)
                started = time.perf_counter()
                requests.get(f"{base}/healthz", timeout=60)
                health = time.perf_counter() - started
                still_open = stalled.open_count()
            print(f"signed IPNs, {args.stalled} connections stalled: {describe(times)}")
            print(f"/healthz meanwhile: {health * 1000:.0f} ms; stalled connections still open "
                  f"when measured: {still_open} of {args.stalled}")  # fmt: skip
            accepted = sum(status == 200 for status in statuses)
            print(f"accepted: {accepted} of {len(statuses)}")
            return 0 if accepted == len(statuses) else 1
    finally:
        db.close_pool()
        db.drop_database(url)


if __name__ == "__main__":
    sys.exit(main())
