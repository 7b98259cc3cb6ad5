"""Ingest benchmark: signed IPNs per second through the receiver, against a bare Flask endpoint.

Three apps run under the same gunicorn setup, one at a time, each driven over HTTP by a separate
client process with a fixed number of concurrent connections: the bare endpoint, a "durable" one
that only commits each body to PostgreSQL (what one durable write per request costs here), and
the receiver. They write to a database and a Redis db of the benchmark's own, both removed
afterwards.

    .venv/bin/python -m benchmarks.ingest [--count 5000] [--concurrency 16] [--workers 4]

`--profile DIR` also runs the receiver's workers under cProfile and prints where the time went.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import cProfile
import http.client
import multiprocessing
import os
import pstats
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
import redis
from flask import Flask

from benchmarks._common import (
    Snapshot,
    cpu_by_party,
    cpu_snapshot,
    own_database_url,
    own_redis_url,
    procfile_gunicorn_options,
)
from benchmarks._durable_app import create_table
from workers.config import Settings
from workers.jobs.broker import EVENTS_QUEUE
from workers.ops import samples
from workers.protocol import form
from workers.protocol.signature import Algorithm
from workers.store import db

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "rinnovo_bench_ingest"
REDIS_DB = 12
KEY = "BENCH-INGEST-KEY"
PROFILE_ENV = "RINNOVO_BENCH_PROFILE_DIR"
BARE_TARGET = "benchmarks._bare_app:app"
DURABLE_TARGET = "benchmarks._durable_app:app"
RINNOVO_TARGET = "webhooks.app:create_app()"
PROFILED_TARGET = "benchmarks.ingest:profiled_app()"
HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}


@dataclass(frozen=True)
class Delivery:
    """One pre-built signed IPN and the values its receipt must sign."""

    body: bytes
    receipt_values: list[str]


@dataclass(frozen=True)
class Run:
    """What one client run against one server measured."""

    seconds: float
    latencies: list[float]
    statuses: list[int]
    answers: list[str]
    warmup_failures: int


def database_url() -> str:
    """The benchmark's own database."""
    return own_database_url(DB_NAME)


def redis_url() -> str:
    """The benchmark's own Redis db."""
    return own_redis_url(REDIS_DB)


def build_deliveries(count: int, offset: int) -> list[Delivery]:
    """Signed IPNs that are all distinct events: each has its own order reference and license."""
    deliveries = []
    for number in range(offset, offset + count):
        item = samples.SampleItem(license_ref=f"BENCH{number:07d}")
        pairs = samples.ipn_pairs(refno=str(70_000_000 + number), items=[item])
        fields = form.group(pairs)
        values = [fields["IPN_PID[]"][0], fields["IPN_PNAME[]"][0], fields["IPN_DATE"][0]]
        body = form.encode(samples.sign_pairs(pairs, KEY, (Algorithm.SHA256,)))
        deliveries.append(Delivery(body, values))
    return deliveries


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def gunicorn(
    target: str,
    *,
    workers: int,
    worker_class: str | None,
    threads: int,
    env: dict[str, str],
    logs: list[str],
) -> Iterator[tuple[int, int]]:
    """Serve `target` under gunicorn on a free port until the block ends; yields (pid, port).

    What the server printed is appended to `logs` when it has stopped.
    """
    port = free_port()
    setup = (
        ["--worker-class", worker_class]
        if worker_class
        else procfile_gunicorn_options(drop=("--bind", "--workers", "--logger-class"))
    )
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        *setup,
        "--threads",
        str(threads),
        "--log-level",
        "warning",
        "--chdir",
        str(ROOT),
        target,
    ]
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
            log.seek(0)
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


def _post_all(
    port: int, bodies: Sequence[bytes], concurrency: int
) -> tuple[float, list[float], list[int], list[str]]:
    """POST every body from `concurrency` threads, each with its own connection."""
    latencies = [0.0] * len(bodies)
    statuses = [0] * len(bodies)
    answers = [""] * len(bodies)
    indexes = iter(range(len(bodies)))
    take = threading.Lock()
    start_line = threading.Barrier(concurrency + 1)

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        start_line.wait()
        while True:
            with take:
                index = next(indexes, None)
            if index is None:
                break
            started = time.perf_counter()
            try:
                conn.request("POST", "/ipn", bodies[index], HEADERS)
                response = conn.getresponse()
                answer = response.read()
                statuses[index] = response.status
                answers[index] = answer.decode("utf-8", errors="replace")
            except (OSError, http.client.HTTPException) as exc:
                answers[index] = f"{type(exc).__name__}: {exc}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            latencies[index] = time.perf_counter() - started
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    start_line.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies, statuses, answers


def _drive(
    link: Connection, port: int, warmup: list[bytes], timed: list[bytes], concurrency: int
) -> None:
    """The client process: warm the server up, wait for the go, time the run, send the figures."""
    _, _, warm_statuses, _ = _post_all(port, warmup, concurrency)
    link.send("warm")
    link.recv()
    seconds, latencies, statuses, answers = _post_all(port, timed, concurrency)
    warm_failures = sum(status != 200 for status in warm_statuses)
    link.send(Run(seconds, latencies, statuses, answers, warm_failures))
    link.close()


def drive(
    server_pid: int, port: int, warmup: list[bytes], timed: list[bytes], concurrency: int
) -> tuple[Run, dict[str, float]]:
    """Run the client in a process of its own; the run, and the CPU seconds each party used."""
    context = multiprocessing.get_context("fork")  # the bodies are inherited, not pickled
    link, child_link = context.Pipe()
    client = context.Process(target=_drive, args=(child_link, port, warmup, timed, concurrency))
    client.start()
    child_link.close()
    try:
        link.recv()  # warmed up
        before = cpu_snapshot()
        link.send("go")
        run: Run = link.recv()
        after = cpu_snapshot()
        client.join()
        return run, cpu_used(before, after, server_pid=server_pid, client_pid=client.pid)
    finally:
        if client.is_alive():
            client.terminate()
            client.join()


def cpu_used(
    before: Snapshot | None, after: Snapshot | None, *, server_pid: int, client_pid: int | None
) -> dict[str, float]:
    """CPU seconds between two snapshots by party: the gunicorn tree, PostgreSQL, Redis, client."""
    if before is None or after is None:
        return {}
    roots = {server_pid: "gunicorn"} | ({client_pid: "client"} if client_pid else {})
    parties = ["gunicorn", "postgres", "redis", "client", "other"]
    used = cpu_by_party(before, after, database=DB_NAME, roots=roots, parties=parties)
    used["machine"] = after.busy - before.busy
    used["capacity"] = after.total - before.total
    return used


def percentile(values: Sequence[float], pct: int) -> float:
    """The pct-th percentile of values (inclusive method)."""
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


@dataclass(frozen=True)
class Figures:
    """The printed figures of one server."""

    name: str
    requests: int
    failures: int
    seconds: float
    per_second: float
    p50_ms: float
    p99_ms: float
    cpu: dict[str, float]  # CPU ms per request by party, and the busy share


def figures(
    name: str, run: Run, cpu: dict[str, float], accepted: Callable[[int, str], bool]
) -> Figures:
    """Summarise a run; a request fails unless it is a 200 whose body `accepted` approves."""
    failures = sum(
        not (status == 200 and accepted(index, answer))
        for index, (status, answer) in enumerate(zip(run.statuses, run.answers, strict=True))
    )
    return Figures(
        name=name,
        requests=len(run.statuses),
        failures=failures + run.warmup_failures,
        seconds=run.seconds,
        per_second=len(run.statuses) / run.seconds,
        p50_ms=percentile(run.latencies, 50) * 1000,
        p99_ms=percentile(run.latencies, 99) * 1000,
        cpu=cpu_per_request(cpu, len(run.statuses)),
    )


def _says_ok(_index: int, answer: str) -> bool:
    return answer == "OK"


def receipt_check(sent: Sequence[Delivery]) -> Callable[[int, str], bool]:
    """A check that the answer to the index-th delivery is its correctly signed receipt."""

    def check(index: int, answer: str) -> bool:
        values = sent[index].receipt_values
        return samples.verify_receipt(answer, Algorithm.SHA256, KEY, values)

    return check


def cpu_per_request(used: dict[str, float], requests: int) -> dict[str, float]:
    """CPU milliseconds per request by party, and the busy share of the machine's CPUs."""
    if not used:
        return {}
    shares = {party: seconds * 1000 / requests for party, seconds in used.items()}
    shares["busy"] = used["machine"] / used["capacity"] if used["capacity"] else 0.0
    return shares


def print_table(rows: Sequence[Figures], *, cpu: bool = True, header: bool = True) -> None:
    """Print the figures of each server, then (with `cpu`) the CPU each party spent per request."""
    if header:
        print(
            f"{'server':<12} {'requests':>8} {'failures':>8} {'seconds':>8} {'req/s':>8} "
            f"{'p50 ms':>8} {'p99 ms':>8}"
        )
    for row in rows:
        print(
            f"{row.name:<12} {row.requests:>8} {row.failures:>8} {row.seconds:>8.2f} "
            f"{row.per_second:>8.0f} {row.p50_ms:>8.2f} {row.p99_ms:>8.2f}"
        )
    parties = ("gunicorn", "postgres", "redis", "client", "other")
    if not cpu or not all(row.cpu for row in rows):
        return
    print("CPU ms per request in the timed runs (busy: share of all the machine's CPUs in use):")
    print(f"{'server':<12} " + " ".join(f"{party:>8}" for party in parties) + f" {'busy':>8}")
    for row in rows:
        print(
            f"{row.name:<12} "
            + " ".join(f"{row.cpu[party]:>8.3f}" for party in parties)
            + f" {row.cpu['busy']:>8.0%}"
        )


def check_stored(url: str, client: redis.Redis, expected: int) -> bool:
    """Print and check that every delivery became one event, enqueued once."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE status = 'enqueued') FROM events"
        ).fetchone()
    assert row is not None
    stored, enqueued = row
    namespace = Settings.from_env({**os.environ, "REDIS_URL": redis_url()}).redis_namespace
    queue = f"{namespace}:{EVENTS_QUEUE}"
    messages = int(client.hlen(f"{queue}.msgs"))
    ok = stored == enqueued == messages == expected
    print(
        f"check: sent {expected} distinct IPNs; database holds {stored} events "
        f"({enqueued} enqueued); Redis queue holds {messages} messages: "
        + ("OK" if ok else "MISMATCH")
    )
    return ok


def profiled_app() -> Flask:
    """The receiver with each request under cProfile; a worker writes its profile when it exits."""
    from webhooks.app import create_app

    app = create_app()
    profiler = cProfile.Profile()
    inner = app.wsgi_app

    def wsgi_app(environ: dict[str, Any], start_response: Any) -> Any:
        profiler.enable()
        try:
            return inner(environ, start_response)
        finally:
            profiler.disable()

    app.wsgi_app = wsgi_app  # type: ignore[method-assign]
    out = Path(os.environ[PROFILE_ENV]) / f"worker-{os.getpid()}.prof"
    atexit.register(profiler.dump_stats, out)
    return app


def print_profile(directory: Path, lines: int = 30) -> None:
    """Merge the workers' profiles and print the heaviest functions by cumulative time."""
    files = sorted(directory.glob("worker-*.prof"))
    if not files:
        print(f"profile: no worker profiles were written to {directory}")
        return
    stats = pstats.Stats(*(str(path) for path in files))
    print(f"\nprofile of {len(files)} receiver worker(s), by cumulative time:")
    stats.sort_stats("cumulative").print_stats(lines)
    stats.sort_stats("tottime").print_stats(lines)


def _stop(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def median_figures(name: str, rounds: Sequence[Figures]) -> Figures:
    """The median of each figure over the rounds; requests, failures and seconds are totals."""
    return Figures(
        name=name,
        requests=sum(row.requests for row in rounds),
        failures=sum(row.failures for row in rounds),
        seconds=sum(row.seconds for row in rounds),
        per_second=statistics.median(row.per_second for row in rounds),
        p50_ms=statistics.median(row.p50_ms for row in rounds),
        p99_ms=statistics.median(row.p99_ms for row in rounds),
        cpu={
            party: statistics.median(row.cpu[party] for row in rounds)
            for party in (rounds[0].cpu if all(row.cpu for row in rounds) else {})
        },
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its figures; non-zero when a request or the check failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000, help="timed requests per server")
    parser.add_argument("--warmup", type=int, default=300, help="untimed requests first")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per server")
    parser.add_argument("--concurrency", type=int, default=16, help="client connections")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers")
    parser.add_argument(
        "--worker-class", help="gunicorn worker class (default: the Procfile's options)"
    )
    parser.add_argument("--threads", type=int, default=1, help="gunicorn threads per worker")
    parser.add_argument("--profile", type=Path, help="profile the receiver; keep profiles here")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)

    url = database_url()
    env = {
        "DATABASE_URL": url,
        "REDIS_URL": redis_url(),
        "TWOCHECKOUT_SECRET_KEY": KEY,
        "TWOCHECKOUT_ACCEPT_MD5": "",
    }
    target = RINNOVO_TARGET
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        for old in args.profile.glob("worker-*.prof"):
            old.unlink()
        env[PROFILE_ENV] = str(args.profile.resolve())
        target = PROFILED_TARGET

    print(
        f"setup: gunicorn {args.worker_class or ' '.join(procfile_gunicorn_options())} "
        f"--workers {args.workers} "
        f"--threads {args.threads} "
        f"on {os.cpu_count()} CPU(s), one server at a time; client: one process, "
        f"{args.concurrency} connections; {args.rounds} round(s) of {args.warmup} warm-up + "
        f"{args.count} timed requests per server"
        + ("; receiver under cProfile" if args.profile else "")
    )
    started = time.perf_counter()
    per_round = args.warmup + args.count
    batches = [build_deliveries(per_round, n * per_round) for n in range(args.rounds)]
    print(f"built {per_round * args.rounds} signed IPNs in {time.perf_counter() - started:.1f} s")

    queue = redis.Redis.from_url(redis_url())
    bare_rounds: list[Figures] = []
    durable_rounds: list[Figures] = []
    rinnovo_rounds: list[Figures] = []
    logs: list[str] = []
    options = {
        "workers": args.workers,
        "worker_class": args.worker_class,
        "threads": args.threads,
        "env": env,
        "logs": logs,
    }
    try:
        db.drop_database(url)
        db.init_db(url)
        create_table(url)  # the commit-only endpoint's table
        queue.flushdb()
        for number, batch in enumerate(batches, start=1):
            warm_bodies = [d.body for d in batch[: args.warmup]]
            timed = batch[args.warmup :]
            timed_bodies = [d.body for d in timed]
            servers = [
                (bare_rounds, "bare", BARE_TARGET, _says_ok),
                (durable_rounds, "durable", DURABLE_TARGET, _says_ok),
                (rinnovo_rounds, "rinnovo", target, receipt_check(timed)),
            ]
            for rounds, name, app_target, accepted in servers:
                with gunicorn(app_target, **options) as (pid, port):
                    run, cpu = drive(pid, port, warm_bodies, timed_bodies, args.concurrency)
                rounds.append(figures(f"{name} #{number}", run, cpu, accepted))
            print_table(
                [bare_rounds[-1], durable_rounds[-1], rinnovo_rounds[-1]],
                cpu=False,
                header=number == 1,
            )

        bare = median_figures("bare", bare_rounds)
        durable = median_figures("durable", durable_rounds)
        rinnovo = median_figures("rinnovo", rinnovo_rounds)
        print(f"median of {args.rounds} round(s):")
        print_table([bare, durable, rinnovo])
        ratios = [
            r.per_second / b.per_second for b, r in zip(bare_rounds, rinnovo_rounds, strict=True)
        ]
        ratio = rinnovo.per_second / bare.per_second
        print(
            f"ratio rinnovo/bare: throughput {ratio:.2f} (target >= 0.6: "
            f"{'met' if ratio >= 0.6 else 'NOT met'}; by round: "
            + ", ".join(f"{value:.2f}" for value in ratios)
            + f"); latency p50 {rinnovo.p50_ms / bare.p50_ms:.2f}x, "
            f"p99 {rinnovo.p99_ms / bare.p99_ms:.2f}x"
        )
        print(
            f"ratio durable/bare: throughput {durable.per_second / bare.per_second:.2f} "
            "(one autocommit INSERT of the body per request and nothing else: the ceiling for "
            "any receiver that commits before it answers, on this machine)"
        )
        to_durable = [
            r.per_second / d.per_second for d, r in zip(durable_rounds, rinnovo_rounds, strict=True)
        ]
        print(
            f"ratio rinnovo/durable: throughput {rinnovo.per_second / durable.per_second:.2f} "
            f"(median by round {statistics.median(to_durable):.2f}; target >= 0.8: "
            f"{'met' if statistics.median(to_durable) >= 0.8 else 'NOT met'}; by round: "
            + ", ".join(f"{value:.2f}" for value in to_durable)
            + ")"
        )
        if max(row.cpu.get("other", 0.0) for row in (bare, durable, rinnovo)) > 0.5:
            print(
                "warning: processes outside the benchmark kept the CPUs busy during the runs "
                "(column 'other'); the figures are lower than on a quiet machine"
            )
        ok = check_stored(url, queue, per_round * args.rounds)
        if not ok:
            warnings = [line for text in logs for line in text.splitlines() if line.strip()]
            print("the servers' last log lines:", *warnings[-20:], sep="\n  ")
        ok = ok and not (bare.failures or durable.failures or rinnovo.failures)
        if args.profile is not None:
            print_profile(args.profile)
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        db.drop_database(url)
        queue.flushdb()
        queue.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
