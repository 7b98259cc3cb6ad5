"""Ingest benchmark: signed IPNs per second through the receiver, against a commit-only endpoint.

Three apps run under the Procfile's gunicorn setup (worker class, deadlines, JSON logger and
access log), one at a time, each driven over HTTP by a separate client process with a fixed number
of concurrent connections: the bare endpoint, a "durable" one that only commits each body to
PostgreSQL (what one durable write per request costs here), and the receiver. Then the receiver
is paced, open-loop, at half the commit-only endpoint's rate of the same round, for its latency
at half load. They write to a database and a Redis db of the benchmark's own, both removed
afterwards.

    .venv/bin/python -m benchmarks.ingest [--count 5000] [--rounds 3] [--concurrency 16]

`--profile DIR` also runs the receiver's workers under cProfile (CPU time, the whole process)
and prints where the time went.
"""

from __future__ import annotations

import argparse
import atexit
import cProfile
import os
import pstats
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
import redis
from flask import Flask

from benchmarks._common import cpus, own_database_url, own_redis_url, procfile_gunicorn_options
from benchmarks._durable_app import create_table
from benchmarks._load import Run, drive, gunicorn
from workers.config import Settings
from workers.jobs.broker import EVENTS_QUEUE
from workers.ops import samples
from workers.protocol import form
from workers.protocol.signature import Algorithm
from workers.store import db

DB_NAME = "rinnovo_bench_ingest"
REDIS_DB = 12
KEY = "BENCH-INGEST-KEY"
PROFILE_ENV = "RINNOVO_BENCH_PROFILE_DIR"
BARE_TARGET = "benchmarks._bare_app:app"
DURABLE_TARGET = "benchmarks._durable_app:app"
RINNOVO_TARGET = "webhooks.app:create_app()"
PROFILED_TARGET = "benchmarks.ingest:profiled_app()"
RATIO_GOAL = 0.8  # of the commit-only endpoint's throughput
HALF_LOAD_P99_GOAL_MS = 50.0


@dataclass(frozen=True)
class Delivery:
    """One pre-built signed IPN and the values its receipt must sign."""

    body: bytes
    receipt_values: list[str]


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
        # Rows one statement inserted share its transaction id: how many deliveries each
        # INSERT stored (the receiver stores those in flight together).
        row = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE status = 'enqueued'),"
            " count(DISTINCT xmin::text) FROM events"
        ).fetchone()
    assert row is not None
    stored, enqueued, statements = row
    namespace = Settings.from_env({**os.environ, "REDIS_URL": redis_url()}).redis_namespace
    queue = f"{namespace}:{EVENTS_QUEUE}"
    messages = int(client.hlen(f"{queue}.msgs"))
    ok = stored == enqueued == messages == expected
    print(
        f"check: sent {expected} distinct IPNs; database holds {stored} events "
        f"({enqueued} enqueued); Redis queue holds {messages} messages: "
        + ("OK" if ok else "MISMATCH")
        + f"; {stored / max(statements, 1):.1f} deliveries stored per INSERT"
    )
    return ok


def profiled_app() -> Flask:
    """The receiver in a worker profiled whole (gunicorn's and gevent's share too) in CPU time;
    the worker writes its profile when it exits."""
    from webhooks.app import create_app  # the profiled target only: built in the worker

    app = create_app()
    profiler = cProfile.Profile(time.process_time)  # CPU: waits on the network cost nothing
    out = Path(os.environ[PROFILE_ENV]) / f"worker-{os.getpid()}.prof"
    atexit.register(profiler.dump_stats, out)
    atexit.register(profiler.disable)  # runs first: atexit is last in, first out
    profiler.enable()
    return app


def print_profile(directory: Path, lines: int = 40) -> None:
    """Merge the workers' profiles and print the heaviest functions by CPU time."""
    files = sorted(directory.glob("worker-*.prof"))
    if not files:
        print(f"profile: no worker profiles were written to {directory}")
        return
    stats = pstats.Stats(*(str(path) for path in files))
    print(f"\nprofile of {len(files)} receiver worker(s) in CPU seconds (greenlet switches blur")
    print("the cumulative figures: read the own-time ones first):")
    stats.sort_stats("tottime").print_stats(lines)
    stats.sort_stats("cumulative").print_stats(lines)


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


def server_options(args: argparse.Namespace) -> list[str]:
    """The Procfile's gunicorn options (its worker class unless another is asked for), its JSON
    logger and access log, with the benchmark's number of workers and threads."""
    options = procfile_gunicorn_options(drop=("--bind", "--workers"))
    if args.worker_class:
        options[options.index("--worker-class") + 1] = args.worker_class
    return [
        *options, "--access-logfile", "-", "--workers", str(args.workers),
        "--threads", str(args.threads),
    ]  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000, help="timed requests per server")
    parser.add_argument("--warmup", type=int, default=300, help="untimed requests first")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per server")
    parser.add_argument("--concurrency", type=int, default=16, help="client connections")
    parser.add_argument(
        "--paced-seconds", type=float, default=8.0, help="length of the half-load run (0: none)"
    )
    parser.add_argument(
        "--workers", type=int, default=cpus(), help="gunicorn workers (the Procfile's: one per CPU)"
    )
    parser.add_argument("--worker-class", help="gunicorn worker class (default: the Procfile's)")
    parser.add_argument("--threads", type=int, default=1, help="gunicorn threads per worker")
    parser.add_argument("--profile", type=Path, help="profile the receiver; keep profiles here")
    return parser.parse_args(argv)


@dataclass
class Rounds:
    """Every round's figures, by server, and how many IPNs were built so far (each distinct)."""

    bare: list[Figures] = field(default_factory=list)
    durable: list[Figures] = field(default_factory=list)
    rinnovo: list[Figures] = field(default_factory=list)
    paced: list[Figures] = field(default_factory=list)
    built: int = 0

    def build(self, count: int) -> list[Delivery]:
        """`count` more distinct signed IPNs."""
        deliveries = build_deliveries(count, self.built)
        self.built += count
        return deliveries


def run_round(
    number: int, args: argparse.Namespace, rounds: Rounds, target: str, serve: dict[str, Any]
) -> None:
    """One round: the bare, the commit-only and the receiver's closed-loop runs, then the
    receiver paced at half the commit-only endpoint's rate of this round."""
    batch = rounds.build(args.warmup + args.count)
    warm = [d.body for d in batch[: args.warmup]]
    timed = batch[args.warmup :]
    bodies = [d.body for d in timed]
    servers = [
        (rounds.bare, "bare", BARE_TARGET, _says_ok),
        (rounds.durable, "durable", DURABLE_TARGET, _says_ok),
        (rounds.rinnovo, "rinnovo", target, receipt_check(timed)),
    ]
    for found, name, app_target, accepted in servers:
        with gunicorn(app_target, **serve) as (pid, port):
            run, cpu = drive(
                pid, port, warm, bodies, database=DB_NAME, concurrency=args.concurrency
            )
            found.append(figures(f"{name} #{number}", run, cpu, accepted))
            if name == "rinnovo" and args.paced_seconds > 0:
                rate = rounds.durable[-1].per_second / 2
                paced = rounds.build(int(rate * args.paced_seconds))
                sent = [d.body for d in paced]
                run, cpu = drive(pid, port, [], sent, database=DB_NAME, rate=rate)
                rounds.paced.append(figures(f"half #{number}", run, cpu, receipt_check(paced)))
    shown = [rounds.bare[-1], rounds.durable[-1], rounds.rinnovo[-1]]
    print_table(shown + rounds.paced[-1:], cpu=False, header=number == 1)


def report(args: argparse.Namespace, rounds: Rounds) -> bool:
    """Print the medians and the ratios; whether the goals were met."""
    bare = median_figures("bare", rounds.bare)
    durable = median_figures("durable", rounds.durable)
    rinnovo = median_figures("rinnovo", rounds.rinnovo)
    paced = [median_figures("half load", rounds.paced)] if rounds.paced else []
    print(f"median of {args.rounds} round(s):")
    print_table([bare, durable, rinnovo, *paced])
    by_round = [
        r.per_second / d.per_second for d, r in zip(rounds.durable, rounds.rinnovo, strict=True)
    ]
    ratio = statistics.median(by_round)
    met = ratio >= RATIO_GOAL
    print(
        f"ratio rinnovo/durable: throughput {ratio:.2f} (median of the rounds' ratios; goal >= "
        f"{RATIO_GOAL}: {'met' if met else 'NOT met'}; by round: "
        + ", ".join(f"{value:.2f}" for value in by_round)
        + ")"
    )
    print(
        f"ratio durable/bare: throughput {durable.per_second / bare.per_second:.2f} (one "
        "autocommit INSERT of the body per request and nothing else: the ceiling for any "
        "receiver that commits before it answers, on this machine); rinnovo/bare: "
        f"{rinnovo.per_second / bare.per_second:.2f}"
    )
    if paced:
        p99_met = paced[0].p99_ms <= HALF_LOAD_P99_GOAL_MS
        met = met and p99_met
        print(
            "half load (the receiver paced, open-loop, at half the commit-only rate: "
            + ", ".join(f"{row.per_second:.0f}/s" for row in rounds.paced)
            + f"): p50 {paced[0].p50_ms:.1f} ms, p99 {paced[0].p99_ms:.1f} ms (goal <= "
            f"{HALF_LOAD_P99_GOAL_MS:.0f} ms: {'met' if p99_met else 'NOT met'})"
        )
    if max(row.cpu.get("other", 0.0) for row in (bare, durable, rinnovo)) > 0.5:
        print(
            "warning: processes outside the benchmark kept the CPUs busy during the runs "
            "(column 'other'); the figures are lower than on a quiet machine"
        )
    return met


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its figures; non-zero when a request or the check failed, or
    a goal was not met."""
    args = parse_args(argv)
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
    options = server_options(args)
    print(
        f"setup: gunicorn {' '.join(options)} on {os.cpu_count()} CPU(s), one server at a time, "
        f"logging to a file; client: one process, {args.concurrency} connections; {args.rounds} "
        f"round(s) of {args.warmup} warm-up + {args.count} timed requests per server, then "
        f"{args.paced_seconds:g} s of the receiver paced at half the commit-only rate"
        + ("; receiver under cProfile" if args.profile else "")
    )
    queue = redis.Redis.from_url(redis_url())
    rounds = Rounds()
    logs: list[str] = []
    try:
        db.drop_database(url)
        db.init_db(url)
        create_table(url)  # the commit-only endpoint's table
        queue.flushdb()
        serve = {"options": options, "env": env, "logs": logs}
        for number in range(1, args.rounds + 1):
            run_round(number, args, rounds, target, serve)
        goals_met = report(args, rounds)
        sent = sum(row.requests for row in rounds.rinnovo + rounds.paced)
        ok = check_stored(url, queue, sent + args.warmup * args.rounds)
        if not ok:
            warnings = [line for text in logs for line in text.splitlines() if line.strip()]
            print("the servers' last log lines:", *warnings[-20:], sep="\n  ")
        failures = sum(row.failures for row in rounds.bare + rounds.durable + rounds.rinnovo)
        ok = ok and not failures and not sum(row.failures for row in rounds.paced)
        if args.profile is not None:
            print_profile(args.profile)
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        db.drop_database(url)
        queue.flushdb()
        queue.close()
    return 0 if ok and goals_met else 1


if __name__ == "__main__":
    sys.exit(main())
