"""Serving an app under gunicorn and loading it over HTTP: closed-loop (as fast as answered) or
paced (open-loop, at a fixed rate), each from a client process of its own."""

from __future__ import annotations

import contextlib
import http.client
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from benchmarks._common import Snapshot, cpu_by_party, cpu_snapshot

ROOT = Path(__file__).resolve().parent.parent
HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}
LOG_TAIL = 20_000  # characters of a server's output kept for a failure's report


@dataclass(frozen=True)
class Run:
    """What one client run against one server measured."""

    seconds: float
    latencies: list[float]
    statuses: list[int]
    answers: list[str]
    warmup_failures: int


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def gunicorn(
    target: str, *, options: Sequence[str], env: dict[str, str], logs: list[str]
) -> Iterator[tuple[int, int]]:
    """Serve `target` under gunicorn with `options` on a free port until the block ends; yields
    (pid, port). The tail of what the server printed (its logs) is appended to `logs`."""
    port = free_port()
    command = [
        sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", *options,
        "--chdir", str(ROOT), target,
    ]  # fmt: skip
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(
            command,
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the benchmark, which stops it in order
        )
        try:
            _wait_ready(server, port, log)
            yield server.pid, port
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            size = log.seek(0, os.SEEK_END)
            log.seek(max(0, size - LOG_TAIL))
            logs.append(log.read().decode(errors="replace"))


def _wait_ready(server: subprocess.Popen[bytes], port: int, log: Any) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            shown = log.read().decode(errors="replace")[-3000:]
            raise RuntimeError(f"gunicorn exited with {server.returncode}:\n{shown}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/")
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.1)
        finally:
            conn.close()
    raise RuntimeError(f"gunicorn did not answer on port {port} within 30 s")


class _Poster:
    """Posts bodies from threads, each with its own keep-alive connection, recording each one."""

    def __init__(self, port: int, bodies: Sequence[bytes]) -> None:
        self.port = port
        self.bodies = bodies
        self.latencies = [0.0] * len(bodies)
        self.statuses = [0] * len(bodies)
        self.answers = [""] * len(bodies)
        self.seconds = 0.0  # how long the run took, once over
        self._indexes = iter(range(len(bodies)))
        self._take = threading.Lock()

    def next_index(self) -> int | None:
        with self._take:
            return next(self._indexes, None)

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def post(self, conn: http.client.HTTPConnection, index: int, since: float) -> bool:
        """POST the index-th body; its latency counts from `since`. False: reconnect."""
        try:
            conn.request("POST", "/ipn", self.bodies[index], HEADERS)
            response = conn.getresponse()
            self.statuses[index] = response.status
            self.answers[index] = response.read().decode("utf-8", errors="replace")
            ok = True
        except (OSError, http.client.HTTPException) as exc:
            self.answers[index] = f"{type(exc).__name__}: {exc}"
            conn.close()
            ok = False
        self.latencies[index] = time.perf_counter() - since
        return ok

    def run(self, threads: int, client: Callable[[threading.Barrier], None]) -> None:
        """Run `client` in `threads` threads, released together, and time them."""
        start_line = threading.Barrier(threads + 1)
        running = [threading.Thread(target=client, args=(start_line,)) for _ in range(threads)]
        for thread in running:
            thread.start()
        start_line.wait()
        started = time.perf_counter()
        for thread in running:
            thread.join()
        self.seconds = time.perf_counter() - started


def post_all(port: int, bodies: Sequence[bytes], concurrency: int) -> _Poster:
    """Closed loop: `concurrency` connections, each posting its next body once answered."""
    poster = _Poster(port, bodies)

    def client(start_line: threading.Barrier) -> None:
        conn = poster.connect()
        start_line.wait()
        while (index := poster.next_index()) is not None:
            if not poster.post(conn, index, time.perf_counter()):
                conn = poster.connect()
        conn.close()

    poster.run(concurrency, client)
    return poster


def post_paced(port: int, bodies: Sequence[bytes], rate: float, connections: int) -> _Poster:
    """Open loop: the i-th body is due i / rate seconds after the start, whatever the answers;
    each latency counts from when its request was due, so a server falling behind shows as
    latency (no coordinated omission). `connections` bounds the requests in flight."""
    poster = _Poster(port, bodies)
    start = [0.0]

    def client(start_line: threading.Barrier) -> None:
        conn = poster.connect()
        start_line.wait()
        while (index := poster.next_index()) is not None:
            due = start[0] + index / rate
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            if not poster.post(conn, index, due):
                conn = poster.connect()
        conn.close()

    start[0] = time.perf_counter() + 0.2  # every thread is at the start line by then
    poster.run(connections, client)
    return poster


def _as_run(poster: _Poster, warmup_failures: int) -> Run:
    return Run(poster.seconds, poster.latencies, poster.statuses, poster.answers, warmup_failures)


def _drive(link: Connection, port: int, warmup: list[bytes], timed: list[bytes], load: str,
           level: float) -> None:  # fmt: skip
    """The client process: warm the server up, wait for the go, time the run, send the figures."""
    warm = post_all(port, warmup, 16) if warmup else None
    link.send("warm")
    link.recv()
    if load == "paced":
        poster = post_paced(port, timed, level, connections=64)
    else:
        poster = post_all(port, timed, int(level))
    warm_failures = sum(status != 200 for status in warm.statuses) if warm else 0
    link.send(_as_run(poster, warm_failures))
    link.close()


def drive(
    server_pid: int,
    port: int,
    warmup: list[bytes],
    timed: list[bytes],
    *,
    database: str,
    concurrency: int = 16,
    rate: float | None = None,
) -> tuple[Run, dict[str, float]]:
    """Run the client in a process of its own, closed-loop with `concurrency` connections or
    paced at `rate` requests a second; the run, and the CPU seconds each party used."""
    context = multiprocessing.get_context("fork")  # the bodies are inherited, not pickled
    link, child_link = context.Pipe()
    load, level = ("paced", rate) if rate else ("closed", float(concurrency))
    client = context.Process(target=_drive, args=(child_link, port, warmup, timed, load, level))
    client.start()
    child_link.close()
    try:
        link.recv()  # warmed up
        before = cpu_snapshot()
        link.send("go")
        run: Run = link.recv()
        after = cpu_snapshot()
        client.join()
        used = cpu_used(before, after, database, server_pid=server_pid, client_pid=client.pid)
        return run, used
    finally:
        if client.is_alive():
            client.terminate()
            client.join()


def cpu_used(
    before: Snapshot | None,
    after: Snapshot | None,
    database: str,
    *,
    server_pid: int,
    client_pid: int | None,
) -> dict[str, float]:
    """CPU seconds between two snapshots by party: the gunicorn tree, PostgreSQL, Redis, client."""
    if before is None or after is None:
        return {}
    roots = {server_pid: "gunicorn"} | ({client_pid: "client"} if client_pid else {})
    parties = ["gunicorn", "postgres", "redis", "client", "other"]
    used = cpu_by_party(before, after, database=database, roots=roots, parties=parties)
    used["machine"] = after.busy - before.busy
    used["capacity"] = after.total - before.total
    return used
